//! [`ControlThread`]: the one life-cycle type of quantd's named threads (engine, registry, admin,
//! telemetry, risk, journal). Each is spawned with a name, a body and a way to ask it to stop;
//! it is stopped — asked, then joined (for at most a bound, when one is set), a panic logged —
//! by [`ControlThread::stop`] or on drop, exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How a thread is asked to stop, given its handle (to unpark it).
type Ask = Box<dyn FnOnce(&Thread) + Send>;

/// A named thread that is asked to stop and joined.
pub struct ControlThread {
    name: String,
    /// How the thread is asked to stop (given its handle, to unpark it); taken on the first stop.
    ask: Option<Ask>,
    thread: Option<JoinHandle<()>>,
    /// Wait at most this long for the thread; then it is left to the process exit, logged.
    wait_at_most: Option<Duration>,
}

impl ControlThread {
    /// Starts `body` on a thread named `name`; it should return soon after the flag it is
    /// given turns true (it is unparked when that happens).
    pub fn spawn(name: &str, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Self::spawn_with(
            name,
            move || body(flag),
            move |thread| {
                stop.store(true, Ordering::Release);
                thread.unpark();
            },
        )
    }

    /// Starts `body` on a thread named `name`; `ask` is what asks it to stop (a message, a
    /// flag), given the thread's handle.
    pub fn spawn_with(
        name: &str,
        body: impl FnOnce() + Send + 'static,
        ask: impl FnOnce(&Thread) + Send + 'static,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new().name(name.into()).spawn(body)?;
        Ok(Self { name: name.into(), ask: Some(Box::new(ask)), thread: Some(thread), wait_at_most: None })
    }

    /// Bounds how long [`ControlThread::stop`] waits: a thread stuck in a blocking call (a
    /// file read on a hung network filesystem) must not hold up shutdown.
    pub fn wait_at_most(mut self, limit: Duration) -> Self {
        self.wait_at_most = Some(limit);
        self
    }

    /// Asks the thread to stop and waits for it (idempotent).
    pub fn stop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        if let Some(ask) = self.ask.take() {
            ask(t.thread());
        }
        if let Some(limit) = self.wait_at_most {
            let deadline = Instant::now() + limit;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !t.is_finished() {
                tracing::error!(thread = %self.name, waited = ?limit, "the thread did not stop; shutdown goes on without it");
                return;
            }
        }
        if t.join().is_err() {
            tracing::error!(thread = %self.name, "the thread panicked");
        }
    }
}

/// Sets the calling thread's nice value (`what` names the thread in the log), or logs why not.
pub fn renice(nice: i32, what: &str) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on a thread id changes only that
        // thread's priority.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc == 0 {
            tracing::info!(nice, thread = what, "thread reniced");
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(nice, thread = what, %error, "cannot renice the thread (negative values need CAP_SYS_NICE); it keeps the default priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::warn!(nice, thread = what, "nice values are only applied on Linux");
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop();
    }
}
