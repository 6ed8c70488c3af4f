//! The model registry: discovers versions in the models directory, verifies, loads and warms
//! them, hands them to the engine between two batches, keeps the previous model loaded for an
//! instant rollback, runs shadow comparisons, and rolls back automatically when a new model
//! misbehaves in its first seconds.
//!
//! Everything here runs on the `quantd-registry` control thread; the engine only ever receives
//! a ready `Box<ActiveModel>` through its control queue, and replaced models come back to be
//! dropped here. Admin gRPC calls reach the thread through [`RegistryHandle`] and never touch
//! the engine's hot path.

mod api;
pub mod discover;
pub mod settings;
mod warm;

pub use api::{ActiveView, LoadMode, ModelStatus, RegistryError, RegistryHandle, State};
use api::{Key, Request};
pub use settings::RegistrySection;
pub use warm::warm_up;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use self::discover::{Found, default_name, is_release, scan, version_cmp};
use crate::control_thread::ControlThread;
use crate::engine::{ActiveModel, Control, EngineHandle, ModelHealth};
use crate::journal::{Journal, ModelRecord};
use crate::model::{LoadOptions, LoadedModel, ModelError};
use crate::policy::PolicyParams;
use crate::telemetry::{ModelsView, Telemetry};

/// Registry settings (from the server config).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub models_dir: PathBuf,
    /// The model name served; `None`: the only name present.
    pub name: Option<String>,
    /// A pinned version: never switch automatically.
    pub pinned: Option<String>,
    /// Batch size, execution provider and signature key every version is loaded with.
    pub load: LoadOptions,
    /// Replaces every manifest's `[policy]` when set.
    pub policy_override: Option<PolicyParams>,
    /// Discovery, shadow, probation and rollback (`[registry]`).
    pub settings: RegistrySection,
}

fn label(k: &Key) -> String {
    format!("{}@{}", k.0, k.1)
}

fn now_ms() -> u64 {
    crate::clock::realtime_ns() / 1_000_000
}

struct Entry {
    found: Found,
    state: State,
    error: String,
    verify_ms: f64,
    load_ms: f64,
    warm_ms: f64,
    changed_unix_ms: u64,
    loaded: Option<LoadedModel>,
    /// Execution provider of the last successful load ("" before one).
    provider: &'static str,
    /// Backend and ISA level of the last successful load.
    backend: Option<(&'static str, &'static str)>,
    /// The native kernel's saturation counters and the manifest's baseline, when it serves this version.
    saturation: Option<crate::telemetry::SaturationHandle>,
    /// Signature of the files when a load last failed: retried only when they change.
    failed_signature: Option<Vec<(u64, Option<SystemTime>)>>,
}

impl Entry {
    fn new(found: Found) -> Self {
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

    fn set(&mut self, state: State, error: impl Into<String>) {
        self.state = state;
        // Bounded: an error quoting a huge file must not break ListModels (4 MB message limit).
        let error = error.into();
        self.error = crate::text::clip_to(&error, 4_000).to_cow().into_owned();
        self.changed_unix_ms = now_ms();
    }

    fn status(&self) -> ModelStatus {
        ModelStatus {
            name: self.found.name.clone(),
            version: self.found.version.clone(),
            state: self.state,
            error: self.error.clone(),
            verify_ms: self.verify_ms,
            load_ms: self.load_ms,
            warm_ms: self.warm_ms,
            changed_unix_ms: self.changed_unix_ms,
        }
    }
}

/// What to do with the next model the engine hands back (it returns them in the order of the
/// control messages that replaced them).
enum Retire {
    KeepAsPrevious(Key),
    Drop(Key, State),
    PromoteShadow(Key),
}

/// The registry thread's state.
pub struct Registry {
    cfg: RegistryConfig,
    served: String,
    entries: BTreeMap<Key, Entry>,
    active: Key,
    previous: Option<(Key, Box<ActiveModel>)>,
    shadow: Option<Key>,
    retire: VecDeque<Retire>,
    /// The newly activated model being watched, since when, and its health counters.
    probation: Option<(Key, Instant, Arc<ModelHealth>)>,
    telemetry: Arc<Telemetry>,
    swaps: u64,
    rollbacks: u64,
    failures: BTreeMap<&'static str, u64>,
    last_load: Option<[f64; 3]>,
    /// Where each load is recorded (what the signals' `model` names stand for).
    journal: Option<Journal>,
}

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
        let mut candidates: Vec<Key> = entries.keys().filter(|k| k.0 == served).cloned().collect();
        candidates.sort_by(|a, b| version_cmp(&b.1, &a.1));
        if let Some(pin) = &cfg.pinned {
            candidates.retain(|k| &k.1 == pin);
            if candidates.is_empty() {
                return Err(ModelError::NotFound(format!("{served}@{pin}")));
            }
        } else if candidates.iter().any(|k| is_release(&k.1)) {
            candidates.retain(|k| is_release(&k.1));
        }
        if candidates.is_empty() {
            return Err(ModelError::NotFound(served));
        }
        let mut registry = Self {
            cfg,
            served,
            entries,
            active: candidates[0].clone(),
            previous: None,
            shadow: None,
            retire: VecDeque::new(),
            probation: None,
            telemetry,
            swaps: 0,
            rollbacks: 0,
            failures: BTreeMap::new(),
            last_load: None,
            journal,
        };
        let mut last_err = None;
        for key in candidates {
            match registry.load(&key, &[]) {
                Ok(()) => {
                    let model = registry.take_active_model(&key);
                    registry.entries.get_mut(&key).expect("just loaded").set(State::Active, "");
                    registry.active = key;
                    registry.publish(None);
                    return Ok((registry, model));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ModelError::NotFound(registry.served.clone())))
    }

    /// Starts the control thread. `engine` must be running `start`'s model.
    pub fn spawn(mut self, engine: EngineHandle) -> std::io::Result<(RegistryHandle, RegistryThread)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (watch_tx, watch_rx) = crossbeam_channel::unbounded();
        let watcher = if self.cfg.settings.watch { self.watch(watch_tx) } else { None };
        let stop = tx.clone();
        let thread = ControlThread::spawn_with(
            "quantd-registry",
            move || {
                let _watcher = watcher;
                self.run(&engine, &rx, &watch_rx);
            },
            move |_| {
                let _ = stop.send(Request::Stop);
            },
        )?
        .wait_at_most(STOP_WITHIN);
        Ok((RegistryHandle { tx }, RegistryThread { thread }))
    }

    fn watch(&self, tx: Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut w = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = tx.send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; relying on the periodic rescan"))
        .ok()?;
        match w.watch(&self.cfg.models_dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the models directory; relying on the periodic rescan");
                None
            }
        }
    }

    fn run(&mut self, engine: &EngineHandle, requests: &Receiver<Request>, changes: &Receiver<()>) {
        let mut last_scan = Instant::now();
        loop {
            crossbeam_channel::select! {
                recv(requests) -> r => match r {
                    Ok(Request::Stop) | Err(_) => break,
                    Ok(r) => self.handle(r, engine),
                },
                recv(changes) -> _ => {
                    // Let a burst of file events settle, then look once.
                    std::thread::sleep(Duration::from_millis(50));
                    while changes.try_recv().is_ok() {}
                    self.rescan(engine);
                    last_scan = Instant::now();
                },
                default(Duration::from_millis(100)) => {},
            }
            if last_scan.elapsed() >= self.cfg.settings.rescan() {
                self.rescan(engine);
                last_scan = Instant::now();
            }
            self.collect_retired(engine);
            self.check_probation(engine);
            self.check_shadow(engine);
            self.publish(Some(engine));
        }
        tracing::info!("registry stopped");
    }

    fn handle(&mut self, r: Request, engine: &EngineHandle) {
        match r {
            Request::List(reply) => {
                let _ = reply.send(self.entries.values().map(Entry::status).collect());
            }
            Request::Active(reply) => {
                let _ = reply.send(self.view(engine));
            }
            Request::Load { key, mode, reply } => {
                let r = self.admin_load(&key, mode, engine);
                let _ = reply.send(r);
            }
            Request::Activate { key, reply } => {
                let r = self.admin_load(&key, LoadMode::Activate, engine);
                let _ = reply.send(r);
            }
            Request::Rollback { reply } => {
                let r = self.rollback("rolled back by admin request", engine);
                let _ = reply.send(r);
            }
            Request::Stop => {}
        }
        self.publish(Some(engine));
    }

    fn admin_load(&mut self, key: &Key, mode: LoadMode, engine: &EngineHandle) -> Result<ModelStatus, RegistryError> {
        if key.0 != self.served {
            return Err(RegistryError::WrongName(label(key), self.served.clone()));
        }
        if !self.entries.contains_key(key) {
            self.rescan_entries();
        }
        let state = self.entries.get(key).map(|e| e.state).ok_or_else(|| RegistryError::NotFound(label(key)))?;
        if state == State::Active {
            return match mode {
                LoadMode::LoadOnly => Ok(self.status(key)),
                _ => Err(RegistryError::AlreadyActive(label(key))),
            };
        }
        if mode == LoadMode::Activate && self.previous.as_ref().is_some_and(|(k, _)| k == key) {
            return self.rollback(&format!("superseded: {} re-activated by admin request", label(key)), engine);
        }
        if self.entries[key].loaded.is_none() {
            self.load(key, &engine.recent_rows())?;
        }
        match mode {
            LoadMode::LoadOnly => {}
            LoadMode::Activate => {
                let model = self.take_active_model(key);
                self.activate(key, model, engine)?;
            }
            LoadMode::Shadow => self.start_shadow(key, engine)?,
        }
        Ok(self.status(key))
    }

    fn status(&self, key: &Key) -> ModelStatus {
        self.entries[key].status()
    }

    fn view(&self, engine: &EngineHandle) -> ActiveView {
        ActiveView {
            active: Some(self.status(&self.active)),
            previous: self.previous.as_ref().map(|(k, _)| self.status(k)),
            shadow: self.shadow.as_ref().map(|k| self.status(k)),
            shadow_stats: engine.shadow_stats().snapshot(),
        }
    }

    /// Verifies, loads and warms `key`; on failure records why (the running model is untouched).
    fn load(&mut self, key: &Key, recent: &[f32]) -> Result<(), ModelError> {
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
                *self.failures.entry(e.reason()).or_default() += 1;
                entry.failed_signature = Some(entry.found.signature.clone());
                entry.set(State::Failed, e.to_string());
                tracing::warn!(model = %label(key), error = %e, "model refused (a running model keeps serving)");
                Err(e)
            }
        }
    }

    fn take_active_model(&mut self, key: &Key) -> Box<ActiveModel> {
        let entry = self.entries.get_mut(key).expect("known entry");
        let m = entry.loaded.take().expect("model is loaded");
        Box::new(ActiveModel::from_loaded(m, self.cfg.policy_override))
    }

    /// Hands `model` to the engine; the model it replaces comes back and becomes the previous.
    fn activate(&mut self, key: &Key, model: Box<ActiveModel>, engine: &EngineHandle) -> Result<(), RegistryError> {
        let health = model.health.clone();
        if let Err(Control::Swap(model)) = engine.control(Control::Swap(model)) {
            // Keep it loaded for a later try.
            let entry = self.entries.get_mut(key).expect("known entry");
            tracing::warn!(model = %label(key), "engine control queue full; activation not sent");
            drop(model);
            entry.set(State::Failed, "engine control queue full");
            return Err(RegistryError::Busy);
        }
        let old = std::mem::replace(&mut self.active, key.clone());
        self.retire.push_back(Retire::KeepAsPrevious(old.clone()));
        if let Some(e) = self.entries.get_mut(&old) {
            e.set(State::Previous, "");
        }
        self.entries.get_mut(key).expect("known entry").set(State::Active, "");
        self.probation = Some((key.clone(), Instant::now(), health));
        self.swaps += 1;
        tracing::info!(from = %label(&old), to = %label(key), "model activated");
        Ok(())
    }

    fn rollback(&mut self, why: &str, engine: &EngineHandle) -> Result<ModelStatus, RegistryError> {
        let (key, model) = self.previous.take().ok_or(RegistryError::NoPrevious)?;
        if let Err(Control::Swap(model)) = engine.control(Control::Swap(model)) {
            self.previous = Some((key, model));
            return Err(RegistryError::Busy);
        }
        let bad = std::mem::replace(&mut self.active, key.clone());
        self.retire.push_back(Retire::Drop(bad.clone(), State::RolledBack));
        if let Some(e) = self.entries.get_mut(&bad) {
            e.set(State::RolledBack, why);
        }
        self.entries.get_mut(&key).expect("known entry").set(State::Active, "");
        // The restored model already proved itself: no probation for it.
        self.probation = None;
        self.rollbacks += 1;
        tracing::warn!(from = %label(&bad), to = %label(&key), reason = why, "model rolled back");
        Ok(self.status(&key))
    }

    fn start_shadow(&mut self, key: &Key, engine: &EngineHandle) -> Result<(), RegistryError> {
        let model = self.take_active_model(key);
        if let Err(Control::Shadow(Some(model))) = engine.control(Control::Shadow(Some(model))) {
            drop(model);
            self.entries.get_mut(key).expect("known entry").set(State::Failed, "engine control queue full");
            return Err(RegistryError::Busy);
        }
        if let Some(old) = self.shadow.replace(key.clone()) {
            self.retire.push_back(Retire::Drop(old, State::Retired));
        }
        self.entries.get_mut(key).expect("known entry").set(State::Shadow, "");
        tracing::info!(model = %label(key), active = %label(&self.active), "shadow started");
        Ok(())
    }

    fn collect_retired(&mut self, engine: &EngineHandle) {
        while let Some(model) = engine.take_retired() {
            match self.retire.pop_front() {
                Some(Retire::KeepAsPrevious(key)) => {
                    if let Some((old, _dropped)) = self.previous.replace((key, model))
                        && let Some(e) = self.entries.get_mut(&old)
                    {
                        e.set(State::Retired, "");
                    }
                }
                Some(Retire::Drop(key, state)) => {
                    drop(model);
                    if let Some(e) = self.entries.get_mut(&key).filter(|e| e.state != state) {
                        e.set(state, e.error.clone());
                    }
                }
                Some(Retire::PromoteShadow(key)) => {
                    if let Err(e) = self.activate(&key, model, engine) {
                        tracing::warn!(model = %label(&key), error = %e, "shadow promotion failed");
                    }
                }
                None => tracing::error!(model = %model.label, "engine returned a model nobody expected"),
            }
        }
    }

    fn check_probation(&mut self, engine: &EngineHandle) {
        let Some((key, since, health)) = &self.probation else { return };
        if since.elapsed() > self.cfg.settings.probation() {
            self.probation = None;
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let scored = health.scored.load(Relaxed);
        let bad = health.non_finite.load(Relaxed) + health.failed_calls.load(Relaxed);
        if bad > 0 && bad as f64 / scored.max(1) as f64 > self.cfg.settings.rollback_max_error_rate {
            let why = format!(
                "automatic rollback: {bad} non-finite scores or failed calls in {scored} rows within {:?} of activation",
                since.elapsed()
            );
            let key = key.clone();
            if let Err(e) = self.rollback(&why, engine) {
                tracing::error!(model = %label(&key), error = %e, "automatic rollback impossible; the model keeps serving");
                self.probation = None;
            }
        }
    }

    fn check_shadow(&mut self, engine: &EngineHandle) {
        let Some(key) = self.shadow.clone() else { return };
        if self.cfg.settings.shadow_promote_after_ticks == 0 {
            return;
        }
        let (compared, _, agreement, _) = engine.shadow_stats().snapshot();
        if compared < self.cfg.settings.shadow_promote_after_ticks {
            return;
        }
        if engine.control(Control::Shadow(None)).is_err() {
            return; // queue full: try again next turn
        }
        self.shadow = None;
        if agreement >= self.cfg.settings.shadow_min_agreement {
            tracing::info!(model = %label(&key), agreement, compared, "shadow agrees; promoting");
            self.retire.push_back(Retire::PromoteShadow(key));
        } else {
            let why = format!(
                "shadow agreement {agreement:.4} over {compared} ticks is below {}",
                self.cfg.settings.shadow_min_agreement
            );
            tracing::warn!(model = %label(&key), "{why}");
            self.retire.push_back(Retire::Drop(key.clone(), State::Retired));
            if let Some(e) = self.entries.get_mut(&key) {
                e.set(State::Retired, why);
            }
        }
    }

    /// Adds versions that appeared, forgets idle ones whose directory vanished.
    fn rescan_entries(&mut self) {
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

    /// Rescans; under the "latest" policy, loads the newest served version above the active one
    /// (a failed version only when its files changed) and activates it or puts it in shadow.
    fn rescan(&mut self, engine: &EngineHandle) {
        self.rescan_entries();
        if self.cfg.pinned.is_some() {
            return;
        }
        let active_version = self.active.1.clone();
        let candidate = self
            .entries
            .iter()
            .filter(|(k, e)| {
                k.0 == self.served
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
        if self.shadow.as_ref() == Some(&key) {
            return;
        }
        let mode = if self.cfg.settings.shadow_new_versions { LoadMode::Shadow } else { LoadMode::Activate };
        if let Err(e) = self.admin_load(&key, mode, engine) {
            tracing::debug!(model = %label(&key), error = %e, "new version not taken");
        }
    }

    fn publish(&self, engine: Option<&EngineHandle>) {
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

/// The running registry thread.
pub struct RegistryThread {
    thread: ControlThread,
}

/// How long shutdown waits for the registry thread to finish what it is doing: a load stuck in
/// a file read (a hung network filesystem) must not hold up shutdown. After this the thread is
/// left to the process exit, logged.
pub const STOP_WITHIN: Duration = Duration::from_secs(2);

impl RegistryThread {
    /// Asks the thread to stop and waits for it, at most [`STOP_WITHIN`].
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}
