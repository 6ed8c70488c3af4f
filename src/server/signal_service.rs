//! `quantd.v1.SignalService`: the streaming and unary handlers. Plain code; the only place a
//! library error becomes a `tonic::Status` is [`super::status`].

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::{Request, Response, Status, Streaming};

use super::realtime_ns;
use super::settings::Backpressure;
use super::status::EdgeError;
use super::streams::{Refused, Streams};
use super::tick_stream::{BatchStream, StreamLimits, TickStream, finish_journaled};
use crate::engine::{EngineHandle, Reply, ReplyQueue, WorkItem};
use crate::journal::Journal;
use crate::proto;
use crate::proto::signal_service_server::SignalService;
use crate::telemetry::{Recorder, Series, StreamEvent, Telemetry};
use crate::text::clip;
use crate::tick::{Reject, Symbol, Tick};

/// Request metadata a client may set on `StreamTicks` to choose its own back-pressure mode
/// (`block`, `reject` or `conflate`) instead of the server's `stream.backpressure`.
pub const BACKPRESSURE_HEADER: &str = "x-quantd-backpressure";

/// `SignalService`: the tick stream, the unary `Predict`, each tick answered by the engine.
pub struct Signals {
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    limits: StreamLimits,
    streams: Arc<Streams>,
    /// Unary calls share one recorder (a short lock on the unary path only; streams own theirs).
    unary_recorder: Mutex<Recorder>,
    journal: Option<Journal>,
}

impl Signals {
    /// The service over `engine`, with per-stream `limits` and the open-stream registry.
    pub fn new(
        engine: EngineHandle,
        telemetry: Arc<Telemetry>,
        limits: StreamLimits,
        streams: Arc<Streams>,
        journal: Option<Journal>,
    ) -> Self {
        let unary_recorder = Mutex::new(telemetry.latency.recorder(&[Series::Egress, Series::Total]));
        Self { engine, telemetry, limits, streams, unary_recorder, journal }
    }
}

impl Signals {
    /// The stream's limits, with the back-pressure mode its request headers choose (refused,
    /// and counted, when the header is malformed or repeated).
    fn stream_limits(&self, metadata: &tonic::metadata::MetadataMap) -> Result<StreamLimits, Status> {
        let mut limits = self.limits;
        let modes = metadata.get_all(BACKPRESSURE_HEADER);
        let mut modes = modes.iter();
        if let Some(mode) = modes.next() {
            let repeated = 1 + modes.count();
            let parsed = mode.to_str().ok().and_then(|m| m.parse::<Backpressure>().ok());
            let refusal = match parsed {
                _ if repeated > 1 => Some(EdgeError::RepeatedBackpressure(repeated)),
                Some(m) => {
                    limits.mode = m;
                    None
                }
                None => Some(EdgeError::BadBackpressure(clip(&format!("{mode:?}")).to_string())),
            };
            if let Some(e) = refusal {
                self.telemetry.counters.streams.add(StreamEvent::RefusedBadOption, 1);
                return Err(e.into());
            }
        }
        Ok(limits)
    }
}

/// A stream the caps refused, as its status.
fn refused(r: Refused) -> Status {
    match r {
        Refused::Server(n) => EdgeError::TooManyStreams(n).into(),
        Refused::Peer(n) => EdgeError::TooManyStreamsFromPeer(n).into(),
    }
}

#[tonic::async_trait]
impl SignalService for Signals {
    type StreamTicksStream = TickStream;
    type StreamTickBatchesStream = BatchStream;

    async fn stream_ticks(&self, request: Request<Streaming<proto::Tick>>) -> Result<Response<TickStream>, Status> {
        let limits = self.stream_limits(request.metadata())?;
        let client = request.remote_addr();
        let (engine, telemetry) = (self.engine.clone(), self.telemetry.clone());
        let journal = self.journal.clone();
        TickStream::open(request.into_inner(), engine, telemetry, limits, self.streams.clone(), client, journal)
            .map(Response::new)
            .map_err(refused)
    }

    async fn stream_tick_batches(
        &self,
        request: Request<Streaming<proto::TickBatch>>,
    ) -> Result<Response<BatchStream>, Status> {
        let limits = self.stream_limits(request.metadata())?;
        let client = request.remote_addr();
        let (engine, telemetry) = (self.engine.clone(), self.telemetry.clone());
        let journal = self.journal.clone();
        TickStream::open_batches(request.into_inner(), engine, telemetry, limits, self.streams.clone(), client, journal)
            .map(Response::new)
            .map_err(refused)
    }

    async fn predict_batch(&self, request: Request<proto::TickBatch>) -> Result<Response<proto::SignalBatch>, Status> {
        let ticks = request.into_inner().ticks;
        let recv = Instant::now();
        let recv_ns = realtime_ns();
        // A unary batch is one stream in the journal.
        let stream = self.journal.as_ref().map(Journal::open_stream);
        let oversize = ticks.len() > self.limits.max_batch_ticks;
        let queue = ReplyQueue::new(ticks.len().max(1));
        // Every tick is submitted before any answer is awaited: the engine sees the whole batch.
        let mut answers = Vec::with_capacity(ticks.len());
        for (i, t) in ticks.iter().enumerate() {
            let journal_refuses = self
                .journal
                .as_ref()
                .zip(stream)
                .is_some_and(|(j, id)| !j.record_tick(t, id, i as u64, recv_ns, false));
            let refused =
                |symbol, reject| Some(Reply::rejected(symbol, t.seq, t.exchange_ts_ns, reject, recv, recv_ns));
            let answer = match Tick::from_proto(t) {
                _ if journal_refuses => refused(Symbol::EMPTY, Reject::JournalUnavailable),
                _ if oversize => refused(Symbol::EMPTY, Reject::BatchTooLarge),
                Err(reject) => refused(Symbol::EMPTY, reject),
                Ok(tick) if !self.limits.shard.owns(tick.symbol.as_str()) => refused(tick.symbol, Reject::WrongShard),
                Ok(tick) => {
                    match self.engine.submit(WorkItem { tick, reply_to: queue.clone(), recv, recv_ns, conflate: false })
                    {
                        Err((_, reject)) => refused(tick.symbol, reject),
                        Ok(()) => None, // the engine answers, in submission order
                    }
                }
            };
            answers.push(answer);
        }
        let mut replies = Vec::with_capacity(ticks.len());
        for answer in answers {
            replies.push(match answer {
                Some(reply) => reply,
                None => wait_reply(&queue).await?,
            });
        }
        let mut recorder = self.unary_recorder.lock().unwrap_or_else(|e| e.into_inner());
        let signals = replies
            .into_iter()
            .zip(ticks)
            .enumerate()
            .map(|(i, (reply, t))| {
                let journal = self.journal.as_ref().zip(stream).map(|(j, id)| (j, id, i as u64));
                finish_journaled(reply, Some(t.symbol), &mut recorder, &self.telemetry, journal)
            })
            .collect();
        Ok(Response::new(proto::SignalBatch { signals }))
    }

    async fn predict(&self, request: Request<proto::Tick>) -> Result<Response<proto::Signal>, Status> {
        let t = request.into_inner();
        let recv = Instant::now();
        let recv_ns = realtime_ns();
        // A unary call is a stream of one tick in the journal.
        let stream = self.journal.as_ref().map(Journal::open_stream);
        let journal_refuses =
            self.journal.as_ref().zip(stream).is_some_and(|(j, id)| !j.record_tick(&t, id, 0, recv_ns, false));
        let reply = match Tick::from_proto(&t) {
            _ if journal_refuses => {
                Reply::rejected(Symbol::EMPTY, t.seq, t.exchange_ts_ns, Reject::JournalUnavailable, recv, recv_ns)
            }
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
        let journal = self.journal.as_ref().zip(stream).map(|(j, id)| (j, id, 0));
        let mut recorder = self.unary_recorder.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(finish_journaled(reply, Some(t.symbol), &mut recorder, &self.telemetry, journal)))
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
