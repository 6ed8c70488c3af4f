//! What the registry tells and takes from the outside: model states and statuses, the admin
//! requests, and [`RegistryHandle`], through which the gRPC admin service (on tokio) reaches the
//! registry thread. Nothing here runs on the engine thread.

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use crate::model::ModelError;

/// Where a model version is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum State {
    Discovered,
    Loaded,
    Active,
    Previous,
    Shadow,
    Failed,
    RolledBack,
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
    pub name: String,
    pub version: String,
    pub state: State,
    pub error: String,
    pub verify_ms: f64,
    pub load_ms: f64,
    pub warm_ms: f64,
    pub changed_unix_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ActiveView {
    pub active: Option<ModelStatus>,
    pub previous: Option<ModelStatus>,
    pub shadow: Option<ModelStatus>,
    /// (compared, agreed, agreement, mean |score diff|)
    pub shadow_stats: (u64, u64, f64, f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    LoadOnly,
    Activate,
    Shadow,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model {0} is not in the models directory")]
    NotFound(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("no previous model to roll back to")]
    NoPrevious,
    #[error("{0} is already active")]
    AlreadyActive(String),
    #[error("{0} is not served here: this server serves model {1}")]
    WrongName(String, String),
    #[error("the engine's control queue is full; try again")]
    Busy,
    #[error("the registry has stopped")]
    Stopped,
}

pub(super) type Key = (String, String);

pub(super) enum Request {
    List(oneshot::Sender<Vec<ModelStatus>>),
    Load { key: Key, mode: LoadMode, reply: oneshot::Sender<Result<ModelStatus, RegistryError>> },
    Activate { key: Key, reply: oneshot::Sender<Result<ModelStatus, RegistryError>> },
    Rollback { reply: oneshot::Sender<Result<ModelStatus, RegistryError>> },
    Active(oneshot::Sender<ActiveView>),
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

    pub async fn list(&self) -> Result<Vec<ModelStatus>, RegistryError> {
        self.ask(Request::List).await
    }

    pub async fn load(&self, name: &str, version: &str, mode: LoadMode) -> Result<ModelStatus, RegistryError> {
        let key = (name.to_owned(), version.to_owned());
        self.ask(|reply| Request::Load { key, mode, reply }).await?
    }

    pub async fn activate(&self, name: &str, version: &str) -> Result<ModelStatus, RegistryError> {
        let key = (name.to_owned(), version.to_owned());
        self.ask(|reply| Request::Activate { key, reply }).await?
    }

    pub async fn rollback(&self) -> Result<ModelStatus, RegistryError> {
        self.ask(|reply| Request::Rollback { reply }).await?
    }

    pub async fn active(&self) -> Result<ActiveView, RegistryError> {
        self.ask(Request::Active).await
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
