//! The wall clock, in the one unit the service uses for it: CLOCK_REALTIME nanoseconds since
//! the Unix epoch (what `server_recv_ns`/`server_send_ns` carry, and the engine's clock for
//! symbol eviction and the future-timestamp check), and the config's millisecond durations where
//! 0 means off. Any thread.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (0 if the clock is before it).
#[inline]
pub fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A config duration in ms, with 0 meaning off.
pub fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}
