//! Readiness: whether this server should be sent ticks, as one value with the causes that hold
//! it back, and a change notification for the gRPC health services.
//!
//! - [`Cause::Starting`] is a latch: set at creation, released once ([`Readiness::started`]) when
//!   the first model is verified, loaded and warm, and never set again.
//! - [`Cause::Draining`] is set once, the moment a graceful shutdown starts, and never cleared.
//! - [`Cause::EngineStuck`] is set and cleared by the stuck-engine watchdog on the admin thread.
//!
//! Written on the control path (start-up, the shutdown path, the watchdog); read by the health
//! tasks (which map it to `grpc.health.v1` statuses) and by the telemetry thread. Lock-free: a
//! bit set in an atomic, and a `tokio::sync::watch` channel (usable from any runtime) that wakes
//! the health task when the value changes.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Why the server is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// The first model is not yet warm.
    Starting = 0,
    /// A graceful shutdown has begun: the remaining ticks are answered, new work should go
    /// elsewhere.
    Draining = 1,
    /// The engine has had work waiting without completing a pass for longer than
    /// `engine.watchdog_ms`.
    EngineStuck = 2,
}

impl Cause {
    /// Every cause, for metrics.
    pub const ALL: [Cause; 3] = [Cause::Starting, Cause::Draining, Cause::EngineStuck];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Starting => "starting",
            Cause::Draining => "draining",
            Cause::EngineStuck => "engine_stuck",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The server's readiness (see the module docs).
pub struct Readiness {
    causes: AtomicU8,
    /// Times each cause was raised (a transition from absent to present).
    raised: [AtomicU64; Cause::ALL.len()],
    changed: tokio::sync::watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not ready: [`Cause::Starting`] holds until [`Readiness::started`].
    pub fn new() -> Self {
        Self {
            causes: AtomicU8::new(Cause::Starting.bit()),
            raised: Default::default(),
            changed: tokio::sync::watch::channel(false).0,
        }
    }

    /// True when no cause holds.
    pub fn is_ready(&self) -> bool {
        self.causes.load(Ordering::Acquire) == 0
    }

    /// Whether `cause` holds now.
    pub fn holds(&self, cause: Cause) -> bool {
        self.causes.load(Ordering::Acquire) & cause.bit() != 0
    }

    /// How many times `cause` was raised.
    pub fn raised(&self, cause: Cause) -> u64 {
        self.raised[cause as usize].load(Ordering::Relaxed)
    }

    /// Releases the start-up latch (the first model is warm). Later calls do nothing.
    pub fn started(&self) {
        self.clear(Cause::Starting);
    }

    /// A graceful shutdown began; the server stays not ready until it exits.
    pub fn drain(&self) {
        self.raise(Cause::Draining);
    }

    /// The watchdog's verdict on the engine.
    pub fn set_engine_stuck(&self, stuck: bool) {
        if stuck { self.raise(Cause::EngineStuck) } else { self.clear(Cause::EngineStuck) }
    }

    /// A receiver that sees every change of [`Readiness::is_ready`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        let rx = self.changed.subscribe();
        self.notify();
        rx
    }

    fn raise(&self, cause: Cause) {
        let before = self.causes.fetch_or(cause.bit(), Ordering::AcqRel);
        if before & cause.bit() == 0 {
            self.raised[cause as usize].fetch_add(1, Ordering::Relaxed);
            self.notify();
        }
    }

    fn clear(&self, cause: Cause) {
        let before = self.causes.fetch_and(!cause.bit(), Ordering::AcqRel);
        if before & cause.bit() != 0 {
            self.notify();
        }
    }

    fn notify(&self) {
        let ready = self.is_ready();
        self.changed.send_if_modified(|v| std::mem::replace(v, ready) != ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_latch_releases_once_and_draining_never_clears() {
        let r = Readiness::new();
        let mut rx = r.subscribe();
        assert!(!r.is_ready() && r.holds(Cause::Starting));
        r.started();
        assert!(r.is_ready());
        assert!(rx.has_changed().unwrap() && *rx.borrow_and_update());
        r.set_engine_stuck(true);
        r.set_engine_stuck(true);
        assert!(!r.is_ready() && !*rx.borrow_and_update());
        assert_eq!(r.raised(Cause::EngineStuck), 1, "raised once while it held");
        r.set_engine_stuck(false);
        assert!(r.is_ready());
        r.drain();
        r.set_engine_stuck(false);
        r.started();
        assert!(!r.is_ready() && r.holds(Cause::Draining), "nothing clears a drain");
        assert_eq!((r.raised(Cause::Draining), r.raised(Cause::Starting)), (1, 0));
    }
}
