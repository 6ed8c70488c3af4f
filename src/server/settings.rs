//! The `[stream]` config section, owned by the gRPC edge: its serde shape, defaults and own
//! checks, and the connection limits a listener derives from it. Read on the control path at
//! start-up; the stream tasks get copies of the values they apply.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listen::ConnLimits;
use crate::clock::millis;
use crate::problem::{Kind, Problems};

/// What a stream does when it has `window` ticks in flight to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Backpressure {
    /// Stop reading the stream: HTTP/2 flow control pushes back on the client.
    Block,
    /// Keep reading; answer each tick beyond the window at once with `overloaded`.
    Reject,
    /// Like `block`, and the engine scores only the newest tick of a symbol per pass; the
    /// superseded ones update the features and are answered `conflated`.
    Conflate,
}

/// `[stream]`: per-stream windows and back-pressure, the caps on streams, symbols and headers,
/// and the HTTP/2 transport settings of the service port.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSection {
    /// Most ticks of one stream in flight to the engine.
    pub window: usize,
    /// What a stream does at `window` ticks in flight (a client may pick another with the
    /// `x-quantd-backpressure` header).
    pub backpressure: Backpressure,
    /// Most signals answered but not yet taken by the client. In `block`/`conflate` mode the
    /// stream stops reading at this limit (flow control pushes back); in `reject` mode, which
    /// never pushes back, a client this far behind is cut off with RESOURCE_EXHAUSTED.
    pub outbound_limit: usize,
    /// Signal time-to-live, ms: a tick that waited longer for the engine is answered `expired`
    /// (0: off).
    pub ttl_ms: u64,
    /// Most concurrent `StreamTicks` calls on the server; more are refused RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Most concurrent `StreamTicks` calls from one client address; more are refused
    /// RESOURCE_EXHAUSTED (so one host leaking streams cannot take every slot).
    pub max_streams_per_peer: usize,
    /// Most concurrent HTTP/2 streams (any call) on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// A stream whose client has read no signal for this long while signals were ready for it
    /// is cut: its undelivered signals are counted `dropped`, and it ends with
    /// RESOURCE_EXHAUSTED saying how many (ms; 0: never).
    pub slow_consumer_ms: u64,
    /// HTTP/2 receive window per stream, bytes: how many unread tick bytes a client may send
    /// ahead. Small, so that a stream that stopped being read holds back its client quickly and
    /// never fills the connection's window or h2's small-frame budget for the other streams.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 receive window per connection, bytes (shared by its streams).
    pub h2_connection_window_bytes: u32,
    /// Most open connections on the service port; one more is accepted and closed at once.
    /// Each needs a file descriptor: the start-up check warns when the limit is lower.
    pub max_connections: usize,
    /// Close a connection that has not begun HTTP/2 (or TLS) within this, ms (0: never): a
    /// half-open connection must not hold a descriptor forever. Also on the admin listener.
    pub handshake_timeout_ms: u64,
    /// Most distinct symbols on one stream; more are rejected `too_many_symbols`.
    pub max_symbols_per_stream: usize,
    /// Most distinct symbols the streams from one client address may bring in (over all of
    /// them, forgotten when its last stream closes); more are rejected `too_many_symbols`
    /// (0: no cap of its own; the engine's table and `max_symbols_per_stream` still bound it).
    pub max_symbols_per_peer: usize,
    /// Most distinct symbols the streams of one connection may bring in (over all of them,
    /// forgotten when its last stream closes); more are rejected `too_many_symbols` (0: no cap
    /// of its own). Finer than the per-peer cap where gateways share an address.
    pub max_symbols_per_connection: usize,
    /// Largest request headers (metadata) a call may carry, bytes as HTTP/2 counts them; over
    /// it a call is refused RESOURCE_EXHAUSTED. The transport accepts up to 4 times this, so
    /// that the refusal can be a gRPC status (beyond: a bare HTTP 431, then GOAWAY).
    pub max_header_bytes: usize,
    /// Largest accepted gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Most ticks in one `TickBatch`; every tick of a larger batch is answered `batch_too_large`.
    pub max_batch_ticks: usize,
    /// How long a stream's task keeps polling for the engine's reply before it sleeps, µs (0:
    /// never spin). The engine usually answers within a few µs; a task that sleeps instead must
    /// be woken by the engine through the runtime (an eventfd write and an epoll return, several
    /// µs on each side). Spent only while the stream waits for a reply it is owed.
    pub reply_spin_us: u64,
    /// A stream that sends no tick for this long (and is owed no signal) is closed with
    /// DEADLINE_EXCEEDED, ms (0: never).
    pub idle_timeout_ms: u64,
    /// HTTP/2 keep-alive ping interval, ms (0: off): dead peers are dropped.
    pub keepalive_interval_ms: u64,
    /// How long a keep-alive ping may go unanswered before the connection is dropped, ms.
    pub keepalive_timeout_ms: u64,
}

impl Default for StreamSection {
    fn default() -> Self {
        Self {
            window: 1024,
            backpressure: Backpressure::Block,
            outbound_limit: 4096,
            ttl_ms: 250,
            max_streams: 1024,
            max_streams_per_peer: 256,
            max_streams_per_connection: 128,
            slow_consumer_ms: 3_000,
            h2_stream_window_bytes: 64 * 1024,
            h2_connection_window_bytes: 4 << 20,
            max_connections: 2_048,
            handshake_timeout_ms: 5_000,
            max_symbols_per_stream: 5_000,
            max_symbols_per_peer: 0,
            max_symbols_per_connection: 0,
            max_header_bytes: 16_384,
            max_message_bytes: 64 * 1024,
            max_batch_ticks: 1024,
            reply_spin_us: 20,
            idle_timeout_ms: 120_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

impl StreamSection {
    /// The section's own problems (fields named `stream.*`).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let st = self;
        let mut p = Problems::new();
        p.check(st.window == 0, "stream.window", OutOfRange, || "stream.window must be > 0".into());
        p.check(st.outbound_limit < st.window, "stream.outbound_limit", Conflict, || {
            format!("stream.outbound_limit {} must be >= stream.window {}", st.outbound_limit, st.window)
        });
        p.check(st.max_streams == 0 || st.max_symbols_per_stream == 0, "stream.max_streams", OutOfRange, || {
            "stream.max_streams and stream.max_symbols_per_stream must be > 0".into()
        });
        p.check(
            st.max_streams_per_peer == 0 || st.max_streams_per_connection == 0,
            "stream.max_streams_per_peer",
            OutOfRange,
            || "stream.max_streams_per_peer and max_streams_per_connection must be > 0".into(),
        );
        let windows = 65_535..=(1 << 31) - 1;
        p.check(
            !windows.contains(&st.h2_stream_window_bytes) || !windows.contains(&st.h2_connection_window_bytes),
            "stream.h2_stream_window_bytes",
            OutOfRange,
            || "stream.h2_stream_window_bytes and h2_connection_window_bytes must be in 65535..=2^31-1 (HTTP/2)".into(),
        );
        p.check(st.h2_stream_window_bytes > st.h2_connection_window_bytes, "stream.h2_stream_window_bytes", Conflict, || {
            "stream.h2_stream_window_bytes exceeds h2_connection_window_bytes: one stopped stream could stall the connection".into()
        });
        p.check(st.max_batch_ticks == 0, "stream.max_batch_ticks", OutOfRange, || {
            "stream.max_batch_ticks must be > 0".into()
        });
        p.check(st.reply_spin_us > 1_000, "stream.reply_spin_us", OutOfRange, || {
            format!(
                "stream.reply_spin_us {} must be in 0..=1000: a stream task spinning longer starves the others",
                st.reply_spin_us
            )
        });
        p.check(st.max_message_bytes < 256, "stream.max_message_bytes", OutOfRange, || {
            format!("stream.max_message_bytes {} is too small for one tick", st.max_message_bytes)
        });
        // Room for an authorization header and the usual gRPC ones; at most 1 GiB, since the
        // transport is told four times this as a u32.
        p.check(!(1_024..=1 << 30).contains(&st.max_header_bytes), "stream.max_header_bytes", OutOfRange, || {
            format!("stream.max_header_bytes {} must be in 1024..=2^30", st.max_header_bytes)
        });
        p
    }

    /// The signal time-to-live (`None`: off).
    pub fn ttl(&self) -> Option<Duration> {
        millis(self.ttl_ms)
    }

    /// The connection limits of a gRPC listener, from these settings.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: self.max_connections,
            handshake_timeout: millis(self.handshake_timeout_ms),
            max_header_bytes: self.max_header_bytes,
        }
    }
}

/// `[unix]`: the service on a Unix domain socket too, for gateways on the same host (no TCP stack
/// in the round trip). Served beside the TCP port, with the same services, limits and TLS.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnixSection {
    /// The socket file (`--listen unix:PATH`); unset: no Unix socket. A stale socket file left by
    /// a server that died is replaced; a live one (another server answers) or a file that is not
    /// a socket is refused.
    pub path: Option<PathBuf>,
    /// The socket file's permission bits (who may connect), e.g. `0o660`; unset: the umask's.
    pub mode: Option<u32>,
    /// The socket file's owner (uid); unset: the server's user.
    pub uid: Option<u32>,
    /// The socket file's group (gid); unset: the server's group.
    pub gid: Option<u32>,
}

impl UnixSection {
    /// The section's own problems (fields named `unix.*`).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        if let Some(mode) = self.mode {
            p.check(mode > 0o777, "unix.mode", OutOfRange, || format!("unix.mode {mode:#o} must be within 0o777"));
        }
        if let Some(path) = &self.path {
            let parent = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            p.check(!parent.is_dir(), "unix.path", Missing, || {
                format!("unix.path {}: the directory {} does not exist", path.display(), parent.display())
            });
            // sun_path holds 108 bytes with its terminating NUL on Linux.
            p.check(path.as_os_str().len() > 107, "unix.path", Invalid, || {
                format!("unix.path {} is longer than a Unix socket path may be (107 bytes)", path.display())
            });
        } else {
            p.check(self.mode.is_some() || self.uid.is_some() || self.gid.is_some(), "unix.path", Missing, || {
                "unix.mode, unix.uid or unix.gid is set but unix.path is not".into()
            });
        }
        p
    }
}
