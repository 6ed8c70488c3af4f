//! What the registry shows: the status of one version, the active/previous/shadow view the admin
//! API answers, and the models view published to telemetry after every turn. Runs on the
//! `quantd-registry` thread.

use super::Registry;
use super::api::{ActiveView, Key, ModelStatus};
use crate::engine::EngineHandle;
use crate::telemetry::ModelsView;

impl Registry {
    pub(super) fn status(&self, key: &Key) -> ModelStatus {
        self.entries[key].status()
    }

    pub(super) fn view(&self, engine: &EngineHandle) -> ActiveView {
        ActiveView {
            active: Some(self.status(&self.active)),
            previous: self.previous.as_ref().map(|(k, _)| self.status(k)),
            shadow: self.shadow.as_ref().map(|k| self.status(k)),
            shadow_stats: engine.shadow_stats().snapshot(),
        }
    }

    pub(super) fn publish(&self, engine: Option<&EngineHandle>) {
        let shadow_agreement =
            engine.filter(|_| self.shadow.is_some()).map(|e| e.shadow_stats().snapshot()).map(|(c, _, a, _)| (c, a));
        let view = ModelsView {
            shadow_agreement,
            versions: self
                .entries
                .values()
                .map(|e| (e.found.name.clone(), e.found.version.clone(), e.state.label(), e.provider))
                .collect(),
            swaps: self.swaps,
            rollbacks: self.rollbacks,
            failures: self.failures.iter().map(|(k, v)| (*k, *v)).collect(),
            last_load: self.last_load,
            active: Some(self.active.clone()),
            backends: self
                .entries
                .values()
                .filter_map(|e| e.backend.map(|(b, isa)| (format!("{}@{}", e.found.name, e.found.version), b, isa)))
                .collect(),
            saturation: self
                .entries
                .values()
                .filter_map(|e| Some((format!("{}@{}", e.found.name, e.found.version), e.saturation.clone()?)))
                .collect(),
        };
        self.telemetry.set_models(view);
    }
}
