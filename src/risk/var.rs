//! Monte Carlo value-at-risk per symbol, and the scale factor that keeps a full position's VaR
//! under the limit.
//!
//! [`VarEstimator`] runs on the control path: the `quantd-risk` thread in `serve` (driven by the
//! wall clock), the replay's own thread in `replay` (driven by exchange time, so the replay is
//! deterministic). Every `sample_ms` it reads each symbol's latest mid from the [`RiskBoard`] and
//! keeps the log return since the previous sample; every `interval_ms` it simulates `paths`
//! horizon returns — by bootstrap of the recent returns, by an EWMA-volatility model (the
//! variance follows `σ²' = λσ² + (1 − λ)r²` along each path), or both taking the larger — with a
//! generator seeded from `seed`, the estimate's number and the slot. The VaR per unit position is
//! the larger of the long and short side's loss quantile at `confidence`; the scale is
//! `min(1, limit / VaR)`, published through the board for the engine to apply.
//!
//! The VaR is back-tested as it runs: every `horizon_ms` (non-overlapping windows) the long-side
//! estimate is compared with the loss a long unit position actually made over the next horizon;
//! the exceedance count against the expected `1 − confidence` is judged with Kupiec's
//! proportion-of-failures test.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use serde::{Deserialize, Serialize};

use super::RiskBoard;
use crate::problem::{Kind, Problems};
use crate::telemetry::SymbolVarReport;
use crate::tick::Symbol;

/// How the Monte Carlo paths are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VarMethod {
    /// Resample the recent returns (keeps fat tails, no volatility clustering).
    Bootstrap,
    /// Normal shocks with an EWMA variance updated along each path.
    Ewma,
    /// Both; the larger VaR is used.
    Max,
}

/// `[risk.var]`: Monte Carlo VaR sizing.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VarConfig {
    /// Largest VaR a full position (|target| = 1) may carry, quote currency (0: VaR sizing and
    /// estimation off — each estimate costs `paths × horizon` draws per symbol).
    pub limit: f64,
    /// The VaR's confidence level, in (0, 1).
    pub confidence: f64,
    /// The VaR's horizon, ms.
    pub horizon_ms: u64,
    /// How often mids are sampled (the return interval).
    pub sample_ms: u64,
    /// How often the VaR is re-estimated (a multiple of `sample_ms`).
    pub interval_ms: u64,
    /// Monte Carlo paths per estimate.
    pub paths: usize,
    /// Returns kept per symbol.
    pub history: usize,
    /// Returns needed before a symbol is sized (before that its scale is 1).
    pub min_history: usize,
    /// How the paths are drawn.
    pub method: VarMethod,
    /// The EWMA decay for the `ewma` method.
    pub ewma_lambda: f64,
    /// The random seed (estimates are reproducible).
    pub seed: u64,
}

impl Default for VarConfig {
    fn default() -> Self {
        Self {
            limit: 0.0,
            confidence: 0.99,
            horizon_ms: 60_000,
            sample_ms: 1_000,
            interval_ms: 10_000,
            paths: 5_000,
            history: 1_800,
            min_history: 120,
            method: VarMethod::Max,
            ewma_lambda: 0.97,
            seed: 7,
        }
    }
}

impl VarConfig {
    /// The section's own problems (fields named `risk.var.*`).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        p.check(!(self.limit.is_finite() && self.limit >= 0.0), "risk.var.limit", OutOfRange, || {
            format!("risk.var.limit {} must be >= 0 (0: off)", self.limit)
        });
        p.check(!(self.confidence > 0.5 && self.confidence < 1.0), "risk.var.confidence", OutOfRange, || {
            format!("risk.var.confidence {} must be in (0.5, 1)", self.confidence)
        });
        let sample = self.sample_ms;
        p.check(sample == 0, "risk.var.sample_ms", OutOfRange, || "risk.var.sample_ms must be > 0".into());
        let multiple = |v: u64| sample == 0 || (v >= sample && v.is_multiple_of(sample));
        p.check(!multiple(self.horizon_ms), "risk.var.horizon_ms", Conflict, || {
            format!("risk.var.horizon_ms {} must be a multiple of sample_ms {sample}", self.horizon_ms)
        });
        p.check(!multiple(self.interval_ms), "risk.var.interval_ms", Conflict, || {
            format!("risk.var.interval_ms {} must be a multiple of sample_ms {sample}", self.interval_ms)
        });
        p.check(self.paths < 100, "risk.var.paths", OutOfRange, || {
            format!("risk.var.paths {} must be >= 100", self.paths)
        });
        p.check(self.min_history < 2 || self.history < self.min_history, "risk.var.min_history", OutOfRange, || {
            format!("risk.var.min_history {} must be >= 2 and <= history {}", self.min_history, self.history)
        });
        p.check(!(self.ewma_lambda > 0.0 && self.ewma_lambda < 1.0), "risk.var.ewma_lambda", OutOfRange, || {
            format!("risk.var.ewma_lambda {} must be in (0, 1)", self.ewma_lambda)
        });
        p
    }

    fn horizon_samples(&self) -> usize {
        (self.horizon_ms / self.sample_ms.max(1)).max(1) as usize
    }
}

/// One symbol's VaR state and back-test.
#[derive(Clone, Debug)]
struct SymbolVar {
    symbol: Symbol,
    /// The board cell's generation when the symbol was announced.
    generation: u64,
    last_mid: f64,
    returns: VecDeque<f64>,
    ewma_var: f64,
    var_per_unit: f64,
    var_long: f64,
    scale: f64,
    /// Long-side estimates waiting for their horizon: (sample number, mid, VaR).
    pending: VecDeque<(u64, f64, f64)>,
    last_check_at: Option<u64>,
    checks: u64,
    exceedances: u64,
}

/// The Monte Carlo VaR estimator over every symbol's sampled mids.
pub struct VarEstimator {
    config: VarConfig,
    unit_qty: f64,
    symbols: Vec<Option<SymbolVar>>,
    samples: u64,
    estimates: u64,
    scratch: Vec<f64>,
}

impl VarEstimator {
    /// An estimator for `slots` symbol slots, sizing positions of `unit_qty`.
    pub fn new(config: VarConfig, unit_qty: f64, slots: usize) -> Self {
        Self {
            scratch: Vec::with_capacity(config.paths),
            config,
            unit_qty,
            symbols: vec![None; slots],
            samples: 0,
            estimates: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &VarConfig {
        &self.config
    }

    /// Takes the symbols the engine announced since the last call.
    fn absorb(&mut self, board: &RiskBoard) {
        while let Some(a) = board.take_announced() {
            let slot = a.slot;
            if slot >= self.symbols.len() {
                self.symbols.resize(slot + 1, None);
            }
            self.symbols[slot] = Some(SymbolVar {
                symbol: a.symbol,
                generation: a.generation,
                last_mid: f64::NAN,
                returns: VecDeque::with_capacity(self.config.history),
                ewma_var: f64::NAN,
                var_per_unit: f64::NAN,
                var_long: f64::NAN,
                scale: 1.0,
                pending: VecDeque::new(),
                last_check_at: None,
                checks: 0,
                exceedances: 0,
            });
        }
    }

    /// One sampling step (every `sample_ms`): records each symbol's return since the previous
    /// sample, settles back-tests whose horizon has passed, and re-estimates every
    /// `interval_ms`, publishing the scales on the board.
    pub fn sample(&mut self, board: &RiskBoard) {
        if self.config.limit <= 0.0 {
            return;
        }
        self.absorb(board);
        self.samples += 1;
        let horizon = self.config.horizon_samples() as u64;
        let (history, lambda, unit) = (self.config.history, self.config.ewma_lambda, self.unit_qty);
        for (slot, tracked) in self.symbols.iter_mut().enumerate() {
            // The slot's symbol was evicted or replaced since it was announced.
            if tracked.as_ref().is_some_and(|s| s.generation != board.generation(slot)) {
                *tracked = None;
            }
            let Some(s) = tracked else { continue };
            let mid = board.mid(slot);
            if !(mid.is_finite() && mid > 0.0) {
                continue;
            }
            if s.last_mid.is_finite() {
                let r = (mid / s.last_mid).ln();
                if s.returns.len() == history {
                    s.returns.pop_front();
                }
                s.returns.push_back(r);
                s.ewma_var = if s.ewma_var.is_finite() { lambda * s.ewma_var + (1.0 - lambda) * r * r } else { r * r };
            }
            s.last_mid = mid;
            while let Some(&(at, mid0, var_long)) = s.pending.front() {
                if self.samples < at + horizon {
                    break;
                }
                s.pending.pop_front();
                s.checks += 1;
                let loss = -unit * (mid - mid0);
                s.exceedances += (loss > var_long) as u64;
            }
        }
        let every = (self.config.interval_ms / self.config.sample_ms.max(1)).max(1);
        if self.samples.is_multiple_of(every) {
            self.estimate(board);
        }
    }

    fn estimate(&mut self, board: &RiskBoard) {
        self.estimates += 1;
        let c = &self.config;
        let horizon = c.horizon_samples();
        for slot in 0..self.symbols.len() {
            let Some(s) = self.symbols[slot].as_mut() else { continue };
            if s.returns.len() < c.min_history || !s.last_mid.is_finite() {
                continue;
            }
            let seed = c.seed ^ self.estimates.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (slot as u64).rotate_left(32);
            let mut rng = StdRng::seed_from_u64(seed);
            let unit = self.unit_qty * s.last_mid;
            let mut long = 0f64;
            let mut short = 0f64;
            let mut run = |paths: &mut Vec<f64>, method: VarMethod, rng: &mut StdRng| {
                paths.clear();
                match method {
                    VarMethod::Bootstrap => {
                        let pick = Uniform::new(0, s.returns.len()).expect("history is not empty");
                        for _ in 0..c.paths {
                            let r: f64 = (0..horizon).map(|_| s.returns[pick.sample(rng)]).sum();
                            paths.push(unit * r.exp_m1());
                        }
                    }
                    VarMethod::Ewma | VarMethod::Max => {
                        for _ in 0..c.paths {
                            let (mut var, mut r) = (s.ewma_var, 0.0);
                            for _ in 0..horizon {
                                let z: f64 = StandardNormal.sample(rng);
                                let step = var.sqrt() * z;
                                r += step;
                                var = c.ewma_lambda * var + (1.0 - c.ewma_lambda) * step * step;
                            }
                            paths.push(unit * r.exp_m1());
                        }
                    }
                }
                let (lo, hi) = tail_quantiles(paths, c.confidence);
                long = long.max(-lo);
                short = short.max(hi);
            };
            match c.method {
                VarMethod::Max => {
                    run(&mut self.scratch, VarMethod::Bootstrap, &mut rng);
                    run(&mut self.scratch, VarMethod::Ewma, &mut rng);
                }
                m => run(&mut self.scratch, m, &mut rng),
            }
            s.var_long = long;
            s.var_per_unit = long.max(short);
            s.scale = if c.limit > 0.0 && s.var_per_unit > 0.0 { (c.limit / s.var_per_unit).min(1.0) } else { 1.0 };
            board.publish(slot, s.var_per_unit, s.scale);
            if s.last_check_at.is_none_or(|at| self.samples >= at + horizon as u64) {
                s.last_check_at = Some(self.samples);
                s.pending.push_back((self.samples, s.last_mid, s.var_long));
            }
        }
    }

    /// Every tracked symbol's figures.
    pub fn report(&self) -> Vec<SymbolVarReport> {
        let p = 1.0 - self.config.confidence;
        self.symbols
            .iter()
            .flatten()
            .map(|s| {
                let (lr, pv) = kupiec(s.exceedances, s.checks, p);
                SymbolVarReport {
                    symbol: s.symbol.as_str().to_owned(),
                    var_per_unit: s.var_per_unit,
                    scale: s.scale,
                    checks: s.checks,
                    exceedances: s.exceedances,
                    expected_rate: p,
                    kupiec_lr: lr,
                    kupiec_p: pv,
                }
            })
            .collect()
    }
}

/// The (1 − c) and c quantiles of `xs` (reorders it).
fn tail_quantiles(xs: &mut [f64], c: f64) -> (f64, f64) {
    let n = xs.len();
    let at = |q: f64| ((q * (n - 1) as f64).round() as usize).min(n - 1);
    let (i_lo, i_hi) = (at(1.0 - c), at(c));
    let lo = *xs.select_nth_unstable_by(i_lo, f64::total_cmp).1;
    let hi = *xs.select_nth_unstable_by(i_hi, f64::total_cmp).1;
    (lo, hi)
}

/// Kupiec's proportion-of-failures test: `x` exceedances in `n` trials against rate `p`.
/// Returns the likelihood ratio and its p-value (χ² with one degree of freedom); (NaN, NaN)
/// with no trials.
pub fn kupiec(x: u64, n: u64, p: f64) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (x, n) = (x as f64, n as f64);
    let xlny = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * b.ln() };
    let phat = x / n;
    let lr = -2.0 * (xlny(n - x, 1.0 - p) + xlny(x, p)) + 2.0 * (xlny(n - x, 1.0 - phat) + xlny(x, phat));
    let lr = lr.max(0.0);
    (lr, libm::erfc((lr / 2.0).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_with(symbol: &str) -> RiskBoard {
        let b = RiskBoard::new(4);
        b.announce(0, Symbol::new(symbol).unwrap());
        b
    }

    /// Feeds `n` samples of a random walk with per-sample log-return sd `sigma` from 100.
    fn feed(est: &mut VarEstimator, board: &RiskBoard, n: usize, sigma: f64, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut mid: f64 = 100.0;
        for _ in 0..n {
            board.set_mid(0, mid);
            est.sample(board);
            let z: f64 = StandardNormal.sample(&mut rng);
            mid *= (sigma * z).exp();
        }
    }

    #[test]
    fn normal_returns_give_the_analytic_var_within_monte_carlo_error() {
        let sigma = 2e-4;
        for method in [VarMethod::Bootstrap, VarMethod::Ewma] {
            let config = VarConfig {
                method,
                paths: 20_000,
                history: 5_000,
                min_history: 5_000,
                interval_ms: 1_000,
                limit: 1e9,
                ewma_lambda: 0.999,
                ..VarConfig::default()
            };
            let board = board_with("X");
            let mut est = VarEstimator::new(config, 1.0, 4);
            feed(&mut est, &board, 5_001, sigma, 11);
            let var = board.var(0);
            let mid = board.mid(0);
            // 60 one-second returns: R ~ N(0, 60 σ²); the long side's 99% loss is
            // mid·(1 − exp(−z σ √60)), the short side's mid·(exp(z σ √60) − 1) (the larger).
            let analytic = mid * ((2.326_348 * sigma * 60f64.sqrt()).exp() - 1.0);
            let err = (var - analytic).abs() / analytic;
            assert!(err < 0.06, "{method:?}: VaR {var} vs analytic {analytic} ({:.1}% off)", err * 100.0);
        }
    }

    #[test]
    fn the_scale_keeps_a_full_positions_var_under_the_limit_and_is_deterministic() {
        let config = VarConfig {
            limit: 0.1,
            min_history: 100,
            paths: 2_000,
            interval_ms: 50_000,
            method: VarMethod::Max,
            ..VarConfig::default()
        };
        let run = || {
            let board = board_with("X");
            let mut est = VarEstimator::new(config.clone(), 1.0, 4);
            feed(&mut est, &board, 300, 3e-4, 5);
            (board.var(0), board.scale(0))
        };
        let (var, scale) = run();
        assert!(var > 0.1, "this walk's VaR ({var}) is above the limit");
        assert!((scale * var - 0.1).abs() < 1e-9, "scale {scale} × VaR {var} = the limit");
        assert_eq!(run(), (var, scale), "same seed, same inputs: same figures");
    }

    #[test]
    fn backtest_counts_exceedances_and_kupiec_judges_them() {
        // One estimate a horizon (60 samples), as the back-test uses them.
        let config = VarConfig {
            limit: 1e9,
            min_history: 100,
            paths: 1_000,
            interval_ms: 60_000,
            method: VarMethod::Bootstrap,
            ..VarConfig::default()
        };
        let board = board_with("X");
        let mut est = VarEstimator::new(config, 1.0, 4);
        feed(&mut est, &board, 120 + 60 * 200, 2e-4, 3);
        let r = &est.report()[0];
        assert_eq!(r.checks, 200, "{r:?}");
        assert!(r.exceedances <= 8, "~1% of 200 expected: {r:?}");
        assert!(r.kupiec_p > 0.01, "{r:?}");
        // Kupiec against hand-computed values: 5 in 100 at 1%:
        // LR = −2(95 ln 0.99 + 5 ln 0.01) + 2(95 ln 0.95 + 5 ln 0.05) = 8.2582, p = erfc(√(LR/2)) = 0.004057.
        let (lr, p) = kupiec(5, 100, 0.01);
        assert!((lr - 8.2582).abs() < 1e-3 && (p - 0.004057).abs() < 1e-5, "{lr} {p}");
        let (lr, p) = kupiec(1, 100, 0.01);
        assert!(lr.abs() < 1e-9 && (p - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_evicted_symbol_is_forgotten_even_when_its_slot_is_reused_unseen() {
        let config = VarConfig { limit: 1e9, min_history: 10, paths: 100, interval_ms: 1_000, ..VarConfig::default() };
        let board = board_with("OLD");
        let mut est = VarEstimator::new(config, 1.0, 4);
        feed(&mut est, &board, 50, 2e-4, 1);
        assert_eq!(est.report().iter().map(|r| r.symbol.as_str()).collect::<Vec<_>>(), ["OLD"]);
        board.retire(0);
        est.sample(&board);
        assert!(est.report().is_empty(), "{:?}", est.report());
        assert_eq!((board.scale(0), board.var(0).is_nan()), (1.0, true));
        // Evicted and reused before the estimator looked: only the new symbol is tracked, afresh.
        board.announce(0, Symbol::new("MID").unwrap());
        feed(&mut est, &board, 50, 2e-4, 2);
        board.retire(0);
        board.announce(0, Symbol::new("NEW").unwrap());
        est.sample(&board);
        let r = est.report();
        assert_eq!(r.iter().map(|r| r.symbol.as_str()).collect::<Vec<_>>(), ["NEW"]);
        assert!(r[0].var_per_unit.is_nan(), "{r:?}");
    }

    #[test]
    fn contradictory_settings_are_listed() {
        let bad = VarConfig { confidence: 1.0, horizon_ms: 1_500, paths: 10, ..VarConfig::default() };
        use crate::problem::Kind::*;
        let p = bad.problems();
        assert!(p.has("risk.var.confidence", OutOfRange), "{p:?}");
        assert!(p.has("risk.var.horizon_ms", Conflict) && p.has("risk.var.paths", OutOfRange), "{p:?}");
        assert!(VarConfig::default().problems().is_empty());
    }
}
