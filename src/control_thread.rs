//! A control-path thread with a stop flag (the telemetry, risk and journal threads): spawned with a name
//! and a body that polls the flag between rounds of work; stopped — flag set, thread unparked,
//! joined — by [`ControlThread::stop`] or on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub struct ControlThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlThread {
    /// Starts `body` on a thread named `name`; it should return soon after the flag it is
    /// given turns true (it is unparked when that happens).
    pub fn spawn(name: &str, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || body(flag))?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Asks the thread to stop and waits for it (idempotent).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
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
