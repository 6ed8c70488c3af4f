//! The `quantd-risk` thread (control path): drives the [`VarEstimator`] with the wall clock —
//! a sample every `sample_ms`, an estimate every `interval_ms` — and hands its figures to the
//! telemetry (Prometheus gauges) and to the `RiskAdmin.GetRisk` call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{RiskBoard, RiskConfig, VarEstimator};
use crate::telemetry::Telemetry;

pub struct RiskThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RiskThread {
    pub fn start(config: &RiskConfig, board: Arc<RiskBoard>, telemetry: Arc<Telemetry>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let mut est = VarEstimator::new(config.var.clone(), config.unit_qty, board.slots());
        let every = Duration::from_millis(config.var.sample_ms.max(1));
        let thread = std::thread::Builder::new().name("quantd-risk".into()).spawn(move || {
            let mut next = Instant::now() + every;
            while !s.load(Ordering::Acquire) {
                let now = Instant::now();
                if now < next {
                    std::thread::park_timeout(next - now);
                    continue;
                }
                est.sample(&board);
                telemetry.set_risk(est.report(), board.global_kill());
                // A late wake-up skips samples rather than bunching them.
                next += every;
                if next < Instant::now() {
                    next = Instant::now() + every;
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for RiskThread {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
