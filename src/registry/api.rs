//! What the registry tells and takes from the outside: model states and statuses, the admin
//! requests, and [`RegistryHandle`], through which the gRPC admin service (on tokio) reaches the
//! registry thread. Nothing here runs on the engine thread.

use std::sync::Arc;

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use crate::model::ModelError;
use crate::routes::{RouteSpec, Routes};

/// Where a model version is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum State {
    /// Found in the models directory, not loaded.
    Discovered,
    /// Verified, loaded and warm, not serving.
    Loaded,
    /// Serving.
    Active,
    /// The one before the active one, kept loaded for an instant rollback.
    Previous,
    /// Scoring beside the active model without sending signals.
    Shadow,
    /// Refused at load (the reason is in `error`).
    Failed,
    /// Replaced by a rollback.
    RolledBack,
    /// No longer serving and unloaded.
    Retired,
}

impl State {
    /// The state's name (admin API, `quantd_model_info{state}`).
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// What the admin API reports for one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStatus {
    /// The model's name.
    pub name: String,
    /// The version.
    pub version: String,
    /// Where it is in its life cycle.
    pub state: State,
    /// Why it failed or was rolled back (empty otherwise).
    pub error: String,
    /// Verification time of the last load, ms.
    pub verify_ms: f64,
    /// Session load time of the last load, ms.
    pub load_ms: f64,
    /// Warm-up time of the last load, ms.
    pub warm_ms: f64,
    /// When the state last changed, ms since the epoch.
    pub changed_unix_ms: u64,
    /// The routes an active version serves (empty for the others).
    pub routes: Vec<String>,
}

/// The active, previous and shadow models, and the shadow's agreement.
#[derive(Clone, Debug, Default)]
pub struct ActiveView {
    /// The model serving.
    pub active: Option<ModelStatus>,
    /// The model a rollback would restore.
    pub previous: Option<ModelStatus>,
    /// The model in shadow.
    pub shadow: Option<ModelStatus>,
    /// (compared, agreed, agreement, mean |score diff|)
    pub shadow_stats: (u64, u64, f64, f64),
}

/// What an admin load does with the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Load, verify and warm it; change nothing else.
    LoadOnly,
    /// Make it the active model.
    Activate,
    /// Run it in shadow.
    Shadow,
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// That version is not in the models directory.
    #[error("model {0} is not in the models directory")]
    NotFound(String),
    /// The version was refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No previous model is loaded.
    #[error("no previous model to roll back to")]
    NoPrevious,
    /// That version is serving already.
    #[error("{0} is already active")]
    AlreadyActive(String),
    /// The name is not live (no version of it serves).
    #[error("model {0} is not live here; live: {1}")]
    WrongName(String, String),
    /// A route that cannot be set.
    #[error("route refused: {0}")]
    BadRoute(String),
    /// As many model names are live as the engine holds.
    #[error("{0} model names are live already, as many as the engine holds")]
    TooManyModels(usize),
    /// The engine's control queue is full.
    #[error("the engine's control queue is full; try again")]
    Busy,
    /// The engine would not serve the version (it was loaded and verified); what it served
    /// before keeps serving.
    #[error("the engine refused {0}: {1}")]
    EngineRefused(String, String),
    /// The engine did not confirm the swap in time (stuck or overloaded); it applies when the
    /// engine runs.
    #[error(
        "the engine did not confirm {0} within {1:?} (stuck or overloaded); the swap is queued and applies when it runs"
    )]
    NotConfirmed(String, std::time::Duration),
    /// The registry thread has stopped.
    #[error("the registry has stopped")]
    Stopped,
}

pub(super) type Key = (String, String);

/// A version's `name@version`.
pub(super) fn label(k: &Key) -> String {
    format!("{}@{}", k.0, k.1)
}

/// How long an activation waits for the engine to confirm the swap.
pub const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// An admin load's answer: the version's status, and where the engine confirms a swap to it
/// (an activation), which the caller awaits before answering.
pub(super) struct Loaded {
    pub(super) status: ModelStatus,
    pub(super) confirm: Option<oneshot::Receiver<crate::engine::Applied>>,
}

impl From<ModelStatus> for Loaded {
    fn from(status: ModelStatus) -> Self {
        Self { status, confirm: None }
    }
}

pub(super) enum Request {
    List(oneshot::Sender<Vec<ModelStatus>>),
    Load { key: Key, mode: LoadMode, reply: oneshot::Sender<Result<Loaded, RegistryError>> },
    Activate { key: Key, reply: oneshot::Sender<Result<Loaded, RegistryError>> },
    Rollback { name: String, reply: oneshot::Sender<Result<ModelStatus, RegistryError>> },
    Active { name: String, reply: oneshot::Sender<Result<ActiveView, RegistryError>> },
    Routes(oneshot::Sender<Result<Arc<Routes>, RegistryError>>),
    SetRoute { spec: RouteSpec, reply: oneshot::Sender<Result<Arc<Routes>, RegistryError>> },
    Stop,
}

/// Sends admin requests to the registry thread; cheap to clone.
#[derive(Clone)]
pub struct RegistryHandle {
    pub(super) tx: Sender<Request>,
}

impl RegistryHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| RegistryError::Stopped)?;
        rx.await.map_err(|_| RegistryError::Stopped)
    }

    /// Every known version and its state.
    pub async fn list(&self) -> Result<Vec<ModelStatus>, RegistryError> {
        self.ask(Request::List).await
    }

    /// Loads `name@version` and then does what `mode` says; an activation answers once the
    /// engine serves it.
    pub async fn load(&self, name: &str, version: &str, mode: LoadMode) -> Result<ModelStatus, RegistryError> {
        let key = (name.to_owned(), version.to_owned());
        let loaded = self.ask(|reply| Request::Load { key: key.clone(), mode, reply }).await??;
        self.confirmed(key, loaded).await
    }

    /// Loads `name@version` if needed and makes it active; answers once the engine serves it.
    pub async fn activate(&self, name: &str, version: &str) -> Result<ModelStatus, RegistryError> {
        let key = (name.to_owned(), version.to_owned());
        let loaded = self.ask(|reply| Request::Activate { key: key.clone(), reply }).await??;
        self.confirmed(key, loaded).await
    }

    /// Waits for the engine to confirm a swap, so that a stream opened after the answer finds
    /// the version served. A refusal is answered with the reason the registry recorded.
    async fn confirmed(&self, key: Key, loaded: Loaded) -> Result<ModelStatus, RegistryError> {
        let Some(confirm) = loaded.confirm else { return Ok(loaded.status) };
        let label = label(&key);
        match tokio::time::timeout(CONFIRM_WITHIN, confirm).await {
            Ok(Ok(_)) => Ok(loaded.status),
            Err(_) => Err(RegistryError::NotConfirmed(label, CONFIRM_WITHIN)),
            // The engine handed the model back; the registry records why within one of its
            // rounds (100 ms).
            Ok(Err(_)) => {
                for _ in 0..20 {
                    let status = self.list().await?.into_iter().find(|s| (&s.name, &s.version) == (&key.0, &key.1));
                    if let Some(s) = status.filter(|s| s.state != State::Active) {
                        return Err(RegistryError::EngineRefused(label, s.error));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(RegistryError::EngineRefused(label, "no reason recorded".into()))
            }
        }
    }

    /// Restores model name `name`'s previous version ("": the default model's).
    pub async fn rollback(&self, name: &str) -> Result<ModelStatus, RegistryError> {
        let name = name.to_owned();
        self.ask(|reply| Request::Rollback { name, reply }).await?
    }

    /// The engine's route table.
    pub async fn routes(&self) -> Result<Arc<Routes>, RegistryError> {
        self.ask(Request::Routes).await?
    }

    /// Adds a route or changes one (by name); answers the table as it will apply.
    pub async fn set_route(&self, spec: RouteSpec) -> Result<Arc<Routes>, RegistryError> {
        self.ask(|reply| Request::SetRoute { spec, reply }).await?
    }

    /// Model name `name`'s active, previous and shadow versions ("": the default model's).
    pub async fn active(&self, name: &str) -> Result<ActiveView, RegistryError> {
        let name = name.to_owned();
        self.ask(|reply| Request::Active { name, reply }).await?
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;

    /// The labels are an API (ModelAdmin answers, `quantd_model_info{state}`, dashboards).
    #[test]
    fn state_labels_are_pinned() {
        let labels: Vec<_> =
            [Discovered, Loaded, Active, Previous, Shadow, Failed, RolledBack, Retired].map(|s| s.label()).into();
        assert_eq!(
            labels,
            ["discovered", "loaded", "active", "previous", "shadow", "failed", "rolled_back", "retired"]
        );
    }
}
