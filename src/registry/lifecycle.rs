//! The swap/shadow/rollback state machine, one [`Lane`] per live model name: admin loads and
//! activations, handing a model to the engine and taking the replaced one back (kept as the
//! previous, for an instant rollback, or dropped), shadow comparison and automatic promotion, and
//! probation with automatic rollback. Each name's lane moves on its own: swapping one model never
//! touches another's. Runs on the `quantd-registry` thread; the engine only ever sees control
//! messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::Registry;
use tokio::sync::oneshot;

use super::api::{Key, LoadMode, Loaded, ModelStatus, RegistryError, State, label};
use crate::engine::{ActiveModel, Applied, Control, EngineHandle, ModelHealth, ShadowStats};
use crate::journal::ControlRecord;
use crate::problem::Kind;
use crate::routes::{MAX_MODELS, RouteSpec, Routes};

/// What to do with the next model the engine hands back for a name (it returns them in the
/// order of the control messages that replaced them).
pub(super) enum Retire {
    KeepAsPrevious(Key),
    Drop(Key, State),
    PromoteShadow(Key),
}

/// One live model name: its active version, the previous one kept loaded, its shadow and how
/// the shadow agrees, what the engine will hand back, and the probation of a new version.
pub(super) struct Lane {
    pub(super) active: Key,
    pub(super) previous: Option<(Key, Box<ActiveModel>)>,
    pub(super) shadow: Option<(Key, Arc<ShadowStats>)>,
    pub(super) retire: VecDeque<Retire>,
    /// The newly activated version being watched, since when, and its health counters.
    pub(super) probation: Option<(Key, Instant, Arc<ModelHealth>)>,
}

impl Lane {
    pub(super) fn new(active: Key) -> Self {
        Self { active, previous: None, shadow: None, retire: VecDeque::new(), probation: None }
    }
}

impl Registry {
    /// The lane of live model name `name`, or why there is none.
    pub(super) fn lane(&mut self, name: &str) -> Result<&mut Lane, RegistryError> {
        let live = self.live_names();
        self.lanes.get_mut(name).ok_or_else(|| RegistryError::WrongName(name.to_owned(), live))
    }

    /// The live model names, the default first (for messages).
    pub(super) fn live_names(&self) -> String {
        let mut names = vec![self.served.clone()];
        names.extend(self.lanes.keys().filter(|n| **n != self.served).cloned());
        names.join(", ")
    }

    pub(super) fn admin_load(
        &mut self,
        key: &Key,
        mode: LoadMode,
        engine: &EngineHandle,
    ) -> Result<Loaded, RegistryError> {
        if !self.entries.contains_key(key) {
            self.rescan_entries();
        }
        let state = self.entries.get(key).map(|e| e.state).ok_or_else(|| RegistryError::NotFound(label(key)))?;
        if state == State::Active {
            return match mode {
                LoadMode::LoadOnly => Ok(self.status(key).into()),
                _ => Err(RegistryError::AlreadyActive(label(key))),
            };
        }
        let live = self.lanes.get(&key.0);
        if mode == LoadMode::Shadow && live.is_none() {
            return Err(RegistryError::WrongName(key.0.clone(), self.live_names()));
        }
        if mode == LoadMode::Activate && live.is_none() && self.lanes.len() >= MAX_MODELS {
            return Err(RegistryError::TooManyModels(MAX_MODELS));
        }
        if mode == LoadMode::Activate && live.and_then(|l| l.previous.as_ref()).is_some_and(|(k, _)| k == key) {
            let why = format!("superseded: {} re-activated by admin request", label(key));
            return self.rollback(&key.0, &why, engine).map(Loaded::from);
        }
        if self.entries[key].loaded.is_none() {
            self.load(key, &engine.recent_rows())?;
        }
        let mut confirm = None;
        match mode {
            LoadMode::LoadOnly => {}
            LoadMode::Activate => {
                let model = self.take_active_model(key);
                confirm = Some(self.activate(key, model, engine)?);
            }
            LoadMode::Shadow => self.start_shadow(key, engine)?,
        }
        Ok(Loaded { status: self.status(key), confirm })
    }

    /// Hands `model` to the engine as its name's active version; the model it replaces comes
    /// back and becomes the previous. A name not live yet goes live beside the others. Answers
    /// where the engine confirms the swap (a refusal closes it).
    pub(super) fn activate(
        &mut self,
        key: &Key,
        model: Box<ActiveModel>,
        engine: &EngineHandle,
    ) -> Result<oneshot::Receiver<Applied>, RegistryError> {
        let health = model.health.clone();
        let (done, confirm) = oneshot::channel();
        if let Err(Control::Swap { model, .. }) = engine.control(Control::Swap { model, done: Some(done) }) {
            // Keep it loaded for a later try.
            let entry = self.entries.get_mut(key).expect("known entry");
            tracing::warn!(model = %label(key), "engine control queue full; activation not sent");
            drop(model);
            entry.set(State::Failed, "engine control queue full");
            return Err(RegistryError::Busy);
        }
        let old = match self.lanes.get_mut(&key.0) {
            Some(lane) => {
                let old = std::mem::replace(&mut lane.active, key.clone());
                lane.retire.push_back(Retire::KeepAsPrevious(old.clone()));
                lane.probation = Some((key.clone(), Instant::now(), health));
                Some(old)
            }
            None => {
                // Nothing comes back: the engine adds the name.
                self.lanes.insert(key.0.clone(), Lane::new(key.clone()));
                None
            }
        };
        if let Some(e) = old.as_ref().and_then(|old| self.entries.get_mut(old)) {
            e.set(State::Previous, "");
        }
        self.entries.get_mut(key).expect("known entry").set(State::Active, "");
        self.swaps += 1;
        match old {
            Some(old) => tracing::info!(from = %label(&old), to = %label(key), "model activated"),
            None => tracing::info!(model = %label(key), "model name live beside the others"),
        }
        Ok(confirm)
    }

    /// Restores model name `name`'s previous version.
    pub(super) fn rollback(
        &mut self,
        name: &str,
        why: &str,
        engine: &EngineHandle,
    ) -> Result<ModelStatus, RegistryError> {
        let lane = self.lane(name)?;
        let (key, model) = lane.previous.take().ok_or(RegistryError::NoPrevious)?;
        if let Err(Control::Swap { model, .. }) = engine.control(Control::Swap { model, done: None }) {
            lane.previous = Some((key, model));
            return Err(RegistryError::Busy);
        }
        let bad = std::mem::replace(&mut lane.active, key.clone());
        lane.retire.push_back(Retire::Drop(bad.clone(), State::RolledBack));
        // The restored model already proved itself: no probation for it.
        lane.probation = None;
        if let Some(e) = self.entries.get_mut(&bad) {
            e.set(State::RolledBack, why);
        }
        self.entries.get_mut(&key).expect("known entry").set(State::Active, "");
        self.rollbacks += 1;
        tracing::warn!(from = %label(&bad), to = %label(&key), reason = why, "model rolled back");
        Ok(self.status(&key))
    }

    pub(super) fn start_shadow(&mut self, key: &Key, engine: &EngineHandle) -> Result<(), RegistryError> {
        let model = self.take_active_model(key);
        let stats = model.shadow_stats.clone();
        let name = key.0.clone();
        if let Err(Control::Shadow { model: Some(model), .. }) =
            engine.control(Control::Shadow { name, model: Some(model) })
        {
            drop(model);
            self.entries.get_mut(key).expect("known entry").set(State::Failed, "engine control queue full");
            return Err(RegistryError::Busy);
        }
        let lane = self.lane(&key.0)?;
        let active = lane.active.clone();
        if let Some((old, _)) = lane.shadow.replace((key.clone(), stats)) {
            lane.retire.push_back(Retire::Drop(old, State::Retired));
        }
        self.entries.get_mut(key).expect("known entry").set(State::Shadow, "");
        tracing::info!(model = %label(key), active = %label(&active), "shadow started");
        Ok(())
    }

    pub(super) fn collect_retired(&mut self, engine: &EngineHandle) {
        while let Some(model) = engine.take_retired() {
            if let Some((kind, why)) = model.refused {
                self.refused_by_engine(model, kind, why);
                continue;
            }
            let next = self.lanes.get_mut(&model.card.name).and_then(|l| l.retire.pop_front());
            match next {
                Some(Retire::KeepAsPrevious(key)) => {
                    let lane = self.lanes.get_mut(&key.0).expect("the lane the model came from");
                    if let Some((old, _dropped)) = lane.previous.replace((key, model))
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

    /// The engine refused a swap to `model` and handed it back: it serves what it served before,
    /// so the books go back to that. A new version of a live name leaves the old one active; a
    /// refused rollback leaves the version it replaced active and the previous one kept; a name
    /// that was not live is not. The version is marked failed with the engine's reason (a
    /// rollback target stays previous), and the failure is counted by kind.
    fn refused_by_engine(&mut self, model: Box<ActiveModel>, kind: Kind, why: &'static str) {
        let key: Key = (model.card.name.clone(), model.card.version.clone());
        tracing::error!(model = %model.label, reason = why, "the engine refused the model; what it served keeps serving");
        *self.failures.entry((key.0.clone(), kind.label())).or_default() += 1;
        let Some(lane) = self.lanes.get_mut(&key.0) else { return };
        let serving = match lane.retire.pop_front() {
            // An activation (or a promotion) of a live name: the old version still serves.
            Some(Retire::KeepAsPrevious(old)) => {
                if lane.probation.as_ref().is_some_and(|(k, ..)| *k == key) {
                    lane.probation = None;
                }
                lane.active = old.clone();
                Some(old)
            }
            // A rollback: the version it would replace still serves; the target stays previous.
            Some(Retire::Drop(bad, _)) => {
                lane.active = bad.clone();
                lane.previous = Some((key.clone(), model));
                if let Some(e) = self.entries.get_mut(&bad) {
                    e.set(State::Active, "");
                }
                if let Some(e) = self.entries.get_mut(&key) {
                    e.set(State::Previous, format!("rollback refused by the engine: {why}"));
                }
                return;
            }
            Some(other) => {
                lane.retire.push_front(other);
                None
            }
            // The name was not live before: it is not now.
            None => {
                self.lanes.remove(&key.0);
                None
            }
        };
        if let Some(e) = serving.and_then(|old| self.entries.get_mut(&old)) {
            e.set(State::Active, "");
        }
        if let Some(e) = self.entries.get_mut(&key) {
            // Not retried by a rescan until its files change (as a refused load).
            e.failed_signature = Some(e.found.signature.clone());
            e.set(State::Failed, format!("refused by the engine: {why}"));
        }
    }

    /// Adds or changes a route (by name) whose model is live; answers the table as the engine
    /// will apply it.
    pub(super) fn set_route(&mut self, spec: RouteSpec, engine: &EngineHandle) -> Result<Arc<Routes>, RegistryError> {
        if spec.pinned().is_some() {
            let why = "SetRoute takes a model name; pin versions in the config's routes, or activate one (LoadModel)";
            return Err(RegistryError::BadRoute(why.into()));
        }
        if !self.lanes.contains_key(&spec.model) {
            let why = format!(
                "model {:?} is not live (live: {}); activate a version of it first",
                spec.model,
                self.live_names()
            );
            return Err(RegistryError::BadRoute(why));
        }
        let mut next = (*engine.served().routes().ok_or(RegistryError::Stopped)?).clone();
        next.set(&spec).map_err(RegistryError::BadRoute)?;
        let record = ControlRecord::route(&spec, "ModelAdmin.SetRoute");
        let (done, applied) = oneshot::channel();
        engine
            .control(Control::SetRoute { spec: Box::new(spec), done: Some(done) })
            .map_err(|_| RegistryError::Busy)?;
        if self.journal.is_some() {
            self.unconfirmed_routes.push((record, applied));
        }
        Ok(Arc::new(next))
    }

    /// Journals each route change the engine has confirmed, with the pass it preceded (so that
    /// `quantd audit` routes the ticks after it as live did).
    pub(super) fn journal_routes(&mut self) {
        let Some(journal) = &self.journal else { return };
        self.unconfirmed_routes.retain_mut(|(record, applied)| match applied.try_recv() {
            Ok(Applied::Yes { before_batch }) => {
                journal.control(ControlRecord {
                    before_batch,
                    applied_ns: crate::clock::realtime_ns(),
                    ..record.clone()
                });
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Ok(Applied::UnknownSymbol) | Err(oneshot::error::TryRecvError::Closed) => {
                tracing::error!(route = ?record.route, "the engine did not apply a route change");
                false
            }
        });
    }

    /// Rolls back any name whose new version misbehaves within its probation.
    pub(super) fn check_probation(&mut self, engine: &EngineHandle) {
        let names: Vec<String> =
            self.lanes.iter().filter(|(_, l)| l.probation.is_some()).map(|(n, _)| n.clone()).collect();
        for name in names {
            self.check_probation_of(&name, engine);
        }
    }

    fn check_probation_of(&mut self, name: &str, engine: &EngineHandle) {
        let (max_rate, period) = (self.cfg.settings.rollback_max_error_rate, self.cfg.settings.probation());
        let Some(lane) = self.lanes.get_mut(name) else { return };
        let Some((key, since, health)) = &lane.probation else { return };
        if since.elapsed() > period {
            lane.probation = None;
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let scored = health.scored.load(Relaxed);
        let bad = health.non_finite.load(Relaxed) + health.failed_calls.load(Relaxed);
        if bad > 0 && bad as f64 / scored.max(1) as f64 > max_rate {
            let why = format!(
                "automatic rollback: {bad} non-finite scores or failed calls in {scored} rows within {:?} of activation",
                since.elapsed()
            );
            let key = key.clone();
            if let Err(e) = self.rollback(name, &why, engine) {
                tracing::error!(model = %label(&key), error = %e, "automatic rollback impossible; the model keeps serving");
                if let Some(lane) = self.lanes.get_mut(name) {
                    lane.probation = None;
                }
            }
        }
    }

    /// Promotes or drops any name's shadow that has been compared on enough ticks.
    pub(super) fn check_shadow(&mut self, engine: &EngineHandle) {
        let (after, min_agreement) =
            (self.cfg.settings.shadow_promote_after_ticks, self.cfg.settings.shadow_min_agreement);
        if after == 0 {
            return;
        }
        let due: Vec<(String, Key, u64, f64)> = self
            .lanes
            .iter()
            .filter_map(|(name, lane)| {
                let (key, stats) = lane.shadow.as_ref()?;
                let (compared, _, agreement, _) = stats.snapshot();
                (compared >= after).then(|| (name.clone(), key.clone(), compared, agreement))
            })
            .collect();
        for (name, key, compared, agreement) in due {
            if engine.control(Control::Shadow { name: name.clone(), model: None }).is_err() {
                return; // queue full: try again next turn
            }
            let lane = self.lanes.get_mut(&name).expect("due lanes are live");
            lane.shadow = None;
            if agreement >= min_agreement {
                tracing::info!(model = %label(&key), agreement, compared, "shadow agrees; promoting");
                lane.retire.push_back(Retire::PromoteShadow(key));
            } else {
                let why = format!("shadow agreement {agreement:.4} over {compared} ticks is below {min_agreement}");
                tracing::warn!(model = %label(&key), "{why}");
                lane.retire.push_back(Retire::Drop(key.clone(), State::Retired));
                if let Some(e) = self.entries.get_mut(&key) {
                    e.set(State::Retired, why);
                }
            }
        }
    }
}
