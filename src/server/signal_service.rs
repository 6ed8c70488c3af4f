//! `quantd.v1.SignalService`: the streaming and unary handlers. Plain code; the only place a
//! library error becomes a `tonic::Status` is [`super::status`].

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::{Request, Response, Status, Streaming};

use super::realtime_ns;
use super::status::EdgeError;
use super::tick_stream::{StreamLimits, TickStream, finish};
use crate::config::Backpressure;
use crate::engine::{EngineHandle, Reply, ReplyQueue, WorkItem};
use crate::proto;
use crate::proto::signal_service_server::SignalService;
use crate::telemetry::{Recorder, Series, Telemetry};
use crate::tick::{Reject, Symbol, Tick};

/// Request metadata a client may set on `StreamTicks` to choose its own back-pressure mode
/// (`block`, `reject` or `conflate`) instead of the server's `stream.backpressure`.
pub const BACKPRESSURE_HEADER: &str = "x-quantd-backpressure";

pub struct Signals {
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    limits: StreamLimits,
    max_streams: usize,
    open_streams: Arc<AtomicUsize>,
    /// Unary calls share one recorder (a short lock on the unary path only; streams own theirs).
    unary_recorder: Mutex<Recorder>,
}

impl Signals {
    pub fn new(engine: EngineHandle, telemetry: Arc<Telemetry>, limits: StreamLimits, max_streams: usize) -> Self {
        let unary_recorder = Mutex::new(telemetry.latency.recorder(&[Series::Egress, Series::Total]));
        Self { engine, telemetry, limits, max_streams, open_streams: Arc::default(), unary_recorder }
    }
}

#[tonic::async_trait]
impl SignalService for Signals {
    type StreamTicksStream = TickStream;

    async fn stream_ticks(&self, request: Request<Streaming<proto::Tick>>) -> Result<Response<TickStream>, Status> {
        if self.open_streams.fetch_add(1, Ordering::AcqRel) >= self.max_streams {
            self.open_streams.fetch_sub(1, Ordering::AcqRel);
            return Err(EdgeError::TooManyStreams(self.max_streams).into());
        }
        let mut limits = self.limits;
        if let Some(mode) = request.metadata().get(BACKPRESSURE_HEADER) {
            match mode.to_str().ok().and_then(|m| m.parse::<Backpressure>().ok()) {
                Some(m) => limits.mode = m,
                None => {
                    self.open_streams.fetch_sub(1, Ordering::AcqRel);
                    return Err(EdgeError::BadBackpressure(format!("{mode:?}")).into());
                }
            }
        }
        let stream = TickStream::new(
            request.into_inner(),
            self.engine.clone(),
            self.telemetry.clone(),
            limits,
            self.open_streams.clone(),
        );
        Ok(Response::new(stream))
    }

    async fn predict(&self, request: Request<proto::Tick>) -> Result<Response<proto::Signal>, Status> {
        let t = request.into_inner();
        let recv = Instant::now();
        let recv_ns = realtime_ns();
        let reply = match Tick::from_proto(&t) {
            Err(reject) => Reply::rejected(Symbol::EMPTY, t.seq, t.exchange_ts_ns, reject, recv, recv_ns),
            Ok(tick) if !self.limits.shard.owns(tick.symbol.as_str()) => {
                Reply::rejected(tick.symbol, t.seq, t.exchange_ts_ns, Reject::WrongShard, recv, recv_ns)
            }
            Ok(tick) => {
                let queue = ReplyQueue::new(1);
                match self.engine.submit(WorkItem { tick, reply_to: queue.clone(), recv, recv_ns, conflate: false }) {
                    Err((_, reject)) => Reply::rejected(tick.symbol, t.seq, t.exchange_ts_ns, reject, recv, recv_ns),
                    Ok(()) => wait_reply(&queue).await?,
                }
            }
        };
        let mut recorder = self.unary_recorder.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(finish(reply, Some(t.symbol), &mut recorder, &self.telemetry)))
    }
}

async fn wait_reply(queue: &Arc<ReplyQueue>) -> Result<Reply, EdgeError> {
    // The engine answers every queued tick, also while shutting down (it drains its queue).
    let reply = poll_fn(|cx| match queue.poll_pop(cx.waker()) {
        Some(r) => std::task::Poll::Ready(Some(r)),
        None if Arc::strong_count(queue) == 1 => std::task::Poll::Ready(queue.pop()),
        None => std::task::Poll::Pending,
    })
    .await;
    reply.ok_or(EdgeError::EngineStopped)
}
