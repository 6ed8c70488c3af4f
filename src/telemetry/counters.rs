//! Outcome and reject counters: plain relaxed atomics, written where a tick's fate is sealed
//! (the gRPC edge, when its signal is handed to the transport or its stream is gone), read by the
//! exporter. No locks, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::risk::RiskFlags;
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

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: &'static [Outcome] = <Outcome as strum::VariantArray>::VARIANTS;

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.into()
    }
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

impl SymbolEvent {
    pub const ALL: &'static [SymbolEvent] = <SymbolEvent as strum::VariantArray>::VARIANTS;

    /// The metric label (`reason`).
    pub fn label(self) -> &'static str {
        self.into()
    }
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
    /// Ended: the client read nothing for `stream.slow_consumer_ms` (RESOURCE_EXHAUSTED).
    SlowConsumer,
    /// Ended: no tick for `stream.idle_timeout_ms` (DEADLINE_EXCEEDED).
    IdleTimeout,
    /// Ended by a graceful shutdown, every tick read answered (UNAVAILABLE).
    Shutdown,
}

impl StreamEvent {
    pub const ALL: &'static [StreamEvent] = <StreamEvent as strum::VariantArray>::VARIANTS;

    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// What happened to a connection at a gRPC listener (metric `quantd_connections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum ConnEvent {
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

impl ConnEvent {
    pub const ALL: &'static [ConnEvent] = <ConnEvent as strum::VariantArray>::VARIANTS;

    pub fn label(self) -> &'static str {
        self.into()
    }
}

#[derive(Default)]
pub struct Counters {
    conns: [AtomicU64; ConnEvent::ALL.len()],
    connections_open: AtomicU64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    symbols: [AtomicU64; SymbolEvent::ALL.len()],
    streams: [AtomicU64; StreamEvent::ALL.len()],
    streams_open: AtomicU64,
    rejects: [AtomicU64; Reject::ALL.len()],
    risk: [AtomicU64; RiskFlags::ALL.len()],
}

impl Counters {
    pub fn outcome(&self, o: Outcome, n: u64) {
        self.outcomes[o as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a rejected tick under its reason (and under the `rejected` outcome).
    pub fn reject(&self, r: Reject) {
        self.rejects[r.index()].fetch_add(1, Ordering::Relaxed);
        self.outcome(Outcome::Rejected, 1);
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

    pub fn conn_event(&self, e: ConnEvent, n: u64) {
        self.conns[e as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn conn_event_total(&self, e: ConnEvent) -> u64 {
        self.conns[e as usize].load(Ordering::Relaxed)
    }

    /// A connection opened on one of this server's gRPC listeners.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn stream_event(&self, e: StreamEvent, n: u64) {
        self.streams[e as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn stream_event_total(&self, e: StreamEvent) -> u64 {
        self.streams[e as usize].load(Ordering::Relaxed)
    }

    pub fn set_streams_open(&self, n: usize) {
        self.streams_open.store(n as u64, Ordering::Relaxed);
    }

    pub fn streams_open(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    pub fn symbol_event(&self, e: SymbolEvent, n: u64) {
        self.symbols[e as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn symbol_event_total(&self, e: SymbolEvent) -> u64 {
        self.symbols[e as usize].load(Ordering::Relaxed)
    }

    pub fn outcome_total(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }

    pub fn reject_total(&self, r: Reject) -> u64 {
        self.rejects[r.index()].load(Ordering::Relaxed)
    }
}
