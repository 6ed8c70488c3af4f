//! A stream's reply queue: the engine thread pushes, the stream's task pops.
//!
//! Bounded by the stream's in-flight window, which the stream enforces before submitting, so a
//! push from the engine never fails. Waking uses `atomic-waker`: no lock, no allocation.

use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use crate::features::NUM_FEATURES;
use crate::risk::{External, RiskFlags};
use crate::tick::{Reject, Symbol};

/// The engine's answer to one tick, before it becomes a `proto::Signal` on the edge.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The tick's symbol.
    pub symbol: Symbol,
    /// The tick's sequence number, echoed.
    pub seq: u64,
    /// The tick's exchange time, echoed.
    pub exchange_ts_ns: i64,
    /// The model's raw output (bps of forward return, for quantd's own models).
    pub score: f64,
    /// The position to hold, after the risk layer.
    pub target_position: f64,
    /// The policy's target before the risk layer.
    pub policy_position: f64,
    /// The risk limits that bound `target_position` (kill-switch triggers included).
    pub risk: RiskFlags,
    /// The symbol is still warming up: no position yet.
    pub warming_up: bool,
    /// Superseded by a newer tick of the same symbol (conflation): features only.
    pub conflated: bool,
    /// Why the tick was refused, if it was.
    pub reject: Option<Reject>,
    /// `name@version` of the model that scored it (shared, not copied).
    pub model: Option<Arc<str>>,
    /// The route it took (`default`, a config route's name, `stream:<model>`; shared, not
    /// copied): the journal records it so that `quantd audit` routes the tick as live did.
    pub route: Option<Arc<str>>,
    /// The engine pass that answered it (from 1; 0: answered at the edge, never in a batch)
    /// and its position in that pass: the journal records both so that `quantd audit` re-runs
    /// the ticks in the engine's own order and batches.
    pub batch: u64,
    /// Its position in that pass.
    pub batch_pos: u32,
    /// The risk inputs from outside the tick stream that the gate applied (VaR scale 1 and no
    /// admin kill where the tick never reached the gate).
    pub external: External,
    /// The feature row it was scored on (None: it was not scored); the journal keeps it, or its
    /// [`crate::features::row_hash`].
    pub features: Option<[f32; NUM_FEATURES]>,
    /// Monotonic time the edge decoded the tick.
    pub recv: Instant,
    /// CLOCK_REALTIME ns of the same moment.
    pub recv_ns: u64,
    /// When the engine posted the reply (start of the egress stage).
    pub posted: Instant,
}

impl Reply {
    /// The answer to a tick with nothing decided yet: no score, flat, no limit, no reject, no
    /// model (`posted` is the caller's clock reading, so the hot path reads the clock once).
    pub fn blank(symbol: Symbol, seq: u64, exchange_ts_ns: i64, recv: Instant, recv_ns: u64, posted: Instant) -> Self {
        Self {
            symbol,
            seq,
            exchange_ts_ns,
            score: 0.0,
            target_position: 0.0,
            policy_position: 0.0,
            risk: RiskFlags::default(),
            warming_up: false,
            conflated: false,
            reject: None,
            model: None,
            route: None,
            batch: 0,
            batch_pos: 0,
            external: External { var_scale: 1.0, admin_kill: false },
            features: None,
            recv,
            recv_ns,
            posted,
        }
    }

    /// A refusal decided before or instead of the engine's work.
    pub fn rejected(
        symbol: Symbol,
        seq: u64,
        exchange_ts_ns: i64,
        reject: Reject,
        recv: Instant,
        recv_ns: u64,
    ) -> Self {
        Self { reject: Some(reject), ..Self::blank(symbol, seq, exchange_ts_ns, recv, recv_ns, Instant::now()) }
    }
}

/// One stream's bounded reply queue: the engine pushes, the stream task pops, a waker wakes it.
pub struct ReplyQueue {
    queue: ArrayQueue<Reply>,
    waker: AtomicWaker,
}

impl ReplyQueue {
    /// A queue of `capacity` replies.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { queue: ArrayQueue::new(capacity.max(1)), waker: AtomicWaker::new() })
    }

    /// Engine side: queues a reply without waking the stream; [`ReplyQueue::wake`] after the
    /// last reply of a pass for this stream (one wake-up per batch, not per tick). Returns the
    /// reply back if the queue is full (a broken window invariant).
    #[inline]
    #[allow(clippy::result_large_err)] // handing the reply back by value is the point
    pub fn push(&self, reply: Reply) -> Result<(), Reply> {
        self.queue.push(reply)
    }

    /// Engine side: wakes the stream task to take what was pushed.
    #[inline]
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Stream side: the next reply, registering `waker` first so a post racing with an empty
    /// pop is never missed.
    #[inline]
    pub fn poll_pop(&self, waker: &Waker) -> Option<Reply> {
        if let Some(r) = self.queue.pop() {
            return Some(r);
        }
        self.waker.register(waker);
        self.queue.pop()
    }

    /// Whether no reply waits (any thread).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next reply, if any.
    pub fn pop(&self) -> Option<Reply> {
        self.queue.pop()
    }
}
