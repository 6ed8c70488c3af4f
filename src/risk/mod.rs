//! The risk layer: what stands between the policy's target and the signal that leaves.
//!
//! [`RiskGate`] runs on the engine thread in `serve` and on the replay's thread in `replay` — the
//! same code, fed the same ticks, so a replay shows exactly what the live server would have done.
//! For every tick it applies, in this order:
//! 1. the **kill switch**: flat, with a reject reason, when an admin call asked for it (all
//!    symbols or one), when the symbol's data is stale (a gap in exchange time longer than
//!    `stale_after_ms`, or, live only, exchange time lagging the server clock by more than
//!    `max_feed_delay_ms`), when a feature is NaN or outside the model's training range (from the
//!    manifest, widened by `feature_range_slack`), or when the model failed on the tick;
//! 2. **VaR sizing**: the target times the symbol's scale factor, published without locks by the
//!    VaR estimator ([`var`]) on the control thread (or the replay driver) through [`RiskBoard`];
//! 3. the per-symbol **position limit** `max_position`;
//! 4. the **rate of position changes**: at most `max_changes` in `change_window_ms` of exchange
//!    time; a change beyond that keeps the previous position (moves toward flat always pass);
//! 5. the **gross notional limit** over all symbols (`|position| × unit_qty × mid`): a target that
//!    would breach it is cut to what is left.
//!
//! Every limit that binds sets a flag on the reply ([`RiskFlags`], sent as `Signal.risk`) and is
//! counted by reason (`quantd_risk_total{reason}`). State per symbol is [`SymbolRisk`], held in
//! the engine's symbol table; nothing here allocates per tick.

mod board;
mod thread;
pub mod var;

use serde::{Deserialize, Serialize};

use crate::problem::{Kind, Problems};

pub use crate::risk_flags::RiskFlags;
pub use board::RiskBoard;
pub use thread::RiskThread;
pub use var::{VarConfig, VarEstimator, VarMethod};

/// Most `max_changes` the fixed per-symbol ring can track.
pub const MAX_CHANGES_TRACKED: usize = 64;

/// The `[risk]` section of the server config (also read by `quantd replay`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Quantity (contracts, coins) at target position 1.0; converts positions to notional.
    pub unit_qty: f64,
    /// Largest |target position| per symbol, in (0, 1].
    pub max_position: f64,
    /// Largest Σ |position × unit_qty × mid| over all symbols, quote currency (0: off).
    pub max_gross_notional: f64,
    /// Most position changes per symbol within `change_window_ms` of exchange time (0: off).
    pub max_changes: usize,
    /// The window `max_changes` counts position changes over, exchange-time ms.
    pub change_window_ms: u64,
    /// Kill: a symbol whose previous tick is older than this in exchange time is stale (0: off).
    pub stale_after_ms: u64,
    /// Kill (live only): a tick whose exchange time lags the server's clock by more than this
    /// is stale (0: off; the clocks must be synchronised for it to mean anything).
    pub max_feed_delay_ms: u64,
    /// Kill when a feature is NaN, infinite or outside the manifest's training range widened
    /// by this fraction of the range on each side (negative, the default: no range check, a
    /// non-finite feature still kills). Off by default because a feed that differs from the training data in kind — a
    /// quotes-only stream to a model trained on quotes and trades — is out of range on every
    /// tick; turn it on where the feed matches the training data.
    pub feature_range_slack: f64,
    /// Monte Carlo VaR sizing (`[risk.var]`).
    pub var: VarConfig,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            unit_qty: 1.0,
            max_position: 1.0,
            max_gross_notional: 0.0,
            max_changes: 0,
            change_window_ms: 60_000,
            stale_after_ms: 0,
            max_feed_delay_ms: 0,
            feature_range_slack: -1.0,
            var: VarConfig::default(),
        }
    }
}

impl RiskConfig {
    /// Every contradiction in the settings (empty: valid).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        p.check(!(self.unit_qty.is_finite() && self.unit_qty > 0.0), "risk.unit_qty", OutOfRange, || {
            format!("risk.unit_qty {} must be > 0", self.unit_qty)
        });
        p.check(!(self.max_position > 0.0 && self.max_position <= 1.0), "risk.max_position", OutOfRange, || {
            format!("risk.max_position {} must be in (0, 1] (positions are fractions of full size)", self.max_position)
        });
        let gross = self.max_gross_notional;
        p.check(!(gross.is_finite() && gross >= 0.0), "risk.max_gross_notional", OutOfRange, || {
            format!("risk.max_gross_notional {gross} must be >= 0 (0: off)")
        });
        p.check(self.max_changes > MAX_CHANGES_TRACKED, "risk.max_changes", OutOfRange, || {
            format!("risk.max_changes {} must be <= {MAX_CHANGES_TRACKED}", self.max_changes)
        });
        p.check(self.max_changes > 0 && self.change_window_ms == 0, "risk.change_window_ms", Conflict, || {
            "risk.max_changes is set but risk.change_window_ms is 0".into()
        });
        p.check(!self.feature_range_slack.is_finite(), "risk.feature_range_slack", OutOfRange, || {
            "risk.feature_range_slack must be finite".into()
        });
        p.extend(self.var.problems());
        p
    }
}

/// Per-symbol risk state, owned with the symbol's other state by whoever runs the gate.
#[derive(Clone, Debug)]
pub struct SymbolRisk {
    /// The position the last signal carried (after every limit).
    pub position: f64,
    /// Its notional, as counted in the gross total.
    notional: f64,
    /// The admin kill switch holds this symbol.
    pub admin_killed: bool,
    /// Exchange times of the latest position changes (a ring).
    changes: [i64; MAX_CHANGES_TRACKED],
    n_changes: usize,
}

impl SymbolRisk {
    /// Flat, with no history.
    pub const NEW: Self =
        Self { position: 0.0, notional: 0.0, admin_killed: false, changes: [0; MAX_CHANGES_TRACKED], n_changes: 0 };
}

impl Default for SymbolRisk {
    fn default() -> Self {
        Self::NEW
    }
}

/// A tick as the gate sees it.
#[derive(Clone, Copy, Debug)]
pub struct RiskInput<'a> {
    /// The symbol's slot on the risk board.
    pub slot: usize,
    /// The tick's exchange time.
    pub exchange_ts_ns: i64,
    /// Exchange time of the symbol's previous accepted tick (`i64::MIN`: none), as the
    /// features saw it — every accepted tick counts, scored or not.
    pub prev_ts_ns: i64,
    /// The mid price, or NaN when the symbol has no quote yet.
    pub mid: f64,
    /// Server clock at receipt (CLOCK_REALTIME ns); 0 in replay (no feed-delay check).
    pub recv_ns: u64,
    /// The feature row the model scored (None: not scored).
    pub features: Option<&'a [f32]>,
    /// The scoring model's training ranges, widened ([`RiskGate::widen`]; None: no range check).
    pub ranges: Option<&'a [(f32, f32)]>,
    /// The model failed on this tick (error or non-finite score).
    pub model_failed: bool,
    /// The inputs from outside the tick stream, as the engine read them for this tick (None:
    /// the gate reads them itself, from the board and the symbol's state).
    pub external: Option<External>,
}

/// What the gate takes from outside the tick stream: the VaR estimator's scale and the admin
/// kill switch. Live, the engine reads them once per tick ([`RiskGate::external`]) and the
/// journal records them with the signal; `quantd audit` feeds the recorded values back, so a
/// re-run applies exactly the limits the live tick saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct External {
    /// The VaR scale factor (1: no cut).
    pub var_scale: f64,
    /// The admin kill switch, this symbol's or the all-symbols one.
    pub admin_kill: bool,
}

/// The risk gate: settings and the gross total; the all-symbols kill switch lives on the board.
pub struct RiskGate {
    config: RiskConfig,
    board: std::sync::Arc<RiskBoard>,
    gross: f64,
}

impl RiskGate {
    /// A gate with `config`, reading VaR scales and the all-symbols kill switch from `board`.
    pub fn new(config: RiskConfig, board: std::sync::Arc<RiskBoard>) -> Self {
        Self { config, board, gross: 0.0 }
    }

    /// The limits it applies.
    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    /// The board it reads.
    pub fn board(&self) -> &std::sync::Arc<RiskBoard> {
        &self.board
    }

    /// The training ranges of a model's features (`min`, `max` per feature; from the manifest),
    /// widened by `feature_range_slack`, as [`RiskInput::ranges`] takes them (None: no range
    /// check, because the model has none or the slack is negative). Made when a model goes live.
    pub fn widen(&self, ranges: Option<&[(f32, f32)]>) -> Option<Vec<(f32, f32)>> {
        let slack = self.config.feature_range_slack;
        ranges.filter(|_| slack >= 0.0).map(|r| {
            r.iter()
                .map(|&(lo, hi)| {
                    let pad = (hi - lo).abs() * slack as f32;
                    (lo - pad, hi + pad)
                })
                .collect()
        })
    }

    /// Engages or releases the kill switch for every symbol.
    pub fn set_global_kill(&mut self, engaged: bool) {
        self.board.set_global_kill(engaged);
    }

    /// Current gross notional over all symbols.
    pub fn gross(&self) -> f64 {
        self.gross
    }

    /// Forgets the positions counted in the gross total (after the engine reset its symbols).
    pub fn reset(&mut self) {
        self.gross = 0.0;
    }

    /// Takes one symbol's position out of the gross total (the engine forgot the symbol).
    pub fn forget(&mut self, st: &SymbolRisk) {
        self.gross = (self.gross - st.notional).max(0.0);
    }

    fn features_bad(row: &[f32], ranges: Option<&[(f32, f32)]>) -> bool {
        match ranges {
            Some(ranges) => row.iter().zip(ranges).any(|(v, (lo, hi))| !(v >= lo && v <= hi && v.is_finite())),
            None => row.iter().any(|v| !v.is_finite()),
        }
    }

    /// The inputs from outside the tick stream that hold now for the symbol in `slot`.
    pub fn external(&self, st: &SymbolRisk, slot: usize) -> External {
        External { var_scale: self.board.scale(slot), admin_kill: st.admin_killed || self.board.global_kill() }
    }

    /// The kill triggers that hold for this tick.
    fn kills(&self, t: &RiskInput, external: External) -> RiskFlags {
        let mut k = RiskFlags::empty();
        if external.admin_kill {
            k |= RiskFlags::KILL_ADMIN;
        }
        let stale_ns = self.config.stale_after_ms as i64 * 1_000_000;
        if stale_ns > 0 && t.prev_ts_ns != i64::MIN && t.exchange_ts_ns - t.prev_ts_ns > stale_ns {
            k |= RiskFlags::KILL_STALE;
        }
        let delay_ns = self.config.max_feed_delay_ms as i64 * 1_000_000;
        if delay_ns > 0 && t.recv_ns > 0 && t.recv_ns as i64 - t.exchange_ts_ns > delay_ns {
            k |= RiskFlags::KILL_FEED_DELAY;
        }
        if t.features.is_some_and(|f| Self::features_bad(f, t.ranges)) {
            k |= RiskFlags::KILL_FEATURES;
        }
        if t.model_failed {
            k |= RiskFlags::KILL_MODEL;
        }
        k
    }

    /// Applies every limit to the policy's `target` for this tick and returns the position to
    /// send with the flags of the limits that bound it.
    pub fn apply(&mut self, st: &mut SymbolRisk, t: &RiskInput, target: f64) -> (f64, RiskFlags) {
        if t.mid.is_finite() {
            self.board.set_mid(t.slot, t.mid);
        }
        let external = t.external.unwrap_or_else(|| self.external(st, t.slot));
        let mut flags = self.kills(t, external);
        let mut pos = if flags.is_empty() { target } else { 0.0 };
        // VaR sizing.
        let scale = external.var_scale;
        if scale < 1.0 && pos != 0.0 {
            pos *= scale;
            flags |= RiskFlags::VAR_SCALE;
        }
        // Position limit.
        if pos.abs() > self.config.max_position {
            pos = pos.signum() * self.config.max_position;
            flags |= RiskFlags::POSITION_LIMIT;
        }
        // Rate of changes: only moves that do not reduce the position can be held back.
        if pos != st.position && self.config.max_changes > 0 {
            let window = self.config.change_window_ms as i64 * 1_000_000;
            let n = self.config.max_changes;
            let reduces = pos.abs() < st.position.abs() && pos.signum() * st.position.signum() >= 0.0;
            let oldest = st.changes[st.n_changes % n];
            if !reduces && st.n_changes >= n && t.exchange_ts_ns - oldest < window {
                pos = st.position;
                flags |= RiskFlags::CHANGE_RATE;
            }
        }
        // Gross notional: cut to what the other symbols leave.
        let unit = self.config.unit_qty * if t.mid.is_finite() { t.mid } else { 0.0 };
        let others = self.gross - st.notional;
        if self.config.max_gross_notional > 0.0 && unit > 0.0 {
            let room = (self.config.max_gross_notional - others).max(0.0);
            if pos.abs() * unit > room + 1e-9 {
                pos = pos.signum() * room / unit;
                flags |= RiskFlags::GROSS_NOTIONAL;
            }
        }
        if pos != st.position && self.config.max_changes > 0 {
            let n = self.config.max_changes;
            st.changes[st.n_changes % n] = t.exchange_ts_ns;
            st.n_changes += 1;
        }
        st.position = pos;
        st.notional = pos.abs() * unit;
        self.gross = others + st.notional;
        (pos, flags)
    }
}

#[cfg(test)]
mod tests;
