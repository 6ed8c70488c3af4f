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

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.stop();
    }
}
