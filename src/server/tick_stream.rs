//! One `StreamTicks` call: reads ticks, submits them to the engine, and yields exactly one
//! signal per tick in arrival order. A `StreamTickBatches` call is the same stream reading its
//! ticks out of `TickBatch` messages ([`BatchStream`] groups the signals back into one
//! `SignalBatch` per batch).
//!
//! Runs as a tokio task (driven by tonic). Ticks the edge answers itself (stateless checks, a
//! full queue, shutdown, back-pressure) are queued behind earlier in-flight ticks, so the order
//! always holds. At most `window` ticks are in flight to the engine; what happens beyond that is
//! the stream's back-pressure mode ([`Backpressure`]). Memory per stream is bounded: at most
//! `outbound_limit` answered-but-unread signals, past which a slow consumer's stream is ended with
//! RESOURCE_EXHAUSTED rather than buffered without bound. A stream owed a reply polls for it for
//! up to `stream.reply_spin_us` before it sleeps until the engine wakes it.
//!
//! Ticks are read only while the stream is polled, and hyper polls it only while the client's
//! HTTP/2 window has room: a client that stops reading signals stops the reading of its ticks,
//! and flow control holds its sends back. Such a stream is cut by the monitor in
//! [`super::streams`] after `stream.slow_consumer_ms`, and ends, when next polled, with
//! RESOURCE_EXHAUSTED naming how many signals were not delivered and the last seq that was.
//!
//! At a graceful shutdown the stream stops reading, answers every tick it read, and ends with
//! UNAVAILABLE; the trailer `x-quantd-last-seq` names the last tick answered, so the client knows
//! exactly which ticks to resend elsewhere.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use tonic::{Status, Streaming};

use super::realtime_ns;
use super::settings::Backpressure;
use super::streams::{Entered, Probe, Refused, Streams};
use crate::engine::{EngineHandle, Reply, ReplyQueue, WorkItem};
use crate::journal::{Journal, SignalRecord};
use crate::proto;
use crate::telemetry::{Outcome, Recorder, Series, StreamEvent, Telemetry};
use crate::tick::{Reject, Symbol, Tick};

/// Per-stream limits (from the config).
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Most ticks of one stream in flight to the engine.
    pub window: usize,
    /// Most signals answered but not taken by the client.
    pub outbound_limit: usize,
    /// What the stream does at `window` ticks in flight.
    pub mode: Backpressure,
    /// Most distinct symbols on one stream.
    pub max_symbols: usize,
    /// Most ticks in one `TickBatch` (larger: every tick answered `batch_too_large`).
    pub max_batch_ticks: usize,
    /// How long to poll for an owed reply before sleeping until the engine wakes the task.
    pub reply_spin: std::time::Duration,
    /// End a stream that has sent nothing for this long (with nothing owed to it).
    pub idle_timeout: Option<std::time::Duration>,
    /// The symbols this replica owns.
    pub shard: crate::shard::ShardConfig,
    /// The route the stream's ticks take (`x-quantd-model`), or [`crate::routes::BY_SYMBOL`].
    pub route: crate::routes::RouteId,
}

enum Pending {
    /// The engine will post this tick's reply to the stream's reply queue.
    Engine,
    /// Answered at the edge; the raw symbol is echoed as the client sent it.
    Local(Local, String),
}

/// A tick answered at the edge, as it waits in `pending` (a fraction of a [`Reply`]'s size:
/// the queue is reserved for the whole window); its reply is made when it is sent.
struct Local {
    symbol: Symbol,
    seq: u64,
    exchange_ts_ns: i64,
    reject: Reject,
    recv: Instant,
    recv_ns: u64,
    /// When it was answered (the start of its egress stage).
    posted: Instant,
}

impl Local {
    fn reply(self) -> Reply {
        let Local { symbol, seq, exchange_ts_ns, reject, recv, recv_ns, posted } = self;
        Reply { reject: Some(reject), ..Reply::blank(symbol, seq, exchange_ts_ns, recv, recv_ns, posted) }
    }
}

/// Where a stream's ticks come from: single-tick messages, or batches.
pub enum Inbound {
    /// `StreamTicks`: one tick per message.
    Ticks(Streaming<proto::Tick>),
    /// `StreamTickBatches`: one `TickBatch` per message.
    Batches {
        /// The batches, as they arrive.
        batches: Streaming<proto::TickBatch>,
        /// The rest of the batch being read.
        current: std::vec::IntoIter<proto::Tick>,
        /// The batch being read is over `max_batch_ticks`: its ticks are answered at the edge.
        oversize: bool,
    },
}

impl From<Streaming<proto::Tick>> for Inbound {
    fn from(ticks: Streaming<proto::Tick>) -> Self {
        Inbound::Ticks(ticks)
    }
}

impl From<Streaming<proto::TickBatch>> for Inbound {
    fn from(batches: Streaming<proto::TickBatch>) -> Self {
        Inbound::Batches { batches, current: Vec::new().into_iter(), oversize: false }
    }
}

/// One `StreamTicks` call (or the tick side of a `StreamTickBatches` call): reads ticks under its
/// window, submits them, and yields their signals in order.
pub struct TickStream {
    inbound: Inbound,
    /// The tick counts of the batches read and not yet answered in full (batch streams only).
    batch_sizes: VecDeque<usize>,
    inbound_done: bool,
    /// The client ended its side (or it failed): every tick it sent was read.
    client_closed: bool,
    inbound_error: Option<Status>,
    replies: Arc<ReplyQueue>,
    pending: VecDeque<Pending>,
    /// `Pending::Engine` entries in `pending`.
    in_flight: usize,
    /// Ticks were queued to the engine since it was last woken.
    unwoken: bool,
    limits: StreamLimits,
    /// The symbols this stream has sent (foldhash: the set is probed for every tick).
    symbols: HashSet<Symbol, foldhash::fast::RandomState>,
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    recorder: Recorder,
    /// This stream as the monitor sees it; its slot is released on drop.
    probe: Arc<Probe>,
    /// The probe as a waker: ticks, replies and timers are polled with it.
    waker: std::task::Waker,
    streams: Arc<Streams>,
    /// Fires after `idle_timeout` without a tick.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A batch (even an empty one) was read since the idle timer was last reset.
    heard: bool,
    /// The seq of the newest signal handed to the transport.
    last_seq: Option<u64>,
    /// Stopped reading for a graceful shutdown; ends once everything read is answered.
    draining: bool,
    /// Where every tick and signal is recorded, when the journal is on.
    journal: Option<Journal>,
    /// This stream's id in the journal.
    journal_stream: u64,
    /// Ticks read so far (the next tick's index in the journal).
    ticks_read: u64,
    /// Signals sent so far (the next signal's index).
    signals_sent: u64,
    /// The final status was returned: nothing more to poll.
    finished: bool,
}

impl TickStream {
    /// Opens a stream of single ticks or of batches from `client` (its socket address), counted
    /// against the server's stream caps.
    pub fn open(
        inbound: impl Into<Inbound>,
        engine: EngineHandle,
        telemetry: Arc<Telemetry>,
        limits: StreamLimits,
        streams: Arc<Streams>,
        client: Option<SocketAddr>,
        journal: Option<Journal>,
    ) -> Result<Self, Refused> {
        let inbound = inbound.into();
        let probe = streams.open(client)?;
        Ok(Self {
            journal_stream: journal.as_ref().map_or(0, Journal::open_stream),
            journal,
            ticks_read: 0,
            signals_sent: 0,
            waker: probe.waker(),
            inbound,
            batch_sizes: VecDeque::new(),
            inbound_done: false,
            client_closed: false,
            inbound_error: None,
            replies: ReplyQueue::new(limits.window),
            pending: VecDeque::with_capacity(limits.window),
            in_flight: 0,
            unwoken: false,
            limits,
            symbols: HashSet::default(),
            engine,
            recorder: telemetry.latency.recorder(&[Series::Egress, Series::Total]),
            telemetry,
            probe,
            streams,
            idle: limits.idle_timeout.map(|d| Box::pin(tokio::time::sleep(d))),
            heard: false,
            last_seq: None,
            draining: false,
            finished: false,
        })
    }

    /// A final status with the trailers that say what was answered: `x-quantd-last-seq` (the
    /// newest signal handed to the transport, if any) and `x-quantd-undelivered`.
    fn final_status(&mut self, code: tonic::Code, message: String, undelivered: usize) -> Status {
        self.finished = true;
        self.inbound_done = true;
        let mut trailers = tonic::metadata::MetadataMap::new();
        if let Some(seq) = self.last_seq {
            trailers.insert("x-quantd-last-seq", seq.into());
        }
        trailers.insert("x-quantd-undelivered", undelivered.into());
        Status::with_metadata(code, message, trailers)
    }

    fn last_seq_text(&self) -> String {
        self.last_seq.map_or("none".to_owned(), |s| s.to_string())
    }

    /// The end of a stream the monitor cut: its client did not read for `slow_consumer_ms`.
    fn end_cut(&mut self) -> Status {
        let undelivered = self.pending.len();
        self.pending.clear();
        let last = self.last_seq_text();
        let after = self.streams.slow_after().unwrap_or_default();
        self.final_status(
            tonic::Code::ResourceExhausted,
            format!(
                "slow consumer: no signal read for {after:?} (stream.slow_consumer_ms); {undelivered} signals were not \
                 delivered (counted dropped); the last delivered was seq {last}; stream ended"
            ),
            undelivered,
        )
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

    /// Reads the next tick: from the stream, or from the batch being read (taking the next batch
    /// when it is used up; its size is noted, and an oversize batch is marked). `None`: nothing
    /// now (Pending), or the inbound side ended or failed (then `inbound_done` is set).
    fn read(&mut self, cx: &mut Context<'_>) -> Option<(proto::Tick, Option<Reject>)> {
        let polled = match &mut self.inbound {
            Inbound::Ticks(ticks) => Pin::new(ticks).poll_next(cx).map(|t| t.map(|t| t.map(|t| (t, None)))),
            Inbound::Batches { batches, current, oversize } => loop {
                if let Some(t) = current.next() {
                    break Poll::Ready(Some(Ok((t, oversize.then_some(Reject::BatchTooLarge)))));
                }
                match Pin::new(&mut *batches).poll_next(cx) {
                    Poll::Ready(Some(Ok(b))) => {
                        // A batch, even an empty one, is the client's sign of life.
                        self.heard = true;
                        self.batch_sizes.push_back(b.ticks.len());
                        *oversize = b.ticks.len() > self.limits.max_batch_ticks;
                        *current = b.ticks.into_iter();
                    }
                    Poll::Ready(Some(Err(status))) => break Poll::Ready(Some(Err(status))),
                    Poll::Ready(None) => break Poll::Ready(None),
                    Poll::Pending => break Poll::Pending,
                }
            },
        };
        match polled {
            Poll::Ready(Some(Ok(t))) => Some(t),
            Poll::Ready(Some(Err(status))) => {
                (self.inbound_done, self.client_closed) = (true, true);
                self.inbound_error = Some(status);
                None
            }
            Poll::Ready(None) => {
                (self.inbound_done, self.client_closed) = (true, true);
                None
            }
            Poll::Pending => None,
        }
    }

    /// Takes one tick read at `recv` (`recv_ns` on the wall clock): answers it at the edge or
    /// submits it to the engine (without waking it; `poll_signal` wakes it once per read).
    fn accept(&mut self, t: proto::Tick, refuse: Option<Reject>, recv: Instant, recv_ns: u64) {
        let index = self.ticks_read;
        self.ticks_read += 1;
        let conflate = self.limits.mode == Backpressure::Conflate;
        let journal_refuses =
            self.journal.as_ref().is_some_and(|j| !j.record_tick(&t, self.journal_stream, index, recv_ns, conflate));
        let (seq, exchange_ts_ns) = (t.seq, t.exchange_ts_ns);
        let local =
            |reject, symbol| Local { symbol, seq, exchange_ts_ns, reject, recv, recv_ns, posted: Instant::now() };
        // A tick the edge refuses before reading it (its batch is too large) is answered like one
        // that fails the stateless checks.
        let parsed = refuse.map_or_else(|| Tick::from_proto(&t), Err);
        let entry = match parsed {
            _ if journal_refuses => Pending::Local(local(Reject::JournalUnavailable, Symbol::EMPTY), t.symbol),
            Err(reject) => Pending::Local(local(reject, Symbol::EMPTY), t.symbol),
            Ok(tick) => {
                // Only a symbol new to the stream is checked against the caps and the shard
                // (hashed once); accepted ones are in `symbols`.
                let known = self.symbols.contains(&tick.symbol);
                let refused = if known {
                    None
                } else if self.symbols.len() >= self.limits.max_symbols {
                    Some(Reject::TooManySymbols)
                } else if !self.limits.shard.owns(tick.symbol.as_str()) {
                    Some(Reject::WrongShard)
                } else if !self.streams.admit_symbol(&self.probe, tick.symbol) {
                    // The connection's and the client address's caps (`stream.max_symbols_per_
                    // connection`, `max_symbols_per_peer`), over all their streams.
                    Some(Reject::TooManySymbols)
                } else {
                    None
                };
                match refused.or((self.in_flight >= self.limits.window).then_some(Reject::Overloaded)) {
                    Some(reject) => Pending::Local(local(reject, tick.symbol), t.symbol),
                    None => {
                        if !known {
                            self.symbols.insert(tick.symbol);
                        }
                        let route = self.limits.route;
                        let item = WorkItem { tick, reply_to: self.replies.clone(), recv, recv_ns, conflate, route };
                        match self.engine.submit_deferred(item) {
                            Ok(()) => {
                                self.in_flight += 1;
                                self.unwoken = true;
                                Pending::Engine
                            }
                            Err((item, reject)) => Pending::Local(local(reject, item.tick.symbol), t.symbol),
                        }
                    }
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
        None if reply.conflated => counters.outcomes.add(Outcome::Conflated, 1),
        None if reply.warming_up => counters.outcomes.add(Outcome::WarmingUp, 1),
        None => counters.outcomes.add(Outcome::Scored, 1),
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

/// [`finish`], and the signal recorded in the journal, when there is one, as the `index`th
/// signal of journal stream `stream` (with the send time `finish` stamped).
pub fn finish_journaled(
    reply: Reply,
    symbol: Option<String>,
    recorder: &mut Recorder,
    telemetry: &Telemetry,
    journal: Option<(&Journal, u64, u64)>,
) -> proto::Signal {
    let record = journal.map(|(j, stream, index)| (j, SignalRecord::new(&reply, symbol.as_deref(), stream, index, 0)));
    let signal = finish(reply, symbol, recorder, telemetry);
    if let Some((j, mut r)) = record {
        r.send_ns = signal.server_send_ns;
        j.signal(r);
    }
    signal
}

impl Stream for TickStream {
    type Item = Result<proto::Signal, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.probe.enter(cx.waker()) == Entered::Cut {
            return Poll::Ready(Some(Err(this.end_cut())));
        }
        let waker = this.waker.clone();
        let out = this.poll_signal(&mut Context::from_waker(&waker));
        if this.finished {
            this.probe.finish();
        } else {
            this.probe.leave(this.pending.len());
        }
        out
    }
}

impl TickStream {
    /// The engine's next reply, polled for up to `reply_spin` (`stream.reply_spin_us`) while
    /// the stream owes it and nothing else is ready: the engine usually answers within a few µs,
    /// and a reply taken here needs no wake-up of this task through the runtime.
    fn spin_for_reply(&self) -> Option<Reply> {
        if let Some(r) = self.replies.pop() {
            return Some(r);
        }
        if self.limits.reply_spin.is_zero() {
            return None;
        }
        let until = Instant::now() + self.limits.reply_spin;
        loop {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
            if let Some(r) = self.replies.pop() {
                return Some(r);
            }
            if Instant::now() >= until {
                return None;
            }
        }
    }

    fn poll_signal(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<proto::Signal, Status>>> {
        if !self.draining && self.probe.draining() {
            // Graceful shutdown: read no more; answer what was read, then end with a status.
            self.draining = true;
            self.inbound_done = true;
        }
        // Read (and submit) everything available first, so the engine sees whole bursts (whole
        // batches), and wake it once for them all. The ticks of one read share one receive stamp
        // (they were in hand together; a TickBatch is decoded whole).
        let mut stamp = None;
        while self.may_read() {
            match self.read(cx) {
                Some((t, refuse)) => {
                    let (recv, recv_ns) = *stamp.get_or_insert_with(|| (Instant::now(), realtime_ns()));
                    self.accept(t, refuse, recv, recv_ns);
                }
                None => break,
            }
        }
        // Anything read (a tick, or a batch even if empty) restarts the idle timer, once per read.
        let heard = std::mem::take(&mut self.heard) || stamp.is_some();
        if heard && let (Some(idle), Some(d)) = (self.idle.as_mut(), self.limits.idle_timeout) {
            let at = stamp.map_or_else(Instant::now, |(recv, _)| recv);
            idle.as_mut().reset(tokio::time::Instant::from_std(at) + d);
        }
        if std::mem::take(&mut self.unwoken) {
            self.engine.wake();
        }
        if self.limits.mode == Backpressure::Reject && self.pending.len() >= self.limits.outbound_limit {
            // The client sends but does not read: end its stream rather than buffer without bound.
            let undelivered = self.pending.len();
            self.telemetry.counters.outcomes.add(Outcome::Dropped, undelivered as u64);
            self.telemetry.counters.streams.add(StreamEvent::SlowConsumer, 1);
            tracing::warn!(undelivered, "slow consumer: stream.outbound_limit signals unread; stream ended");
            self.pending.clear();
            let message = format!(
                "slow consumer: {undelivered} signals unread (stream.outbound_limit); they were not delivered (counted \
                 dropped); stream ended"
            );
            return Poll::Ready(Some(Err(self.final_status(tonic::Code::ResourceExhausted, message, undelivered))));
        }
        let (reply, symbol) = match self.pending.pop_front() {
            // A client that had half-closed had every tick read and answered: a normal end.
            None if self.draining && !self.client_closed => {
                self.telemetry.counters.streams.add(StreamEvent::Shutdown, 1);
                let last = self.last_seq_text();
                let message = format!(
                    "shutting down: every tick this stream sent before the drain was answered (the last was seq {last}); \
                     reconnect to another replica"
                );
                return Poll::Ready(Some(Err(self.final_status(tonic::Code::Unavailable, message, 0))));
            }
            None if self.inbound_done => {
                self.finished = true;
                return Poll::Ready(self.inbound_error.take().map(Err));
            }
            None => {
                // Nothing owed and nothing arriving: end the stream once it has been idle too long.
                if let Some(idle) = self.idle.as_mut()
                    && idle.as_mut().poll(cx).is_ready()
                {
                    self.telemetry.counters.streams.add(StreamEvent::IdleTimeout, 1);
                    let d = self.limits.idle_timeout.unwrap_or_default();
                    let message =
                        format!("no tick for {d:?} (stream.idle_timeout_ms); stream closed, reconnect to resume");
                    return Poll::Ready(Some(Err(self.final_status(tonic::Code::DeadlineExceeded, message, 0))));
                }
                return Poll::Pending;
            }
            Some(Pending::Local(r, s)) => (r.reply(), Some(s)),
            Some(Pending::Engine) => match self.spin_for_reply().or_else(|| self.replies.poll_pop(cx.waker())) {
                Some(r) => {
                    self.in_flight -= 1;
                    (r, None)
                }
                None => {
                    self.pending.push_front(Pending::Engine);
                    return Poll::Pending;
                }
            },
        };
        self.last_seq = Some(reply.seq);
        let journal = self.journal.as_ref().map(|j| (j, self.journal_stream, self.signals_sent));
        self.signals_sent += 1;
        Poll::Ready(Some(Ok(finish_journaled(reply, symbol, &mut self.recorder, &self.telemetry, journal))))
    }
}

impl Drop for TickStream {
    fn drop(&mut self) {
        self.streams.release(&self.probe);
        // The client went away: whatever was read but not answered is counted as dropped (a
        // stream the monitor cut had it counted then, even if it was never polled again).
        if !self.pending.is_empty() && !self.probe.was_cut() {
            self.telemetry.counters.outcomes.add(Outcome::Dropped, self.pending.len() as u64);
            tracing::debug!(dropped = self.pending.len(), "stream closed with ticks in flight");
        }
    }
}

/// One `StreamTickBatches` call: a [`TickStream`] reading batches, its signals grouped back into
/// one `SignalBatch` per `TickBatch`, in order (an empty batch gets an empty answer).
pub struct BatchStream {
    inner: TickStream,
    /// The signals of the batch at the front of `inner.batch_sizes`, so far.
    collected: Vec<proto::Signal>,
    /// A signal of a later batch, held while the batches before it go out: empty batches read
    /// in the same poll as its tick are complete before it (their answers go first).
    held: Option<proto::Signal>,
    /// The stream's final status, held back while a short last batch is sent first.
    ended: Option<Option<Result<proto::SignalBatch, Status>>>,
}

impl BatchStream {
    /// Groups the signals of `inner`, a stream opened on batches, back into batches.
    pub fn new(inner: TickStream) -> Self {
        Self { inner, collected: Vec::new(), held: None, ended: None }
    }

    /// The front batch, when every one of its signals is in.
    fn complete(&mut self) -> Option<proto::SignalBatch> {
        let &n = self.inner.batch_sizes.front()?;
        (self.collected.len() == n).then(|| {
            self.inner.batch_sizes.pop_front();
            proto::SignalBatch { signals: std::mem::take(&mut self.collected) }
        })
    }
}

impl Stream for BatchStream {
    type Item = Result<proto::SignalBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(end) = this.ended.take() {
            return Poll::Ready(end);
        }
        loop {
            if let Some(batch) = this.complete() {
                return Poll::Ready(Some(Ok(batch)));
            }
            if let Some(signal) = this.held.take() {
                this.collected.push(signal);
                continue;
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                // Held until the batches complete before it (empty ones read with it) are out.
                Poll::Ready(Some(Ok(signal))) => this.held = Some(signal),
                // The stream ends (a drain, a cut, the client's end): the signals of a batch it
                // answered only in part go out first, as a short batch; the status's
                // `x-quantd-last-seq` names the last tick answered.
                Poll::Ready(other) => {
                    let end = match other {
                        Some(Err(status)) => Some(Err(status)),
                        _ => None,
                    };
                    if this.collected.is_empty() {
                        return Poll::Ready(end);
                    }
                    this.inner.batch_sizes.pop_front();
                    this.ended = Some(end);
                    return Poll::Ready(Some(Ok(proto::SignalBatch { signals: std::mem::take(&mut this.collected) })));
                }
                // An empty batch read in this poll is complete now: no wake-up would come for it.
                Poll::Pending => return this.complete().map_or(Poll::Pending, |b| Poll::Ready(Some(Ok(b)))),
            }
        }
    }
}
