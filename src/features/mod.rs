//! Per-symbol online features, O(1) per tick, and the feature schema with its hash.
//!
//! Owned by the engine thread (one [`SymbolFeatures`] per symbol, never shared). The same code
//! runs in `quantd features`, which is how the training pipeline gets its inputs, so training
//! and serving compute identical numbers.
//!
//! Time-decayed quantities use the exchange timestamp: a state `x` decays as
//! `x * exp(-dt / tau)` between ticks, so bursts of ticks at the same instant are handled
//! exactly (no division by `dt`).

use sha2::{Digest, Sha256};

use crate::tick::{Kind, Tick};

/// One feature: its name and the parameters that define it. Changing either changes the hash.
#[derive(Clone, Copy, Debug)]
pub struct FeatureSpec {
    /// The feature's name, a column of the schema.
    pub name: &'static str,
    /// `(key, value)` of each parameter, taken from the constants the arithmetic uses (so a
    /// changed horizon changes the schema text and its hash).
    pub params: &'static [(&'static str, f64)],
    /// What it measures, in words.
    pub description: &'static str,
}

impl FeatureSpec {
    /// The parameters as the schema text writes them: `tau_s=30,clamp=10`.
    pub fn params_text(&self) -> String {
        self.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

const fn spec(name: &'static str, params: &'static [(&'static str, f64)], description: &'static str) -> FeatureSpec {
    FeatureSpec { name, params, description }
}

/// Version tag mixed into the schema hash; bump when the arithmetic of a feature changes.
pub const SCHEMA_VERSION: &str = "quantd-features/v1";

/// The ordered feature vector the engine feeds the model.
pub const SCHEMA: [FeatureSpec; NUM_FEATURES] = [
    spec("ret_bps", &[], "mid log-return since the symbol's previous tick, bps"),
    spec("ret_decay_100ms", &[("tau_s", TAU_100MS)], "time-decayed sum of mid log-returns, bps"),
    spec("ret_decay_1s", &[("tau_s", TAU_1S)], "time-decayed sum of mid log-returns, bps"),
    spec("ret_decay_10s", &[("tau_s", TAU_10S)], "time-decayed sum of mid log-returns, bps"),
    spec("vol_1s", &[("tau_s", TAU_1S)], "sqrt of the time-decayed sum of squared returns, bps"),
    spec("vol_30s", &[("tau_s", TAU_30S)], "sqrt of the time-decayed sum of squared returns, bps"),
    spec("spread_bps", &[], "(ask - bid) / mid, bps; 0 without a book"),
    spec("imbalance", &[], "(bid_qty - ask_qty) / (bid_qty + ask_qty), in [-1, 1]"),
    spec("microprice_bps", &[], "size-weighted microprice minus mid, bps"),
    spec("trade_flow_1s", &[("tau_s", TAU_1S)], "decayed signed aggressor volume / decayed volume, in [-1, 1]"),
    spec("trade_intensity_1s", &[("tau_s", TAU_1S)], "ln(1 + decayed trade count per second)"),
    spec("log_dt_tick_ms", &[("cap_ms", DT_CAP_MS)], "ln(1 + ms since the symbol's previous tick)"),
    spec("log_dt_trade_ms", &[("cap_ms", DT_CAP_MS)], "ln(1 + ms since the symbol's last trade); cap if none"),
    spec(
        "mid_zscore_30s",
        &[("tau_s", TAU_30S), ("clamp", Z_CLAMP)],
        "(mid - EWMA mean) / EWMA std, in bps terms, clamped",
    ),
];

/// Features per row.
pub const NUM_FEATURES: usize = 14;

/// FNV-1a over a feature row's bits: the journal's fingerprint of the row a signal was scored on
/// (the audit compares it bit for bit; 0 stands for no row).
pub fn row_hash(row: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in row {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

const TAU_100MS: f64 = 0.1;
const TAU_1S: f64 = 1.0;
const TAU_10S: f64 = 10.0;
const TAU_30S: f64 = 30.0;
const DT_CAP_MS: f64 = 3_600_000.0;
const Z_CLAMP: f64 = 10.0;
/// Variance floor for the z-score, bps²: below it the z-score is 0 rather than noise / 0.
const Z_VAR_FLOOR: f64 = 1e-6;

/// The canonical text of the schema; its sha256 is the schema hash.
pub fn schema_text() -> String {
    text_of(&SCHEMA)
}

/// The canonical text of any schema: the version line, then `name|params` per feature.
fn text_of(schema: &[FeatureSpec]) -> String {
    let mut s = String::from(SCHEMA_VERSION);
    s.push('\n');
    for f in schema {
        s.push_str(f.name);
        s.push('|');
        s.push_str(&f.params_text());
        s.push('\n');
    }
    s
}

/// Hex sha256 of [`schema_text`]. Every model manifest carries it; a mismatch refuses the model.
pub fn schema_hash() -> String {
    hash_of(&SCHEMA)
}

fn hash_of(schema: &[FeatureSpec]) -> String {
    hex::encode(Sha256::digest(text_of(schema).as_bytes()))
}

/// Feature names in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SCHEMA.iter().map(|f| f.name)
}

/// All per-symbol state, fixed size, updated in place.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct SymbolFeatures {
    ticks: u64,
    last_ts_ns: i64,
    last_trade_ts_ns: Option<i64>,
    /// Current mid: from the book once a quote was seen, else the last trade price.
    mid: f64,
    has_quote: bool,
    bid_px: f64,
    bid_qty: f64,
    ask_px: f64,
    ask_qty: f64,
    ret_100ms: f64,
    ret_1s: f64,
    ret_10s: f64,
    var_1s: f64,
    var_30s: f64,
    flow_signed: f64,
    flow_total: f64,
    trade_count: f64,
    z_mean: f64,
    z_var: f64,
}

impl Default for SymbolFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl SymbolFeatures {
    /// A symbol's state before its first tick.
    pub const fn new() -> Self {
        Self {
            ticks: 0,
            last_ts_ns: i64::MIN,
            last_trade_ts_ns: None,
            mid: 0.0,
            has_quote: false,
            bid_px: 0.0,
            bid_qty: 0.0,
            ask_px: 0.0,
            ask_qty: 0.0,
            ret_100ms: 0.0,
            ret_1s: 0.0,
            ret_10s: 0.0,
            var_1s: 0.0,
            var_30s: 0.0,
            flow_signed: 0.0,
            flow_total: 0.0,
            trade_count: 0.0,
            z_mean: 0.0,
            z_var: 0.0,
        }
    }

    /// Ticks folded into this state so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Exchange time of the last accepted tick (`i64::MIN` before the first).
    pub fn last_ts_ns(&self) -> i64 {
        self.last_ts_ns
    }

    /// Current mid price (0 before the first tick).
    pub fn mid(&self) -> f64 {
        self.mid
    }

    /// Whether every number of the state is finite (a state that is not would make every
    /// later feature row non-finite: the engine never commits one).
    pub fn is_finite(&self) -> bool {
        let values = [
            self.mid,
            self.bid_px,
            self.bid_qty,
            self.ask_px,
            self.ask_qty,
            self.ret_100ms,
            self.ret_1s,
            self.ret_10s,
            self.var_1s,
            self.var_30s,
            self.flow_signed,
            self.flow_total,
            self.trade_count,
            self.z_mean,
            self.z_var,
        ];
        values.iter().all(|v| v.is_finite())
    }

    /// Folds one tick in and writes the feature vector to `out`. The caller has checked that
    /// `tick.exchange_ts_ns >= self.last_ts_ns()`.
    pub fn update(&mut self, tick: &Tick, out: &mut [f32; NUM_FEATURES]) {
        let first = self.ticks == 0;
        let dt_ns = if first { 0 } else { (tick.exchange_ts_ns - self.last_ts_ns).max(0) };
        let dt_s = dt_ns as f64 * 1e-9;
        let d_100ms = (-dt_s / TAU_100MS).exp();
        let d_1s = (-dt_s / TAU_1S).exp();
        let d_10s = (-dt_s / TAU_10S).exp();
        let d_30s = (-dt_s / TAU_30S).exp();

        let prev_mid = self.mid;
        match tick.kind {
            Kind::Quote => {
                self.has_quote = true;
                self.bid_px = tick.bid_px;
                self.bid_qty = tick.bid_qty;
                self.ask_px = tick.ask_px;
                self.ask_qty = tick.ask_qty;
                self.mid = 0.5 * (tick.bid_px + tick.ask_px);
            }
            Kind::Trade => {
                if !self.has_quote {
                    self.mid = tick.trade_px;
                }
            }
        }
        let ret_bps = if first || prev_mid <= 0.0 { 0.0 } else { (self.mid / prev_mid).ln() * 1e4 };

        self.ret_100ms = self.ret_100ms * d_100ms + ret_bps;
        self.ret_1s = self.ret_1s * d_1s + ret_bps;
        self.ret_10s = self.ret_10s * d_10s + ret_bps;
        self.var_1s = self.var_1s * d_1s + ret_bps * ret_bps;
        self.var_30s = self.var_30s * d_30s + ret_bps * ret_bps;

        // Time since the previous trade, before this tick (if a trade) becomes the last one.
        let dt_trade_ms = match self.last_trade_ts_ns {
            Some(ts) => ((tick.exchange_ts_ns - ts) as f64 * 1e-6).clamp(0.0, DT_CAP_MS),
            None => DT_CAP_MS,
        };
        self.flow_signed *= d_1s;
        self.flow_total *= d_1s;
        self.trade_count *= d_1s;
        if tick.kind == Kind::Trade {
            self.flow_signed += tick.aggressor.sign() * tick.trade_qty;
            self.flow_total += tick.trade_qty;
            self.trade_count += 1.0;
            self.last_trade_ts_ns = Some(tick.exchange_ts_ns);
        }

        // EWMA mean / variance of the mid in bps of the mean, time-weighted (alpha = 1 - decay).
        if first {
            self.z_mean = self.mid;
            self.z_var = 0.0;
        } else {
            let alpha = 1.0 - d_30s;
            let dev_bps = (self.mid - self.z_mean) / self.z_mean * 1e4;
            self.z_mean += alpha * (self.mid - self.z_mean);
            self.z_var = (1.0 - alpha) * (self.z_var + alpha * dev_bps * dev_bps);
        }
        let z_dev_bps = (self.mid - self.z_mean) / self.z_mean * 1e4;
        let z = if self.z_var > Z_VAR_FLOOR { (z_dev_bps / self.z_var.sqrt()).clamp(-Z_CLAMP, Z_CLAMP) } else { 0.0 };

        let (spread_bps, imbalance, micro_bps) = if self.has_quote {
            let depth = self.bid_qty + self.ask_qty;
            let micro = (self.bid_px * self.ask_qty + self.ask_px * self.bid_qty) / depth;
            (
                (self.ask_px - self.bid_px) / self.mid * 1e4,
                (self.bid_qty - self.ask_qty) / depth,
                (micro - self.mid) / self.mid * 1e4,
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        let flow = if self.flow_total > 0.0 { self.flow_signed / self.flow_total } else { 0.0 };
        let intensity = (1.0 + self.trade_count / TAU_1S).ln();
        let dt_tick_ms = if first { DT_CAP_MS } else { (dt_ns as f64 * 1e-6).min(DT_CAP_MS) };

        *out = [
            ret_bps as f32,
            self.ret_100ms as f32,
            self.ret_1s as f32,
            self.ret_10s as f32,
            self.var_1s.sqrt() as f32,
            self.var_30s.sqrt() as f32,
            spread_bps as f32,
            imbalance as f32,
            micro_bps as f32,
            flow as f32,
            intensity as f32,
            dt_tick_ms.ln_1p() as f32,
            dt_trade_ms.ln_1p() as f32,
            z as f32,
        ];
        self.ticks += 1;
        self.last_ts_ns = tick.exchange_ts_ns;
    }
}

#[cfg(test)]
mod tests;
