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
use crate::routes::{MODEL_HEADER, RouteId, parse_model_header};
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

    /// The stream's limits, with the back-pressure mode and the model its request headers
    /// choose (refused, and counted, when a header is malformed or repeated, or names a model
    /// that is not served).
    fn stream_limits(&self, metadata: &tonic::metadata::MetadataMap) -> Result<StreamLimits, Status> {
        let mut limits = self.limits;
        let refusal = self.choose_mode(metadata, &mut limits).and_then(|()| self.choose_model(metadata, &mut limits));
        refusal.map(|()| limits).map_err(|e| {
            self.telemetry.counters.streams.add(StreamEvent::RefusedBadOption, 1);
            e.into()
        })
    }

    /// The route a unary call's ticks take (its `x-quantd-model`, when given).
    fn unary_route(&self, metadata: &tonic::metadata::MetadataMap) -> Result<RouteId, Status> {
        let mut limits = self.limits;
        self.choose_model(metadata, &mut limits).inspect_err(|_| {
            self.telemetry.counters.streams.add(StreamEvent::RefusedBadOption, 1);
        })?;
        Ok(limits.route)
    }

    /// `x-quantd-backpressure`, when given.
    fn choose_mode(&self, metadata: &tonic::metadata::MetadataMap, limits: &mut StreamLimits) -> Result<(), EdgeError> {
        let Some(mode) = single_header(metadata, BACKPRESSURE_HEADER, EdgeError::RepeatedBackpressure)? else {
            return Ok(());
        };
        match mode.to_str().ok().and_then(|m| m.parse::<Backpressure>().ok()) {
            Some(m) => {
                limits.mode = m;
                Ok(())
            }
            None => Err(EdgeError::BadBackpressure(clip(&format!("{mode:?}")).to_string())),
        }
    }

    /// `x-quantd-model`, when given: the named model's stream route.
    fn choose_model(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        limits: &mut StreamLimits,
    ) -> Result<(), EdgeError> {
        let bad =
            |v: &tonic::metadata::MetadataValue<_>| EdgeError::BadModelHeader(clip(&format!("{v:?}")).to_string());
        let Some(value) = single_header(metadata, MODEL_HEADER, |n| EdgeError::BadModelHeader(format!("{n} values")))?
        else {
            return Ok(());
        };
        let (name, version) = value.to_str().ok().and_then(parse_model_header).ok_or_else(|| bad(value))?;
        limits.route = self.engine.served().stream_route(name, version).map_err(EdgeError::UnknownModel)?;
        Ok(())
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
        let route = self.unary_route(request.metadata())?;
        Ok(Response::new(proto::SignalBatch { signals: self.answer_unary(request.into_inner().ticks, route).await? }))
    }

    async fn predict(&self, request: Request<proto::Tick>) -> Result<Response<proto::Signal>, Status> {
        // A unary tick is a batch of one.
        let route = self.unary_route(request.metadata())?;
        let mut signals = self.answer_unary(vec![request.into_inner()], route).await?;
        Ok(Response::new(signals.pop().expect("one signal per tick")))
    }
}

impl Signals {
    /// Answers the ticks of a unary call (`Predict`, `PredictBatch`), one signal each in order. The
    /// call is one stream in the journal; every tick is submitted before any answer is awaited,
    /// so the engine sees the whole batch; a batch over `max_batch_ticks` is refused tick by tick.
    async fn answer_unary(&self, ticks: Vec<proto::Tick>, route: RouteId) -> Result<Vec<proto::Signal>, Status> {
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
                    let item = WorkItem { tick, reply_to: queue.clone(), recv, recv_ns, conflate: false, route };
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

/// The one value of header `name` (None: absent); `repeated` makes the error for n values.
fn single_header<'m>(
    metadata: &'m tonic::metadata::MetadataMap,
    name: &str,
    repeated: impl FnOnce(usize) -> EdgeError,
) -> Result<Option<&'m tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, EdgeError> {
    let mut values = metadata.get_all(name).iter();
    let first = values.next();
    match values.count() {
        0 => Ok(first),
        more => Err(repeated(more + 1)),
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
