//! The `quantd-risk` thread (control path): drives the [`VarEstimator`] with the wall clock —
//! a sample every `sample_ms`, an estimate every `interval_ms` — and hands its figures to the
//! telemetry (Prometheus gauges) and to the `RiskAdmin.GetRisk` call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{RiskBoard, RiskConfig, VarEstimator};
use crate::control_thread::ControlThread;
use crate::telemetry::Telemetry;

/// The `quantd-risk` thread: samples mids from the board, estimates VaR, publishes scales.
pub struct RiskThread {
    thread: ControlThread,
}

impl RiskThread {
    /// Starts the thread (it idles when VaR sizing is off).
    pub fn start(config: &RiskConfig, board: Arc<RiskBoard>, telemetry: Arc<Telemetry>) -> std::io::Result<Self> {
        let mut est = VarEstimator::new(config.var.clone(), config.unit_qty, board.slots());
        let every = Duration::from_millis(config.var.sample_ms.max(1));
        let thread = ControlThread::spawn("quantd-risk", move |s| {
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
        Ok(Self { thread })
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}
