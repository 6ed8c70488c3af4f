//! The engine loop, on the `quantd-engine` thread.
//!
//! Each turn it takes whatever is queued (up to `max_batch`; it never waits for a batch to
//! fill), runs the stateful checks and feature updates tick by tick, scores every accepted tick
//! in one model call, applies the policy in arrival order and posts each reply to its stream.
//! All buffers are sized at start-up: after warm-up the loop makes no heap allocation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::Parker;

use super::idle::{IdleStrategy, Idler};
use super::{Control, Engine, EngineHandle, Reply, Shared, WorkItem};
use crate::features::{NUM_FEATURES, SymbolFeatures};
use crate::model::Scorer;
use crate::policy::{PolicyParams, Position};
use crate::symbols::SymbolTable;
use crate::telemetry::{Outcome, Recorder, Series, Telemetry};
use crate::tick::Reject;

/// Engine settings (from the server config).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub max_symbols: usize,
    /// Core to pin the engine thread to, if any.
    pub core: Option<usize>,
    pub idle: IdleStrategy,
    pub idle_spin: Duration,
    pub idle_yield: Duration,
}

/// Everything the engine needs to score: the session and how to read its output.
pub struct ActiveModel {
    pub scorer: Scorer,
    /// `name@version`, carried by every signal it produces.
    pub label: Arc<str>,
    pub policy: PolicyParams,
    /// Written by the engine, watched by the control thread (automatic rollback).
    pub health: Arc<ModelHealth>,
}

impl ActiveModel {
    pub fn new(scorer: Scorer, label: &str, policy: PolicyParams) -> Self {
        Self { scorer, label: Arc::from(label), policy, health: Arc::default() }
    }
}

/// How a model has behaved since it went live: rows scored, non-finite scores, failed calls.
#[derive(Default, Debug)]
pub struct ModelHealth {
    pub scored: AtomicU64,
    pub non_finite: AtomicU64,
    pub failed_calls: AtomicU64,
}

/// Agreement between the shadow model and the active one on the same rows.
#[derive(Default, Debug)]
pub struct ShadowStats {
    pub compared: AtomicU64,
    pub agreed: AtomicU64,
    /// Sum of |shadow - active| scores, in millionths of a score unit.
    pub abs_diff_micro: AtomicU64,
}

impl ShadowStats {
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
    pub rows: Vec<f32>,
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

struct SymbolState {
    features: SymbolFeatures,
    position: Position,
}

/// Per-tick scratch, reused every batch.
#[derive(Clone, Copy)]
enum Step {
    Rejected(Reject),
    /// Accepted; its feature row is `row` in the batch; `warm` once past warm-up.
    Accepted {
        slot: usize,
        row: usize,
        warm: bool,
    },
}

struct Worker {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    recorder: Recorder,
    model: Box<ActiveModel>,
    shadow: Option<Box<ActiveModel>>,
    batches: u64,
    symbols: SymbolTable<SymbolState>,
    batch: Vec<WorkItem>,
    steps: Vec<Step>,
    rows: Vec<f32>,
    scores: Vec<f32>,
    max_batch: usize,
}

/// Starts the engine thread with its model. The thread is pinned to `config.core` if given; a
/// refused pin is logged and the engine runs unpinned.
pub fn spawn(config: &EngineConfig, model: Box<ActiveModel>, telemetry: Arc<Telemetry>) -> std::io::Result<Engine> {
    let parker = Parker::new();
    let max_batch = config.max_batch.min(model.scorer.max_batch()).max(1);
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(config.queue_capacity.max(1)),
        control: ArrayQueue::new(8),
        retired: ArrayQueue::new(16),
        shadow_stats: ShadowStats::default(),
        recent: Mutex::new(RecentRows { rows: vec![0.0; max_batch * NUM_FEATURES], n: 0 }),
        accepting: AtomicBool::new(true),
        sleeping: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        unparker: parker.unparker().clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = Worker {
        shared: shared.clone(),
        stop: stop.clone(),
        recorder: telemetry.latency.recorder(&[
            Series::QueueWait,
            Series::Features,
            Series::Inference,
            Series::Policy,
            Series::BatchSize,
        ]),
        telemetry,
        model,
        shadow: None,
        batches: 0,
        symbols: SymbolTable::new(config.max_symbols, config.max_symbols),
        batch: Vec::with_capacity(max_batch),
        steps: Vec::with_capacity(max_batch),
        rows: vec![0.0; max_batch * NUM_FEATURES],
        scores: vec![0.0; max_batch],
        max_batch,
    };
    let mut idler = Idler::new(config.idle, config.idle_spin, config.idle_yield);
    let core = config.core;
    let thread = std::thread::Builder::new().name("quantd-engine".into()).spawn(move || {
        if let Some(core) = core {
            pin(core);
        }
        worker.run(&parker, &mut idler);
    })?;
    Ok(Engine { handle: EngineHandle { shared }, stop, thread: Some(thread) })
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
        tracing::info!(model = %self.model.label, max_batch = self.max_batch, "engine started");
        loop {
            while let Some(c) = self.shared.control.pop() {
                self.apply(c);
            }
            while self.batch.len() < self.max_batch && !self.shared.paused.load(Ordering::Acquire) {
                match self.shared.queue.pop() {
                    Some(item) => self.batch.push(item),
                    None => break,
                }
            }
            if self.batch.is_empty() {
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                let shared = &self.shared;
                idler.idle(parker, |p| {
                    shared.sleeping.store(true, Ordering::SeqCst);
                    if shared.queue.is_empty() {
                        p.park_timeout(Duration::from_millis(100));
                    }
                    shared.sleeping.store(false, Ordering::SeqCst);
                });
                continue;
            }
            idler.reset();
            self.process_batch();
            self.recorder.publish_if_requested();
        }
        tracing::info!("engine drained and stopped");
    }

    /// Between two batches: swap the active model or change the shadow. Replaced models go back
    /// to the control path to be dropped there.
    fn apply(&mut self, c: Control) {
        match c {
            Control::Swap(new) => {
                tracing::info!(from = %self.model.label, to = %new.label, "engine switched model");
                let old = std::mem::replace(&mut self.model, new);
                self.retire(old);
            }
            Control::Shadow(new) => {
                self.shared.shadow_stats.reset();
                if let Some(old) = std::mem::replace(&mut self.shadow, new) {
                    self.retire(old);
                }
            }
        }
    }

    fn retire(&self, model: Box<ActiveModel>) {
        if let Err(model) = self.shared.retired.push(model) {
            tracing::warn!(model = %model.label, "retired-model queue full; dropping the session on the engine thread");
        }
    }

    fn process_batch(&mut self) {
        let dequeued = Instant::now();
        let warmup = self.model.policy.warmup_ticks;
        let mut n_rows = 0;
        self.steps.clear();
        for item in &self.batch {
            self.recorder.record(Series::QueueWait, dequeued.saturating_duration_since(item.recv).as_nanos() as u64);
            let t = Instant::now();
            let step = match self.symbols.slot(item.tick.symbol, || SymbolState {
                features: SymbolFeatures::new(),
                position: Position::default(),
            }) {
                Err(r) => Step::Rejected(r),
                Ok(slot) => {
                    let state = self.symbols.at(slot);
                    if item.tick.exchange_ts_ns < state.features.last_ts_ns() {
                        Step::Rejected(Reject::StaleTimestamp)
                    } else {
                        let row: &mut [f32; NUM_FEATURES] = (&mut self.rows
                            [n_rows * NUM_FEATURES..(n_rows + 1) * NUM_FEATURES])
                            .try_into()
                            .expect("row slice has NUM_FEATURES elements");
                        state.features.update(&item.tick, row);
                        n_rows += 1;
                        Step::Accepted { slot, row: n_rows - 1, warm: state.features.ticks() >= warmup }
                    }
                }
            };
            self.recorder.record(Series::Features, t.elapsed().as_nanos() as u64);
            self.steps.push(step);
        }

        let mut model_failed = false;
        if n_rows > 0 {
            let t = Instant::now();
            let rows = &self.rows[..n_rows * NUM_FEATURES];
            match self.model.scorer.score(rows) {
                Ok(out) => self.scores[..n_rows].copy_from_slice(out),
                Err(e) => {
                    model_failed = true;
                    self.model.health.failed_calls.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, rows = n_rows, "model call failed; the batch is answered with model_error");
                }
            }
            self.model.health.scored.fetch_add(n_rows as u64, Ordering::Relaxed);
            self.recorder.record(Series::Inference, t.elapsed().as_nanos() as u64);
            self.recorder.record(Series::BatchSize, n_rows as u64);
            if let Some(shadow) = self.shadow.as_mut() {
                compare_shadow(shadow, rows, &self.scores[..n_rows], &self.shared.shadow_stats);
            }
            self.batches += 1;
            if self.batches % 64 == 1
                && let Ok(mut recent) = self.shared.recent.try_lock()
            {
                recent.rows[..rows.len()].copy_from_slice(rows);
                recent.n = n_rows;
            }
        }

        for (item, step) in self.batch.drain(..).zip(self.steps.iter()) {
            let t = Instant::now();
            let mut reply = Reply {
                symbol: item.tick.symbol,
                seq: item.tick.seq,
                exchange_ts_ns: item.tick.exchange_ts_ns,
                score: 0.0,
                target_position: 0.0,
                warming_up: false,
                reject: None,
                model: Some(self.model.label.clone()),
                recv: item.recv,
                recv_ns: item.recv_ns,
                posted: t,
            };
            match *step {
                Step::Rejected(r) => reply.reject = Some(r),
                Step::Accepted { .. } if model_failed => reply.reject = Some(Reject::ModelError),
                Step::Accepted { row, .. } if !self.scores[row].is_finite() => {
                    self.model.health.non_finite.fetch_add(1, Ordering::Relaxed);
                    reply.reject = Some(Reject::ModelError);
                }
                Step::Accepted { row, .. } if !self.scores[row].is_finite() => {
                    self.model.health.non_finite.fetch_add(1, Ordering::Relaxed);
                    reply.reject = Some(Reject::ModelError);
                }
                Step::Accepted { slot, row, warm } => {
                    let score = f64::from(self.scores[row]);
                    reply.score = score;
                    if warm {
                        reply.target_position = self.symbols.at(slot).position.update(score, &self.model.policy);
                    } else {
                        reply.warming_up = true;
                    }
                }
            }
            self.recorder.record(Series::Policy, t.elapsed().as_nanos() as u64);
            reply.posted = Instant::now();
            if item.reply_to.post(reply).is_err() {
                // Cannot happen while streams respect their window; counted, never silent.
                tracing::error!("reply queue full: a stream exceeded its in-flight window");
                self.telemetry.counters.outcome(Outcome::Dropped, 1);
            }
        }
    }
}

/// Scores the same rows with the shadow model and counts where its side agrees with the active
/// model's. The shadow never produces a signal.
fn compare_shadow(shadow: &mut ActiveModel, rows: &[f32], active: &[f32], stats: &ShadowStats) {
    match shadow.scorer.score(rows) {
        Ok(out) => {
            let mut agreed = 0u64;
            let mut diff = 0f64;
            for (a, s) in active.iter().zip(out) {
                agreed += (side(*a) == side(*s)) as u64;
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
