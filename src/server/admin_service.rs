//! `quantd.v1.ModelAdmin`: thin handlers that forward to the registry's control thread and
//! translate its answers. They await the registry; they never touch the engine.

use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::model_admin_server::ModelAdmin;
use crate::registry::{LoadMode, ModelStatus, RegistryHandle};

/// `ModelAdmin`: lists, loads, activates and rolls back model versions through the registry.
pub struct Admin {
    registry: RegistryHandle,
}

impl Admin {
    /// The service over `registry`.
    pub fn new(registry: RegistryHandle) -> Self {
        Self { registry }
    }
}

fn to_proto(s: ModelStatus) -> proto::ModelStatus {
    proto::ModelStatus {
        name: s.name,
        version: s.version,
        state: s.state.label().to_owned(),
        error: s.error,
        verify_ms: s.verify_ms,
        load_ms: s.load_ms,
        warm_ms: s.warm_ms,
        changed_unix_ms: s.changed_unix_ms,
    }
}

#[tonic::async_trait]
impl ModelAdmin for Admin {
    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self.registry.list().await?.into_iter().map(to_proto).collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn load_model(&self, r: Request<proto::LoadModelRequest>) -> Result<Response<proto::ModelStatus>, Status> {
        let r = r.into_inner();
        let mode = match proto::LoadMode::try_from(r.mode) {
            Ok(proto::LoadMode::LoadOnly) => LoadMode::LoadOnly,
            Ok(proto::LoadMode::Activate) => LoadMode::Activate,
            Ok(proto::LoadMode::Shadow) => LoadMode::Shadow,
            Err(_) => return Err(Status::invalid_argument(format!("unknown load mode {}", r.mode))),
        };
        Ok(Response::new(to_proto(self.registry.load(&r.name, &r.version, mode).await?)))
    }

    async fn activate_model(&self, r: Request<proto::ModelRef>) -> Result<Response<proto::ModelStatus>, Status> {
        let r = r.into_inner();
        Ok(Response::new(to_proto(self.registry.activate(&r.name, &r.version).await?)))
    }

    async fn rollback(&self, _: Request<proto::RollbackRequest>) -> Result<Response<proto::ModelStatus>, Status> {
        Ok(Response::new(to_proto(self.registry.rollback().await?)))
    }

    async fn get_active(&self, _: Request<proto::GetActiveRequest>) -> Result<Response<proto::ActiveModels>, Status> {
        let v = self.registry.active().await?;
        let (compared, agreed, agreement, mean_abs_score_diff) = v.shadow_stats;
        Ok(Response::new(proto::ActiveModels {
            active: v.active.map(to_proto),
            previous: v.previous.map(to_proto),
            shadow: v.shadow.map(to_proto),
            shadow_stats: Some(proto::ShadowStats { compared, agreed, agreement, mean_abs_score_diff }),
        }))
    }
}
