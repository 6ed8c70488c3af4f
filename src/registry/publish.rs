//! What the registry shows: the status of one version, the active/previous/shadow view the admin
//! API answers, and the models view published to telemetry after every turn. Runs on the
//! `quantd-registry` thread.

use super::Registry;
use super::api::{ActiveView, Key, ModelStatus, RegistryError, State};
use crate::engine::EngineHandle;
use crate::telemetry::ModelsView;

impl Registry {
    pub(super) fn status(&self, key: &Key) -> ModelStatus {
        self.entries[key].status()
    }

    /// Every known version; an active one with the routes it serves.
    pub(super) fn list(&self, engine: &EngineHandle) -> Vec<ModelStatus> {
        let routes = engine.served().routes();
        let serves = |name: &str| -> Vec<String> {
            let routes = routes.iter().flat_map(|r| r.iter());
            routes.filter(|r| *r.model == *name).map(|r| r.name.to_string()).collect()
        };
        let statuses = self.entries.values().map(|e| e.status());
        statuses
            .map(|s| if s.state == State::Active { ModelStatus { routes: serves(&s.name), ..s } } else { s })
            .collect()
    }

    /// Live model name `name`'s active, previous and shadow versions.
    pub(super) fn view(&self, name: &str) -> Result<ActiveView, RegistryError> {
        let lane = self.lanes.get(name).ok_or_else(|| RegistryError::WrongName(name.to_owned(), self.live_names()))?;
        Ok(ActiveView {
            active: Some(self.status(&lane.active)),
            previous: lane.previous.as_ref().map(|(k, _)| self.status(k)),
            shadow: lane.shadow.as_ref().map(|(k, _)| self.status(k)),
            shadow_stats: lane.shadow.as_ref().map_or((0, 0, 0.0, 0.0), |(_, s)| s.snapshot()),
        })
    }

    pub(super) fn publish(&self) {
        let view = ModelsView {
            shadow_agreement: self
                .lanes
                .iter()
                .map(|(name, lane)| {
                    let (compared, _, agreement, _) =
                        lane.shadow.as_ref().map_or((0, 0, 0.0, 0.0), |(_, s)| s.snapshot());
                    (name.clone(), compared, agreement)
                })
                .collect(),
            versions: self
                .entries
                .values()
                .map(|e| (e.found.name.clone(), e.found.version.clone(), e.state.label(), e.provider))
                .collect(),
            swaps: self.swaps,
            rollbacks: self.rollbacks,
            failures: self.failures.iter().map(|((model, reason), n)| (model.clone(), *reason, *n)).collect(),
            last_load: self.last_load,
            active: self.lanes.values().map(|l| l.active.clone()).collect(),
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
