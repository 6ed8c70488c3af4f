//! `quantd.v1.RiskAdmin`: the kill switch (a control message to the engine, applied between two
//! batches) and the VaR figures the risk thread last published.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::engine::{Control, EngineHandle};
use crate::proto;
use crate::proto::risk_admin_server::RiskAdmin;
use crate::risk::RiskConfig;
use crate::telemetry::Telemetry;
use crate::tick::Symbol;

pub struct Risk {
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    config: RiskConfig,
}

impl Risk {
    pub fn new(engine: EngineHandle, telemetry: Arc<Telemetry>, config: RiskConfig) -> Self {
        Self { engine, telemetry, config }
    }
}

#[tonic::async_trait]
impl RiskAdmin for Risk {
    async fn set_kill_switch(
        &self,
        req: Request<proto::KillSwitchRequest>,
    ) -> Result<Response<proto::KillSwitchResponse>, Status> {
        let r = req.into_inner();
        let symbol = match r.symbol.as_str() {
            "" => None,
            s => Some(Symbol::new(s).map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        tracing::warn!(symbol = %r.symbol, engaged = r.engaged, reason = %r.reason, "kill switch requested");
        self.engine
            .control(Control::Kill { symbol, engaged: r.engaged })
            .map_err(|_| Status::unavailable("the engine's control queue is full; retry"))?;
        Ok(Response::new(proto::KillSwitchResponse { applied: true }))
    }

    async fn get_risk(&self, _: Request<proto::GetRiskRequest>) -> Result<Response<proto::RiskStatus>, Status> {
        let (vars, _) = self.telemetry.risk();
        let global_kill = self.engine.risk_board().global_kill();
        let symbols = vars
            .into_iter()
            .map(|v| proto::SymbolVar {
                symbol: v.symbol,
                var_per_unit: v.var_per_unit,
                scale: v.scale,
                checks: v.checks,
                exceedances: v.exceedances,
                kupiec_p: v.kupiec_p,
            })
            .collect();
        Ok(Response::new(proto::RiskStatus {
            symbols,
            global_kill,
            var_limit: self.config.var.limit,
            confidence: self.config.var.confidence,
            horizon_ms: self.config.var.horizon_ms,
        }))
    }
}
