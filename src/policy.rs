//! Score → target position in [-1, 1], with a dead band and hysteresis, per symbol.
//!
//! Runs on the engine thread; [`Position`] is per-symbol state owned there. Parameters come from
//! the model's manifest (`[policy]`), optionally overridden by the server config.
//!
//! Rule, with `s` the score in bps (for a model whose manifest says its output is a probability
//! or a class score, `io.output_kind`, `s` is the output minus its neutral point and the
//! thresholds are in the output's own units):
//! - flat: open only when `|s| >= entry_bps`;
//! - holding: keep the side while the score still agrees with it and `|s| >= exit_bps`; go flat
//!   when it falls below `exit_bps`; flip only when the opposite side clears `entry_bps`;
//! - size: `clamp(s / full_position_bps, -1, 1)` while a position is held.

use serde::{Deserialize, Serialize};

/// The policy's thresholds: how a score becomes a target position (from the manifest, or the config).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyParams {
    /// Ticks a symbol must have seen before its signals leave warm-up.
    pub warmup_ticks: u64,
    /// |score| needed to open (or flip) a position, bps.
    pub entry_bps: f64,
    /// |score| below which an open position is closed, bps (≤ entry_bps: the hysteresis band).
    pub exit_bps: f64,
    /// |score| at which the position is full size, bps.
    pub full_position_bps: f64,
}

impl PolicyParams {
    /// Every problem with the thresholds, or `Ok`.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        let finite = [self.entry_bps, self.exit_bps, self.full_position_bps].iter().all(|v| v.is_finite());
        if !finite {
            p.push("thresholds must be finite".to_owned());
        }
        if self.exit_bps < 0.0 {
            p.push(format!("exit_bps {} must be >= 0", self.exit_bps));
        }
        if self.exit_bps > self.entry_bps {
            p.push(format!("exit_bps {} must be <= entry_bps {}", self.exit_bps, self.entry_bps));
        }
        if self.full_position_bps <= 0.0 {
            p.push(format!("full_position_bps {} must be > 0", self.full_position_bps));
        }
        if p.is_empty() { Ok(()) } else { Err(p.join("; ")) }
    }
}

/// A symbol's current target position.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Position(pub f64);

impl Position {
    /// Applies the rule to a new score and returns the new target.
    pub fn update(&mut self, score: f64, p: &PolicyParams) -> f64 {
        let side = self.0.signum() * (self.0 != 0.0) as i32 as f64;
        let size = (score / p.full_position_bps).clamp(-1.0, 1.0);
        let agrees = side != 0.0 && score.signum() == side;
        let hold = agrees && score.abs() >= p.exit_bps;
        let open = score.abs() >= p.entry_bps;
        self.0 = if score.is_finite() && (hold || open) { size } else { 0.0 };
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PolicyParams = PolicyParams { warmup_ticks: 0, entry_bps: 1.0, exit_bps: 0.5, full_position_bps: 4.0 };

    #[test]
    fn dead_band_hysteresis_and_flip() {
        let mut pos = Position::default();
        assert_eq!(pos.update(0.9, &P), 0.0, "inside the dead band: stay flat");
        assert_eq!(pos.update(2.0, &P), 0.5, "clears entry: open at 2/4");
        assert_eq!(pos.update(0.6, &P), 0.15, "between exit and entry: hold, resized");
        assert_eq!(pos.update(0.4, &P), 0.0, "below exit: flat");
        assert_eq!(pos.update(0.6, &P), 0.0, "flat again needs entry");
        assert_eq!(pos.update(8.0, &P), 1.0, "capped at 1");
        assert_eq!(pos.update(-0.8, &P), 0.0, "opposite side below entry: close, not flip");
        assert_eq!(pos.update(-1.0, &P), -0.25, "opposite side at entry: open short");
        assert_eq!(pos.update(f64::NAN, &P), 0.0, "non-finite score: flat");
    }

    #[test]
    fn validation_lists_every_problem() {
        let bad = PolicyParams { warmup_ticks: 0, entry_bps: 1.0, exit_bps: 2.0, full_position_bps: 0.0 };
        let e = bad.validate().unwrap_err();
        assert!(e.contains("exit_bps") && e.contains("full_position_bps"), "{e}");
        assert!(P.validate().is_ok());
    }
}
