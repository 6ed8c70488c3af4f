//! Start-up selection: which model name the server serves (the configured one, the only one in
//! the directory, or `models/DEFAULT`) and which version it starts on (the pinned one, or the
//! highest release that passes every check; failed ones are reported and skipped). Runs on the
//! caller's thread before the engine starts.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::api::{Key, State};
use super::discover::{default_name, is_release, scan, version_cmp};
use super::entry::Entry;
use super::lifecycle::Lane;
use super::{Registry, RegistryConfig};
use crate::engine::ActiveModel;
use crate::journal::Journal;
use crate::model::ModelError;
use crate::routes::RouteSpec;
use crate::telemetry::Telemetry;

impl Registry {
    /// Scans the models directory and loads the model to start with: the pinned version, or the
    /// highest version that passes every check (failed ones are reported and skipped).
    /// Each version loaded is recorded in `journal`, when there is one.
    pub fn start(
        cfg: RegistryConfig,
        telemetry: Arc<Telemetry>,
        journal: Option<Journal>,
    ) -> Result<(Self, Box<ActiveModel>), ModelError> {
        let found = scan(&cfg.models_dir);
        let served = match &cfg.name {
            Some(n) => n.clone(),
            None => {
                let mut names: Vec<_> = found.iter().map(|f| f.name.clone()).collect();
                names.dedup();
                match (names.len(), default_name(&cfg.models_dir)) {
                    (0, _) => return Err(ModelError::NoneFound(cfg.models_dir.clone())),
                    (1, _) => names.remove(0),
                    (_, Some(d)) if names.contains(&d) => d,
                    _ => return Err(ModelError::Ambiguous { dir: cfg.models_dir.clone(), names: names.join(", ") }),
                }
            }
        };
        let entries: BTreeMap<Key, Entry> =
            found.into_iter().map(|f| ((f.name.clone(), f.version.clone()), Entry::new(f))).collect();
        let pinned = cfg.pinned.clone();
        let mut registry = Self {
            cfg,
            served,
            entries,
            lanes: BTreeMap::new(),
            pinned: Default::default(),
            telemetry,
            swaps: 0,
            rollbacks: 0,
            failures: BTreeMap::new(),
            last_load: None,
            journal,
            unconfirmed_routes: Vec::new(),
        };
        let (key, model) = registry.start_version(&registry.served.clone(), pinned.as_deref())?;
        registry.lanes.insert(key.0.clone(), Lane::new(key));
        registry.publish();
        Ok((registry, model))
    }

    /// Loads the start version of each model name the config's routes need beside the served
    /// one (the highest release that passes every check), or the first refusal. They serve
    /// under the routes from the start, each with its own life cycle (see [`super::lifecycle`]).
    /// A route's `model = "name@version"` pins that name: it starts on that version and rescans
    /// never swap it.
    pub fn start_routed(&mut self, specs: &[RouteSpec]) -> Result<Vec<Box<ActiveModel>>, ModelError> {
        let mut models = Vec::new();
        let mut names: Vec<(&str, Option<&str>)> = Vec::new();
        for s in specs.iter().filter(|s| s.model_name() != self.served) {
            match names.iter_mut().find(|(n, _)| *n == s.model_name()) {
                Some((_, pin)) => *pin = pin.or(s.pinned()),
                None => names.push((s.model_name(), s.pinned())),
            }
        }
        for (name, pin) in names {
            let (key, model) = self.start_version(name, pin)?;
            if pin.is_some() {
                self.pinned.insert(name.to_owned());
            }
            tracing::info!(model = %model.label, "routed model verified, loaded and warm");
            self.lanes.insert(key.0.clone(), Lane::new(key));
            models.push(model);
        }
        self.publish();
        Ok(models)
    }

    /// Loads `name`'s start version: `pinned`, or the highest version that passes every check
    /// (releases first; failed ones are reported and skipped), marked active.
    fn start_version(&mut self, name: &str, pinned: Option<&str>) -> Result<(Key, Box<ActiveModel>), ModelError> {
        let mut candidates: Vec<Key> = self.entries.keys().filter(|k| k.0 == name).cloned().collect();
        candidates.sort_by(|a, b| version_cmp(&b.1, &a.1));
        if let Some(pin) = pinned {
            candidates.retain(|k| k.1 == pin);
            if candidates.is_empty() {
                return Err(ModelError::NotFound(format!("{name}@{pin}")));
            }
        } else if candidates.iter().any(|k| is_release(&k.1)) {
            candidates.retain(|k| is_release(&k.1));
        }
        let mut last_err = None;
        for key in candidates {
            match self.load(&key, &[]) {
                Ok(()) => {
                    let model = self.take_active_model(&key);
                    self.entries.get_mut(&key).expect("just loaded").set(State::Active, "");
                    return Ok((key, model));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ModelError::NotFound(name.to_owned())))
    }
}
