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
use super::tick_stream::{BatchStream, Inbound, StreamLimits, TickStream, finish_journaled};
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

    /// Opens a tick stream (single ticks or batches) with the limits its headers choose, or the
    /// status that refuses it.
    fn open_stream<I: Into<Inbound>>(&self, request: Request<I>) -> Result<TickStream, Status> {
        let limits = self.stream_limits(request.metadata())?;
        let client = request.remote_addr();
        let (engine, telemetry) = (self.engine.clone(), self.telemetry.clone());
        let journal = self.journal.clone();
        TickStream::open(request.into_inner(), engine, telemetry, limits, self.streams.clone(), client, journal)
            .map_err(|r| match r {
                Refused::Server(n) => EdgeError::TooManyStreams(n).into(),
                Refused::Peer(n) => EdgeError::TooManyStreamsFromPeer(n).into(),
            })
    }
}

#[tonic::async_trait]
impl SignalService for Signals {
    type StreamTicksStream = TickStream;
    type StreamTickBatchesStream = BatchStream;

    async fn stream_ticks(&self, request: Request<Streaming<proto::Tick>>) -> Result<Response<TickStream>, Status> {
        self.open_stream(request).map(Response::new)
    }

    async fn stream_tick_batches(
        &self,
        request: Request<Streaming<proto::TickBatch>>,
    ) -> Result<Response<BatchStream>, Status> {
        self.open_stream(request).map(|s| Response::new(BatchStream::new(s)))
    }

    async fn predict_batch(&self, request: Request<proto::TickBatch>) -> Result<Response<proto::SignalBatch>, Status> {
        Ok(Response::new(proto::SignalBatch { signals: self.answer_unary(request.into_inner().ticks).await? }))
    }

    async fn predict(&self, request: Request<proto::Tick>) -> Result<Response<proto::Signal>, Status> {
        // A unary tick is a batch of one.
        let mut signals = self.answer_unary(vec![request.into_inner()]).await?;
        Ok(Response::new(signals.pop().expect("one signal per tick")))
    }
}

impl Signals {
    /// Answers the ticks of a unary call (`Predict`, `PredictBatch`), one signal each in order. The
    /// call is one stream in the journal; every tick is submitted before any answer is awaited,
    /// so the engine sees the whole batch; a batch over `max_batch_ticks` is refused tick by tick.
    async fn answer_unary(&self, ticks: Vec<proto::Tick>) -> Result<Vec<proto::Signal>, Status> {
        let recv = Instant::now();
        let recv_ns = realtime_ns();
        let stream = self.journal.as_ref().map(Journal::open_stream);
        let oversize = ticks.len() > self.limits.max_batch_ticks;
        let queue = ReplyQueue::new(ticks.len().max(1));
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
                    let item = WorkItem { tick, reply_to: queue.clone(), recv, recv_ns, conflate: false };
                    match self.engine.submit_deferred(item) {
                        Err((_, reject)) => refused(tick.symbol, reject),
                        Ok(()) => None, // the engine answers, in submission order
                    }
                }
            };
            answers.push(answer);
        }
        self.engine.wake(); // once for the whole batch
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
        Ok(signals)
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
