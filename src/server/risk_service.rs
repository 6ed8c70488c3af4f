//! `quantd.v1.RiskAdmin`: the kill switch (a control message to the engine, applied between two
//! batches) and the VaR figures the risk thread last published.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::engine::{Ack, Applied, Control, EngineHandle};
use crate::journal::{ControlRecord, Journal};
use crate::proto;
use crate::proto::risk_admin_server::RiskAdmin;
use crate::risk::RiskConfig;
use crate::telemetry::Telemetry;
use crate::text::clip;
use crate::tick::Symbol;

/// `RiskAdmin`: the kill switch, symbol resets and the VaR status.
pub struct Risk {
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    config: RiskConfig,
    /// Where applied calls are recorded (`controls-*.arrows`), when the journal is on.
    journal: Option<Journal>,
}

impl Risk {
    /// The service over the engine's control queue; applied calls go to `journal` when it is on.
    pub fn new(engine: EngineHandle, telemetry: Arc<Telemetry>, config: RiskConfig, journal: Option<Journal>) -> Self {
        Self { engine, telemetry, config, journal }
    }
}

/// How long an admin call waits for the engine to confirm a control message.
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Risk {
    /// Sends a control message and waits for the engine's answer: (applied, reason if not). An
    /// applied call is journaled as `record` with the engine pass it preceded.
    async fn ask(
        &self,
        message: impl FnOnce(Option<Ack>) -> Control,
        record: ControlRecord,
    ) -> Result<(bool, String), Status> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.engine
            .control(message(Some(done)))
            .map_err(|_| Status::unavailable("the engine's control queue is full; retry"))?;
        match tokio::time::timeout(CONFIRM_WITHIN, answer).await {
            Ok(Ok(Applied::Yes { before_batch })) => {
                if let Some(j) = &self.journal {
                    j.control(ControlRecord { before_batch, ..record });
                }
                Ok((true, String::new()))
            }
            Ok(Ok(Applied::UnknownSymbol)) => Ok((
                false,
                "the engine holds no state for this symbol (never seen, or evicted); admin calls do not create \
                 symbols: use the all-symbols kill switch (empty symbol) to hold everything flat"
                    .into(),
            )),
            Ok(Err(_)) => Err(Status::unavailable("the engine stopped before applying the call")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the engine did not confirm within {CONFIRM_WITHIN:?} (stuck or overloaded); the call is queued \
                 and will apply when it runs"
            ))),
        }
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
            s => Some(Symbol::new(s).map_err(|e| Status::invalid_argument(format!("symbol {}: {e}", clip(s))))?),
        };
        tracing::warn!(symbol = %clip(&r.symbol), engaged = r.engaged, reason = %clip(&r.reason), "kill switch requested");
        let record = ControlRecord::new(if r.engaged { "kill" } else { "release" }, symbol, &r.reason);
        let (applied, reason) = self.ask(|done| Control::Kill { symbol, engaged: r.engaged, done }, record).await?;
        Ok(Response::new(proto::KillSwitchResponse { applied, reason }))
    }

    async fn reset_symbol(
        &self,
        req: Request<proto::ResetSymbolRequest>,
    ) -> Result<Response<proto::ResetSymbolResponse>, Status> {
        let r = req.into_inner();
        let symbol =
            Symbol::new(&r.symbol).map_err(|e| Status::invalid_argument(format!("symbol {}: {e}", clip(&r.symbol))))?;
        tracing::warn!(%symbol, reason = %clip(&r.reason), "symbol reset requested");
        let record = ControlRecord::new("reset", Some(symbol), &r.reason);
        let (applied, reason) = self.ask(|done| Control::Reset { symbol, done }, record).await?;
        Ok(Response::new(proto::ResetSymbolResponse { applied, reason }))
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
