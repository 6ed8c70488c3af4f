//! Accepting connections safely: the incoming-connection stream of the gRPC listeners (service
//! and admin over TCP, the service over a Unix domain socket), with a connection cap, a
//! handshake deadline, and a back-off when the process is out of file descriptors. Also the
//! start-up check of the descriptor limit.
//!
//! Runs inside the tokio runtime that serves the listener (the data plane's, or the admin
//! thread's). What it guards against:
//! - a connection that never sends the HTTP/2 preface (or its TLS hello) holds a descriptor
//!   forever: it is closed after `stream.handshake_timeout_ms`;
//! - at the descriptor limit, `accept` fails with `EMFILE` at once, every time: tonic retries
//!   in a tight loop. Here a failed accept waits (10 ms, doubling to 1 s) before the next, is
//!   counted, and logged at most every 10 s;
//! - `stream.max_connections` open connections: a new one is accepted and closed at once
//!   (counted), so the process keeps descriptors for the ones it serves.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::{ConnEvent, Telemetry};

/// Bytes a client sends first on HTTP/2 (the connection preface); over TLS the client hello is
/// longer. Fewer than this within the deadline: not a client.
const PREFACE_LEN: usize = 24;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Most open connections on this listener.
    pub max_connections: usize,
    /// Close a connection that has not sent [`PREFACE_LEN`] bytes within this (None: never).
    pub handshake_timeout: Option<Duration>,
    /// The request-header budget of each call (`stream.max_header_bytes`; see
    /// [`super::headers`]).
    pub max_header_bytes: usize,
}

/// A bound listener: TCP, or a Unix domain socket for co-located gateways.
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain socket listener.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

/// An accepted connection's socket.
enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Calls `$f` on whichever socket `$io` holds.
macro_rules! on_io {
    ($io:expr, $s:ident => $f:expr) => {
        match $io {
            Io::Tcp($s) => $f,
            Io::Unix($s) => $f,
        }
    };
}

/// The accepted connections of one listener, as tonic's `serve_with_incoming` wants them.
pub struct Incoming {
    listener: Listener,
    limits: ConnLimits,
    open: Arc<AtomicUsize>,
    telemetry: Arc<Telemetry>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Incoming {
    /// Accepts from `listener` under `limits`, counting connections in `telemetry`.
    pub fn new(listener: impl Into<Listener>, limits: ConnLimits, telemetry: Arc<Telemetry>) -> Self {
        Self {
            listener: listener.into(),
            limits,
            open: Arc::default(),
            telemetry,
            backoff: None,
            delay: Duration::ZERO,
            last_log: None,
            suppressed: 0,
        }
    }

    /// A failed accept: count it, log it (rate-limited), and wait before the next.
    fn accept_failed(&mut self, e: &io::Error) {
        let scarce = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
        self.telemetry
            .counters
            .conns
            .add(if scarce { ConnEvent::AcceptNoDescriptors } else { ConnEvent::AcceptError }, 1);
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(error = %e, suppressed = self.suppressed, open = self.open.load(Ordering::Relaxed), "accept failed; backing off (check the descriptor limit, LimitNOFILE)");
            self.last_log = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.backoff = Some(Box::pin(tokio::time::sleep(self.delay)));
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            let accepted = match &this.listener {
                Listener::Tcp(l) => ready!(l.poll_accept(cx)).map(|(s, peer)| {
                    let _ = s.set_nodelay(true);
                    (Io::Tcp(s), Some(peer))
                }),
                Listener::Unix(l) => ready!(l.poll_accept(cx)).map(|(s, _)| (Io::Unix(s), None)),
            };
            match accepted {
                Err(e) => this.accept_failed(&e),
                Ok((io, peer)) => {
                    this.delay = Duration::ZERO;
                    if this.open.load(Ordering::Acquire) >= this.limits.max_connections {
                        this.telemetry.counters.conns.add(ConnEvent::RefusedCap, 1);
                        drop(io); // closed at once: the client sees the refusal
                        continue;
                    }
                    this.telemetry.counters.conns.add(ConnEvent::Accepted, 1);
                    return Poll::Ready(Some(Ok(Conn::new(io, peer, this))));
                }
            }
        }
    }
}

/// One accepted connection: counted while open, closed if it does not start HTTP/2 in time.
pub struct Conn {
    io: Io,
    open: Arc<AtomicUsize>,
    telemetry: Arc<Telemetry>,
    /// Until the preface is in: the deadline, and bytes read so far.
    handshake: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// The client's address (None over a Unix socket).
    peer: Option<SocketAddr>,
}

impl Conn {
    fn new(io: Io, peer: Option<SocketAddr>, incoming: &Incoming) -> Self {
        incoming.open.fetch_add(1, Ordering::AcqRel);
        incoming.telemetry.counters.connection_opened();
        let handshake = incoming.limits.handshake_timeout.map(|d| (Box::pin(tokio::time::sleep(d)), 0));
        Self { io, open: incoming.open.clone(), telemetry: incoming.telemetry.clone(), handshake, peer }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.telemetry.counters.connection_closed();
    }
}

/// One connect-info type for both kinds of socket, so that the services read it the same way:
/// over a Unix socket both addresses are `None` (and the per-client caps do not apply).
impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.io {
            Io::Tcp(s) => s.connect_info(),
            Io::Unix(_) => TcpConnectInfo { local_addr: None, remote_addr: None },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = on_io!(&mut this.io, s => Pin::new(s).poll_read(cx, buf));
        if let Some((deadline, got)) = this.handshake.as_mut() {
            *got += buf.filled().len() - before;
            if *got >= PREFACE_LEN {
                this.handshake = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.telemetry.counters.conns.add(ConnEvent::HandshakeTimeout, 1);
                tracing::debug!(peer = ?this.peer, "connection closed: no HTTP/2 preface within stream.handshake_timeout_ms");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")));
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        on_io!(&mut self.io, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(&mut self.io, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(&mut self.io, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_io!(&mut self.io, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        on_io!(&self.io, s => s.is_write_vectored())
    }
}

/// Raises the soft descriptor limit to the hard one, then warns when it is still below what
/// the configured connection and stream caps can need. Returns the soft limit in force.
pub fn check_descriptor_limit(needed: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write or read the struct passed, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let soft = lim.rlim_cur;
    if soft < needed {
        tracing::warn!(
            soft_limit = soft,
            needed,
            "the open-file limit is below what stream.max_connections needs (one descriptor per connection, plus \
             models and logs): raise LimitNOFILE (systemd) or the container's nofile ulimit"
        );
    }
    soft
}
