//! The swap/shadow/rollback state machine: admin loads and activations, handing a model to the
//! engine and taking the replaced one back (kept as the previous, for an instant rollback, or
//! dropped), shadow comparison and automatic promotion, and probation with automatic rollback.
//! Runs on the `quantd-registry` thread; the engine only ever sees control messages.

use std::time::Instant;

use super::Registry;
use super::api::{Key, LoadMode, ModelStatus, RegistryError, State};
use super::entry::label;
use crate::engine::{ActiveModel, Control, EngineHandle};

/// What to do with the next model the engine hands back (it returns them in the order of the
/// control messages that replaced them).
pub(super) enum Retire {
    KeepAsPrevious(Key),
    Drop(Key, State),
    PromoteShadow(Key),
}

impl Registry {
    pub(super) fn admin_load(
        &mut self,
        key: &Key,
        mode: LoadMode,
        engine: &EngineHandle,
    ) -> Result<ModelStatus, RegistryError> {
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

    /// Hands `model` to the engine; the model it replaces comes back and becomes the previous.
    pub(super) fn activate(
        &mut self,
        key: &Key,
        model: Box<ActiveModel>,
        engine: &EngineHandle,
    ) -> Result<(), RegistryError> {
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

    pub(super) fn rollback(&mut self, why: &str, engine: &EngineHandle) -> Result<ModelStatus, RegistryError> {
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

    pub(super) fn start_shadow(&mut self, key: &Key, engine: &EngineHandle) -> Result<(), RegistryError> {
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

    pub(super) fn collect_retired(&mut self, engine: &EngineHandle) {
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

    pub(super) fn check_probation(&mut self, engine: &EngineHandle) {
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

    pub(super) fn check_shadow(&mut self, engine: &EngineHandle) {
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
}
