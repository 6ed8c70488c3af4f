//! One `StreamTicks` call: reads ticks, submits them to the engine, and yields exactly one
//! signal per tick in arrival order.
//!
//! Runs as a tokio task (driven by tonic). Ticks the edge answers itself (stateless checks, a
//! full queue, shutdown, back-pressure) are queued behind earlier in-flight ticks, so the order
//! always holds. At most `window` ticks are in flight to the engine; what happens beyond that is
//! the stream's back-pressure mode ([`Backpressure`]). Memory per stream is bounded: at most
//! `outbound_limit` answered-but-unread signals, past which a slow consumer's stream is ended with
//! RESOURCE_EXHAUSTED rather than buffered without bound.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use tonic::{Status, Streaming};

use super::realtime_ns;
use crate::config::Backpressure;
use crate::engine::{EngineHandle, Reply, ReplyQueue, WorkItem};
use crate::proto;
use crate::telemetry::{Outcome, Recorder, Series, Telemetry};
use crate::tick::{Reject, Symbol, Tick};

/// Per-stream limits (from the config).
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub window: usize,
    pub outbound_limit: usize,
    pub mode: Backpressure,
    pub max_symbols: usize,
    /// End a stream that has sent nothing for this long (with nothing owed to it).
    pub idle_timeout: Option<std::time::Duration>,
    /// The symbols this replica owns.
    pub shard: crate::shard::ShardConfig,
}

enum Pending {
    /// The engine will post this tick's reply to the stream's reply queue.
    Engine,
    /// Answered at the edge; the raw symbol is echoed as the client sent it.
    Local(Reply, String),
}

pub struct TickStream {
    inbound: Streaming<proto::Tick>,
    inbound_done: bool,
    inbound_error: Option<Status>,
    replies: Arc<ReplyQueue>,
    pending: VecDeque<Pending>,
    /// `Pending::Engine` entries in `pending`.
    in_flight: usize,
    limits: StreamLimits,
    symbols: HashSet<Symbol>,
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    recorder: Recorder,
    /// Released on drop: the server-wide count of open streams.
    open_streams: Arc<AtomicUsize>,
    /// Fires after `idle_timeout` without a tick.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TickStream {
    pub fn new(
        inbound: Streaming<proto::Tick>,
        engine: EngineHandle,
        telemetry: Arc<Telemetry>,
        limits: StreamLimits,
        open_streams: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            inbound,
            inbound_done: false,
            inbound_error: None,
            replies: ReplyQueue::new(limits.window),
            pending: VecDeque::with_capacity(limits.window),
            in_flight: 0,
            limits,
            symbols: HashSet::new(),
            engine,
            recorder: telemetry.latency.recorder(&[Series::Egress, Series::Total]),
            telemetry,
            open_streams,
            idle: limits.idle_timeout.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// Whether to read another tick now.
    fn may_read(&self) -> bool {
        if self.inbound_done || self.pending.len() >= self.limits.outbound_limit {
            return false;
        }
        match self.limits.mode {
            Backpressure::Block | Backpressure::Conflate => self.in_flight < self.limits.window,
            Backpressure::Reject => true,
        }
    }

    fn accept(&mut self, t: proto::Tick) {
        let recv = Instant::now();
        if let (Some(idle), Some(d)) = (self.idle.as_mut(), self.limits.idle_timeout) {
            idle.as_mut().reset(tokio::time::Instant::from_std(recv) + d);
        }
        let recv_ns = realtime_ns();
        let local = |reject, symbol| Reply::rejected(symbol, t.seq, t.exchange_ts_ns, reject, recv, recv_ns);
        let entry = match Tick::from_proto(&t) {
            Err(reject) => Pending::Local(local(reject, Symbol::EMPTY), t.symbol),
            Ok(tick) if !self.symbols.contains(&tick.symbol) && self.symbols.len() >= self.limits.max_symbols => {
                Pending::Local(local(Reject::TooManySymbols, tick.symbol), t.symbol)
            }
            // Only a symbol new to the stream is hashed; accepted ones are in `symbols`.
            Ok(tick) if !self.symbols.contains(&tick.symbol) && !self.limits.shard.owns(tick.symbol.as_str()) => {
                Pending::Local(local(Reject::WrongShard, tick.symbol), t.symbol)
            }
            Ok(tick) if self.in_flight >= self.limits.window => {
                Pending::Local(local(Reject::Overloaded, tick.symbol), t.symbol)
            }
            Ok(tick) => {
                self.symbols.insert(tick.symbol);
                let conflate = self.limits.mode == Backpressure::Conflate;
                match self.engine.submit(WorkItem { tick, reply_to: self.replies.clone(), recv, recv_ns, conflate }) {
                    Ok(()) => {
                        self.in_flight += 1;
                        Pending::Engine
                    }
                    Err((item, reject)) => Pending::Local(local(reject, item.tick.symbol), t.symbol),
                }
            }
        };
        self.pending.push_back(entry);
    }
}

/// Turns a reply into the wire signal, recording egress/total latency and the tick's outcome.
pub fn finish(reply: Reply, symbol: Option<String>, recorder: &mut Recorder, telemetry: &Telemetry) -> proto::Signal {
    let now = Instant::now();
    let send_ns = realtime_ns();
    recorder.record(Series::Egress, now.saturating_duration_since(reply.posted).as_nanos() as u64);
    recorder.record(Series::Total, now.saturating_duration_since(reply.recv).as_nanos() as u64);
    recorder.publish_if_requested();
    let counters = &telemetry.counters;
    counters.risk(reply.risk);
    match reply.reject {
        Some(r) => counters.reject(r),
        None if reply.conflated => counters.outcome(Outcome::Conflated, 1),
        None if reply.warming_up => counters.outcome(Outcome::WarmingUp, 1),
        None => counters.outcome(Outcome::Scored, 1),
    }
    proto::Signal {
        symbol: symbol.unwrap_or_else(|| reply.symbol.as_str().to_owned()),
        seq: reply.seq,
        exchange_ts_ns: reply.exchange_ts_ns,
        score: reply.score,
        target_position: reply.target_position,
        model: reply.model.as_deref().unwrap_or_default().to_owned(),
        warming_up: reply.warming_up,
        reject_reason: match (reply.reject, reply.risk.kill_detail()) {
            (Some(Reject::KillSwitch), Some(why)) => format!("{}: {why}", Reject::KillSwitch.code()),
            (r, _) => r.map(|r| r.to_string()).unwrap_or_default(),
        },
        risk: reply.risk.codes().map(str::to_owned).collect(),
        policy_position: reply.policy_position,
        server_recv_ns: reply.recv_ns,
        server_send_ns: send_ns,
        conflated: reply.conflated,
    }
}

impl Stream for TickStream {
    type Item = Result<proto::Signal, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Read (and submit) everything available first, so the engine sees whole bursts.
        while this.may_read() {
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(t))) => this.accept(t),
                Poll::Ready(Some(Err(status))) => {
                    this.inbound_done = true;
                    this.inbound_error = Some(status);
                }
                Poll::Ready(None) => this.inbound_done = true,
                Poll::Pending => break,
            }
        }
        if this.limits.mode == Backpressure::Reject && this.pending.len() >= this.limits.outbound_limit {
            // The client sends but does not read: end its stream rather than buffer without bound.
            this.telemetry.counters.outcome(Outcome::Dropped, this.pending.len() as u64);
            this.pending.clear();
            this.inbound_done = true;
            return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                "slow consumer: {} signals unread (stream.outbound_limit); stream ended",
                this.limits.outbound_limit
            )))));
        }
        let (reply, symbol) = match this.pending.pop_front() {
            None if this.inbound_done => return Poll::Ready(this.inbound_error.take().map(Err)),
            None => {
                // Nothing owed and nothing arriving: end the stream once it has been idle too long.
                if let Some(idle) = this.idle.as_mut()
                    && idle.as_mut().poll(cx).is_ready()
                {
                    this.inbound_done = true;
                    let d = this.limits.idle_timeout.unwrap_or_default();
                    return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "no tick for {d:?} (stream.idle_timeout_ms); stream closed, reconnect to resume"
                    )))));
                }
                return Poll::Pending;
            }
            Some(Pending::Local(r, s)) => (r, Some(s)),
            Some(Pending::Engine) => match this.replies.poll_pop(cx.waker()) {
                Some(r) => {
                    this.in_flight -= 1;
                    (r, None)
                }
                None => {
                    this.pending.push_front(Pending::Engine);
                    return Poll::Pending;
                }
            },
        };
        Poll::Ready(Some(Ok(finish(reply, symbol, &mut this.recorder, &this.telemetry))))
    }
}

impl Drop for TickStream {
    fn drop(&mut self) {
        self.open_streams.fetch_sub(1, Ordering::AcqRel);
        // The client went away: whatever was read but not answered is counted as dropped.
        if !self.pending.is_empty() {
            self.telemetry.counters.outcome(Outcome::Dropped, self.pending.len() as u64);
            tracing::debug!(dropped = self.pending.len(), "stream closed with ticks in flight");
        }
    }
}
