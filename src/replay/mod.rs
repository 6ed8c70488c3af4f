//! `quantd replay`: recorded ticks through the serving engine's code, then a backtest.
//!
//! Runs on the caller's thread. Each model gets a [`SyncEngine`] — the engine worker itself,
//! driven one batch at a time (same features, session, policy and risk gate as `serve`) — and a
//! [`VarEstimator`] driven by exchange time instead of the wall clock (a sample every
//! `risk.var.sample_ms` of recorded time; batches never straddle a sample), so the same input
//! gives byte-identical signals. Each tick's engine time is measured for the latency-aware
//! backtest but never feeds a decision; with `--latency-from` the backtest charges latencies drawn
//! from a live run's end-to-end distribution instead ([`latency::LatencyProfile`]).
//!
//! Outputs ([`output`]), written to a staging directory renamed into place only when complete:
//! `signals-<model>.csv` per model, `summary.json`, and `equity.png` (equity and drawdown, every
//! model, zero and realistic latency); and the summary table on stdout.

pub mod latency;
mod output;
mod plot;

pub use output::{print_table, write_signals};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backtest::{self, CostModel, Metrics, Quote, SignalPoint, SymbolSeries};
use crate::config::Config;
use crate::engine::{ActiveModel, EngineConfig, Reply, SyncEngine};
use crate::model::LoadedModel;
use crate::model::manifest::ModelError;
use crate::problem::{Kind as ProblemKind, Problem};
use crate::risk::VarEstimator;
use crate::telemetry::SymbolVarReport;
use crate::telemetry::Telemetry;
use crate::tick::{Kind, Reject, Tick};
use crate::tickfile::{self, TickFileError};

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The tick files could not be read.
    #[error(transparent)]
    Ticks(#[from] TickFileError),
    /// A model was refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The replay's settings are invalid.
    #[error("invalid settings:\n  - {}", crate::problem::bullet_list(.0))]
    Settings(Vec<Problem>),
    /// An output file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output directory exists already.
    #[error("{0} already exists; choose another --out or remove it (nothing was written)")]
    OutExists(PathBuf),
    /// The tick files hold no tick.
    #[error("no ticks in the given files")]
    NoTicks,
    /// A chart could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// The latency profile could not be read.
    #[error(transparent)]
    Latency(#[from] latency::ProfileError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io { path: path.to_owned(), source }
}

/// What to replay and how to score it.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Recorded tick files (captures or a journal).
    pub ticks: Vec<PathBuf>,
    /// Model version directories (each verified as the server would).
    pub models: Vec<PathBuf>,
    /// Output directory (must not exist); None: print the summary only.
    pub out: Option<PathBuf>,
    /// Engine, policy override and risk settings.
    pub config: Config,
    /// Fees and latencies; its `unit_qty` is taken from `config.risk.unit_qty`, so the backtest
    /// and the risk limits count positions in the same units.
    pub cost: CostModel,
    /// Ticks per engine batch (1: each tick's engine time is its own).
    pub batch: usize,
    /// Backtest metrics cover only the part of the data after this fraction of its time span
    /// (the features still warm up on everything before).
    pub eval_from: f64,
    /// Show a progress bar.
    pub progress: bool,
    /// Charge each signal a latency drawn from this live run's end-to-end distribution instead of
    /// the replay's own engine time (feed and order latency are still added).
    pub latency_from: Option<PathBuf>,
}

/// Per model: the signals, the backtest at zero and at realistic latency, and the risk figures.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    /// The model's `name@version`.
    pub label: String,
    /// Its version directory.
    pub dir: PathBuf,
    /// How it was quantized (the manifest's method).
    pub quantization: String,
    /// The backtest with no latency.
    pub zero_latency: Metrics,
    /// The backtest with the latency charged.
    pub with_latency: Metrics,
    /// Engine time per tick in this replay, ns.
    pub engine_ns_p50: u64,
    /// 99th percentile of engine time per tick, ns.
    pub engine_ns_p99: u64,
    /// Ticks the engine processed per second in this replay.
    pub ticks_per_second: f64,
    /// Refused ticks, by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Signals a risk limit bound, by limit.
    pub risk_bindings: BTreeMap<&'static str, u64>,
    /// The VaR figures per symbol.
    pub var: Vec<SymbolVarReport>,
    /// The engine's replies, one per tick, in order (what `serve` would have sent).
    #[serde(skip)]
    pub signals: Vec<Reply>,
}

/// What `quantd replay` computed over the ticks, per model.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    /// Ticks replayed.
    pub ticks: usize,
    /// The symbols.
    pub symbols: Vec<String>,
    /// Exchange time from which the backtest counts, ns.
    pub eval_from_ns: i64,
    /// The cost model charged.
    pub cost: CostModel,
    /// The live run whose end-to-end latencies were charged (None: the replay's engine time).
    pub latency_from: Option<PathBuf>,
    /// Per model.
    pub models: Vec<ModelReport>,
    /// (model a, model b, share of ticks on the same side).
    pub agreement: Vec<(String, String, f64)>,
}

/// Replays `opts.ticks` through every model and scores the signals. Writes the outputs when
/// `opts.out` is set.
pub fn run(opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let mut problems = opts.config.risk.problems();
    let max_batch = opts.config.engine.max_batch;
    problems.check(opts.batch == 0 || opts.batch > max_batch, "--batch", ProblemKind::OutOfRange, || {
        format!("--batch {} must be in 1..={max_batch} (engine.max_batch)", opts.batch)
    });
    problems.check(!(0.0..1.0).contains(&opts.eval_from), "--eval-from", ProblemKind::OutOfRange, || {
        format!("--eval-from {} must be in [0, 1)", opts.eval_from)
    });
    problems.check(opts.models.is_empty(), "--model", ProblemKind::Missing, || "give at least one --model".into());
    problems.into_result().map_err(ReplayError::Settings)?;
    if let Some(out) = &opts.out
        && out.exists()
    {
        return Err(ReplayError::OutExists(out.clone()));
    }
    // Verify every model before the (possibly long) replay starts.
    let load = opts.config.load_options().map_err(|e| match e {
        crate::config::ConfigError::Invalid(problems) => ReplayError::Settings(problems),
        other => ReplayError::Settings(vec![Problem::new("config", ProblemKind::Invalid, other.to_string())]),
    })?;
    let loaded = opts.models.iter().map(|dir| LoadedModel::load_with(dir, &load)).collect::<Result<Vec<_>, _>>()?;
    let ticks = tickfile::read_all(&opts.ticks)?;
    let (Some(first), Some(last)) = (ticks.first(), ticks.last()) else { return Err(ReplayError::NoTicks) };
    let eval_from_ns =
        first.exchange_ts_ns + ((last.exchange_ts_ns - first.exchange_ts_ns) as f64 * opts.eval_from) as i64;
    let quotes = quotes_by_symbol(&ticks);
    let profile = opts.latency_from.as_deref().map(|p| latency::LatencyProfile::from_load_report(p, 7)).transpose()?;
    let mut models = Vec::new();
    for m in loaded {
        // Every model draws the same latencies (same seed), so their rows stay comparable.
        models.push(replay_model(opts, m, &ticks, &quotes, eval_from_ns, profile.clone()));
    }
    let mut agreement = Vec::new();
    for (i, a) in models.iter().enumerate() {
        for b in &models[i + 1..] {
            let pa: Vec<f64> = a.signals.iter().map(|s| s.target_position).collect();
            let pb: Vec<f64> = b.signals.iter().map(|s| s.target_position).collect();
            agreement.push((a.label.clone(), b.label.clone(), backtest::side_agreement(&pa, &pb)));
        }
    }
    let report = ReplayReport {
        ticks: ticks.len(),
        symbols: quotes.keys().cloned().collect(),
        eval_from_ns,
        cost: cost(opts),
        latency_from: opts.latency_from.clone(),
        models,
        agreement,
    };
    if let Some(out) = &opts.out {
        output::write_outputs(out, &report)?;
    }
    Ok(report)
}

/// The cost model the backtest uses: the given one, in the risk layer's units.
fn cost(opts: &ReplayOptions) -> CostModel {
    CostModel { unit_qty: opts.config.risk.unit_qty, ..opts.cost.clone() }
}

fn quotes_by_symbol(ticks: &[Tick]) -> BTreeMap<String, Vec<Quote>> {
    let mut out: BTreeMap<String, Vec<Quote>> = BTreeMap::new();
    for t in ticks.iter().filter(|t| t.kind == Kind::Quote) {
        out.entry(t.symbol.as_str().to_owned()).or_default().push(Quote {
            ts_ns: t.exchange_ts_ns,
            bid: t.bid_px,
            ask: t.ask_px,
        });
    }
    out
}

fn replay_model(
    opts: &ReplayOptions,
    m: LoadedModel,
    ticks: &[Tick],
    quotes: &BTreeMap<String, Vec<Quote>>,
    eval_from_ns: i64,
    mut profile: Option<latency::LatencyProfile>,
) -> ModelReport {
    let label = m.manifest.label();
    let (dir, quantization) = (m.dir.clone(), m.manifest.quantization.method.clone());
    let active = ActiveModel::from_loaded(m, opts.config.policy);
    // Each --model is replayed on every tick: the config's routes (which name other models) do
    // not apply here; `quantd audit` re-runs a routed journal as live routed it.
    if !opts.config.routes.is_empty() {
        tracing::warn!(routes = opts.config.routes.len(), model = %label, "replay scores every tick with this model; the config's [[routes]] are not applied");
    }
    let config = EngineConfig { routes: Vec::new(), ..opts.config.engine_config() };
    let mut engine = SyncEngine::new(&config, Box::new(active), Telemetry::new());
    let board = engine.risk_board();
    let risk = &opts.config.risk;
    let mut var = VarEstimator::new(risk.var.clone(), risk.unit_qty, board.slots());
    let sample_ns = risk.var.sample_ms as i64 * 1_000_000;
    let mut next_sample = ticks[0].exchange_ts_ns + sample_ns;
    let bar = progress_bar(opts.progress, ticks.len(), &label);
    let mut replies: Vec<Reply> = Vec::with_capacity(ticks.len());
    let mut engine_ns: Vec<u64> = Vec::with_capacity(ticks.len());
    let started = Instant::now();
    let mut i = 0;
    while i < ticks.len() {
        // The VaR estimator samples (and re-estimates) on exchange time, between batches.
        while ticks[i].exchange_ts_ns >= next_sample {
            var.sample(&board);
            next_sample += sample_ns;
        }
        let mut end = i + 1;
        while end < ticks.len() && end - i < opts.batch && ticks[end].exchange_ts_ns < next_sample {
            end += 1;
        }
        let t = Instant::now();
        engine.run(&ticks[i..end], &mut replies);
        let per_tick = t.elapsed().as_nanos() as u64 / (end - i) as u64;
        engine_ns.extend(std::iter::repeat_n(per_tick, end - i));
        bar.inc((end - i) as u64);
        i = end;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let (mut rejects, mut bindings) = (BTreeMap::new(), BTreeMap::new());
    for r in &replies {
        if let Some(rej) = r.reject {
            *rejects.entry(rej.code()).or_insert(0) += 1;
        }
        for code in r.risk.codes() {
            *bindings.entry(code).or_insert(0) += 1;
        }
    }
    let mut sorted = engine_ns.clone();
    sorted.sort_unstable();
    let pct = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    let charged: Vec<u64> = match profile.as_mut() {
        Some(p) => engine_ns.iter().map(|_| p.sample()).collect(),
        None => engine_ns.clone(),
    };
    let (zero_latency, with_latency) = score(&replies, &charged, quotes, &cost(opts), eval_from_ns);
    ModelReport {
        label,
        dir,
        quantization,
        zero_latency,
        with_latency,
        engine_ns_p50: pct(0.5),
        engine_ns_p99: pct(0.99),
        ticks_per_second: ticks.len() as f64 / elapsed.max(1e-9),
        rejects,
        risk_bindings: bindings,
        var: var.report(),
        signals: replies,
    }
}

/// Backtests the signals at zero and at realistic latency, over the evaluation period.
fn score(
    signals: &[Reply],
    engine_ns: &[u64],
    quotes: &BTreeMap<String, Vec<Quote>>,
    cost: &CostModel,
    eval_from_ns: i64,
) -> (Metrics, Metrics) {
    let mut points: BTreeMap<&str, Vec<SignalPoint>> = BTreeMap::new();
    for (s, &ns) in signals.iter().zip(engine_ns) {
        // Ticks refused for malformed input leave the position as it was; every other signal
        // (scored, warming up, killed, model error) states the position to hold.
        let states_position = matches!(s.reject, None | Some(Reject::KillSwitch) | Some(Reject::ModelError));
        if !states_position || s.exchange_ts_ns < eval_from_ns {
            continue;
        }
        let scored = s.reject.is_none() && !s.warming_up;
        points.entry(s.symbol.as_str()).or_default().push(SignalPoint {
            ts_ns: s.exchange_ts_ns,
            position: s.target_position,
            score: scored.then_some(s.score),
            engine_ns: ns,
        });
    }
    let series: Vec<SymbolSeries> = points
        .iter()
        .filter_map(|(sym, sig)| {
            let q = quotes.get(*sym)?;
            let from = q.partition_point(|q| q.ts_ns < eval_from_ns);
            Some(SymbolSeries { quotes: &q[from..], signals: sig })
        })
        .collect();
    (backtest::evaluate(&series, cost, false), backtest::evaluate(&series, cost, true))
}

fn progress_bar(show: bool, n: usize, label: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ticks ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(label.to_owned());
    bar
}
