//! `quantd.v1.ModelAdmin`: thin handlers that forward to the registry's control thread and
//! translate its answers. They await the registry; they never touch the engine.

use tonic::{Request, Response, Status};

use crate::policy::PolicyParams;
use crate::proto;
use crate::proto::model_admin_server::ModelAdmin;
use crate::registry::{LoadMode, ModelStatus, RegistryHandle};
use crate::routes::{RouteSpec, Routes};

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
        routes: s.routes,
    }
}

fn routes_to_proto(routes: &Routes) -> proto::RouteList {
    let routes = routes.iter().map(|r| proto::Route {
        name: r.name.to_string(),
        symbols: r.symbols.clone(),
        model: r.model.to_string(),
        policy: r.policy.map(|p| proto::RoutePolicy {
            warmup_ticks: p.warmup_ticks,
            entry_bps: p.entry_bps,
            exit_bps: p.exit_bps,
            full_position_bps: p.full_position_bps,
        }),
    });
    proto::RouteList { routes: routes.collect() }
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

    async fn rollback(&self, r: Request<proto::RollbackRequest>) -> Result<Response<proto::ModelStatus>, Status> {
        Ok(Response::new(to_proto(self.registry.rollback(&r.into_inner().name).await?)))
    }

    async fn list_routes(&self, _: Request<proto::ListRoutesRequest>) -> Result<Response<proto::RouteList>, Status> {
        Ok(Response::new(routes_to_proto(&*self.registry.routes().await?)))
    }

    async fn set_route(&self, r: Request<proto::Route>) -> Result<Response<proto::RouteList>, Status> {
        let r = r.into_inner();
        let policy = r.policy.map(|p| PolicyParams {
            warmup_ticks: p.warmup_ticks,
            entry_bps: p.entry_bps,
            exit_bps: p.exit_bps,
            full_position_bps: p.full_position_bps,
        });
        let spec = RouteSpec { name: Some(r.name), symbols: r.symbols, model: r.model, policy };
        Ok(Response::new(routes_to_proto(&*self.registry.set_route(spec).await?)))
    }

    async fn get_active(&self, r: Request<proto::GetActiveRequest>) -> Result<Response<proto::ActiveModels>, Status> {
        let v = self.registry.active(&r.into_inner().name).await?;
        let (compared, agreed, agreement, mean_abs_score_diff) = v.shadow_stats;
        Ok(Response::new(proto::ActiveModels {
            active: v.active.map(to_proto),
            previous: v.previous.map(to_proto),
            shadow: v.shadow.map(to_proto),
            shadow_stats: Some(proto::ShadowStats { compared, agreed, agreement, mean_abs_score_diff }),
        }))
    }
}
