//! The gRPC edge and the server's life cycle: start-up on the control path (load the model
//! through the registry, start the engine, registry and telemetry threads, bind the ports),
//! serving on tokio, and graceful shutdown (stop accepting, drain the engine, answer every tick
//! already read).

pub mod admin_service;
pub mod risk_service;
pub mod security;
pub mod signal_service;
pub mod status;
pub mod tick_stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineHandle};
use crate::model::manifest::ModelError;
use crate::model::runtime::{self, RuntimeError};
use crate::proto::model_admin_server::ModelAdminServer;
use crate::proto::risk_admin_server::RiskAdminServer;
use crate::proto::signal_service_server::SignalServiceServer;
use crate::registry::{Registry, RegistryHandle, RegistryThread};
use crate::risk::RiskThread;
use crate::telemetry::Telemetry;
use crate::telemetry::exporter::{Exporter, serve_metrics};

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (what `server_recv_ns`/`server_send_ns`
/// carry).
#[inline]
pub fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The encoded file descriptor set of `quantd.v1`, for server reflection.
pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quantd_descriptor");

/// A running server. Dropping it without [`Server::shutdown`] aborts serving.
pub struct Server {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    model: String,
    telemetry: Arc<Telemetry>,
    engine: Option<Engine>,
    registry: RegistryHandle,
    registry_thread: Option<RegistryThread>,
    exporter: Option<Exporter>,
    risk_thread: Option<RiskThread>,
    stop_tx: Option<oneshot::Sender<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    metrics_stop: Option<oneshot::Sender<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    /// Loads ONNX Runtime and the configured model, starts the engine and telemetry threads,
    /// binds both ports (port 0 picks a free one) and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let lib = runtime::init(config.ort_dylib_path.as_deref())?;
        tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
        let telemetry = Telemetry::new();
        let (registry, active) = Registry::start(config.registry_config()?, telemetry.clone())?;
        let label = active.label.to_string();
        tracing::info!(model = %label, "model verified, loaded and warm");
        let auth = security::AdminAuth::new(&config.admin, &config.tls).map_err(StartError::Tls)?;
        let tls = security::server_tls(&config.tls).map_err(StartError::Tls)?;
        if !auth.enforced() {
            tracing::warn!("admin services need no token or client certificate (loopback listener only)");
        }
        let engine =
            crate::engine::spawn(&config.engine_config(), active, telemetry.clone()).map_err(StartError::Thread)?;
        let handle = engine.handle();
        let (registry, registry_thread) = registry.spawn(handle.clone()).map_err(StartError::Thread)?;
        let depth_handle = handle.clone();
        let exporter = Exporter::start(
            telemetry.clone(),
            Box::new(move || depth_handle.depth()),
            handle.capacity(),
            Duration::from_millis(config.metrics_interval_ms),
        )
        .map_err(StartError::Thread)?;
        let risk_thread =
            RiskThread::start(&config.risk, handle.risk_board(), telemetry.clone()).map_err(StartError::Thread)?;

        let metrics_listener = bind(config.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr().map_err(StartError::Thread)?;
        let (metrics_stop, metrics_rx) = oneshot::channel::<()>();
        tokio::spawn(serve_metrics(metrics_listener, exporter.handle(), async {
            let _ = metrics_rx.await;
        }));

        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(StartError::Thread)?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let risk = risk_service::Risk::new(handle.clone(), telemetry.clone(), config.risk.clone());
        let edge = Edge { tls, auth, stream: config.stream.clone(), shard: config.shard };
        let grpc = serve_grpc(listener, handle, registry.clone(), risk, telemetry.clone(), edge, stop_rx).await?;
        let grpc = tokio::spawn(grpc);
        tracing::info!(%addr, %metrics_addr, tls = config.tls.enabled(), mutual_tls = config.tls.client_ca.is_some(), shard = config.shard.index, shards = config.shard.count, "serving");
        Ok(Self {
            addr,
            metrics_addr,
            model: label,
            telemetry,
            engine: Some(engine),
            registry,
            registry_thread: Some(registry_thread),
            exporter: Some(exporter),
            risk_thread: Some(risk_thread),
            stop_tx: Some(stop_tx),
            grpc: Some(grpc),
            metrics_stop: Some(metrics_stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// `name@version` of the model the server started with.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model registry (what the admin API calls; also for in-process callers).
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// The engine's queue handle (depth, pause/resume for diagnostics and tests).
    pub fn engine(&self) -> Option<EngineHandle> {
        self.engine.as_ref().map(Engine::handle)
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Graceful shutdown: refuse new connections and new ticks (answered `shutting_down`), give
    /// open streams up to `grace` to finish, drain the engine, publish metrics one last time.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(engine) = &self.engine {
            engine.stop_accepting();
        }
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(mut grpc) = self.grpc.take()
            && tokio::time::timeout(grace, &mut grpc).await.is_err()
        {
            tracing::warn!(?grace, "open streams did not finish within the grace period; closing them");
            grpc.abort();
        }
        if let Some(registry) = self.registry_thread.take() {
            tokio::task::spawn_blocking(move || registry.shutdown()).await.ok();
        }
        if let Some(engine) = self.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown()).await.ok();
        }
        if let Some(risk) = self.risk_thread.take() {
            tokio::task::spawn_blocking(move || risk.shutdown()).await.ok();
        }
        if let Some(tx) = self.metrics_stop.take() {
            let _ = tx.send(());
        }
        if let Some(exporter) = self.exporter.take() {
            tokio::task::spawn_blocking(move || exporter.shutdown()).await.ok();
        }
        tracing::info!("shut down");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(grpc) = self.grpc.take() {
            grpc.abort();
        }
    }
}

/// How the gRPC port talks to clients: TLS, admin authorisation, stream limits.
struct Edge {
    tls: Option<tonic::transport::ServerTlsConfig>,
    auth: security::AdminAuth,
    stream: crate::config::StreamSection,
    shard: crate::shard::ShardConfig,
}

async fn serve_grpc(
    listener: TcpListener,
    engine: EngineHandle,
    registry: RegistryHandle,
    risk: risk_service::Risk,
    telemetry: Arc<Telemetry>,
    edge: Edge,
    stop: oneshot::Receiver<()>,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, StartError> {
    let st = edge.stream;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // The first model is loaded, verified and warm before the port opens, so the service starts
    // SERVING; a later failed reload leaves the running model (and this status) in place.
    health_reporter.set_serving::<SignalServiceServer<signal_service::Signals>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let limits = tick_stream::StreamLimits {
        window: st.window,
        outbound_limit: st.outbound_limit,
        mode: st.backpressure,
        max_symbols: st.max_symbols_per_stream,
        idle_timeout: (st.idle_timeout_ms > 0).then(|| Duration::from_millis(st.idle_timeout_ms)),
        shard: edge.shard,
    };
    let signals = SignalServiceServer::new(signal_service::Signals::new(engine, telemetry, limits, st.max_streams))
        .max_decoding_message_size(st.max_message_bytes);
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let admin = ModelAdminServer::with_interceptor(admin_service::Admin::new(registry), edge.auth.clone());
    let risk = RiskAdminServer::with_interceptor(risk, edge.auth);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = edge.tls {
        builder = builder.tls_config(tls).map_err(|e| StartError::Tls(e.to_string()))?;
    }
    Ok(builder
        .http2_keepalive_interval(ms(st.keepalive_interval_ms))
        .http2_keepalive_timeout(ms(st.keepalive_timeout_ms))
        .add_service(health_service)
        .add_service(admin)
        .add_service(risk)
        .add_service(reflection)
        .add_service(signals)
        // TCP_NODELAY on every accepted socket: tonic sets it only on listeners it binds itself,
        // and without it Nagle's algorithm holds small signals back by up to a millisecond.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
            let _ = stop.await;
        }))
}
