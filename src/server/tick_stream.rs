//! One `StreamTicks` call: reads ticks, submits them to the engine, and yields exactly one
//! signal per tick in arrival order.
//!
//! Runs as a tokio task (driven by tonic). Ticks the edge refuses itself (stateless checks, a
//! full queue, shutdown) are answered locally but queued behind earlier in-flight ticks, so the
//! order always holds. At most `window` ticks are in flight; beyond that the stream stops
//! reading, and HTTP/2 flow control pushes back on the client.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use tonic::{Status, Streaming};

use super::realtime_ns;
use crate::engine::{EngineHandle, Reply, ReplyQueue, WorkItem};
use crate::proto;
use crate::telemetry::{Outcome, Recorder, Series, Telemetry};
use crate::tick::{Symbol, Tick};

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
    window: usize,
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    recorder: Recorder,
}

impl TickStream {
    pub fn new(
        inbound: Streaming<proto::Tick>,
        engine: EngineHandle,
        telemetry: Arc<Telemetry>,
        window: usize,
    ) -> Self {
        Self {
            inbound,
            inbound_done: false,
            inbound_error: None,
            replies: ReplyQueue::new(window),
            pending: VecDeque::with_capacity(window),
            window,
            engine,
            recorder: telemetry.latency.recorder(&[Series::Egress, Series::Total]),
            telemetry,
        }
    }

    fn accept(&mut self, t: proto::Tick) {
        let recv = Instant::now();
        let recv_ns = realtime_ns();
        let entry = match Tick::from_proto(&t) {
            Ok(tick) => match self.engine.submit(WorkItem { tick, reply_to: self.replies.clone(), recv, recv_ns }) {
                Ok(()) => Pending::Engine,
                Err((item, reject)) => Pending::Local(
                    Reply::rejected(item.tick.symbol, t.seq, t.exchange_ts_ns, reject, recv, recv_ns),
                    t.symbol,
                ),
            },
            Err(reject) => {
                Pending::Local(Reply::rejected(Symbol::EMPTY, t.seq, t.exchange_ts_ns, reject, recv, recv_ns), t.symbol)
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
    match reply.reject {
        Some(r) => counters.reject(r),
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
        reject_reason: reply.reject.map(|r| r.to_string()).unwrap_or_default(),
        server_recv_ns: reply.recv_ns,
        server_send_ns: send_ns,
    }
}

impl Stream for TickStream {
    type Item = Result<proto::Signal, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Read (and submit) everything available first, so the engine sees whole bursts.
        while !this.inbound_done && this.pending.len() < this.window {
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
        let (reply, symbol) = match this.pending.pop_front() {
            None if this.inbound_done => return Poll::Ready(this.inbound_error.take().map(Err)),
            None => return Poll::Pending,
            Some(Pending::Local(r, s)) => (r, Some(s)),
            Some(Pending::Engine) => match this.replies.poll_pop(cx.waker()) {
                Some(r) => (r, None),
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
        // The client went away: whatever was read but not answered is counted as dropped.
        if !self.pending.is_empty() {
            self.telemetry.counters.outcome(Outcome::Dropped, self.pending.len() as u64);
            tracing::debug!(dropped = self.pending.len(), "stream closed with ticks in flight");
        }
    }
}
