//! The journal: every tick as it was received and every signal as it was sent, written as Arrow
//! IPC streams that pandas, polars and pyarrow open directly.
//!
//! The gRPC I/O tasks (`quantd-io`) hand records over through one bounded lock-free ring
//! ([`Journal::tick`], [`Journal::signal`]); they never wait on the journal. The `quantd-journal`
//! thread ([`JournalThread`]) pops them, writes Arrow record batches ([`writer`]), flushes and
//! fsyncs on its own intervals, rotates files by size and age and keeps the configured number of
//! them. On shutdown it drains the ring before it exits.
//!
//! Files: `<dir>/ticks-<start>-<n>.arrows`, `<dir>/signals-<start>-<n>.arrows` and
//! `<dir>/models-<start>-<n>.arrows` (each model a signal names: its file's sha256 and feature
//! schema; Arrow IPC stream format, one record batch per flush). A file being written ends in `.partial` and is
//! renamed when closed, so after a crash the one partly written file is recognisable: everything
//! up to its last complete batch reads back, and the end-of-stream marker is missing.
//!
//! A full ring or a failing disk is a configured, counted outcome ([`OnFull`]):
//! `drop_and_count` keeps serving and counts each record not journaled;
//! `refuse_ticks` refuses new ticks (`journal_unavailable`) while the ring has no room for a tick
//! and its signal, or while the last write failed.

pub mod read;
pub mod warm;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::control_thread::ControlThread;
use crate::engine::Reply;
use crate::features::NUM_FEATURES;
use crate::problem::{Kind, Problems};
use crate::proto;
use crate::risk::RiskFlags;
use crate::telemetry::{JournalEvent, Telemetry};
use crate::tick::{Reject, Symbol};

/// What happens when a record finds the ring full, or the disk refuses writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Keep serving; each record not journaled is counted (`quantd_journal_events_total`).
    #[default]
    DropAndCount,
    /// Refuse new ticks (`journal_unavailable`) until the journal keeps up again.
    RefuseTicks,
}

/// `[journal]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Journal every tick and signal (`make run` turns it on, into `journal/`).
    pub enabled: bool,
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// Records the ring holds between the I/O threads and the journal thread.
    pub ring_capacity: usize,
    /// Rows per Arrow record batch at most; a batch is also written every `flush_ms`.
    pub batch_rows: usize,
    /// A batch is written (and the file flushed) at least this often, ms.
    pub flush_ms: u64,
    /// The files are fsynced at least this often, ms (0: at every flush).
    pub fsync_ms: u64,
    /// A file is closed and a new one begun past this many bytes.
    pub rotate_bytes: u64,
    /// ... or past this age, seconds.
    pub rotate_secs: u64,
    /// Closed files kept per kind (ticks, signals); older ones are deleted (0: keep all).
    pub retention_files: usize,
    /// A full ring or a failing disk: `drop_and_count` or `refuse_ticks`.
    pub on_full: OnFull,
    /// What each signal record keeps of the feature row it was scored on: its `hash` (8 bytes)
    /// or the whole `row` (14 floats), for debugging and retraining on served rows.
    pub feature_rows: FeatureRows,
    /// The journal thread's nice value (0: unchanged). Positive by default: on a machine whose
    /// cores the engine and the I/O threads keep busy, encoding and writing batches yields to
    /// them, and the ring absorbs the delay.
    pub nice: i32,
}

/// What a signal record keeps of its feature row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureRows {
    /// [`crate::features::row_hash`] only (the audit checks it).
    #[default]
    Hash,
    /// The hash and the row.
    Row,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("journal"),
            ring_capacity: 1 << 16,
            batch_rows: 4096,
            flush_ms: 100,
            fsync_ms: 1000,
            rotate_bytes: 256 << 20,
            rotate_secs: 3600,
            retention_files: 0,
            on_full: OnFull::DropAndCount,
            feature_rows: FeatureRows::Hash,
            nice: 10,
        }
    }
}

impl JournalConfig {
    /// The section's own problems (fields named `journal.*`).
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.check(self.ring_capacity < 2, "journal.ring_capacity", Kind::OutOfRange, || {
            format!("journal.ring_capacity {} must be at least 2 (a tick and its signal)", self.ring_capacity)
        });
        p.check(self.batch_rows == 0, "journal.batch_rows", Kind::OutOfRange, || {
            "journal.batch_rows must be > 0".into()
        });
        p.check(self.flush_ms == 0, "journal.flush_ms", Kind::OutOfRange, || "journal.flush_ms must be > 0".into());
        p.check(self.rotate_bytes < 4096, "journal.rotate_bytes", Kind::OutOfRange, || {
            format!("journal.rotate_bytes {} must be at least 4096", self.rotate_bytes)
        });
        p.check(self.rotate_secs == 0, "journal.rotate_secs", Kind::OutOfRange, || {
            "journal.rotate_secs must be > 0".into()
        });
        p.check(self.enabled && self.dir.as_os_str().is_empty(), "journal.dir", Kind::OutOfRange, || {
            "journal.dir must be set when the journal is enabled".into()
        });
        p
    }
}

/// A tick as the server received it, before any check: the wire values as they came (a refused
/// tick is journaled too), where and when it arrived.
#[derive(Clone, Copy, Debug)]
pub struct TickRecord {
    /// Arrival order over all streams (one counter for the server).
    pub arrival: u64,
    /// The stream (or unary call) it came on.
    pub stream: u64,
    /// Its index in that stream, from 0; its signal has the same index.
    pub index: u64,
    /// CLOCK_REALTIME ns when the edge decoded it (the signal's `server_recv_ns`).
    pub recv_ns: u64,
    /// The symbol as sent, cut at 32 bytes (a longer one is refused `symbol_too_long`).
    pub symbol: Symbol,
    /// The tick's sequence number, as sent.
    pub seq: u64,
    /// The tick's exchange time, as sent.
    pub exchange_ts_ns: i64,
    /// Wire values of `TickKind` and `Aggressor`.
    pub kind: i32,
    /// The wire value of `Aggressor`.
    pub aggressor: i32,
    /// Best bid price.
    pub bid_px: f64,
    /// Best bid size.
    pub bid_qty: f64,
    /// Best ask price.
    pub ask_px: f64,
    /// Best ask size.
    pub ask_qty: f64,
    /// Trade price.
    pub trade_px: f64,
    /// Trade size.
    pub trade_qty: f64,
    /// The stream's back-pressure mode was `conflate` (the engine scores only a symbol's
    /// newest tick of a pass from such streams).
    pub conflate: bool,
}

impl TickRecord {
    /// The record of tick `index` of `stream` as the edge decoded it (`arrival`: its place in the server's arrival order).
    pub fn new(t: &proto::Tick, stream: u64, index: u64, arrival: u64, recv_ns: u64, conflate: bool) -> Self {
        Self {
            conflate,
            arrival,
            stream,
            index,
            recv_ns,
            symbol: Symbol::truncated(&t.symbol),
            seq: t.seq,
            exchange_ts_ns: t.exchange_ts_ns,
            kind: t.kind,
            aggressor: t.aggressor,
            bid_px: t.bid_px,
            bid_qty: t.bid_qty,
            ask_px: t.ask_px,
            ask_qty: t.ask_qty,
            trade_px: t.trade_px,
            trade_qty: t.trade_qty,
        }
    }
}

impl TickRecord {
    /// The tick as the engine takes it, or why the edge refused it (stateless checks).
    pub fn tick(&self) -> Result<crate::tick::Tick, Reject> {
        crate::tick::Tick::from_proto(&self.to_proto())
    }

    /// The tick as it came over the wire (the journal keeps the wire values).
    pub fn to_proto(&self) -> proto::Tick {
        proto::Tick {
            symbol: self.symbol.as_str().to_owned(),
            seq: self.seq,
            exchange_ts_ns: self.exchange_ts_ns,
            kind: self.kind,
            aggressor: self.aggressor,
            bid_px: self.bid_px,
            bid_qty: self.bid_qty,
            ask_px: self.ask_px,
            ask_qty: self.ask_qty,
            trade_px: self.trade_px,
            trade_qty: self.trade_qty,
        }
    }
}

/// A signal as the server sent it, and the decision behind it.
#[derive(Clone, Debug)]
pub struct SignalRecord {
    /// The stream its tick came on.
    pub stream: u64,
    /// The index of its tick in the stream.
    pub index: u64,
    /// CLOCK_REALTIME ns when it was handed to the transport (`server_send_ns`).
    pub send_ns: u64,
    /// CLOCK_REALTIME ns when its tick was received.
    pub recv_ns: u64,
    /// The tick's symbol.
    pub symbol: Symbol,
    /// The tick's sequence number.
    pub seq: u64,
    /// The tick's exchange time.
    pub exchange_ts_ns: i64,
    /// `name@version` of the model that scored it (none for a tick refused before scoring).
    pub model: Option<Arc<str>>,
    /// The route it took (None: answered at the edge, or a journal older than routes).
    pub route: Option<Arc<str>>,
    /// The model's raw output.
    pub score: f64,
    /// The policy's target before the risk layer.
    pub policy_position: f64,
    /// The position sent, after the risk layer.
    pub target_position: f64,
    /// The risk limits that bound it.
    pub risk: RiskFlags,
    /// The symbol was still warming up.
    pub warming_up: bool,
    /// Superseded by a newer tick of its symbol in the same pass.
    pub conflated: bool,
    /// Why its tick was refused, if it was.
    pub reject: Option<Reject>,
    /// The engine pass that answered it (0: answered at the edge) and its place in the pass.
    pub batch: u64,
    /// Its place in that pass.
    pub batch_pos: u32,
    /// The VaR scale the risk gate applied (1: none, or the tick never reached the gate).
    pub var_scale: f64,
    /// [`crate::features::row_hash`] of the feature row it was scored on (0: none); the journal
    /// thread computes it from `features` when it writes the record (off the I/O thread).
    pub features_hash: u64,
    /// The row itself (the journal keeps it only where `journal.feature_rows = "row"`).
    pub features: Option<[f32; NUM_FEATURES]>,
}

impl SignalRecord {
    /// The record of `reply`, sent on `stream` as its `index`th signal; `raw_symbol` is the
    /// symbol as the client sent it when the edge answered the tick itself.
    pub fn new(reply: &Reply, raw_symbol: Option<&str>, stream: u64, index: u64, send_ns: u64) -> Self {
        Self {
            stream,
            index,
            send_ns,
            recv_ns: reply.recv_ns,
            symbol: raw_symbol.map_or(reply.symbol, Symbol::truncated),
            seq: reply.seq,
            exchange_ts_ns: reply.exchange_ts_ns,
            model: reply.model.clone(),
            route: reply.route.clone(),
            score: reply.score,
            policy_position: reply.policy_position,
            target_position: reply.target_position,
            risk: reply.risk,
            warming_up: reply.warming_up,
            conflated: reply.conflated,
            reject: reply.reject,
            batch: reply.batch,
            batch_pos: reply.batch_pos,
            var_scale: reply.external.var_scale,
            features_hash: 0,
            features: reply.features,
        }
    }
}

/// A model as it was loaded, what a signal's `model` (`name@version`) stands for: the model
/// file's sha256, the feature schema, the directory and the backend. Written to `models-*.arrows`
/// when the registry loads a version (at start-up, for a swap, a shadow, a rollback target).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRecord {
    /// CLOCK_REALTIME ns of the load.
    pub loaded_ns: u64,
    /// The model's `name@version`.
    pub model: String,
    /// The sha256 of its `model.onnx`.
    pub sha256: String,
    /// The feature schema's version.
    pub schema_version: String,
    /// The feature schema's hash.
    pub schema_hash: String,
    /// The version directory it was loaded from.
    pub dir: String,
    /// `native` or `ort`, and the ISA level.
    pub backend: String,
}

/// An admin call the engine applied (`RiskAdmin.SetKillSwitch`, `ResetSymbol`,
/// `ModelAdmin.SetRoute`), written to `controls-*.arrows`: `quantd audit` applies each reset and
/// route change before the engine pass it preceded live (a kill switch it reads from the signals'
/// `kill_admin` flag).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlRecord {
    /// CLOCK_REALTIME ns when the engine confirmed it.
    pub applied_ns: u64,
    /// `kill`, `release`, `reset` or `route`.
    pub kind: &'static str,
    /// The symbol (None: every symbol, or not about a symbol).
    pub symbol: Option<Symbol>,
    /// The engine pass it took effect before.
    pub before_batch: u64,
    /// The caller's reason, clipped.
    pub reason: String,
    /// A `route` call's route as set, in JSON (the `[[routes]]` keys); None for the others.
    pub route: Option<String>,
}

impl ControlRecord {
    /// A call of `kind` about `symbol`, applied now; the engine pass is set when the engine confirms.
    pub fn new(kind: &'static str, symbol: Option<Symbol>, reason: &str) -> Self {
        let reason = crate::text::clip(reason).to_string();
        Self { applied_ns: crate::clock::realtime_ns(), kind, symbol, before_batch: 0, reason, route: None }
    }

    /// A `SetRoute` of `spec`, applied now.
    pub fn route(spec: &crate::routes::RouteSpec, reason: &str) -> Self {
        let json = serde_json::to_string(spec).expect("a route serializes");
        Self { route: Some(json), ..Self::new("route", None, reason) }
    }

    /// The route of a `route` record (None: another kind, or a route this build cannot read).
    pub fn route_spec(&self) -> Option<Result<crate::routes::RouteSpec, serde_json::Error>> {
        self.route.as_deref().map(serde_json::from_str)
    }
}

/// What the ring carries.
pub enum Record {
    /// A tick the edge decoded.
    Tick(TickRecord),
    /// A signal the edge sent.
    Signal(SignalRecord),
}

struct Shared {
    ring: ArrayQueue<Record>,
    arrival: AtomicU64,
    streams: AtomicU64,
    /// The last write failed (cleared by the next one that succeeds).
    failing: AtomicBool,
    /// Models loaded since the last write (the control path's, rare; not on the ring so that a
    /// full ring never loses one).
    models: Mutex<Vec<ModelRecord>>,
    /// Admin calls applied since the last write (rare; off the ring like the models).
    controls: Mutex<Vec<ControlRecord>>,
    /// A warm start's ticks, to journal at the head of this run (start-up only; written in
    /// batches, never through the ring).
    warm: Mutex<std::collections::VecDeque<TickRecord>>,
    on_full: OnFull,
    telemetry: Arc<Telemetry>,
}

/// The I/O threads' side of the journal: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl Journal {
    /// A new stream (or unary call) id.
    pub fn open_stream(&self) -> u64 {
        self.shared.streams.fetch_add(1, Ordering::Relaxed)
    }

    /// The next arrival number.
    pub fn arrival(&self) -> u64 {
        self.shared.arrival.fetch_add(1, Ordering::Relaxed)
    }

    /// Under `refuse_ticks`: whether a new tick may be accepted (room for it and its signal,
    /// and the disk is taking writes). Always true under `drop_and_count`.
    pub fn admits(&self) -> bool {
        let s = &self.shared;
        if s.on_full == OnFull::DropAndCount {
            return true;
        }
        let ok = !s.failing.load(Ordering::Relaxed) && s.ring.len() + 2 <= s.ring.capacity();
        if !ok {
            s.telemetry.counters.journal.add(JournalEvent::TickRefused, 1);
        }
        ok
    }

    /// Queues a tick record; a full ring counts it lost (or, under `on_full = "refuse"`, the edge refused the tick before this).
    pub fn tick(&self, r: TickRecord) {
        self.push(Record::Tick(r), JournalEvent::TickDropped);
    }

    /// Journals a tick as received: `false` when `refuse_ticks` refuses it (nothing recorded;
    /// answer it `journal_unavailable`).
    pub fn record_tick(&self, t: &proto::Tick, stream: u64, index: u64, recv_ns: u64, conflate: bool) -> bool {
        if !self.admits() {
            return false;
        }
        self.tick(TickRecord::new(t, stream, index, self.arrival(), recv_ns, conflate));
        true
    }

    /// Queues a signal record; a full ring counts it lost.
    pub fn signal(&self, r: SignalRecord) {
        self.push(Record::Signal(r), JournalEvent::SignalDropped);
    }

    /// Journals the ticks a warm start rebuilt the engine from, as stream [`warm::WARM_STREAM`]
    /// (index in rebuild order, new arrival numbers), before any live tick arrives.
    pub fn warm_ticks(&self, ticks: &[TickRecord]) {
        let mut warm = self.shared.warm.lock().unwrap_or_else(|e| e.into_inner());
        for (index, t) in ticks.iter().enumerate() {
            warm.push_back(TickRecord {
                stream: warm::WARM_STREAM,
                index: index as u64,
                arrival: self.arrival(),
                ..*t
            });
        }
    }

    /// Records an admin call the engine applied (admin thread).
    pub fn control(&self, r: ControlRecord) {
        self.shared.controls.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// Records a model load (registry thread).
    pub fn model(&self, r: ModelRecord) {
        self.shared.models.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    fn push(&self, r: Record, dropped: JournalEvent) {
        if self.shared.ring.push(r).is_err() {
            self.shared.telemetry.counters.journal.add(dropped, 1);
        }
    }
}

/// The `quantd-journal` thread.
pub struct JournalThread {
    journal: Journal,
    thread: ControlThread,
}

impl JournalThread {
    /// Creates the directory, reports files a crash left partly written, and starts the thread.
    pub fn start(config: &JournalConfig, telemetry: Arc<Telemetry>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        for partial in writer::partial_files(&config.dir)? {
            tracing::warn!(file = %partial.display(), "journal file left partly written by an earlier run (readable up to its last complete batch)");
        }
        let shared = Arc::new(Shared {
            ring: ArrayQueue::new(config.ring_capacity),
            arrival: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            models: Mutex::new(Vec::new()),
            controls: Mutex::new(Vec::new()),
            warm: Mutex::new(std::collections::VecDeque::new()),
            on_full: config.on_full,
            telemetry,
        });
        let journal = Journal { shared: shared.clone() };
        tracing::info!(dir = %config.dir.display(), on_full = ?config.on_full, "journal on");
        let config = config.clone();
        let thread = ControlThread::spawn("quantd-journal", move |stop| {
            if config.nice != 0 {
                crate::control_thread::renice(config.nice, "quantd-journal");
            }
            run(&config, &shared, &stop)
        })?;
        Ok(Self { journal, thread })
    }

    /// A handle for the I/O tasks to write records with.
    pub fn handle(&self) -> Journal {
        self.journal.clone()
    }

    /// Drains the ring, writes and closes the files, and joins the thread. Call after every
    /// stream has been answered.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

/// The thread's loop: pop, batch, write, flush, fsync, rotate; drain on stop.
fn run(config: &JournalConfig, shared: &Shared, stop: &AtomicBool) {
    let counters = &shared.telemetry.counters;
    let mut files = writer::Files::new(config);
    let flush_every = Duration::from_millis(config.flush_ms);
    let idle = Duration::from_millis((config.flush_ms / 20).clamp(1, 10));
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut popped = 0;
        if let Ok(mut models) = shared.models.try_lock() {
            for m in models.drain(..) {
                files.push_model(m);
                popped += 1;
            }
        }
        if let Ok(mut controls) = shared.controls.try_lock() {
            for c in controls.drain(..) {
                files.push_control(c);
                popped += 1;
            }
        }
        if let Ok(mut warm) = shared.warm.try_lock() {
            let n = warm.len().min(config.batch_rows);
            for t in warm.drain(..n) {
                files.push(Record::Tick(t));
                popped += 1;
            }
        }
        while let Some(r) = shared.ring.pop() {
            files.push(r);
            popped += 1;
            if files.pending() >= config.batch_rows {
                break;
            }
        }
        if files.pending() >= config.batch_rows || files.since_flush() >= flush_every || (stopping && popped == 0) {
            let outcome = files.write_pending();
            counters.journal.add(JournalEvent::TickWritten, outcome.ticks_written);
            counters.journal.add(JournalEvent::SignalWritten, outcome.signals_written);
            counters.journal.add(JournalEvent::TickDropped, outcome.ticks_lost);
            counters.journal.add(JournalEvent::SignalDropped, outcome.signals_lost);
            if let Some(e) = &outcome.error {
                counters.journal.add(JournalEvent::WriteError, 1);
                if !shared.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "journal write failed; records are counted dropped until a write succeeds");
                }
            } else if outcome.ticks_written + outcome.signals_written > 0
                && shared.failing.swap(false, Ordering::Relaxed)
            {
                tracing::info!("journal writes succeed again");
            }
            counters.journal.add(JournalEvent::FileRotated, outcome.rotated);
        }
        if stopping && popped == 0 && shared.ring.is_empty() && files.pending() == 0 {
            files.close();
            return;
        }
        if popped == 0 {
            // Woken rarely: each wake takes a core from the engine and the I/O threads, and the
            // ring holds far more than arrives meanwhile (65,536 records: 0.65 s at 50k ticks/s).
            std::thread::park_timeout(idle);
        }
    }
}
