//! Observability: lock-free per-stage latency histograms and outcome counters written on the
//! hot paths, merged and exported to Prometheus by the control thread, and `tracing` set-up.
//!
//! Writers: the engine thread and the gRPC stream tasks (each owns its [`latency::Recorder`]).
//! Reader: the telemetry thread started by [`exporter::Exporter::start`].

pub mod counters;
pub mod exporter;
pub mod latency;
pub mod logging;

pub use counters::{Counters, Outcome};
pub use latency::{LatencyHub, Recorder, Series};

use std::sync::{Arc, Mutex};

/// Telemetry shared by the engine, the gRPC edge and the exporter of one server.
#[derive(Default)]
pub struct Telemetry {
    pub counters: Counters,
    pub latency: LatencyHub,
    /// `(name, version)` of the active model, for `quantd_model_info` (control path only).
    model: Mutex<Option<(String, String)>>,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_model(&self, name: &str, version: &str) {
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((name.to_owned(), version.to_owned()));
    }

    pub fn model(&self) -> Option<(String, String)> {
        self.model.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
