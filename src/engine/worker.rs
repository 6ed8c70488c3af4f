//! The engine loop, on the `quantd-engine` thread.
//!
//! Each turn it takes whatever is queued (up to `max_batch`; it never waits for a batch to
//! fill), runs the stateful checks and feature updates tick by tick, routes each accepted tick
//! ([`crate::routes`]), scores the ticks of each live model in one call per model, applies each
//! route's policy and risk to the route's own position in arrival order, and posts each reply to
//! its stream. Per-symbol features are computed once, whatever model reads them. All buffers are
//! sized at start-up: after warm-up the loop makes no heap allocation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::Parker;

use super::buffers::Buffers;
use super::idle::{IdleStrategy, Idler};
use super::infer::{InferError, InferJob, ModelCard, Served, ServedModel};
use super::{Ack, Applied, Control, Engine, EngineHandle, Reply, Shared, WorkItem};
use crate::control_thread::ControlThread;
use crate::features::{NUM_FEATURES, SymbolFeatures};
use crate::model::{LoadedModel, Scorer};
use crate::plausibility::{Admitted, JumpGuard, TickChecks};
use crate::policy::{PolicyParams, Position};
use crate::problem::Kind;
use crate::risk::{External, RiskBoard, RiskConfig, RiskGate, RiskInput, SymbolRisk};
use crate::routes::{BOOKS_PER_SYMBOL, BY_SYMBOL, MAX_MODELS, MAX_ROUTES, RouteId, RouteSpec, Routes};
use crate::symbols::SymbolTable;
use crate::telemetry::{ModelTelemetry, Outcome, Recorder, Series, SymbolEvent, Telemetry};
use crate::tick::{Reject, Symbol, Tick};

/// Engine settings (from the server config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Engine queue capacity, ticks.
    pub queue_capacity: usize,
    /// Most ticks scored in one model call.
    pub max_batch: usize,
    /// Distinct symbols the engine tracks.
    pub max_symbols: usize,
    /// Feature rows kept per symbol, for models that read a window of them.
    pub max_window: usize,
    /// Core to pin the engine thread to, if any.
    pub core: Option<usize>,
    /// What the thread does while its queue is empty.
    pub idle: IdleStrategy,
    /// How long it spins before yielding.
    pub idle_spin: Duration,
    /// How long it yields before parking.
    pub idle_yield: Duration,
    /// Signal time-to-live: a tick that waited longer before the engine took it is answered
    /// `expired` (its features are still updated).
    pub ttl: Option<Duration>,
    /// The risk layer applied after the policy.
    pub risk: RiskConfig,
    /// The per-symbol plausibility checks (`[ticks]`).
    pub ticks: TickChecks,
    /// Evict a symbol not seen for this long (server receive time; None: never). Replay has no
    /// server clock and never evicts.
    pub symbol_idle: Option<Duration>,
    /// The config's routes (`[[routes]]`, validated); each names a model that must be live
    /// before a tick takes the route.
    pub routes: Vec<RouteSpec>,
}

/// Everything the engine needs to score: the session and how to read its output.
pub struct ActiveModel {
    /// The model's scorer (native INT8 kernel or ONNX Runtime session).
    pub scorer: Scorer,
    /// `name@version`, carried by every signal it produces.
    pub label: Arc<str>,
    /// The policy that turns its scores into target positions.
    pub policy: PolicyParams,
    /// Written by the engine, watched by the control thread (automatic rollback).
    pub health: Arc<ModelHealth>,
    /// The training range of each feature (manifest), for the risk layer's kill switch.
    pub feature_ranges: Option<Vec<(f32, f32)>>,
    /// What callers of the inference protocol see of it (published while it is served).
    pub card: Arc<ModelCard>,
    /// The output's neutral point (manifest `io.output_kind`: 0.5 for a probability, else 0):
    /// the policy sizes `score - output_center`.
    pub output_center: f64,
    /// While it runs in shadow: its agreement with the active version of its name (written by
    /// the engine, read by the registry).
    pub shadow_stats: Arc<ShadowStats>,
    /// Set by the engine when it hands the model back unused, a swap it refused: the kind of
    /// problem and why. The engine serves what it served before, and the registry, which
    /// counted on the swap, puts its books back.
    pub refused: Option<(Kind, &'static str)>,
}

impl ActiveModel {
    /// An active model from a scorer, its label and policy, with no training ranges.
    pub fn new(scorer: Scorer, label: &str, policy: PolicyParams) -> Self {
        let card = Arc::new(ModelCard::new(label, "features", "score", scorer.window()));
        let health = Arc::default();
        let shadow_stats = Arc::default();
        Self {
            scorer,
            label: Arc::from(label),
            policy,
            health,
            feature_ranges: None,
            card,
            output_center: 0.0,
            shadow_stats,
            refused: None,
        }
    }

    /// Names the graph's input and output on its [`ModelCard`] (the manifest's `[io]`).
    pub fn with_io_names(mut self, input: &str, output: &str) -> Self {
        self.card = Arc::new(ModelCard { input: input.into(), output: output.into(), ..(*self.card).clone() });
        self
    }

    /// Sets the training ranges the risk layer checks feature rows against.
    pub fn with_feature_ranges(mut self, ranges: Option<Vec<(f32, f32)>>) -> Self {
        self.feature_ranges = ranges;
        self
    }

    /// A verified model as the engine runs it: its manifest's policy (or `policy_override`)
    /// and training ranges. The one way `serve`, `replay` and `audit` make an active model.
    pub fn from_loaded(m: LoadedModel, policy_override: Option<PolicyParams>) -> Self {
        let policy = policy_override.unwrap_or(m.manifest.policy);
        let center = m.manifest.io.output_kind.center();
        Self { output_center: center, ..Self::new(m.scorer, &m.manifest.label(), policy) }
            .with_feature_ranges(m.manifest.features.ranges())
            .with_io_names(&m.manifest.io.input, &m.manifest.io.output)
    }
}

/// How a model has behaved since it went live: rows scored, non-finite scores, failed calls.
#[derive(Default, Debug)]
pub struct ModelHealth {
    /// Rows scored.
    pub scored: AtomicU64,
    /// Scores that were NaN or infinite.
    pub non_finite: AtomicU64,
    /// Model calls that failed.
    pub failed_calls: AtomicU64,
}

/// Agreement between the shadow model and the active one on the same rows.
#[derive(Default, Debug)]
pub struct ShadowStats {
    /// Ticks the shadow model scored beside the active one.
    pub compared: AtomicU64,
    /// Of those, where the two took the same side.
    pub agreed: AtomicU64,
    /// Sum of |shadow - active| scores, in millionths of a score unit.
    pub abs_diff_micro: AtomicU64,
}

impl ShadowStats {
    /// Zeroes the counters (a new shadow starts).
    pub fn reset(&self) {
        self.compared.store(0, Ordering::Relaxed);
        self.agreed.store(0, Ordering::Relaxed);
        self.abs_diff_micro.store(0, Ordering::Relaxed);
    }

    /// (compared, agreed, agreement ratio, mean |diff|).
    pub fn snapshot(&self) -> (u64, u64, f64, f64) {
        let c = self.compared.load(Ordering::Relaxed);
        let a = self.agreed.load(Ordering::Relaxed);
        let d = self.abs_diff_micro.load(Ordering::Relaxed) as f64 * 1e-6;
        if c == 0 { (0, 0, 0.0, 0.0) } else { (c, a, a as f64 / c as f64, d / c as f64) }
    }
}

/// A recent batch of feature rows, shared so the control thread can warm up a new model on
/// real inputs. The engine only ever `try_lock`s it (never waits) and copies into the
/// preallocated buffer.
pub struct RecentRows {
    /// The rows, `n` of them, row-major.
    pub rows: Vec<f32>,
    /// How many rows are held.
    pub n: usize,
}

impl RecentRows {
    /// The recent rows, `n * NUM_FEATURES` floats (empty before the first batch).
    pub fn rows(&self) -> &[f32] {
        &self.rows[..self.n * NUM_FEATURES]
    }
}

/// Sign with a dead zone at exactly zero, for shadow agreement.
fn side(x: f32) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// One route's position on one symbol: the policy's state and the risk layer's.
#[derive(Clone)]
struct Book {
    /// The route it belongs to ([`BY_SYMBOL`]: free).
    route: RouteId,
    /// The policy's state (before the risk layer).
    position: Position,
    risk: SymbolRisk,
}

impl Book {
    const FREE: Self = Self { route: BY_SYMBOL, position: Position(0.0), risk: SymbolRisk::NEW };
}

struct SymbolState {
    features: SymbolFeatures,
    /// Feature rows written to this symbol's ring in the window slab.
    rows_written: u64,
    /// The route its ticks take when their stream names no model, as of route table version
    /// `route_version` (looked up again when the table changed).
    route: RouteId,
    route_version: u64,
    /// Its positions, one per route that has scored it (room for [`BOOKS_PER_SYMBOL`]).
    books: [Book; BOOKS_PER_SYMBOL],
    /// The admin kill switch holds this symbol (every route's position on it).
    admin_killed: bool,
    /// The engine pass in which this symbol's newest tick was chosen for scoring (conflation).
    scored_in_pass: u64,
    /// Refused price jumps, to tell bad prints from a new price level.
    jump: JumpGuard,
}

impl SymbolState {
    fn new((route, route_version): (RouteId, u64)) -> Self {
        Self {
            features: SymbolFeatures::new(),
            rows_written: 0,
            route,
            route_version,
            books: [Book::FREE; BOOKS_PER_SYMBOL],
            admin_killed: false,
            scored_in_pass: 0,
            jump: JumpGuard::default(),
        }
    }

    /// A fresh state that keeps only its route and the admin kill switch (a reset never lifts a
    /// kill).
    fn reset(&mut self) {
        let admin_killed = self.admin_killed;
        *self = Self::new((self.route, self.route_version));
        self.admin_killed = admin_killed;
    }

    /// The index of `route`'s book, claimed now if the route has none yet (None: every book is
    /// another route's).
    fn book(&mut self, route: RouteId) -> Option<usize> {
        let i = self
            .books
            .iter()
            .position(|b| b.route == route)
            .or_else(|| self.books.iter().position(|b| b.route == BY_SYMBOL))?;
        if self.books[i].route == BY_SYMBOL {
            self.books[i].route = route;
            self.books[i].risk.admin_killed = self.admin_killed;
        }
        Some(i)
    }

    /// Engages or releases the admin kill switch on every route's position.
    fn set_admin_kill(&mut self, engaged: bool) {
        self.admin_killed = engaged;
        for b in &mut self.books {
            b.risk.admin_killed = engaged;
        }
    }
}

/// A live model name: its active version, the shadow beside it, the training ranges the risk
/// gate checks its rows against (widened), and the route of streams that name it.
struct ModelSlot {
    active: Box<ActiveModel>,
    shadow: Option<Box<ActiveModel>>,
    ranges: Option<Vec<(f32, f32)>>,
    stream_route: RouteId,
}

/// A route whose model is not live ([`Worker::route_model`]).
const NOT_LIVE: u8 = u8::MAX;

/// What happens to each tick of a batch (scratch, reused every batch).
#[derive(Clone, Copy)]
enum Step {
    Rejected(Reject),
    /// Features updated, but it waited past the time-to-live: answered `expired`.
    Expired,
    /// Features updated; a newer tick of the same symbol in this pass is scored instead.
    Conflated {
        slot: usize,
        book: u8,
    },
    /// Scored by model slot `model` as row `row` of the batch's scores, for the route that
    /// owns book `book` of the symbol; `warm` once past the route's warm-up.
    Scored {
        slot: usize,
        row: usize,
        warm: bool,
        model: u8,
        book: u8,
    },
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    recorder: Recorder,
    /// The live model names, the default's first (room for [`MAX_MODELS`], reserved).
    models: Vec<ModelSlot>,
    /// Whether each live model's call failed in this pass.
    failed: [bool; MAX_MODELS],
    /// Each model slot's telemetry and latency recorder (all [`MAX_MODELS`] registered at
    /// build; a slot is named when its model goes live).
    model_telemetry: Vec<(Arc<ModelTelemetry>, Recorder)>,
    routes: Routes,
    /// Bumped by every route change (symbols look their route up again).
    routes_version: u64,
    /// By route id: the slot of the model that scores it ([`NOT_LIVE`]: none yet).
    route_model: [u8; MAX_ROUTES],
    symbols: SymbolTable<SymbolState>,
    batch: Vec<WorkItem>,
    steps: Vec<Step>,
    /// Model inputs by batch position, the compacted rows to score, each symbol's window ring.
    buffers: Buffers,
    /// Each tick's mid right after its own feature update (the risk layer's price; later ticks
    /// of the same symbol in the batch must not leak into it).
    mids: Vec<f64>,
    /// Each tick's symbol's previous accepted exchange time (`i64::MIN`: none), for staleness:
    /// every accepted tick counts, scored, expired or conflated.
    prev_ts: Vec<i64>,
    /// By batch position: answered already (ticks are answered as soon as their model has
    /// scored and every earlier tick of their stream is answered; recovery after a panic
    /// answers the rest).
    answered: Vec<bool>,
    /// Which live models have scored in this pass.
    scored: [bool; MAX_MODELS],
    /// Each live model's recent call time (ns, a moving average): cheaper models score first.
    cost_ns: [u64; MAX_MODELS],
    /// Scratch of [`Worker::answer_ready`]: the streams (reply queue addresses) with a tick
    /// still waiting, and the last tick answered per stream in this walk (to wake it once).
    waiting: Vec<usize>,
    to_wake: Vec<usize>,
    pass: u64,
    ttl: Option<Duration>,
    scores: Vec<f32>,
    max_batch: usize,
    risk: RiskGate,
    checks: TickChecks,
    /// `engine.symbol_idle_ms` in ns (0: never evict).
    symbol_idle_ns: i64,
    /// The newest server receive time seen (CLOCK_REALTIME ns; 0 in replay): the clock of
    /// symbol eviction.
    clock_ns: i64,
    /// `clock_ns` at which the next eviction sweep is due.
    next_sweep_ns: i64,
    /// The feature row of the tick being admitted (scratch).
    row: [f32; NUM_FEATURES],
    /// What the live engine took from outside the tick stream for each tick of the batch, as
    /// the journal recorded it (`quantd audit` only; empty live).
    recorded: Vec<Recorded>,
    /// The inference-protocol job being scored, one model call per pass.
    infer: Option<InferJob>,
}

/// One tick's inputs from outside the tick stream, as the journal recorded them: the risk
/// gate's external inputs, and whether the tick had waited past its time-to-live. The audit
/// hands them to [`super::SyncEngine::run_recorded`] so that a re-run decides as live did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recorded {
    /// The risk gate's external inputs (VaR scale, admin kill).
    pub external: External,
    /// The tick had waited past its time-to-live.
    pub expired: bool,
}

/// Builds the engine's state (queues, symbol table, buffers, risk gate) without a thread.
pub(super) fn build(config: &EngineConfig, model: Box<ActiveModel>, telemetry: Arc<Telemetry>) -> (Worker, Parker) {
    let parker = Parker::new();
    let max_batch = config.max_batch.min(model.scorer.max_batch()).max(1);
    let board = Arc::new(RiskBoard::new(config.max_symbols));
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(config.queue_capacity.max(1)),
        control: ArrayQueue::new(8),
        retired: ArrayQueue::new(16),
        recent: Mutex::new(RecentRows { rows: vec![0.0; max_batch * NUM_FEATURES], n: 0 }),
        accepting: AtomicBool::new(true),
        sleeping: AtomicBool::new(false),
        hooks: Default::default(),
        restarts: AtomicU64::new(0),
        passes: AtomicU64::new(0),
        unparker: parker.unparker().clone(),
        risk_board: board.clone(),
        infer: ArrayQueue::new(super::infer::INFER_QUEUE),
        infer_values: Default::default(),
        served: Served::default(),
    });
    // The first model's window always fits (a swap to a wider one is refused in `apply`).
    let max_window = config.max_window.max(model.scorer.window()).max(1);
    let risk = RiskGate::new(config.risk.clone(), board);
    let routes = Routes::new(&model.card.name, &config.routes);
    let model_telemetry = (0..MAX_MODELS)
        .map(|_| {
            let slot = telemetry.model_slot();
            let series = [Series::Inference, Series::BatchSize, Series::Engine];
            (slot.clone(), telemetry.latency.recorder_for(&series, Some(slot)))
        })
        .collect();
    let mut worker = Worker {
        shared,
        stop: Arc::new(AtomicBool::new(false)),
        recorder: telemetry.latency.recorder(&[
            Series::QueueWait,
            Series::Features,
            Series::Inference,
            Series::Policy,
            Series::BatchSize,
        ]),
        telemetry,
        models: Vec::with_capacity(MAX_MODELS),
        failed: [false; MAX_MODELS],
        model_telemetry,
        routes,
        routes_version: 0,
        route_model: [NOT_LIVE; MAX_ROUTES],
        buffers: Buffers::new(max_batch, config.max_symbols, max_window),
        mids: vec![f64::NAN; max_batch],
        prev_ts: vec![i64::MIN; max_batch],
        answered: Vec::with_capacity(max_batch),
        scored: [false; MAX_MODELS],
        cost_ns: [0; MAX_MODELS],
        waiting: Vec::with_capacity(max_batch),
        to_wake: Vec::with_capacity(max_batch),
        pass: 0,
        ttl: config.ttl,
        symbols: SymbolTable::new(config.max_symbols, config.max_symbols),
        batch: Vec::with_capacity(max_batch),
        steps: Vec::with_capacity(max_batch),
        scores: vec![0.0; max_batch],
        max_batch,
        risk,
        checks: config.ticks.clone(),
        symbol_idle_ns: config.symbol_idle.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64),
        clock_ns: 0,
        next_sweep_ns: 0,
        row: [0.0; NUM_FEATURES],
        recorded: Vec::new(),
        infer: None,
    };
    worker.go_live(model);
    (worker, parker)
}

/// Starts the engine thread with its model, after rebuilding per-symbol state from `warm`
/// (ticks with their server receive times, oldest first; see [`Worker::warm`]). The thread is
/// pinned to `config.core` if given; a refused pin is logged and the engine runs unpinned.
pub fn spawn(
    config: &EngineConfig,
    model: Box<ActiveModel>,
    telemetry: Arc<Telemetry>,
    warm: &[(Tick, u64)],
) -> std::io::Result<Engine> {
    spawn_models(config, model, Vec::new(), telemetry, warm)
}

/// [`spawn`] with more model names live from the start beside the default `model` (the models
/// the config's routes name; see [`crate::routes`]).
pub fn spawn_models(
    config: &EngineConfig,
    model: Box<ActiveModel>,
    more: Vec<Box<ActiveModel>>,
    telemetry: Arc<Telemetry>,
    warm: &[(Tick, u64)],
) -> std::io::Result<Engine> {
    let (mut worker, parker) = build(config, model, telemetry);
    for m in more {
        worker.apply(Control::Swap { model: m, done: None });
    }
    worker.warm(warm);
    let (shared, stop) = (worker.shared.clone(), worker.stop.clone());
    let mut idler = Idler::new(config.idle, config.idle_spin, config.idle_yield);
    let core = config.core;
    let asked = shared.clone();
    let thread = ControlThread::spawn_with(
        "quantd-engine",
        move || {
            if let Some(core) = core {
                pin(core);
            }
            worker.run(&parker, &mut idler);
        },
        // Stop taking new ticks, drain the queue (answering every queued tick), exit. New ticks
        // are refused before the stop flag is set, so none is queued after the last pass.
        move |_| {
            asked.stop_accepting();
            stop.store(true, Ordering::Release);
            asked.unparker.unpark();
        },
    )?;
    Ok(Engine { handle: EngineHandle { shared }, thread })
}

fn pin(core: usize) {
    match core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core)) {
        Some(id) if core_affinity::set_for_current(id) => {
            tracing::info!(core, "engine thread pinned")
        }
        Some(_) => tracing::warn!(core, "pinning the engine thread was refused; running unpinned"),
        None => tracing::warn!(core, "core not available to this process (cpuset?); engine runs unpinned"),
    }
}

impl Worker {
    fn run(&mut self, parker: &Parker, idler: &mut Idler) {
        tracing::info!(model = %self.models[0].active.label, max_batch = self.max_batch, "engine started");
        let mut idle_turns = 0u32;
        let mut slept = false;
        loop {
            while self.batch.len() < self.max_batch && !self.shared.hooks.paused() {
                match self.shared.queue.pop() {
                    Some(item) => self.batch.push(item),
                    None => break,
                }
            }
            // Control messages after the batch is taken: a tick queued after a control message
            // (a kill switch, a swap) was queued is always processed under it.
            while let Some(c) = self.shared.control.pop() {
                self.apply(c);
            }
            let inferred = !self.shared.hooks.paused() && self.infer_step();
            if self.batch.is_empty() {
                // Inference jobs are served to the end too: a stopping engine refuses new ones.
                if inferred {
                    idler.reset();
                    self.shared.passes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                // An idle engine's clock is the wall clock (streams are quiet, not time): read
                // after each sleep and every 1024 spins, not on every spin (a batch moves it).
                idle_turns = idle_turns.wrapping_add(1);
                if self.symbol_idle_ns > 0 && self.clock_ns > 0 && (slept || idle_turns.is_multiple_of(1024)) {
                    self.clock_ns = self.clock_ns.max(crate::clock::realtime_ns() as i64);
                    self.sweep_if_due();
                }
                slept = false;
                let shared = &self.shared;
                if shared.queue.is_empty() {
                    shared.passes.fetch_add(1, Ordering::Relaxed);
                }
                idler.idle(parker, |p| {
                    slept = true;
                    shared.sleeping.store(true, Ordering::SeqCst);
                    if shared.queue.is_empty() && shared.infer.is_empty() {
                        p.park_timeout(Duration::from_millis(100));
                    }
                    shared.sleeping.store(false, Ordering::SeqCst);
                });
                continue;
            }
            idler.reset();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process_batch())).is_err() {
                self.recover();
            }
            self.shared.passes.fetch_add(1, Ordering::Relaxed);
            self.recorder.publish_if_requested();
            for (_, recorder) in &mut self.model_telemetry[..self.models.len()] {
                recorder.publish_if_requested();
            }
        }
        tracing::info!("engine drained and stopped");
    }

    /// Between two batches: swap a model name's active version (a name not live yet goes live
    /// beside the others), change a shadow, or apply an admin call. Replaced models go back to
    /// the control path to be dropped there.
    pub(super) fn apply(&mut self, c: Control) {
        match c {
            Control::Swap { model: new, .. } if new.scorer.window() > self.buffers.max_window() => {
                tracing::error!(model = %new.label, window = new.scorer.window(), max_window = self.buffers.max_window(), "model window exceeds engine.max_window; not switched");
                self.refuse(new, Kind::IoMismatch, "its window exceeds engine.max_window");
            }
            Control::Swap { model: new, .. } if new.scorer.max_batch() < self.max_batch => {
                tracing::error!(model = %new.label, max_batch = new.scorer.max_batch(), engine = self.max_batch, "model takes smaller batches than the engine; not switched");
                self.refuse(new, Kind::IoMismatch, "it takes smaller batches than engine.max_batch");
            }
            Control::Swap { model: new, done } => match self.model_slot(&new.card.name) {
                Some(m) => {
                    tracing::info!(from = %self.models[m].active.label, to = %new.label, "engine switched model");
                    self.models[m].ranges = self.risk.widen(new.feature_ranges.as_deref());
                    let old = std::mem::replace(&mut self.models[m].active, new);
                    self.publish_served();
                    self.retire(old);
                    ack(done, self.applied_now());
                }
                None if self.models.len() < MAX_MODELS => {
                    tracing::info!(model = %new.label, live = self.models.len() + 1, "model name goes live beside the others");
                    if self.go_live(new) {
                        ack(done, self.applied_now());
                    }
                }
                None => {
                    tracing::error!(model = %new.label, max = MAX_MODELS, "as many model names are live as the engine holds; not added");
                    self.refuse(new, Kind::OutOfRange, "as many model names are live as the engine holds");
                }
            },
            Control::SetRoute { spec, done } => match self.routes.set(&spec) {
                Ok(id) => {
                    tracing::info!(route = id, name = ?spec.name, model = %spec.model, symbols = ?spec.symbols, "route set");
                    self.routes_version += 1;
                    self.resolve_routes();
                    self.publish_served();
                    ack(done, self.applied_now());
                }
                // Dropping `done` tells a waiting caller it was not applied.
                Err(e) => tracing::error!(error = %e, "route not set"),
            },
            Control::Kill { symbol: None, engaged, done } => {
                tracing::warn!(engaged, "kill switch (all symbols)");
                self.risk.set_global_kill(engaged);
                ack(done, self.applied_now());
            }
            Control::Kill { symbol: Some(symbol), engaged, done } => {
                let applied = match self.symbols.find(&symbol) {
                    Some(slot) => {
                        tracing::warn!(%symbol, engaged, "kill switch");
                        self.symbols.at(slot).set_admin_kill(engaged);
                        self.applied_now()
                    }
                    None => {
                        tracing::warn!(%symbol, engaged, "kill switch not applied: the engine holds no such symbol");
                        Applied::UnknownSymbol
                    }
                };
                ack(done, applied);
            }
            Control::Reset { symbol, done } => {
                let applied = match self.symbols.find(&symbol) {
                    Some(slot) => {
                        tracing::warn!(%symbol, "symbol reset (admin)");
                        self.reset_symbol(slot, SymbolEvent::ResetAdmin);
                        self.applied_now()
                    }
                    None => Applied::UnknownSymbol,
                };
                ack(done, applied);
            }
            Control::Shadow { name, model: new } => {
                let Some(m) = self.model_slot(&name) else {
                    tracing::error!(model = %name, "shadow of a model name that is not live; not changed");
                    if let Some(new) = new {
                        self.retire(new);
                    }
                    return;
                };
                if let Some(s) = new.as_ref().filter(|s| s.scorer.window() != self.models[m].active.scorer.window()) {
                    tracing::warn!(shadow = %s.label, "shadow model reads a different window than the active one; it is not compared");
                }
                if let Some(new) = &new {
                    new.shadow_stats.reset();
                }
                let old = std::mem::replace(&mut self.models[m].shadow, new);
                self.publish_served();
                if let Some(old) = old {
                    self.retire(old);
                }
            }
        }
    }

    /// The route of symbol slot `slot` when its stream names no model (looked up again after a
    /// route change: a glob match, no allocation). When a route change moves the symbol to
    /// another route, its position on the old one is closed (that route no longer takes the
    /// symbol; its book is freed and leaves the gross total).
    fn symbol_route(&mut self, slot: usize) -> RouteId {
        let version = self.routes_version;
        let name = self.symbols.name(slot);
        let state = self.symbols.at(slot);
        if state.route_version != version {
            let old = state.route;
            state.route = self.routes.for_symbol(name.as_str());
            state.route_version = version;
            if state.route != old
                && let Some(book) = state.books.iter_mut().find(|b| b.route == old)
            {
                self.risk.forget(&book.risk);
                *book = Book::FREE;
            }
        }
        state.route
    }

    /// Points every route at the live slot of its model.
    fn resolve_routes(&mut self) {
        for (id, route) in self.routes.iter().enumerate() {
            self.route_model[id] =
                self.models.iter().position(|m| m.active.card.name == *route.model).map_or(NOT_LIVE, |m| m as u8);
        }
    }

    /// The slot of live model name `name`.
    fn model_slot(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.active.card.name == name)
    }

    /// Makes `model` the active version of a new live name, with its stream route, and points
    /// every route that names it at it (the caller checked there is room for the name); false
    /// if the route table has no room for its stream route (the model is handed back refused).
    fn go_live(&mut self, model: Box<ActiveModel>) -> bool {
        let name = model.card.name.clone();
        let Some(stream_route) = self.routes.stream_route(&name) else {
            tracing::error!(model = %model.label, max = MAX_ROUTES, "the route table is full; not added");
            self.refuse(model, Kind::OutOfRange, "the route table is full: no room for its stream route");
            return false;
        };
        let ranges = self.risk.widen(model.feature_ranges.as_deref());
        self.model_telemetry[self.models.len()].0.set_name(&name);
        self.models.push(ModelSlot { active: model, shadow: None, ranges, stream_route });
        self.resolve_routes();
        self.publish_served();
        true
    }

    /// Publishes the live models' cards and stream routes to the edge.
    fn publish_served(&self) {
        let served = self.models.iter().map(|m| ServedModel {
            active: m.active.card.clone(),
            shadow: m.shadow.as_ref().map(|s| s.card.clone()),
            stream_route: m.stream_route,
        });
        self.shared.served.publish(served.collect(), &self.routes);
    }

    /// Scores the next model call's worth (at most `max_batch` rows) of the inference-protocol
    /// job in hand, taking a new job when none is; a finished job goes back to its caller.
    /// Returns whether there was a job.
    fn infer_step(&mut self) -> bool {
        let Some(mut job) = self.infer.take().or_else(|| self.shared.infer.pop()) else {
            return false;
        };
        let model = self.models.iter_mut().find_map(|m| {
            if Arc::ptr_eq(&m.active.card, &job.card) {
                Some(&mut m.active)
            } else {
                m.shadow.as_mut().filter(|s| Arc::ptr_eq(&s.card, &job.card))
            }
        });
        let result = match model {
            None => Some(Err(InferError::NotServed(format!("{}@{}", job.card.name, job.card.version)))),
            Some(model) => {
                let (width, per_call) = (model.scorer.width(), model.scorer.max_batch());
                let (from, to) = (job.done_rows, (job.done_rows + per_call).min(job.len()));
                if to == from {
                    return self.finish_infer(job, Ok(()));
                }
                match model.scorer.score(&job.rows[from * width..to * width]) {
                    Ok(out) => {
                        job.scores[from..to].copy_from_slice(&out[..to - from]);
                        job.done_rows = to;
                        (to == job.len()).then_some(Ok(()))
                    }
                    Err(e) => Some(Err(InferError::Backend(e.to_string()))),
                }
            }
        };
        match result {
            Some(result) => self.finish_infer(job, result),
            None => {
                self.infer = Some(job);
                true
            }
        }
    }

    /// Hands an inference-protocol job back, its values leaving the backlog. Returns true (a job
    /// was served this turn).
    fn finish_infer(&self, job: InferJob, result: Result<(), InferError>) -> bool {
        self.shared.infer_values.fetch_sub(job.rows.len(), Ordering::AcqRel);
        job.finish(result);
        true
    }

    /// The confirmation of a control message applied now, between two passes: it takes effect
    /// before the next one (the journal records that pass for `quantd audit`).
    fn applied_now(&self) -> Applied {
        Applied::Yes { before_batch: self.pass + 1 }
    }

    /// Hands back a model the engine will not serve, saying why (see [`ActiveModel::refused`]).
    fn refuse(&self, mut model: Box<ActiveModel>, kind: Kind, why: &'static str) {
        model.refused = Some((kind, why));
        self.retire(model);
    }

    fn retire(&self, model: Box<ActiveModel>) {
        if let Err(model) = self.shared.retired.push(model) {
            tracing::warn!(model = %model.label, "retired-model queue full; dropping the session on the engine thread");
        }
    }

    /// Forgets `slot`'s state in place (its position leaves the gross total) and counts why.
    fn reset_symbol(&mut self, slot: usize, why: SymbolEvent) {
        let state = self.symbols.at(slot);
        for book in &state.books {
            self.risk.forget(&book.risk);
        }
        state.reset();
        self.telemetry.counters.symbols.add(why, 1);
    }

    /// Evicts the symbols idle for `engine.symbol_idle_ms` once the sweep is due (its cadence
    /// is an eighth of the idle time, at most 100 ms). Symbols held by the admin kill switch
    /// stay. Runs between batches.
    fn sweep_if_due(&mut self) {
        if self.symbol_idle_ns <= 0 || self.clock_ns < self.next_sweep_ns {
            return;
        }
        self.next_sweep_ns = self.clock_ns + (self.symbol_idle_ns / 8).clamp(1_000_000, 100_000_000);
        let (risk, now) = (&mut self.risk, self.clock_ns);
        let evicted = self.symbols.evict_idle(now, self.symbol_idle_ns, |slot, _, state| {
            if state.admin_killed {
                return false;
            }
            for book in &state.books {
                risk.forget(&book.risk);
            }
            risk.board().retire(slot);
            true
        });
        if evicted > 0 {
            self.telemetry.counters.symbols.add(SymbolEvent::Evicted, evicted as u64);
            tracing::info!(evicted, symbols = self.symbols.len(), "idle symbols evicted (engine.symbol_idle_ms)");
        }
    }

    /// Warm start: takes `ticks` (with their server receive times, oldest first) into their
    /// symbols' checks, features and windows, in batches of `max_batch` as the engine would, but
    /// scores nothing and answers nothing: afterwards each symbol is as warm as those ticks make
    /// it. Runs before the engine serves (on the starting thread, or the audit's).
    pub(super) fn warm(&mut self, ticks: &[(Tick, u64)]) {
        let replies = super::ReplyQueue::new(1);
        for chunk in ticks.chunks(self.max_batch) {
            let recv = Instant::now();
            for &(tick, recv_ns) in chunk {
                self.batch.push(WorkItem {
                    tick,
                    reply_to: replies.clone(),
                    recv,
                    recv_ns,
                    conflate: false,
                    route: crate::routes::BY_SYMBOL,
                });
            }
            let newest = chunk.iter().map(|&(_, ns)| ns as i64).max().unwrap_or(0);
            self.clock_ns = self.clock_ns.max(newest);
            self.sweep_if_due();
            self.update_features(recv);
            self.batch.clear();
            self.steps.clear();
        }
    }

    /// Takes `item` into the current batch (the synchronous driver's way in; the engine thread
    /// pops its queue instead). The caller keeps batches within `max_batch`.
    pub(super) fn push(&mut self, item: WorkItem) {
        assert!(self.batch.len() < self.max_batch, "batch larger than max_batch");
        self.batch.push(item);
    }

    /// Sets the recorded outside inputs of the batch being pushed, one per tick (the audit's
    /// way in); cleared after the batch.
    pub(super) fn set_recorded(&mut self, recorded: impl IntoIterator<Item = Recorded>) {
        self.recorded.clear();
        self.recorded.extend(recorded);
    }

    pub(super) fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// One engine pass over `self.batch`, in four phases; every tick is answered, in order.
    pub(super) fn process_batch(&mut self) {
        self.answered.clear();
        self.answered.resize(self.batch.len(), false);
        if self.shared.hooks.take_panic() {
            panic!("injected engine panic (fault-injection hook)");
        }
        self.pass += 1;
        // The clock moves to this batch's newest receive time first, so that a new symbol
        // arriving at a full table after a quiet spell finds the idle ones already evicted.
        let newest = self.batch.iter().map(|item| item.recv_ns as i64).max().unwrap_or(0);
        self.clock_ns = self.clock_ns.max(newest);
        self.sweep_if_due();
        self.update_features(Instant::now());
        self.conflate();
        self.score_and_answer();
        self.batch.clear();
        self.recorded.clear();
    }

    /// Phase 1: stateful checks and feature updates, tick by tick, in arrival order. Every
    /// accepted tick updates its symbol's features (and window), also when it will not be scored.
    fn update_features(&mut self, dequeued: Instant) {
        self.steps.clear();
        for i in 0..self.batch.len() {
            let waited = dequeued.saturating_duration_since(self.batch[i].recv);
            self.recorder.record(Series::QueueWait, waited.as_nanos() as u64);
            let t = Instant::now();
            let step = match self.admit(i) {
                Err(r) => Step::Rejected(r),
                Ok(slot) => {
                    let route = match self.batch[i].route {
                        BY_SYMBOL => self.symbol_route(slot),
                        r => r,
                    };
                    let model = self.route_model.get(route as usize).copied().unwrap_or(NOT_LIVE);
                    let (window, warmup) = match self.models.get(model as usize) {
                        Some(m) => (m.active.scorer.window(), self.policy(route, model).warmup_ticks),
                        None => (1, 0),
                    };
                    let state = self.symbols.at(slot);
                    self.mids[i] = state.features.mid();
                    self.buffers.write_input(i, slot, state.rows_written, &self.row, window);
                    state.rows_written += 1;
                    let recorded_expired = self.recorded.get(i).is_some_and(|r| r.expired);
                    if recorded_expired || self.ttl.is_some_and(|ttl| waited > ttl) {
                        Step::Expired
                    } else if model == NOT_LIVE {
                        // The server makes every route's model live before it serves; a replay
                        // of a config whose route models it was not given lands here.
                        tracing::debug!(route, "the route's model is not live; answered model_error");
                        Step::Rejected(Reject::ModelError)
                    } else {
                        let warm = state.features.ticks() >= warmup;
                        match state.book(route) {
                            Some(book) => Step::Scored { slot, row: 0, warm, model, book: book as u8 },
                            None => Step::Rejected(Reject::TooManyRoutes),
                        }
                    }
                }
            };
            self.recorder.record(Series::Features, t.elapsed().as_nanos() as u64);
            self.steps.push(step);
        }
    }

    /// Batch position `i`'s tick through its symbol's checks and into its features (the new
    /// row in `self.row`, the symbol's previous exchange time in `self.prev_ts[i]`). A refused
    /// tick leaves nothing behind, not even a new symbol's table entry.
    fn admit(&mut self, i: usize) -> Result<usize, Reject> {
        let (tick, recv_ns) = (self.batch[i].tick, self.batch[i].recv_ns);
        self.clock_ns = self.clock_ns.max(recv_ns as i64);
        let (routes, version) = (&self.routes, self.routes_version);
        let route = || (routes.for_symbol(tick.symbol.as_str()), version);
        let (slot, new) = self.symbols.slot(tick.symbol, || SymbolState::new(route()))?;
        let state = self.symbols.at(slot);
        let prev_ts = state.features.last_ts_ns();
        match self.checks.admit(&mut state.features, &mut state.jump, &tick, recv_ns, &mut self.row) {
            Err(r) => {
                if new {
                    self.symbols.remove(slot);
                }
                Err(r)
            }
            Ok(how) => {
                if new {
                    self.risk.board().announce(slot, tick.symbol);
                }
                self.prev_ts[i] = prev_ts;
                if how != Admitted::Updated {
                    self.restart_symbol(slot, tick.symbol, how);
                    self.prev_ts[i] = i64::MIN;
                }
                if recv_ns > 0 {
                    self.symbols.touch(slot, recv_ns as i64);
                }
                Ok(slot)
            }
        }
    }

    /// The checks reset the symbol's features before taking this tick (a new price level, or a
    /// state that was not finite): reset the rest of it too, keeping the features just made.
    fn restart_symbol(&mut self, slot: usize, symbol: Symbol, how: Admitted) {
        let why = if how == Admitted::NewLevel { SymbolEvent::ResetLevelShift } else { SymbolEvent::ResetNonFinite };
        tracing::warn!(%symbol, reason = why.label(), "symbol reset; it warms up again");
        let features = self.symbols.at(slot).features.clone();
        self.reset_symbol(slot, why);
        self.symbols.at(slot).features = features;
    }

    /// Phase 2: on streams that ask for it, only a symbol's newest tick in this pass is scored.
    /// Walks backwards, marking each symbol the first time it is seen.
    fn conflate(&mut self) {
        for i in (0..self.batch.len()).rev() {
            if let Step::Scored { slot, book, .. } = self.steps[i] {
                let state = self.symbols.at(slot);
                if self.batch[i].conflate && state.scored_in_pass == self.pass {
                    self.steps[i] = Step::Conflated { slot, book };
                } else if self.batch[i].conflate {
                    state.scored_in_pass = self.pass;
                }
            }
        }
    }

    /// Phases 3 and 4: one call per live model for the ticks still to be scored that it scores
    /// (and its shadow's on the same rows), cheapest model first; after each call, every tick
    /// that can be answered is: policy, risk and reply, in arrival order within each stream
    /// ([`Worker::answer_ready`]). A tick of a fast model does not wait for a slow model's call
    /// unless an earlier tick of its own stream does. Each call's success is in `self.failed`,
    /// the scores in `self.scores` (each model's rows after the previous call's).
    fn score_and_answer(&mut self) {
        let live = self.models.len();
        self.scored = [false; MAX_MODELS];
        let mut order = [0u8; MAX_MODELS];
        for (m, o) in order.iter_mut().enumerate().take(live) {
            *o = m as u8;
        }
        order[..live].sort_by_key(|&m| self.cost_ns[m as usize]);
        self.answer_ready();
        let mut base = 0;
        for &m in &order[..live] {
            let m = m as usize;
            self.failed[m] = false;
            let width = self.models[m].active.scorer.width();
            let mut n_rows = 0;
            for (i, step) in self.steps.iter_mut().enumerate() {
                if let Step::Scored { row, model, .. } = step
                    && *model as usize == m
                {
                    self.buffers.compact(i, n_rows, width);
                    *row = base + n_rows;
                    n_rows += 1;
                }
            }
            self.scored[m] = true;
            if n_rows > 0 {
                self.score_rows(m, base, n_rows, width);
                base += n_rows;
                self.answer_ready();
            }
        }
        // Every model has scored: nothing waits any more (a guard; the walks above answer all).
        if self.answered.iter().any(|a| !a) {
            self.answer_ready();
        }
    }

    /// Scores the `n_rows` compacted rows with live model `m` into `self.scores[base..]`.
    fn score_rows(&mut self, m: usize, base: usize, n_rows: usize, width: usize) {
        let t = Instant::now();
        let rows = self.buffers.rows(n_rows, width);
        let slot = &mut self.models[m];
        match slot.active.scorer.score(rows) {
            Ok(out) => self.scores[base..base + n_rows].copy_from_slice(out),
            Err(e) => {
                slot.active.health.failed_calls.fetch_add(1, Ordering::Relaxed);
                self.failed[m] = true;
                tracing::error!(model = %slot.active.label, error = %e, rows = n_rows, "model call failed; its ticks are answered with model_error");
            }
        }
        slot.active.health.scored.fetch_add(n_rows as u64, Ordering::Relaxed);
        let took = t.elapsed().as_nanos() as u64;
        self.cost_ns[m] = (self.cost_ns[m] * 7 + took) / 8;
        self.recorder.record(Series::Inference, took);
        self.recorder.record(Series::BatchSize, n_rows as u64);
        let per_model = &mut self.model_telemetry[m].1;
        per_model.record(Series::Inference, took);
        per_model.record(Series::BatchSize, n_rows as u64);
        if let Some(shadow) = slot.shadow.as_mut() {
            let active = (&self.scores[base..base + n_rows], slot.active.output_center);
            compare_shadow(shadow, rows, active);
        }
        if m == 0
            && self.pass % 64 == 1
            && let Ok(mut recent) = self.shared.recent.try_lock()
        {
            // The newest row of each input (a window's last row).
            for r in 0..n_rows {
                let newest = &rows[(r + 1) * width - NUM_FEATURES..(r + 1) * width];
                recent.rows[r * NUM_FEATURES..(r + 1) * NUM_FEATURES].copy_from_slice(newest);
            }
            recent.n = n_rows;
        }
    }

    /// The policy of `route`, scored by live model `m`: the route's own, else the model's.
    fn policy(&self, route: RouteId, m: u8) -> PolicyParams {
        let own = self.routes.get(route).and_then(|r| r.policy);
        own.unwrap_or_else(|| self.models[m as usize].active.policy)
    }

    /// Answers every tick not answered yet whose model has scored (or that needs none: a
    /// reject, an expired or a conflated tick), unless an earlier tick of its stream still
    /// waits: each stream's replies stay in arrival order. Each stream with new replies is woken
    /// once.
    fn answer_ready(&mut self) {
        self.waiting.clear();
        self.to_wake.clear();
        for i in 0..self.batch.len() {
            if self.answered[i] {
                continue;
            }
            let stream = Arc::as_ptr(&self.batch[i].reply_to) as usize;
            let ready = match self.steps[i] {
                Step::Scored { model, .. } => self.scored[model as usize],
                _ => true,
            };
            if !ready || self.waiting.contains(&stream) {
                if !self.waiting.contains(&stream) {
                    self.waiting.push(stream);
                }
                continue;
            }
            self.answer(i);
            self.answered[i] = true;
            let same = |j: &&mut usize| Arc::as_ptr(&self.batch[**j].reply_to) as usize == stream;
            match self.to_wake.iter_mut().find(same) {
                Some(last) => *last = i,
                None => self.to_wake.push(i),
            }
        }
        for &i in &self.to_wake {
            self.batch[i].reply_to.wake();
        }
    }

    /// Phase 4 for tick `i`: policy, risk and its reply.
    fn answer(&mut self, i: usize) {
        let t = Instant::now();
        // The model that scored it, or would have (a conflated tick: its route's; else the
        // default's).
        let model = match self.steps[i] {
            Step::Scored { model, .. } => model as usize,
            Step::Conflated { slot, book } => {
                let route = self.symbols.at(slot).books[book as usize].route;
                self.route_model.get(route as usize).map_or(0, |&m| if m == NOT_LIVE { 0 } else { m as usize })
            }
            _ => 0,
        };
        let route = match self.steps[i] {
            Step::Scored { slot, book, .. } | Step::Conflated { slot, book } => {
                let id = self.symbols.at(slot).books[book as usize].route;
                self.routes.get(id).map(|r| r.name.clone())
            }
            _ => None,
        };
        let item = &self.batch[i];
        let mut reply = Reply {
            route,
            model: Some(self.models[model].active.label.clone()),
            batch: self.pass,
            batch_pos: i as u32,
            ..Reply::blank(item.tick.symbol, item.tick.seq, item.tick.exchange_ts_ns, item.recv, item.recv_ns, t)
        };
        match self.steps[i] {
            Step::Rejected(r) => reply.reject = Some(r),
            Step::Expired => reply.reject = Some(Reject::Expired),
            Step::Conflated { slot, book } => {
                reply.conflated = true;
                reply.target_position = self.symbols.at(slot).books[book as usize].risk.position;
            }
            Step::Scored { slot, row, warm, model, book } => {
                self.position(i, (slot, book as usize), (model, row), warm, &mut reply)
            }
        }
        self.recorder.record(Series::Policy, t.elapsed().as_nanos() as u64);
        reply.posted = Instant::now();
        if let Step::Scored { model, .. } = self.steps[i] {
            let (counters, recorder) = &mut self.model_telemetry[model as usize];
            let outcome = match (reply.reject, reply.warming_up) {
                (Some(_), _) => Outcome::Rejected,
                (None, true) => Outcome::WarmingUp,
                (None, false) => Outcome::Scored,
            };
            counters.outcomes.add(outcome, 1);
            recorder.record(Series::Engine, reply.posted.saturating_duration_since(reply.recv).as_nanos() as u64);
        }
        self.post(i, reply);
    }

    /// A scored tick's position on its route's book of its symbol: the route's policy on the
    /// score (once warm), then the risk gate. `at` is (symbol slot, book), `scored` (live model,
    /// row of the scores).
    fn position(&mut self, i: usize, at: (usize, usize), scored: (u8, usize), warm: bool, reply: &mut Reply) {
        let ((slot, book), (m, row)) = (at, scored);
        let route = self.symbols.at(slot).books[book].route;
        let policy = self.policy(route, m);
        let model = &self.models[m as usize];
        let model_failed = self.failed[m as usize];
        let score = if model_failed { f32::NAN } else { self.scores[row] };
        let failed = !score.is_finite();
        if failed && !model_failed {
            model.active.health.non_finite.fetch_add(1, Ordering::Relaxed);
        }
        let state = self.symbols.at(slot);
        let book = &mut state.books[book];
        let mut target = 0.0;
        if failed {
            reply.reject = Some(Reject::ModelError);
            book.position = Position::default();
        } else {
            reply.score = f64::from(score);
            if warm {
                target = book.position.update(reply.score - model.active.output_center, &policy);
            } else {
                reply.warming_up = true;
            }
        }
        let external = match self.recorded.get(i) {
            Some(r) => r.external,
            None => self.risk.external(&book.risk, slot),
        };
        let features = self.buffers.newest_row(i, model.active.scorer.width());
        reply.features = features.try_into().ok();
        reply.external = external;
        let input = RiskInput {
            slot,
            exchange_ts_ns: reply.exchange_ts_ns,
            prev_ts_ns: self.prev_ts[i],
            mid: self.mids[i],
            recv_ns: reply.recv_ns,
            features: Some(features),
            ranges: model.ranges.as_deref(),
            model_failed: failed,
            external: Some(external),
        };
        let (position, flags) = self.risk.apply(&mut book.risk, &input, target);
        reply.policy_position = target;
        reply.target_position = position;
        reply.risk = flags;
        if flags.killed() {
            // Flat until the trigger clears; re-entry needs the policy's entry threshold.
            book.position = Position::default();
            if reply.reject.is_none() && !reply.warming_up {
                reply.reject = Some(Reject::KillSwitch);
            }
        }
    }

    /// Posts tick `i`'s reply (the caller wakes its stream once it has posted what it can, so a
    /// pass never wakes a stream per tick).
    fn post(&self, i: usize, reply: Reply) {
        if self.batch[i].reply_to.push(reply).is_err() {
            // Cannot happen while streams respect their window; counted, never silent.
            tracing::error!("reply queue full: a stream exceeded its in-flight window");
            self.telemetry.counters.outcomes.add(Outcome::Dropped, 1);
        }
    }

    /// After a panic inside a batch: answer every tick of it not yet answered with
    /// `engine_error`, reset the per-symbol state (it may be half-updated), and carry on.
    fn recover(&mut self) {
        let unanswered = self.answered.iter().filter(|a| !**a).count();
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        for i in (0..self.batch.len()).filter(|&i| !self.answered.get(i).copied().unwrap_or(false)) {
            let item = &self.batch[i];
            let reply = Reply::rejected(
                item.tick.symbol,
                item.tick.seq,
                item.tick.exchange_ts_ns,
                Reject::EngineError,
                item.recv,
                item.recv_ns,
            );
            self.post(i, reply);
            self.batch[i].reply_to.wake();
        }
        self.batch.clear();
        self.steps.clear();
        self.recorded.clear();
        self.symbols.clear();
        self.risk.reset();
        tracing::error!(
            unanswered,
            "engine panicked inside a batch: its ticks were answered with engine_error, symbol state was reset, the engine goes on"
        );
    }
}

/// Answers a control message's sender, if it still waits.
fn ack(done: Option<Ack>, applied: Applied) {
    if let Some(done) = done {
        let _ = done.send(applied);
    }
}

/// Scores the same rows with the shadow model and counts where its side agrees with the active
/// model's (each side taken from its own output's neutral point; `active` is the active model's
/// scores and centre). The shadow never produces a signal.
fn compare_shadow(shadow: &mut ActiveModel, rows: &[f32], (active, center): (&[f32], f64)) {
    let stats = &shadow.shadow_stats;
    if shadow.scorer.width() * active.len() != rows.len() {
        return; // a different input window: not comparable on these rows
    }
    match shadow.scorer.score(rows) {
        Ok(out) => {
            let mut agreed = 0u64;
            let mut diff = 0f64;
            for (a, s) in active.iter().zip(out) {
                let a_side = side((f64::from(*a) - center) as f32);
                agreed += (a_side == side((f64::from(*s) - shadow.output_center) as f32)) as u64;
                diff += f64::from((a - s).abs());
            }
            shadow.health.scored.fetch_add(active.len() as u64, Ordering::Relaxed);
            stats.compared.fetch_add(active.len() as u64, Ordering::Relaxed);
            stats.agreed.fetch_add(agreed, Ordering::Relaxed);
            if diff.is_finite() {
                stats.abs_diff_micro.fetch_add((diff * 1e6) as u64, Ordering::Relaxed);
            }
        }
        Err(_) => {
            shadow.health.failed_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}
