//! Observability: lock-free per-stage latency histograms and outcome counters written on the
//! hot paths, merged and exported to Prometheus by the control thread, and `tracing` set-up.
//!
//! Writers: the engine thread and the gRPC stream tasks (each owns its [`latency::Recorder`]).
//! Reader: the telemetry thread started by [`exporter::Exporter::start`].

pub mod counters;
pub mod exporter;
pub mod latency;
pub mod logging;

pub use counters::{
    ConnEvent, Counters, Event, EventCounts, InferOutcome, JournalEvent, Outcome, StreamEvent, SymbolEvent,
};
pub use latency::{LatencyHub, Recorder, Series};

use std::sync::{Arc, Mutex};

/// A symbol's VaR figures as the risk thread last published them: for metrics, the admin
/// status (`GetRisk`) and the replay report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SymbolVarReport {
    /// The symbol.
    pub symbol: String,
    /// Latest VaR of a unit position (quote currency; NaN before `min_history`).
    pub var_per_unit: f64,
    /// The position scale the VaR limit sets (1: unbound).
    pub scale: f64,
    /// Non-overlapping horizons back-tested.
    pub checks: u64,
    /// How many of them lost more than the VaR.
    pub exceedances: u64,
    /// The exceedance rate the VaR's confidence level expects.
    pub expected_rate: f64,
    /// Kupiec proportion-of-failures likelihood ratio.
    pub kupiec_lr: f64,
    /// Its p-value (χ², 1 dof).
    pub kupiec_p: f64,
}

/// What the registry last published about its models.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelsView {
    /// `(name, version, state, execution provider)` of every known version.
    pub versions: Vec<(String, String, &'static str, &'static str)>,
    /// `(name, version)` of each live model name's active version.
    pub active: Vec<(String, String)>,
    /// Swaps since start.
    pub swaps: u64,
    /// Rollbacks since start.
    pub rollbacks: u64,
    /// Refused loads by model name and reason.
    pub failures: Vec<(String, &'static str, u64)>,
    /// Seconds spent verifying, loading and warming the last model loaded.
    pub last_load: Option<[f64; 3]>,
    /// `(model name, ticks compared, agreement)` of each live name's shadow (0s without one).
    pub shadow_agreement: Vec<(String, u64, f64)>,
    /// `(name@version, backend, isa)` of every loaded version.
    pub backends: Vec<(String, &'static str, &'static str)>,
    /// The native kernel's clamped-value counters of every loaded version it serves.
    pub saturation: Vec<(String, SaturationHandle)>,
}

/// A model's saturation counters, compared by identity (the view is compared to skip unchanged
/// publications), and the baseline its manifest records per stage.
#[derive(Clone, Debug)]
pub struct SaturationHandle {
    /// The kernel's live counters.
    pub counters: Arc<crate::int8::Saturation>,
    /// `(stage, validation-period ratio)` from the manifest's `[saturation]` (empty: none).
    pub baseline: Vec<(String, f64)>,
}

impl PartialEq for SaturationHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.counters, &other.counters)
    }
}

/// Telemetry shared by the engine, the gRPC edge and the exporter of one server.
#[derive(Default)]
pub struct Telemetry {
    /// Outcome, reject and event counters.
    pub counters: Counters,
    /// The latency histograms.
    pub latency: LatencyHub,
    /// Whether the server should get ticks (set by start-up, shutdown and the watchdog).
    pub readiness: Arc<crate::readiness::Readiness>,
    /// The registry's view of the models, for the exporter (control path only).
    models: Mutex<ModelsView>,
    /// The VaR estimator's latest figures and the all-symbols kill switch (control path only).
    risk: Mutex<(Vec<SymbolVarReport>, bool)>,
    /// Every engine model slot's telemetry (registered when an engine is built).
    model_slots: Mutex<Vec<Arc<ModelTelemetry>>>,
}

/// One engine model slot's telemetry: the model name it holds once live (a slot holds one name
/// for the engine's life, so the `model` label is bounded by the live names, never by symbols),
/// and the outcomes of the ticks its model scored. Written by the engine thread without locks.
#[derive(Default)]
pub struct ModelTelemetry {
    name: arc_swap::ArcSwapOption<String>,
    /// Ticks its model answered, by outcome (scored, warming_up, rejected).
    pub outcomes: EventCounts<Outcome, { Outcome::ALL.len() }>,
}

impl ModelTelemetry {
    /// Names the slot (when its model name goes live).
    pub fn set_name(&self, name: &str) {
        self.name.store(Some(Arc::new(name.to_owned())));
    }

    /// The model name it holds (None: not live).
    pub fn name(&self) -> Option<Arc<String>> {
        self.name.load_full()
    }
}

impl Telemetry {
    /// Empty counters and histograms.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Publishes the registry's view.
    pub fn set_models(&self, view: ModelsView) {
        *self.models.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// The registry's last view.
    pub fn models(&self) -> ModelsView {
        self.models.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the risk thread's VaR figures and the all-symbols kill switch.
    pub fn set_risk(&self, vars: Vec<SymbolVarReport>, global_kill: bool) {
        *self.risk.lock().unwrap_or_else(|e| e.into_inner()) = (vars, global_kill);
    }

    /// A new model slot's telemetry (an engine registers one per slot when it is built).
    pub fn model_slot(&self) -> Arc<ModelTelemetry> {
        let slot = Arc::new(ModelTelemetry::default());
        self.model_slots.lock().unwrap_or_else(|e| e.into_inner()).push(slot.clone());
        slot
    }

    /// Every live model slot's telemetry, with its model name.
    pub fn model_slots(&self) -> Vec<(Arc<String>, Arc<ModelTelemetry>)> {
        let slots = self.model_slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.iter().filter_map(|s| Some((s.name()?, s.clone()))).collect()
    }

    /// Per-symbol VaR figures and whether the all-symbols kill switch is engaged.
    pub fn risk(&self) -> (Vec<SymbolVarReport>, bool) {
        self.risk.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
