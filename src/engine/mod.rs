//! The engine: one thread that owns per-symbol state and the model session, fed by a bounded
//! lock-free queue, answering each tick on its stream's own bounded reply queue.
//!
//! - [`EngineHandle`] (cloned into every gRPC stream) pushes [`WorkItem`]s; a full queue hands
//!   the item back so the caller answers `queue_full` — never silent growth.
//! - [`worker`] is the loop on the `quantd-engine` thread (pinned when configured).
//! - [`idle`] decides what the thread does when the queue is empty.
//! - [`reply`] is the per-stream reply queue the engine writes and the stream task drains.
//! - [`SyncEngine`] runs the same worker code on the caller's thread, one batch at a time, for
//!   `quantd replay` (deterministic: no queue, no clock in the decisions).
//! - [`Control`] messages (from the registry's control thread) swap the active model or set a
//!   shadow model between two batches; replaced models come back through
//!   [`EngineHandle::take_retired`] so they are dropped (or kept for rollback) off the engine
//!   thread.

mod buffers;
pub mod idle;
pub mod infer;
pub mod reply;
pub mod settings;
pub mod worker;

pub use sync::{RecordedTick, SyncEngine};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::sync::Unparker;

pub use idle::IdleStrategy;
pub use reply::{Reply, ReplyQueue};
pub use worker::{ActiveModel, EngineConfig, ModelHealth, RecentRows, Recorded, ShadowStats, spawn, spawn_models};

use crate::control_thread::ControlThread;
use crate::risk::RiskBoard;
use crate::telemetry::Telemetry;
use crate::tick::{Reject, Symbol, Tick};

/// One tick on its way to the engine.
pub struct WorkItem {
    /// The validated tick.
    pub tick: Tick,
    /// Where the engine posts the answer.
    pub reply_to: Arc<ReplyQueue>,
    /// Monotonic time the edge decoded the tick (latency stages are measured from here).
    pub recv: Instant,
    /// CLOCK_REALTIME nanoseconds of the same moment, echoed as `server_recv_ns`.
    pub recv_ns: u64,
    /// Conflate: if a newer tick of the same symbol is in the same engine pass, only that one
    /// is scored (stream back-pressure mode `conflate`).
    pub conflate: bool,
    /// The route its stream chose (`x-quantd-model`), or [`crate::routes::BY_SYMBOL`]: the
    /// route of its symbol.
    pub route: crate::routes::RouteId,
}

/// A message from the control path, applied by the engine between two batches.
pub enum Control {
    /// Make this the active version of its model name (a name not live yet goes live beside
    /// the others, with its stream route); the replaced one comes back through `take_retired`.
    /// The engine confirms on `done`; a swap it refuses drops `done` and comes back marked
    /// [`ActiveModel::refused`].
    Swap {
        /// The model.
        model: Box<ActiveModel>,
        /// Where the engine confirms, when the caller waits.
        done: Option<Ack>,
    },
    /// Run `model` beside the active version of model name `name` without emitting its
    /// signals (`None`: stop that name's shadow); the replaced shadow comes back through
    /// `take_retired`.
    Shadow {
        /// The live model name.
        name: String,
        /// The new shadow, or none.
        model: Option<Box<ActiveModel>>,
    },
    /// Add a route or change one, by name (validated on the control path; its model is live).
    /// A changed route keeps its id and its positions; each symbol looks its route up again
    /// at its next tick. The engine confirms on `done` (a refused route drops it), so that the
    /// journal records the pass the change preceded and `quantd audit` applies it there too.
    SetRoute {
        /// The route.
        spec: Box<crate::routes::RouteSpec>,
        /// Where the engine confirms, when the caller waits.
        done: Option<Ack>,
    },
    /// Engage or release the risk kill switch for one symbol (`None`: all symbols). A symbol
    /// the engine does not hold is not created: the answer is [`Applied::UnknownSymbol`].
    Kill {
        /// The symbol, or every symbol.
        symbol: Option<Symbol>,
        /// Engage (true) or release (false).
        engaged: bool,
        /// Where the engine confirms, when the caller waits.
        done: Option<Ack>,
    },
    /// Forget one symbol's state (features, window, policy and risk state; its admin kill
    /// switch stays): it warms up again from its next tick.
    Reset {
        /// The symbol to forget.
        symbol: Symbol,
        /// Where the engine confirms, when the caller waits.
        done: Option<Ack>,
    },
}

/// The engine's answer to a control message about one symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied before the engine pass `before_batch` (the journal records it, so that `quantd
    /// audit` applies the same call at the same point).
    Yes {
        /// The engine pass it took effect before.
        before_batch: u64,
    },
    /// The engine holds no state for this symbol (never seen, or evicted).
    UnknownSymbol,
}

/// Where the engine sends its [`Applied`] (sending never blocks the engine).
pub type Ack = tokio::sync::oneshot::Sender<Applied>;

struct Shared {
    queue: ArrayQueue<WorkItem>,
    control: ArrayQueue<Control>,
    retired: ArrayQueue<Box<ActiveModel>>,
    /// False once shutdown began: new ticks are refused, queued ones still processed.
    accepting: AtomicBool,
    recent: std::sync::Mutex<RecentRows>,
    /// True while the engine thread is parked (or about to park).
    sleeping: AtomicBool,
    /// The test hooks (cargo feature `testing`; nothing without it).
    hooks: Hooks,
    /// Batches that panicked and were recovered from.
    restarts: std::sync::atomic::AtomicU64,
    /// Completed passes of the engine loop: a batch processed, or the queue found empty (the
    /// stuck-engine watchdog's heartbeat).
    passes: std::sync::atomic::AtomicU64,
    unparker: Unparker,
    /// Mids out, VaR scales in (see [`crate::risk::RiskBoard`]).
    risk_board: Arc<RiskBoard>,
    /// Inference-protocol jobs waiting for the engine ([`infer`]).
    infer: ArrayQueue<infer::InferJob>,
    /// Input values in jobs queued or in hand (bounded by [`infer::MAX_QUEUED_VALUES`]).
    infer_values: std::sync::atomic::AtomicUsize,
    /// The cards of the models the engine serves now (published by the engine thread).
    served: infer::Served,
}

impl Shared {
    /// Refuses new ticks (`shutting_down`) from now on; queued ones are still processed (a
    /// paused engine is resumed and woken, so the queue drains).
    fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
        self.hooks.resume();
        self.unparker.unpark();
    }
}

/// The producer side of the engine queue; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Queues a tick. Fails with the item and why when the queue is full or the engine is
    /// shutting down; the caller must answer that tick itself.
    #[inline]
    #[allow(clippy::result_large_err)] // handing the item back by value is the point
    pub fn submit(&self, item: WorkItem) -> Result<(), (WorkItem, Reject)> {
        self.submit_deferred(item)?;
        self.wake();
        Ok(())
    }

    /// Queues a tick without waking the engine: a caller queueing several (a batch, or what one
    /// poll of a stream read) calls [`EngineHandle::wake`] once after the last, so a sleeping
    /// engine wakes once and finds them all. Fails as [`EngineHandle::submit`] does.
    #[inline]
    #[allow(clippy::result_large_err)] // handing the item back by value is the point
    pub fn submit_deferred(&self, item: WorkItem) -> Result<(), (WorkItem, Reject)> {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err((item, Reject::ShuttingDown));
        }
        self.shared.queue.push(item).map_err(|item| (item, Reject::QueueFull))
    }

    /// Wakes the engine if it sleeps (after [`EngineHandle::submit_deferred`]).
    #[inline]
    pub fn wake(&self) {
        if self.shared.sleeping.load(Ordering::SeqCst) {
            self.shared.unparker.unpark();
        }
    }

    /// Queues an inference-protocol job. Hands it back when [`infer::INFER_QUEUE`] jobs, or
    /// [`infer::MAX_QUEUED_VALUES`] input values, wait; or when the engine is shutting down.
    #[allow(clippy::result_large_err)]
    pub fn infer(&self, job: infer::InferJob) -> Result<(), (infer::InferJob, Reject)> {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err((job, Reject::ShuttingDown));
        }
        let values = job.rows.len();
        let queued = self.shared.infer_values.fetch_add(values, Ordering::AcqRel);
        if queued + values > infer::MAX_QUEUED_VALUES {
            self.shared.infer_values.fetch_sub(values, Ordering::AcqRel);
            return Err((job, Reject::QueueFull));
        }
        if let Err(job) = self.shared.infer.push(job) {
            self.shared.infer_values.fetch_sub(values, Ordering::AcqRel);
            return Err((job, Reject::QueueFull));
        }
        self.wake();
        Ok(())
    }

    /// Inference-protocol jobs waiting, and their input values (queued or being scored).
    pub fn infer_backlog(&self) -> (usize, usize) {
        (self.shared.infer.len(), self.shared.infer_values.load(Ordering::Acquire))
    }

    /// The models the engine serves now, as inference-protocol callers see them.
    pub fn served(&self) -> &infer::Served {
        &self.shared.served
    }

    /// Ticks waiting in the queue.
    pub fn depth(&self) -> usize {
        self.shared.queue.len()
    }

    /// Whether ticks, control messages or inference jobs wait for the engine.
    pub fn has_work(&self) -> bool {
        !self.shared.queue.is_empty() || !self.shared.control.is_empty() || !self.shared.infer.is_empty()
    }

    /// The engine loop's heartbeat: completed passes (it does not move while the engine is
    /// stuck in a batch, or paused with ticks queued).
    pub fn passes(&self) -> u64 {
        self.shared.passes.load(Ordering::Relaxed)
    }

    /// The queue's capacity, ticks.
    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }

    /// Sends a control message (control path only). Hands it back if the control queue is full.
    #[allow(clippy::result_large_err)]
    pub fn control(&self, c: Control) -> Result<(), Control> {
        self.shared.control.push(c)?;
        self.shared.unparker.unpark();
        Ok(())
    }

    /// Copies the engine's most recent feature rows (for warming up a new model on real input).
    pub fn recent_rows(&self) -> Vec<f32> {
        self.shared.recent.lock().map(|r| r.rows().to_vec()).unwrap_or_default()
    }

    /// A model the engine has stopped using, to drop or keep on the control path.
    pub fn take_retired(&self) -> Option<Box<ActiveModel>> {
        self.shared.retired.pop()
    }

    /// Fault injection: makes the engine's next batch panic, to exercise its recovery (a test
    /// hook: cargo feature `testing`).
    #[cfg(feature = "testing")]
    pub fn inject_panic(&self) {
        self.shared.hooks.inject_panic.store(true, Ordering::Release);
    }

    /// How many batches panicked and were recovered from.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// The board through which the VaR estimator reads mids and publishes scales.
    pub fn risk_board(&self) -> Arc<RiskBoard> {
        self.shared.risk_board.clone()
    }

    /// Pauses or resumes the engine loop (queued ticks wait; nothing is lost). A test hook
    /// (cargo feature `testing`): it makes a stalled engine, a full queue and back-pressure
    /// reproducible.
    #[cfg(feature = "testing")]
    pub fn set_paused(&self, paused: bool) {
        self.shared.hooks.paused.store(paused, Ordering::Release);
        self.shared.unparker.unpark();
    }
}

/// Hooks for tests, compiled only with the cargo feature `testing` (which the crate's own tests
/// and quantd-load's enable as a dev-dependency): a release build carries no field and no check.
#[derive(Default)]
struct Hooks {
    /// While true the engine takes nothing off its queue.
    #[cfg(feature = "testing")]
    paused: AtomicBool,
    /// The next batch panics (tests of the engine's recovery).
    #[cfg(feature = "testing")]
    inject_panic: AtomicBool,
}

impl Hooks {
    /// Whether a test paused the engine (always false without `testing`).
    #[inline]
    fn paused(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.paused.load(Ordering::Acquire);
        #[cfg(not(feature = "testing"))]
        false
    }

    /// Whether a test asked for a panic, clearing the request.
    #[inline]
    fn take_panic(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.inject_panic.swap(false, Ordering::AcqRel);
        #[cfg(not(feature = "testing"))]
        false
    }

    /// Lifts a test's pause, so that a stopping engine drains its queue.
    fn resume(&self) {
        #[cfg(feature = "testing")]
        self.paused.store(false, Ordering::Release);
    }
}

/// The running engine thread.
pub struct Engine {
    handle: EngineHandle,
    thread: ControlThread,
}

impl Engine {
    /// A handle for submitting ticks and control messages.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Refuses new ticks (`shutting_down`) from now on; queued ones are still processed (a
    /// paused engine is resumed, so the queue drains).
    pub fn stop_accepting(&self) {
        self.handle.shared.stop_accepting();
    }

    /// Stops taking new ticks, lets the thread drain the queue (answering every queued tick),
    /// and waits for it to exit.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

mod sync {
    use super::*;

    /// A journaled tick as `quantd audit` feeds it back: the tick, the server time it was
    /// received, its stream's conflation mode, and the outside inputs the live engine saw.
    #[derive(Clone, Copy, Debug)]
    pub struct RecordedTick {
        /// The tick.
        pub tick: Tick,
        /// CLOCK_REALTIME ns when the live server received it.
        pub recv_ns: u64,
        /// Its stream was in `conflate` mode.
        pub conflate: bool,
        /// The outside inputs the live engine applied to it.
        pub recorded: worker::Recorded,
        /// The route its stream chose, or [`crate::routes::BY_SYMBOL`].
        pub route: crate::routes::RouteId,
    }

    /// The engine's code driven synchronously: the caller hands it batches of ticks and gets the
    /// replies back in order. Same symbol state, features, model call, policy and risk gate as
    /// the engine thread; the time-to-live is off (there is no queue to wait in).
    pub struct SyncEngine {
        worker: worker::Worker,
        replies: Arc<ReplyQueue>,
    }

    impl SyncEngine {
        /// A synchronous engine on the caller's thread, with `model` active.
        pub fn new(config: &EngineConfig, model: Box<ActiveModel>, telemetry: Arc<Telemetry>) -> Self {
            let config = EngineConfig { ttl: None, ..config.clone() };
            let (worker, _parker) = worker::build(&config, model, telemetry);
            let replies = ReplyQueue::new(worker.max_batch());
            Self { worker, replies }
        }

        /// Most ticks per [`SyncEngine::run`] call.
        pub fn max_batch(&self) -> usize {
            self.worker.max_batch()
        }

        /// The board the risk gate reads VaR scales from (the replay's estimator writes it).
        pub fn risk_board(&self) -> Arc<RiskBoard> {
            self.worker.shared().risk_board.clone()
        }

        /// The live models and their stream routes (as the edge sees them on a server).
        pub fn served(&self) -> &infer::Served {
            &self.worker.shared().served
        }

        /// Applies a control message at once (between two batches, as the engine thread would).
        pub fn control(&mut self, c: Control) {
            self.worker.apply(c);
        }

        /// Processes `ticks` (at most `max_batch`) as one batch and appends their replies, in
        /// order, to `out`.
        pub fn run(&mut self, ticks: &[Tick], out: &mut Vec<Reply>) {
            assert!(ticks.len() <= self.max_batch(), "batch larger than max_batch");
            let (recv, recv_ns) = (Instant::now(), 0);
            for t in ticks {
                self.worker.push(WorkItem {
                    tick: *t,
                    reply_to: self.replies.clone(),
                    recv,
                    recv_ns,
                    conflate: false,
                    route: crate::routes::BY_SYMBOL,
                });
            }
            self.finish(out);
        }

        /// Processes `ticks` (at most `max_batch`) as one batch, as the live engine did: with
        /// their receive times (the clock of the future-timestamp check, the feed-delay kill
        /// and symbol eviction), their streams' conflation, and the recorded outside inputs.
        pub fn run_recorded(&mut self, ticks: &[RecordedTick], out: &mut Vec<Reply>) {
            assert!(ticks.len() <= self.max_batch(), "batch larger than max_batch");
            let recv = Instant::now();
            for t in ticks {
                let (tick, recv_ns, conflate) = (t.tick, t.recv_ns, t.conflate);
                self.worker.push(WorkItem {
                    tick,
                    reply_to: self.replies.clone(),
                    recv,
                    recv_ns,
                    conflate,
                    route: t.route,
                });
            }
            self.worker.set_recorded(ticks.iter().map(|t| t.recorded));
            self.finish(out);
        }

        /// Warm start: rebuilds symbol state from `ticks` as the server's start-up does.
        pub fn warm(&mut self, ticks: &[(Tick, u64)]) {
            self.worker.warm(ticks);
        }

        fn finish(&mut self, out: &mut Vec<Reply>) {
            self.worker.process_batch();
            while let Some(r) = self.replies.pop() {
                out.push(r);
            }
        }
    }
}
