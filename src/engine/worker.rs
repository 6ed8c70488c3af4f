//! The engine loop, on the `quantd-engine` thread.
//!
//! Each turn it takes whatever is queued (up to `max_batch`; it never waits for a batch to
//! fill), runs the stateful checks and feature updates tick by tick, scores every accepted tick
//! in one model call, applies the policy in arrival order and posts each reply to its stream.
//! All buffers are sized at start-up: after warm-up the loop makes no heap allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::Parker;

use super::idle::{IdleStrategy, Idler};
use super::{Engine, EngineHandle, Reply, Shared, WorkItem};
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
    pub label: Arc<str>,
    pub policy: PolicyParams,
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
    model: ActiveModel,
    symbols: SymbolTable<SymbolState>,
    batch: Vec<WorkItem>,
    steps: Vec<Step>,
    rows: Vec<f32>,
    scores: Vec<f32>,
    max_batch: usize,
}

/// Starts the engine thread with its model. The thread is pinned to `config.core` if given; a
/// refused pin is logged and the engine runs unpinned.
pub fn spawn(
    config: &EngineConfig,
    model: ActiveModel,
    telemetry: Arc<Telemetry>,
) -> std::io::Result<Engine> {
    let parker = Parker::new();
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(config.queue_capacity.max(1)),
        accepting: AtomicBool::new(true),
        sleeping: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        unparker: parker.unparker().clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let max_batch = config.max_batch.min(model.scorer.max_batch()).max(1);
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
        symbols: SymbolTable::new(config.max_symbols, config.max_symbols),
        batch: Vec::with_capacity(max_batch),
        steps: Vec::with_capacity(max_batch),
        rows: vec![0.0; max_batch * NUM_FEATURES],
        scores: vec![0.0; max_batch],
        max_batch,
    };
    let mut idler = Idler::new(config.idle, config.idle_spin, config.idle_yield);
    let core = config.core;
    let thread = std::thread::Builder::new()
        .name("quantd-engine".into())
        .spawn(move || {
            if let Some(core) = core {
                pin(core);
            }
            worker.run(&parker, &mut idler);
        })?;
    Ok(Engine {
        handle: EngineHandle { shared },
        stop,
        thread: Some(thread),
    })
}

fn pin(core: usize) {
    match core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core)) {
        Some(id) if core_affinity::set_for_current(id) => {
            tracing::info!(core, "engine thread pinned")
        }
        Some(_) => tracing::warn!(
            core,
            "pinning the engine thread was refused; running unpinned"
        ),
        None => tracing::warn!(
            core,
            "core not available to this process (cpuset?); engine runs unpinned"
        ),
    }
}

impl Worker {
    fn run(&mut self, parker: &Parker, idler: &mut Idler) {
        tracing::info!(model = %self.model.label, max_batch = self.max_batch, "engine started");
        loop {
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

    fn process_batch(&mut self) {
        let dequeued = Instant::now();
        let warmup = self.model.policy.warmup_ticks;
        let mut n_rows = 0;
        self.steps.clear();
        for item in &self.batch {
            self.recorder.record(
                Series::QueueWait,
                dequeued.saturating_duration_since(item.recv).as_nanos() as u64,
            );
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
                        Step::Accepted {
                            slot,
                            row: n_rows - 1,
                            warm: state.features.ticks() >= warmup,
                        }
                    }
                }
            };
            self.recorder
                .record(Series::Features, t.elapsed().as_nanos() as u64);
            self.steps.push(step);
        }

        let mut model_failed = false;
        if n_rows > 0 {
            let t = Instant::now();
            match self.model.scorer.score(&self.rows[..n_rows * NUM_FEATURES]) {
                Ok(out) => self.scores[..n_rows].copy_from_slice(out),
                Err(e) => {
                    model_failed = true;
                    tracing::error!(error = %e, rows = n_rows, "model call failed; the batch is answered with model_error");
                }
            }
            self.recorder
                .record(Series::Inference, t.elapsed().as_nanos() as u64);
            self.recorder.record(Series::BatchSize, n_rows as u64);
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
                Step::Accepted { slot, row, warm } => {
                    let score = f64::from(self.scores[row]);
                    reply.score = score;
                    if warm {
                        reply.target_position = self
                            .symbols
                            .at(slot)
                            .position
                            .update(score, &self.model.policy);
                    } else {
                        reply.warming_up = true;
                    }
                }
            }
            self.recorder
                .record(Series::Policy, t.elapsed().as_nanos() as u64);
            reply.posted = Instant::now();
            if item.reply_to.post(reply).is_err() {
                // Cannot happen while streams respect their window; counted, never silent.
                tracing::error!("reply queue full: a stream exceeded its in-flight window");
                self.telemetry.counters.outcome(Outcome::Dropped, 1);
            }
        }
    }
}
