//! The open tick streams as the edge's control side sees them: how many are open (server-wide
//! and per peer address), the symbols each peer address and each connection has brought in, a
//! [`Probe`] per stream saying when it was last polled and what it owes, the slow-consumer
//! cut-off, and the drain at shutdown.
//!
//! A connection is known by the client's socket address (address and port): unique while the
//! connection is open, which is as long as its streams are. (Streams per connection are capped by
//! HTTP/2 itself: `stream.max_streams_per_connection`.)
//!
//! Why a monitor: a stream's body is polled by hyper only while HTTP/2 flow control lets it
//! send. A client that stops reading stops the polls, so the stream itself can never notice.
//! Each stream polls its ticks and replies with a waker of its own (the [`Probe`]), which notes
//! when something arrived for it (a tick, an engine reply, its idle timer) before waking hyper's
//! task. Something arrived and hyper did not poll: the client's window is shut. The monitor, one
//! tokio task on the data-plane runtime (every 100 ms), cuts a stream that has been in that state
//! for `stream.slow_consumer_ms`. An engine that is slow to answer wakes nobody, so it is never
//! mistaken for a slow client.
//! Its undelivered signals are counted `dropped` and logged once, and its slot is freed. The
//! next time the stream is polled (the client read again) it ends with RESOURCE_EXHAUSTED saying
//! how many signals were not delivered and the last seq that was. Because the stream stopped
//! reading ticks when its client stopped reading signals, the client's own sends were held back
//! by flow control meanwhile, and no other stream on the connection is touched.
//!
//! Exclusive by a state word: a stream moves its probe IDLE → POLLING → IDLE around each poll
//! (two uncontended compare-exchanges), and the monitor cuts only IDLE → CUT, so a cut never
//! races with a poll and the counts are exact.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use crate::telemetry::{Outcome, StreamEvent, Telemetry};
use crate::tick::Symbol;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const CUT: u8 = 2;
/// The stream returned its final status: nothing left to cut.
const DONE: u8 = 3;

/// One stream's state, shared between the stream (hot path: two CAS and a few relaxed stores per
/// poll) and the monitor.
pub struct Probe {
    state: AtomicU8,
    draining: AtomicBool,
    epoch: Instant,
    /// 1 + ms since `epoch` when something first arrived for the stream after its latest poll
    /// (0: nothing since).
    woken_ms: AtomicU64,
    /// Signals read but not yet handed to the transport, as of the end of the latest poll.
    owed: AtomicUsize,
    /// Whether this stream still counts against the caps (released once: on cut or close).
    holds_slot: AtomicBool,
    /// The client's socket (None: not known, e.g. in-process tests): its address is the peer,
    /// the whole of it the connection.
    client: Option<SocketAddr>,
    waker: AtomicWaker,
}

/// What a poll may do, from [`Probe::enter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entered {
    /// Serve as usual (and call [`Probe::leave`] at the end of the poll).
    Serve,
    /// The monitor cut this stream while it was not polled: end it as a slow consumer.
    Cut,
}

impl Wake for Probe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Something arrived for the stream: note when (the first time since its latest poll), then
    /// wake hyper's task.
    fn wake_by_ref(self: &Arc<Self>) {
        let now = 1 + self.epoch.elapsed().as_millis() as u64;
        let _ = self.woken_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.waker.wake();
    }
}

impl Probe {
    /// Start of a poll: registers hyper's waker (woken through the probe, and by the drain) and
    /// claims the probe. Poll the stream's sources with [`Probe::waker`] from here on.
    #[inline]
    pub fn enter(&self, waker: &Waker) -> Entered {
        self.waker.register(waker);
        self.woken_ms.store(0, Ordering::Relaxed);
        match self.state.compare_exchange(IDLE, POLLING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Entered::Serve,
            Err(_) => Entered::Cut,
        }
    }

    /// End of a poll: what the stream owes now.
    #[inline]
    pub fn leave(&self, owed: usize) {
        self.owed.store(owed, Ordering::Relaxed);
        self.state.store(IDLE, Ordering::Release);
    }

    /// End of the poll that returned the stream's final status: the monitor leaves it alone
    /// (a late wake-up for a finished stream is not a slow client).
    #[inline]
    pub fn finish(&self) {
        self.owed.store(0, Ordering::Relaxed);
        self.state.store(DONE, Ordering::Release);
    }

    /// The waker the stream polls its ticks, replies and timers with.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Whether the monitor cut the stream (its undelivered signals were counted then).
    #[inline]
    pub fn was_cut(&self) -> bool {
        self.state.load(Ordering::Acquire) == CUT
    }

    /// Whether a graceful shutdown asked the stream to stop reading and finish.
    #[inline]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The caps on streams and symbols (from `[stream]`).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Most concurrent tick streams on the server.
    pub max_streams: usize,
    /// Most concurrent tick streams from one client address.
    pub max_streams_per_peer: usize,
    /// Most distinct symbols from one client address (0: no cap).
    pub max_symbols_per_peer: usize,
    /// Most distinct symbols on one connection (0: no cap).
    pub max_symbols_per_connection: usize,
}

/// Why a stream was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `stream.max_streams` are open.
    Server(usize),
    /// `stream.max_streams_per_peer` are open from this address.
    Peer(usize),
}

/// Every open stream's probe, and the caps.
pub struct Streams {
    epoch: Instant,
    max_streams: usize,
    max_per_peer: usize,
    max_symbols_per_peer: usize,
    max_symbols_per_connection: usize,
    slow_after: Option<Duration>,
    open: AtomicUsize,
    inner: Mutex<Inner>,
    telemetry: Arc<Telemetry>,
    draining: AtomicBool,
}

#[derive(Default)]
struct Inner {
    probes: Vec<Weak<Probe>>,
    per_peer: HashMap<IpAddr, Holder>,
    per_conn: HashMap<SocketAddr, Holder>,
}

/// One client address, or one connection, while it has streams open.
#[derive(Default)]
struct Holder {
    streams: usize,
    /// The distinct symbols its streams have sent (forgotten with its last stream).
    symbols: HashSet<Symbol>,
}

impl Holder {
    /// Whether `symbol` fits within `cap` distinct symbols (0: no cap).
    fn fits(&self, symbol: &Symbol, cap: usize) -> bool {
        cap == 0 || self.symbols.len() < cap || self.symbols.contains(symbol)
    }

    /// Takes `symbol` (remembered only under a cap).
    fn take(&mut self, symbol: Symbol, cap: usize) {
        if cap > 0 {
            self.symbols.insert(symbol);
        }
    }
}

/// One stream fewer for `key`'s holder, forgotten with its last.
fn leave<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Holder>, key: K) {
    if let Some(h) = map.get_mut(&key) {
        h.streams -= 1;
        if h.streams == 0 {
            map.remove(&key);
        }
    }
}

impl Streams {
    /// The open-stream registry under `caps`; a stream whose reader stalls for `slow_after` is cut.
    pub fn new(caps: Caps, slow_after: Option<Duration>, telemetry: Arc<Telemetry>) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            max_streams: caps.max_streams,
            max_per_peer: caps.max_streams_per_peer.max(1),
            max_symbols_per_peer: caps.max_symbols_per_peer,
            max_symbols_per_connection: caps.max_symbols_per_connection,
            slow_after,
            open: AtomicUsize::new(0),
            inner: Mutex::default(),
            telemetry,
            draining: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new stream from `client` (counted against both caps), or says which cap
    /// refused it (counted). Control path: once per stream open.
    pub fn open(&self, client: Option<SocketAddr>) -> Result<Arc<Probe>, Refused> {
        let peer = client.map(|c| c.ip());
        let mut inner = self.inner();
        let refused = if self.open.load(Ordering::Acquire) >= self.max_streams {
            Some((Refused::Server(self.max_streams), StreamEvent::RefusedServerCap))
        } else if peer.is_some_and(|p| inner.per_peer.get(&p).map_or(0, |e| e.streams) >= self.max_per_peer) {
            Some((Refused::Peer(self.max_per_peer), StreamEvent::RefusedPeerCap))
        } else {
            None
        };
        if let Some((why, event)) = refused {
            self.telemetry.counters.streams.add(event, 1);
            return Err(why);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = client {
            inner.per_peer.entry(c.ip()).or_default().streams += 1;
            inner.per_conn.entry(c).or_default().streams += 1;
        }
        let probe = Arc::new(Probe {
            state: AtomicU8::new(IDLE),
            draining: AtomicBool::new(self.draining.load(Ordering::Acquire)),
            epoch: self.epoch,
            woken_ms: AtomicU64::new(0),
            owed: AtomicUsize::new(0),
            holds_slot: AtomicBool::new(true),
            client,
            waker: AtomicWaker::new(),
        });
        inner.probes.retain(|w| w.strong_count() > 0);
        inner.probes.push(Arc::downgrade(&probe));
        self.telemetry.counters.set_streams_open(self.open.load(Ordering::Acquire));
        Ok(probe)
    }

    /// The stream is gone (or was cut): its slot is free again. Idempotent.
    pub fn release(&self, probe: &Probe) {
        if !probe.holds_slot.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut inner = self.inner();
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(c) = probe.client {
            leave(&mut inner.per_peer, c.ip());
            leave(&mut inner.per_conn, c);
        }
        self.telemetry.counters.set_streams_open(self.open.load(Ordering::Acquire));
    }

    /// Whether the stream's connection and client address may bring in `symbol` (one they
    /// already have, or a new one within `stream.max_symbols_per_connection` and
    /// `max_symbols_per_peer`; always with no caps, and then without a lock). Called once per
    /// symbol new to a stream.
    pub fn admit_symbol(&self, probe: &Probe, symbol: Symbol) -> bool {
        let (per_conn, per_peer) = (self.max_symbols_per_connection, self.max_symbols_per_peer);
        let Some(client) = probe.client.filter(|_| per_conn > 0 || per_peer > 0) else { return true };
        let mut inner = self.inner();
        let Inner { per_peer: peers, per_conn: conns, .. } = &mut *inner;
        let (Some(conn), Some(peer)) = (conns.get_mut(&client), peers.get_mut(&client.ip())) else { return true };
        // Both or neither: a symbol the connection may not bring in is not charged to the peer.
        if !(conn.fits(&symbol, per_conn) && peer.fits(&symbol, per_peer)) {
            return false;
        }
        conn.take(symbol, per_conn);
        peer.take(symbol, per_peer);
        true
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Graceful shutdown: every stream, open or opening, stops reading ticks, answers what it
    /// read and ends with a status.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for probe in self.inner().probes.iter().filter_map(Weak::upgrade) {
            probe.draining.store(true, Ordering::Release);
            probe.waker.wake();
        }
    }

    /// One look at every stream: cuts those that were sent something (a tick, a reply) but not
    /// polled for `slow_consumer_ms`: their client's window stayed shut. Returns how many.
    pub fn sweep(&self) -> usize {
        let Some(slow_after) = self.slow_after else { return 0 };
        let now = 1 + self.now_ms();
        let probes: Vec<_> = self.inner().probes.iter().filter_map(Weak::upgrade).collect();
        let mut cut = 0;
        for probe in probes {
            let woken = probe.woken_ms.load(Ordering::Relaxed);
            let quiet = now.saturating_sub(woken);
            if woken == 0 || quiet < slow_after.as_millis() as u64 {
                continue;
            }
            if probe.state.compare_exchange(IDLE, CUT, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue; // being polled right now: not stalled
            }
            let owed = probe.owed.load(Ordering::Relaxed);
            self.telemetry.counters.outcomes.add(Outcome::Dropped, owed as u64);
            self.telemetry.counters.streams.add(StreamEvent::SlowConsumer, 1);
            tracing::warn!(
                client = ?probe.client,
                undelivered = owed,
                quiet_ms = quiet,
                "slow consumer: the client read no signal for stream.slow_consumer_ms; its stream is cut and its \
                 undelivered signals counted dropped"
            );
            self.release(&probe);
            probe.waker.wake();
            cut += 1;
        }
        cut
    }

    /// The monitor loop (spawn it on the data-plane runtime); ends when the registry is gone.
    pub async fn monitor(this: Weak<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(streams) = this.upgrade() else { return };
            streams.sweep();
        }
    }

    /// How long a stalled reader may keep a stream.
    pub fn slow_after(&self) -> Option<Duration> {
        self.slow_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn caps_per_server_and_per_peer_are_counted_and_released_once() {
        let t = Telemetry::new();
        let caps =
            Caps { max_streams: 3, max_streams_per_peer: 2, max_symbols_per_peer: 2, max_symbols_per_connection: 0 };
        let s = Streams::new(caps, None, t.clone());
        let p1 = s.open(client("10.0.0.1:5000")).unwrap();
        let _p2 = s.open(client("10.0.0.1:5001")).unwrap();
        assert_eq!(s.open(client("10.0.0.1:5002")).err(), Some(Refused::Peer(2)), "any port of the address");
        let _p3 = s.open(client("10.0.0.2:5000")).unwrap();
        assert_eq!(s.open(client("10.0.0.2:5000")).err(), Some(Refused::Server(3)));
        s.release(&p1);
        s.release(&p1);
        assert_eq!(s.open_count(), 2);
        assert!(s.open(client("10.0.0.1:5000")).is_ok());
        assert_eq!(t.counters.streams.total(StreamEvent::RefusedPeerCap), 1);
        assert_eq!(t.counters.streams.total(StreamEvent::RefusedServerCap), 1);
    }

    #[test]
    fn symbols_per_peer_are_shared_by_its_streams_and_forgotten_with_the_last() {
        let caps =
            Caps { max_streams: 8, max_streams_per_peer: 8, max_symbols_per_peer: 2, max_symbols_per_connection: 0 };
        let s = Streams::new(caps, None, Telemetry::new());
        let sym = |x: &str| Symbol::new(x).unwrap();
        let (one, two) = (s.open(client("10.0.0.1:1")).unwrap(), s.open(client("10.0.0.1:2")).unwrap());
        assert!(s.admit_symbol(&one, sym("X")) && s.admit_symbol(&two, sym("Y")));
        assert!(s.admit_symbol(&two, sym("X")), "a symbol the peer has is free");
        assert!(!s.admit_symbol(&one, sym("Z")), "the peer's third symbol");
        let other = s.open(client("10.0.0.2:1")).unwrap();
        assert!(s.admit_symbol(&other, sym("Z")), "another address has its own");
        s.release(&one);
        s.release(&two);
        let again = s.open(client("10.0.0.1:3")).unwrap();
        assert!(s.admit_symbol(&again, sym("Z")), "forgotten with the peer's last stream");
    }

    #[test]
    fn symbols_per_connection_are_shared_by_its_streams_and_a_refusal_charges_no_peer() {
        let caps =
            Caps { max_streams: 8, max_streams_per_peer: 8, max_symbols_per_peer: 3, max_symbols_per_connection: 2 };
        let s = Streams::new(caps, None, Telemetry::new());
        let sym = |x: &str| Symbol::new(x).unwrap();
        let (a1, a2) = (s.open(client("10.0.0.1:1")).unwrap(), s.open(client("10.0.0.1:1")).unwrap());
        assert!(s.admit_symbol(&a1, sym("X")) && s.admit_symbol(&a2, sym("Y")));
        assert!(s.admit_symbol(&a1, sym("Y")), "a symbol the connection has is free");
        assert!(!s.admit_symbol(&a2, sym("Z")), "the connection's third symbol");
        // Another connection from the same address: its own two, within the address's three.
        let b = s.open(client("10.0.0.1:2")).unwrap();
        assert!(s.admit_symbol(&b, sym("Z")), "Z was refused above, so it was not charged to the address");
        assert!(s.admit_symbol(&b, sym("X")));
        let c = s.open(client("10.0.0.1:3")).unwrap();
        assert!(!s.admit_symbol(&c, sym("W")), "the address's fourth symbol");
        assert!(s.admit_symbol(&c, sym("Y")), "one the address has");
        s.release(&a1);
        s.release(&a2);
        let a3 = s.open(client("10.0.0.1:1")).unwrap();
        assert!(s.admit_symbol(&a3, sym("X")) && s.admit_symbol(&a3, sym("Z")));
        assert!(!s.admit_symbol(&a3, sym("Y")), "a fresh connection on the old port starts afresh, with its own cap");
        let unknown = s.open(None).unwrap();
        assert!(s.admit_symbol(&unknown, sym("V")), "no socket known: no cap to charge");
    }

    #[test]
    fn only_a_stream_woken_but_not_polled_is_cut_and_never_mid_poll() {
        let t = Telemetry::new();
        let caps =
            Caps { max_streams: 8, max_streams_per_peer: 8, max_symbols_per_peer: 8, max_symbols_per_connection: 8 };
        let s = Streams::new(caps, Some(Duration::ZERO), t.clone());
        let stalled = s.open(None).unwrap();
        let quiet = s.open(None).unwrap();
        let polling = s.open(None).unwrap();
        let finished = s.open(None).unwrap();
        let w = Waker::noop();
        for p in [&stalled, &quiet, &polling, &finished] {
            assert_eq!(p.enter(w), Entered::Serve);
            p.leave(5);
        }
        assert_eq!(finished.enter(w), Entered::Serve);
        finished.finish(); // returned its final status; a late wake-up is not a slow client
        finished.waker().wake_by_ref();
        stalled.waker().wake_by_ref(); // a tick arrived; hyper never polled
        polling.waker().wake_by_ref();
        assert_eq!(polling.enter(w), Entered::Serve); // and is being polled during the sweep
        polling.waker().wake_by_ref();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(s.sweep(), 1);
        assert!(stalled.was_cut() && !quiet.was_cut());
        assert_eq!(stalled.enter(w), Entered::Cut);
        assert_eq!(quiet.enter(w), Entered::Serve, "nothing arrived for it: idle, not slow");
        assert_eq!(t.counters.outcomes.total(Outcome::Dropped), 5);
        assert_eq!(s.open_count(), 3, "a cut stream frees its slot");
        polling.leave(5);
    }
}
