//! Per-symbol plausibility checks: the `[ticks]` section and the checks the engine runs before
//! a tick may touch its symbol's state.
//!
//! Runs on the engine thread (and in `quantd replay`, through the same worker). The stateless
//! checks of [`crate::tick`] cannot see a tick that is well-formed but impossible for its
//! symbol: a timestamp in the next century (a ns/µs mix-up), a price a thousand times the last
//! mid, or a price so extreme or subnormal that the features overflow. Each of those used to
//! poison the symbol for every client until restart; here each is refused with its own reason
//! ([`crate::tick::Reject::FutureTimestamp`], [`crate::tick::Reject::PriceJump`],
//! [`crate::tick::Reject::NonFiniteFeatures`]) and the
//! symbol's state is left as it was, so the next valid tick is scored.
//!
//! A real change of price level (a re-denomination, a feed switched to another venue, a
//! crash) is not lost: after `jump_reset_ticks` consecutive refused jumps that agree with each
//! other, the symbol resets and warms up again at the new level ([`JumpGuard`]).

use serde::{Deserialize, Serialize};

use crate::features::{NUM_FEATURES, SymbolFeatures};
use crate::problem::{Kind, Problems};
use crate::tick::{Kind as TickKind, Reject, Tick};

/// The `[ticks]` section of the server config (also read by `quantd replay`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TickChecks {
    /// Refuse a tick whose exchange time is further ahead of the server clock (at receipt)
    /// than this (0: off). Replay of a tick file has no server clock, and the check is off.
    pub max_future_skew_ms: u64,
    /// Refuse a tick with a price outside `[mid / (1 + j), mid × (1 + j)]` of its symbol's last
    /// mid (0: off).
    pub max_rel_jump: f64,
    /// After this many consecutive refused jumps, each within `max_rel_jump` of the first, the
    /// symbol resets and accepts the new level (0: never; the symbol needs `ResetSymbol`).
    pub jump_reset_ticks: u32,
}

impl Default for TickChecks {
    fn default() -> Self {
        Self { max_future_skew_ms: 5_000, max_rel_jump: 0.25, jump_reset_ticks: 5 }
    }
}

impl TickChecks {
    /// Every contradiction in the settings (empty: valid).
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        let j = self.max_rel_jump;
        p.check(!(j.is_finite() && j >= 0.0), "ticks.max_rel_jump", Kind::OutOfRange, || {
            format!("ticks.max_rel_jump {j} must be >= 0 (0: off)")
        });
        p
    }

    /// Whether `tick` claims a time further ahead of `recv_ns` (the server clock at receipt;
    /// 0: none, as in replay) than `max_future_skew_ms`.
    #[inline]
    pub fn from_the_future(&self, tick: &Tick, recv_ns: u64) -> bool {
        let skew_ns = self.max_future_skew_ms as i64 * 1_000_000;
        skew_ns > 0 && recv_ns > 0 && tick.exchange_ts_ns.saturating_sub(recv_ns as i64) > skew_ns
    }

    /// Whether one of the tick's prices is outside `max_rel_jump` of `mid` (the symbol's last
    /// mid; not positive before its first tick, when there is nothing to compare with).
    #[inline]
    pub fn jumps(&self, tick: &Tick, mid: f64) -> bool {
        if self.max_rel_jump <= 0.0 || !(mid > 0.0 && mid.is_finite()) {
            return false;
        }
        let band = 1.0 + self.max_rel_jump;
        let out = |px: f64| {
            let r = px / mid;
            !(r <= band && r * band >= 1.0)
        };
        match tick.kind {
            TickKind::Quote => out(tick.bid_px) || out(tick.ask_px),
            TickKind::Trade => out(tick.trade_px),
        }
    }
}

/// How a tick that passed [`TickChecks::admit`] was folded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Into the symbol's state as it was.
    Updated,
    /// The symbol's refused jumps agreed on a new price level: its state was reset first and
    /// this tick is its first (the caller resets what else it keeps per symbol).
    NewLevel,
    /// The symbol's state was not finite (it cannot become so through `admit`; defensive): it
    /// was reset first.
    Recovered,
}

impl TickChecks {
    /// The stateful checks, then the feature update, committed only if every feature and every
    /// number of the state stays finite. `recv_ns` is the server clock at receipt (0: none).
    /// On `Err` the symbol's features are exactly as before.
    pub fn admit(
        &self,
        features: &mut SymbolFeatures,
        guard: &mut JumpGuard,
        tick: &Tick,
        recv_ns: u64,
        row: &mut [f32; NUM_FEATURES],
    ) -> Result<Admitted, Reject> {
        let mut how = Admitted::Updated;
        if !features.is_finite() {
            *features = SymbolFeatures::new();
            *guard = JumpGuard::default();
            how = Admitted::Recovered;
        }
        if tick.exchange_ts_ns < features.last_ts_ns() {
            return Err(Reject::StaleTimestamp);
        }
        if self.from_the_future(tick, recv_ns) {
            return Err(Reject::FutureTimestamp);
        }
        if self.jumps(tick, features.mid()) {
            match guard.on_jump(self, tick) {
                JumpVerdict::Refuse => return Err(Reject::PriceJump),
                JumpVerdict::NewLevel => {
                    *features = SymbolFeatures::new();
                    how = Admitted::NewLevel;
                }
            }
        }
        let mut next = features.clone();
        next.update(tick, row);
        if !(next.is_finite() && row.iter().all(|v| v.is_finite())) {
            return Err(Reject::NonFiniteFeatures);
        }
        *features = next;
        guard.clear();
        Ok(how)
    }
}

/// A tick's representative price: the quote's mid (computed without overflow) or the trade
/// price.
fn level(tick: &Tick) -> f64 {
    match tick.kind {
        TickKind::Quote => 0.5 * tick.bid_px + 0.5 * tick.ask_px,
        TickKind::Trade => tick.trade_px,
    }
}

/// Per-symbol memory of refused jumps, to tell a bad print from a new price level.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JumpGuard {
    /// Level of the first refused tick of the current run (0: no run).
    anchor: f64,
    /// Consecutive refused jumps that agree with `anchor`.
    run: u32,
}

/// What to do with a tick that [`TickChecks::jumps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpVerdict {
    /// Refuse it; the symbol keeps its state.
    Refuse,
    /// The jumps agree: reset the symbol and accept this tick as its first.
    NewLevel,
}

impl JumpGuard {
    /// Records a refused jump and says whether the run of agreeing jumps is long enough to be a
    /// new level.
    pub fn on_jump(&mut self, checks: &TickChecks, tick: &Tick) -> JumpVerdict {
        let px = level(tick);
        let agrees = self.run > 0 && {
            let band = 1.0 + checks.max_rel_jump;
            let r = px / self.anchor;
            r <= band && r * band >= 1.0
        };
        if agrees {
            self.run += 1;
        } else {
            *self = Self { anchor: px, run: 1 };
        }
        if checks.jump_reset_ticks > 0 && self.run >= checks.jump_reset_ticks {
            *self = Self::default();
            JumpVerdict::NewLevel
        } else {
            JumpVerdict::Refuse
        }
    }

    /// A tick within the band was accepted: any run of jumps was bad prints.
    #[inline]
    pub fn clear(&mut self) {
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(ts: i64, px: f64) -> Tick {
        Tick::quote("BTCUSDT", 1, ts, px, 1.0, px * 1.0001, 1.0).unwrap()
    }

    #[test]
    fn a_tick_from_the_future_is_caught_only_with_a_server_clock() {
        let c = TickChecks::default();
        let now = 1_700_000_000_000_000_000u64;
        assert!(!c.from_the_future(&quote(now as i64, 100.0), now));
        assert!(!c.from_the_future(&quote(now as i64 + 4_000_000_000, 100.0), now));
        assert!(c.from_the_future(&quote(now as i64 + 6_000_000_000, 100.0), now));
        assert!(c.from_the_future(&quote(i64::MAX, 100.0), now));
        // Microseconds sent as nanoseconds x 1000: far ahead.
        assert!(c.from_the_future(&quote((now as i64).saturating_mul(1000), 100.0), now));
        // Replay (no server clock): off.
        assert!(!c.from_the_future(&quote(i64::MAX, 100.0), 0));
    }

    fn admit(c: &TickChecks, f: &mut SymbolFeatures, g: &mut JumpGuard, t: &Tick) -> Result<Admitted, Reject> {
        c.admit(f, g, t, 0, &mut [0.0; NUM_FEATURES])
    }

    #[test]
    fn no_refused_tick_changes_the_state_and_the_next_good_one_is_taken() {
        let c = TickChecks::default();
        let (mut f, mut g) = (SymbolFeatures::new(), JumpGuard::default());
        for i in 0..10 {
            assert_eq!(
                admit(&c, &mut f, &mut g, &quote(i * 1_000_000, 100.0 + i as f64 * 0.01)),
                Ok(Admitted::Updated)
            );
        }
        let before = format!("{f:?}");
        let poison = [
            (Tick::quote("X", 1, 20_000_000, 1e308, 1.0, 1e308, 1.0).unwrap(), Reject::PriceJump),
            (Tick::quote("X", 1, 20_000_000, 5e-324, 1.0, 5e-324, 1.0).unwrap(), Reject::PriceJump),
            (Tick::quote("X", 1, 20_000_000, 1e-300, 1.0, 1e-300, 1.0).unwrap(), Reject::PriceJump),
            (quote(1, 100.0), Reject::StaleTimestamp),
        ];
        for (t, why) in poison {
            assert_eq!(admit(&c, &mut f, &mut g, &t), Err(why));
            assert_eq!(format!("{f:?}"), before);
        }
        let now = 1_700_000_000_000_000_000u64;
        let mut row = [0.0; NUM_FEATURES];
        assert_eq!(c.admit(&mut f, &mut g, &quote(i64::MAX, 100.0), now, &mut row), Err(Reject::FutureTimestamp));
        assert_eq!(format!("{f:?}"), before);
        assert_eq!(admit(&c, &mut f, &mut g, &quote(30_000_000, 100.1)), Ok(Admitted::Updated));
    }

    #[test]
    fn a_tick_that_overflows_the_features_is_refused_even_with_the_jump_check_off() {
        let c = TickChecks { max_rel_jump: 0.0, ..TickChecks::default() };
        let (mut f, mut g) = (SymbolFeatures::new(), JumpGuard::default());
        // First tick of a symbol: nothing to compare a jump with. The mid overflows.
        let huge = Tick::quote("X", 1, 1, 1e308, 1.0, 1.7e308, 1.0).unwrap();
        assert_eq!(admit(&c, &mut f, &mut g, &huge), Err(Reject::NonFiniteFeatures));
        assert_eq!(f.ticks(), 0);
        assert_eq!(admit(&c, &mut f, &mut g, &quote(2, 100.0)), Ok(Admitted::Updated));
        let tiny = Tick::quote("X", 1, 3, 5e-324, 1.0, 5e-324, 1.0).unwrap();
        assert_eq!(admit(&c, &mut f, &mut g, &tiny), Err(Reject::NonFiniteFeatures));
        assert_eq!(admit(&c, &mut f, &mut g, &quote(4, 100.0)), Ok(Admitted::Updated));
        assert!(f.is_finite());
    }

    #[test]
    fn a_new_price_level_resets_the_symbol_after_agreeing_jumps() {
        let c = TickChecks::default();
        let (mut f, mut g) = (SymbolFeatures::new(), JumpGuard::default());
        for i in 0..10 {
            admit(&c, &mut f, &mut g, &quote(i, 100.0)).unwrap();
        }
        for i in 0..4 {
            assert_eq!(admit(&c, &mut f, &mut g, &quote(20 + i, 1000.0)), Err(Reject::PriceJump));
        }
        assert_eq!(admit(&c, &mut f, &mut g, &quote(30, 1000.0)), Ok(Admitted::NewLevel));
        assert_eq!(f.ticks(), 1);
        assert_eq!(admit(&c, &mut f, &mut g, &quote(31, 1001.0)), Ok(Admitted::Updated));
    }

    #[test]
    fn jumps_are_measured_in_ratio_both_ways() {
        let c = TickChecks::default(); // 25 %
        assert!(!c.jumps(&quote(0, 100.0), 100.0));
        assert!(!c.jumps(&quote(0, 124.0), 100.0));
        assert!(c.jumps(&quote(0, 126.0), 100.0));
        assert!(!c.jumps(&quote(0, 81.0), 100.0));
        assert!(c.jumps(&quote(0, 79.0), 100.0));
        assert!(c.jumps(&quote(0, 1e300), 100.0));
        assert!(c.jumps(&quote(0, 5e-324), 100.0));
        // Nothing to compare with before the first tick.
        assert!(!c.jumps(&quote(0, 1e300), 0.0));
        assert!(!TickChecks { max_rel_jump: 0.0, ..c }.jumps(&quote(0, 1e300), 100.0));
    }

    #[test]
    fn agreeing_jumps_become_a_new_level_and_bad_prints_do_not() {
        let c = TickChecks::default(); // 5 agreeing jumps
        let mut g = JumpGuard::default();
        for _ in 0..4 {
            assert_eq!(g.on_jump(&c, &quote(0, 1000.0)), JumpVerdict::Refuse);
        }
        assert_eq!(g.on_jump(&c, &quote(0, 1010.0)), JumpVerdict::NewLevel);
        // Scattered bad prints never agree long enough.
        let mut g = JumpGuard::default();
        for i in 0..50 {
            let px = if i % 2 == 0 { 1000.0 } else { 10.0 };
            assert_eq!(g.on_jump(&c, &quote(0, px)), JumpVerdict::Refuse);
        }
        // A good tick in between ends the run.
        let mut g = JumpGuard::default();
        for _ in 0..4 {
            g.on_jump(&c, &quote(0, 1000.0));
        }
        g.clear();
        assert_eq!(g.on_jump(&c, &quote(0, 1000.0)), JumpVerdict::Refuse);
    }
}
