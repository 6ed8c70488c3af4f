//! Discovery and loading: rescanning the models directory for versions that appeared or vanished,
//! verifying, loading and warming a version (a refusal is recorded with its reason, and the
//! running model is untouched), and turning a loaded version into the engine's `ActiveModel`.
//! Runs on the `quantd-registry` thread.

use super::api::{Key, LoadMode, State, label};
use super::discover::{is_release, scan, version_cmp};
use super::entry::Entry;
use super::{Registry, warm_up};
use crate::engine::{ActiveModel, EngineHandle};
use crate::journal::ModelRecord;
use crate::model::{LoadedModel, ModelError};

impl Registry {
    /// Verifies, loads and warms `key`; on failure records why (the running model is untouched).
    pub(super) fn load(&mut self, key: &Key, recent: &[f32]) -> Result<(), ModelError> {
        let entry = self.entries.get_mut(key).expect("load is called for known entries");
        let result = LoadedModel::load_with(&entry.found.dir, &self.cfg.load).and_then(|mut m| {
            let warm = warm_up(&mut m, recent, self.cfg.load.max_batch)?;
            Ok((m, warm))
        });
        match result {
            Ok((m, warm)) => {
                entry.verify_ms = m.verify_time.as_secs_f64() * 1e3;
                entry.load_ms = m.load_time.as_secs_f64() * 1e3;
                entry.warm_ms = warm.as_secs_f64() * 1e3;
                self.last_load = Some([entry.verify_ms / 1e3, entry.load_ms / 1e3, entry.warm_ms / 1e3]);
                entry.provider = m.provider.label();
                entry.backend = Some((m.backend.backend, m.backend.isa));
                entry.saturation = m.scorer.saturation().map(|counters| crate::telemetry::SaturationHandle {
                    counters,
                    baseline: m.manifest.saturation.iter().flat_map(|s| s.baseline.clone()).collect(),
                });
                if let Some(j) = &self.journal {
                    j.model(ModelRecord {
                        loaded_ns: crate::clock::realtime_ns(),
                        model: m.manifest.label(),
                        sha256: m.manifest.sha256.clone(),
                        schema_version: m.manifest.features.schema_version.clone(),
                        schema_hash: m.manifest.features.schema_hash.clone(),
                        dir: entry.found.dir.display().to_string(),
                        backend: format!("{} ({})", m.backend.backend, m.backend.isa),
                    });
                }
                entry.loaded = Some(m);
                entry.failed_signature = None;
                entry.set(State::Loaded, "");
                tracing::info!(model = %label(key), provider = entry.provider, verify_ms = entry.verify_ms, load_ms = entry.load_ms, warm_ms = entry.warm_ms, "model loaded and warm");
                Ok(())
            }
            Err(e) => {
                *self.failures.entry((key.0.clone(), e.reason())).or_default() += 1;
                entry.failed_signature = Some(entry.found.signature.clone());
                entry.set(State::Failed, e.to_string());
                tracing::warn!(model = %label(key), error = %e, "model refused (a running model keeps serving)");
                Err(e)
            }
        }
    }

    pub(super) fn take_active_model(&mut self, key: &Key) -> Box<ActiveModel> {
        let entry = self.entries.get_mut(key).expect("known entry");
        let m = entry.loaded.take().expect("model is loaded");
        Box::new(ActiveModel::from_loaded(m, self.cfg.policy_override))
    }

    /// Adds versions that appeared, forgets idle ones whose directory vanished.
    pub(super) fn rescan_entries(&mut self) {
        let found = scan(&self.cfg.models_dir);
        let present: std::collections::BTreeSet<Key> =
            found.iter().map(|f| (f.name.clone(), f.version.clone())).collect();
        self.entries.retain(|k, e| {
            present.contains(k)
                || !matches!(e.state, State::Discovered | State::Failed | State::Loaded | State::Retired)
        });
        for f in found {
            let key = (f.name.clone(), f.version.clone());
            match self.entries.get_mut(&key) {
                Some(e) => e.found = f,
                None => {
                    tracing::info!(model = %label(&key), "new model version found");
                    self.entries.insert(key, Entry::new(f));
                }
            }
        }
    }

    /// Rescans; under the "latest" policy, loads each live name's newest version above its
    /// active one (a failed version only when its files changed) and activates it or puts it in
    /// shadow. A pinned server (`model = "name@version"`) never switches its default name.
    pub(super) fn rescan(&mut self, engine: &EngineHandle) {
        self.rescan_entries();
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        for name in names {
            if (self.cfg.pinned.is_some() && name == self.served) || self.pinned.contains(&name) {
                continue;
            }
            self.take_newer(&name, engine);
        }
    }

    fn take_newer(&mut self, name: &str, engine: &EngineHandle) {
        let Some(lane) = self.lanes.get(name) else { return };
        let active_version = lane.active.1.clone();
        let shadow = lane.shadow.as_ref().map(|(k, _)| k.clone());
        let candidate = self
            .entries
            .iter()
            .filter(|(k, e)| {
                k.0 == name
                    && is_release(&k.1)
                    && version_cmp(&k.1, &active_version).is_gt()
                    && match e.state {
                        State::Discovered => true,
                        State::Failed => e.failed_signature.as_ref() != Some(&e.found.signature),
                        _ => false,
                    }
            })
            .map(|(k, _)| k.clone())
            .max_by(|a, b| version_cmp(&a.1, &b.1));
        let Some(key) = candidate else { return };
        if shadow.as_ref() == Some(&key) {
            return;
        }
        let mode = if self.cfg.settings.shadow_new_versions { LoadMode::Shadow } else { LoadMode::Activate };
        if let Err(e) = self.admin_load(&key, mode, engine) {
            tracing::debug!(model = %label(&key), error = %e, "new version not taken");
        }
    }
}
