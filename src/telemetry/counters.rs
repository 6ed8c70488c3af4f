//! Outcome and reject counters: plain relaxed atomics, written where a tick's fate is sealed
//! (the gRPC edge, when its signal is handed to the transport or its stream is gone), read by the
//! exporter. No locks, no allocation.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::risk_flags::RiskFlags;
use crate::tick::Reject;

/// What happened to a tick. Every tick ends in exactly one outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Outcome {
    /// Scored by the model; the signal carries a position.
    Scored,
    /// Accepted and folded into the features, but the symbol is still warming up (position 0).
    WarmingUp,
    /// Refused; see the reject counters for why.
    Rejected,
    /// Features updated, not scored: a newer tick of its symbol was (back-pressure `conflate`).
    Conflated,
    /// Its stream went away before the signal could be sent.
    Dropped,
}

/// Something that happened to a symbol's state as a whole (metric `quantd_symbol_resets_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[repr(u8)]
pub enum SymbolEvent {
    /// Not seen for `engine.symbol_idle_ms`: its slot was freed for new symbols.
    #[strum(serialize = "evicted")]
    Evicted,
    /// Refused price jumps agreed on a new level: it warms up again there.
    #[strum(serialize = "level_shift")]
    ResetLevelShift,
    /// Its state was not finite: reset (defensive; the checks keep it finite).
    #[strum(serialize = "non_finite")]
    ResetNonFinite,
    /// `RiskAdmin.ResetSymbol`.
    #[strum(serialize = "admin")]
    ResetAdmin,
}

/// Something that happened to a stream as a whole (metric `quantd_stream_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum StreamEvent {
    /// Not opened: `stream.max_streams` were open.
    RefusedServerCap,
    /// Not opened: `stream.max_streams_per_peer` were open from the client's address.
    RefusedPeerCap,
    /// Not opened: a malformed stream option (`x-quantd-backpressure`).
    RefusedBadOption,
    /// Not served (any call, not only tick streams): its request headers were over
    /// `stream.max_header_bytes` (RESOURCE_EXHAUSTED).
    RefusedHeaders,
    /// Ended: the client read nothing for `stream.slow_consumer_ms` (RESOURCE_EXHAUSTED).
    SlowConsumer,
    /// Ended: no tick for `stream.idle_timeout_ms` (DEADLINE_EXCEEDED).
    IdleTimeout,
    /// Ended by a graceful shutdown, every tick read answered (UNAVAILABLE).
    Shutdown,
}

/// What happened to a connection at a gRPC listener (metric `quantd_connections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum ConnEvent {
    /// Accepted and served.
    Accepted,
    /// Accepted and closed at once: `stream.max_connections` were open.
    RefusedCap,
    /// Closed: no HTTP/2 preface within `stream.handshake_timeout_ms`.
    HandshakeTimeout,
    /// `accept` failed for want of descriptors or memory (EMFILE, ENFILE, ...); backed off.
    AcceptNoDescriptors,
    /// `accept` failed otherwise.
    AcceptError,
}

/// What happened to journal records (metric `quantd_journal_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum JournalEvent {
    /// A tick record written to a journal file.
    TickWritten,
    /// A signal record written.
    SignalWritten,
    /// A tick record lost: the ring was full (`journal.on_full = drop_and_count`) or its write failed.
    TickDropped,
    /// A signal record lost, likewise.
    SignalDropped,
    /// A tick refused `journal_unavailable` (`journal.on_full = refuse_ticks`).
    TickRefused,
    /// A write, fsync or rotation failed (a full disk, a file-size limit).
    WriteError,
    /// A file closed at its size or age and a new one begun.
    FileRotated,
}

/// How an inference-protocol `ModelInfer` call ended (metric `quantd_infer_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum InferOutcome {
    /// Scored and answered.
    Answered,
    /// Named no served model (NOT_FOUND).
    UnknownModel,
    /// Its tensors did not fit the model (INVALID_ARGUMENT).
    Invalid,
    /// The engine's inference queue was full (RESOURCE_EXHAUSTED).
    Busy,
    /// The engine could not score it (shutting down, the model swapped out, a backend error).
    Failed,
}

/// An enum whose variants are counted by an [`EventCounts`], each under its metric label.
pub trait Event: Copy + 'static {
    /// Every variant, in declaration order (its index is its position here).
    const ALL: &'static [Self];
    /// Its position in `ALL`.
    fn index(self) -> usize;
    /// The metric label.
    fn label(self) -> &'static str;
}

/// `Event` for fieldless enums deriving strum's `VariantArray` and `IntoStaticStr`, plus the
/// same `ALL` and `label` as inherent items (no trait import at the call sites).
macro_rules! events {
    ($($t:ident),*) => {$(
        impl Event for $t {
            const ALL: &'static [Self] = <$t as strum::VariantArray>::VARIANTS;
            fn index(self) -> usize {
                self as usize
            }
            fn label(self) -> &'static str {
                self.into()
            }
        }

        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = <Self as Event>::ALL;

            /// The metric label.
            pub fn label(self) -> &'static str {
                Event::label(self)
            }
        }
    )*};
}

events!(Outcome, SymbolEvent, StreamEvent, ConnEvent, JournalEvent, InferOutcome);

/// One relaxed counter per variant of `E` (`N` is `E::ALL.len()`; a generic array length cannot
/// be computed from `E` on stable Rust, so the field types spell it).
pub struct EventCounts<E, const N: usize> {
    counts: [AtomicU64; N],
    event: PhantomData<E>,
}

impl<E: Event, const N: usize> Default for EventCounts<E, N> {
    fn default() -> Self {
        assert_eq!(N, E::ALL.len(), "EventCounts sized for another enum");
        Self { counts: std::array::from_fn(|_| AtomicU64::new(0)), event: PhantomData }
    }
}

impl<E: Event, const N: usize> EventCounts<E, N> {
    /// Adds `n` to `e`'s counter.
    #[inline]
    pub fn add(&self, e: E, n: u64) {
        self.counts[e.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// `e`'s count.
    pub fn total(&self, e: E) -> u64 {
        self.counts[e.index()].load(Ordering::Relaxed)
    }

    /// Every variant with its count, in declaration order.
    pub fn totals(&self) -> impl Iterator<Item = (E, u64)> + '_ {
        E::ALL.iter().map(|&e| (e, self.total(e)))
    }
}

/// Every counter the hot paths write: outcomes, rejects, risk bindings, symbol, stream, connection and journal events.
#[derive(Default)]
pub struct Counters {
    /// What happened to connections at the gRPC listeners.
    pub conns: EventCounts<ConnEvent, { ConnEvent::ALL.len() }>,
    connections_open: AtomicU64,
    /// Every tick's outcome.
    pub outcomes: EventCounts<Outcome, { Outcome::ALL.len() }>,
    /// Symbols reset or evicted, by reason.
    pub symbols: EventCounts<SymbolEvent, { SymbolEvent::ALL.len() }>,
    /// Streams refused or ended by the server.
    pub streams: EventCounts<StreamEvent, { StreamEvent::ALL.len() }>,
    /// Journal records written, lost or refused, and journal file events.
    pub journal: EventCounts<JournalEvent, { JournalEvent::ALL.len() }>,
    /// Inference-protocol `ModelInfer` calls by outcome.
    pub infer: EventCounts<InferOutcome, { InferOutcome::ALL.len() }>,
    streams_open: AtomicU64,
    rejects: [AtomicU64; Reject::ALL.len()],
    risk: [AtomicU64; RiskFlags::ALL.len()],
}

impl Counters {
    /// Counts a rejected tick under its reason (and under the `rejected` outcome).
    pub fn reject(&self, r: Reject) {
        self.rejects[r.index()].fetch_add(1, Ordering::Relaxed);
        self.outcomes.add(Outcome::Rejected, 1);
    }

    /// Counts each risk limit (or kill trigger) that bound a signal.
    pub fn risk(&self, flags: RiskFlags) {
        for i in flags.indices() {
            self.risk[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Signals bound by the limit with this index in [`RiskFlags::ALL`].
    pub fn risk_total(&self, index: usize) -> u64 {
        self.risk[index].load(Ordering::Relaxed)
    }

    /// A connection opened on one of this server's gRPC listeners.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Sets the number of open tick streams.
    pub fn set_streams_open(&self, n: usize) {
        self.streams_open.store(n as u64, Ordering::Relaxed);
    }

    /// Tick streams open now.
    pub fn streams_open(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// Ticks refused for `r`.
    pub fn reject_total(&self, r: Reject) -> u64 {
        self.rejects[r.index()].load(Ordering::Relaxed)
    }
}
