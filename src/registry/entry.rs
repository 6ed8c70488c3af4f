//! One known model version as the registry tracks it: where it was found, its state and the
//! reason, its load timings, backend and saturation counters, and the loaded model until it is
//! handed to the engine. Owned by the `quantd-registry` thread.

use std::time::SystemTime;

use super::api::{ModelStatus, State};
use super::discover::Found;
use crate::model::LoadedModel;

pub(super) fn now_ms() -> u64 {
    crate::clock::realtime_ns() / 1_000_000
}

pub(super) struct Entry {
    pub(super) found: Found,
    pub(super) state: State,
    pub(super) error: String,
    pub(super) verify_ms: f64,
    pub(super) load_ms: f64,
    pub(super) warm_ms: f64,
    pub(super) changed_unix_ms: u64,
    pub(super) loaded: Option<LoadedModel>,
    /// Execution provider of the last successful load ("" before one).
    pub(super) provider: &'static str,
    /// Backend and ISA level of the last successful load.
    pub(super) backend: Option<(&'static str, &'static str)>,
    /// The native kernel's saturation counters and the manifest's baseline, when it serves this version.
    pub(super) saturation: Option<crate::telemetry::SaturationHandle>,
    /// Signature of the files when a load last failed: retried only when they change.
    pub(super) failed_signature: Option<Vec<(u64, Option<SystemTime>)>>,
}

impl Entry {
    pub(super) fn new(found: Found) -> Self {
        Self {
            found,
            state: State::Discovered,
            error: String::new(),
            verify_ms: 0.0,
            load_ms: 0.0,
            warm_ms: 0.0,
            changed_unix_ms: now_ms(),
            loaded: None,
            provider: "",
            backend: None,
            saturation: None,
            failed_signature: None,
        }
    }

    pub(super) fn set(&mut self, state: State, error: impl Into<String>) {
        self.state = state;
        // Bounded: an error quoting a huge file must not break ListModels (4 MB message limit).
        let error = error.into();
        self.error = crate::text::clip_to(&error, 4_000).to_cow().into_owned();
        self.changed_unix_ms = now_ms();
    }

    pub(super) fn status(&self) -> ModelStatus {
        ModelStatus {
            name: self.found.name.clone(),
            version: self.found.version.clone(),
            state: self.state,
            error: self.error.clone(),
            verify_ms: self.verify_ms,
            load_ms: self.load_ms,
            warm_ms: self.warm_ms,
            changed_unix_ms: self.changed_unix_ms,
            routes: Vec::new(),
        }
    }
}
