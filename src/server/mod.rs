//! The gRPC edge and the server's life cycle: start-up on the control path (load the model
//! through the registry, start the engine, registry, telemetry, risk and admin threads, bind the
//! ports), serving the tick path on the data plane's tokio runtime (the caller's), and graceful
//! shutdown (health NOT_SERVING, stop accepting, drain the engine, answer every tick already
//! read, drain the journal).
//!
//! The admin services, `/metrics` and the watchdog run on the `quantd-admin` thread
//! ([`admin`]); the data plane's runtime serves `SignalService`, reflection and the same health
//! statuses (and the admin services too only with `admin.on_service_port`).

pub mod admin;
pub mod admin_service;
pub mod headers;
pub mod kserve;
pub mod listen;
pub mod risk_service;
pub mod security;
pub mod settings;
pub mod signal_service;
pub mod status;
pub mod streams;
pub mod tick_stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::server::{HealthReporter, HealthService};

use self::security::{AdminSection, TlsSection};
use self::settings::{StreamSection, UnixSection};
use crate::clock::millis;
use crate::engine::{Engine, EngineConfig, EngineHandle};
use crate::inference_proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::journal::{Journal, JournalConfig, JournalThread};
use crate::model::manifest::ModelError;
use crate::model::runtime::{self, RuntimeError};
use crate::proto::model_admin_server::ModelAdminServer;
use crate::proto::risk_admin_server::RiskAdminServer;
use crate::proto::signal_service_server::SignalServiceServer;
use crate::registry::{Registry, RegistryConfig, RegistryHandle, RegistryThread};
use crate::risk::{RiskConfig, RiskThread};
use crate::shard::ShardConfig;
use crate::telemetry::Telemetry;
use crate::telemetry::exporter::Exporter;

pub use crate::clock::realtime_ns;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// No model could be served.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The Unix socket could not be bound.
    #[error("cannot listen on the Unix socket {path}: {msg}")]
    Unix {
        /// The socket file.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// The reflection service could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The TLS settings could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The journal directory could not be opened.
    #[error("journal directory {dir}: {source}")]
    Journal {
        /// The directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The encoded file descriptor set of `quantd.v1`, for server reflection.
pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quantd_descriptor");

/// The encoded file descriptor set of the Open Inference Protocol (`inference`), for reflection.
pub const INFERENCE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");

/// Everything [`Server::start`] needs, assembled and validated by the config
/// (`config::Config::server_config`) or a test.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The service port (SignalService, reflection, health).
    pub listen: SocketAddr,
    /// The admin listener (ModelAdmin, RiskAdmin, health) on the `quantd-admin` thread.
    pub admin_listen: SocketAddr,
    /// Prometheus `/metrics`, also on the admin thread.
    pub metrics_listen: SocketAddr,
    /// libonnxruntime to load; `None`: `.cache/onnxruntime/` from `make setup`.
    pub ort_dylib_path: Option<PathBuf>,
    /// How often the telemetry thread publishes metrics.
    pub metrics_interval: Duration,
    /// The engine thread's settings.
    pub engine: EngineConfig,
    /// The stuck-engine watchdog's limit (`None`: off).
    pub watchdog: Option<Duration>,
    /// Rebuild symbol state from the journal's tail at start-up (`None`: start cold).
    pub warm_start: Option<WarmTail>,
    /// Which model to serve and how versions are loaded, shadowed and rolled back.
    pub registry: RegistryConfig,
    /// The tick streams and the service port's transport.
    pub stream: StreamSection,
    /// The service on a Unix domain socket too.
    pub unix: UnixSection,
    /// The risk layer (the VaR thread and the admin API read it too).
    pub risk: RiskConfig,
    /// This replica's shard of the symbols.
    pub shard: ShardConfig,
    /// TLS on both gRPC listeners.
    pub tls: TlsSection,
    /// Who may call the admin services, and where.
    pub admin: AdminSection,
    /// The journal of every tick and signal.
    pub journal: JournalConfig,
}

/// How much of the journal's tail a warm start replays.
#[derive(Clone, Copy, Debug)]
pub struct WarmTail {
    /// Ticks received longer ago than this are not replayed.
    pub max_age: Duration,
    /// Most ticks replayed per symbol.
    pub max_ticks: usize,
}

/// A running server. Dropping it without [`Server::shutdown`] aborts serving.
pub struct Server {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    model: String,
    telemetry: Arc<Telemetry>,
    engine: Option<Engine>,
    registry: RegistryHandle,
    registry_thread: Option<RegistryThread>,
    exporter: Option<Exporter>,
    risk_thread: Option<RiskThread>,
    admin_thread: Option<admin::AdminThread>,
    /// Tells the gRPC listeners to stop accepting (both the TCP and the Unix one).
    stop_tx: tokio::sync::watch::Sender<bool>,
    /// The Unix socket file, removed at shutdown.
    unix_path: Option<PathBuf>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// The open tick streams (caps, slow-consumer monitor, drain).
    streams: Arc<streams::Streams>,
    /// The `quantd-journal` thread, when the journal is on.
    journal_thread: Option<JournalThread>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    /// Loads ONNX Runtime and the configured model, starts the engine, registry, telemetry,
    /// risk and admin threads, binds the three ports (port 0 picks a free one) and starts
    /// serving. Health reports SERVING from the first answer: the model is warm by then.
    pub async fn start(config: &ServerConfig) -> Result<Self, StartError> {
        let st = &config.stream;
        // One descriptor per connection on both gRPC listeners, plus files, the metrics port and
        // the runtime's own.
        listen::check_descriptor_limit((st.max_connections + 256 + 64) as u64);
        let lib = runtime::init(config.ort_dylib_path.as_deref())?;
        tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
        let telemetry = Telemetry::new();
        // Read before this run's journal files exist.
        let warm = match config.warm_start {
            Some(tail) => warm_start_ticks(&config.journal.dir, tail),
            None => Vec::new(),
        };
        let journal_thread = match config.journal.enabled {
            true => Some(
                JournalThread::start(&config.journal, telemetry.clone())
                    .map_err(|source| StartError::Journal { dir: config.journal.dir.clone(), source })?,
            ),
            false => None,
        };
        let journal = journal_thread.as_ref().map(JournalThread::handle);
        let (mut registry, active) = Registry::start(config.registry.clone(), telemetry.clone(), journal.clone())?;
        let label = active.label.to_string();
        tracing::info!(model = %label, "model verified, loaded and warm");
        let routed = registry.start_routed(&config.engine.routes)?;
        let auth = security::AdminAuth::new(&config.admin, &config.tls).map_err(StartError::Tls)?;
        let tls = security::server_tls(&config.tls).map_err(StartError::Tls)?;
        if !auth.enforced() {
            tracing::warn!("admin services need no token or client certificate (loopback listener only)");
        }
        if let Some(j) = &journal {
            j.warm_ticks(&warm);
        }
        let rebuild = crate::journal::warm::rebuild_ticks(&warm);
        let started = std::time::Instant::now();
        let engine = crate::engine::spawn_models(&config.engine, active, routed, telemetry.clone(), &rebuild)
            .map_err(StartError::Thread)?;
        if config.warm_start.is_some() {
            let symbols = rebuild.iter().map(|(t, _)| t.symbol).collect::<std::collections::HashSet<_>>().len();
            tracing::info!(
                ticks = rebuild.len(),
                symbols,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "warm start: symbol state rebuilt from the journal"
            );
        }
        let handle = engine.handle();
        let (registry, registry_thread) = registry.spawn(handle.clone()).map_err(StartError::Thread)?;
        let depth_handle = handle.clone();
        let exporter = Exporter::start(
            telemetry.clone(),
            Box::new(move || depth_handle.depth()),
            handle.capacity(),
            config.metrics_interval,
        )
        .map_err(StartError::Thread)?;
        let risk_thread =
            RiskThread::start(&config.risk, handle.risk_board(), telemetry.clone()).map_err(StartError::Thread)?;

        telemetry.readiness.started();
        let health = HealthReporter::new();
        admin::report(&health, telemetry.readiness.is_ready()).await;
        let (admin_listener, metrics_listener) =
            (admin::bind(config.admin_listen)?, admin::bind(config.metrics_listen)?);
        let local = |l: &std::net::TcpListener| l.local_addr().map_err(StartError::Thread);
        let (admin_addr, metrics_addr) = (local(&admin_listener)?, local(&metrics_listener)?);
        let risk = || risk_service::Risk::new(handle.clone(), telemetry.clone(), config.risk.clone(), journal.clone());
        let admin_thread = admin::AdminThread::start(admin::AdminPlane {
            grpc: admin_listener,
            metrics: metrics_listener,
            tls: tls.clone(),
            auth: auth.clone(),
            registry: registry.clone(),
            risk: risk(),
            health: health.clone(),
            prometheus: exporter.handle(),
            readiness: telemetry.readiness.clone(),
            engine: handle.clone(),
            watchdog: config.watchdog,
            nice: config.admin.nice,
            conns: listen::ConnLimits { max_connections: 256, ..config.stream.conn_limits() },
            telemetry: telemetry.clone(),
        })?;

        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(StartError::Thread)?;
        let unix = config.unix.path.as_deref().map(|p| bind_unix(p, &config.unix)).transpose()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let on_service_port = config.admin.on_service_port.then(|| (registry.clone(), risk(), auth));
        let streams = streams::Streams::new(
            streams::Caps {
                max_streams: st.max_streams,
                max_streams_per_peer: st.max_streams_per_peer,
                max_symbols_per_peer: st.max_symbols_per_peer,
                max_symbols_per_connection: st.max_symbols_per_connection,
            },
            millis(st.slow_consumer_ms),
            telemetry.clone(),
        );
        tokio::spawn(streams::Streams::monitor(Arc::downgrade(&streams)));
        let edge = Edge {
            tls,
            admin: on_service_port,
            health,
            stream: config.stream.clone(),
            shard: config.shard,
            streams: streams.clone(),
            telemetry: telemetry.clone(),
            journal,
            max_window: config.engine.max_window,
        };
        let grpc = serve_grpc((listener, unix), handle, telemetry.clone(), edge, stop_rx)?;
        let grpc = tokio::spawn(grpc);
        tracing::info!(%addr, unix = ?config.unix.path, %metrics_addr, %admin_addr, admin_on_service_port = config.admin.on_service_port, tls = config.tls.enabled(), mutual_tls = config.tls.client_ca.is_some(), shard = config.shard.index, shards = config.shard.count, "serving");
        Ok(Self {
            addr,
            admin_addr,
            metrics_addr,
            model: label,
            telemetry,
            engine: Some(engine),
            registry,
            registry_thread: Some(registry_thread),
            exporter: Some(exporter),
            risk_thread: Some(risk_thread),
            admin_thread: Some(admin_thread),
            stop_tx,
            unix_path: config.unix.path.clone(),
            grpc: Some(grpc),
            streams,
            journal_thread,
        })
    }

    /// Handles SIGTERM/SIGINT on the admin thread (health NOT_SERVING at once, even while the
    /// data plane is saturated); the returned receiver resolves with the signal's name, and the
    /// caller then runs [`Server::shutdown`].
    pub fn watch_signals(&self) -> oneshot::Receiver<&'static str> {
        match &self.admin_thread {
            Some(a) => a.watch_signals(),
            None => oneshot::channel().1,
        }
    }

    /// The admin listener (ModelAdmin, RiskAdmin, health).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The service port (bound; port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Unix socket the service is also served on, if any.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
    }

    /// The `/metrics` address.
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

    /// The counters and histograms the server writes.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Graceful shutdown: every open stream stops reading, answers every tick it read and ends
    /// with UNAVAILABLE (trailer `x-quantd-last-seq`); new connections and new ticks are refused
    /// (answered `shutting_down`); open calls get up to `grace` to finish; then the engine
    /// drains and metrics are published one last time.
    pub async fn shutdown(mut self, grace: Duration) {
        self.telemetry.readiness.drain();
        self.streams.drain();
        if let Some(engine) = &self.engine {
            engine.stop_accepting();
        }
        let _ = self.stop_tx.send(true);
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
        // Every tick read has been answered (or its stream is gone): drain the journal.
        if let Some(journal) = self.journal_thread.take() {
            tokio::task::spawn_blocking(move || journal.shutdown()).await.ok();
        }
        if let Some(risk) = self.risk_thread.take() {
            tokio::task::spawn_blocking(move || risk.shutdown()).await.ok();
        }
        if let Some(exporter) = self.exporter.take() {
            tokio::task::spawn_blocking(move || exporter.shutdown()).await.ok();
        }
        if let Some(admin) = self.admin_thread.take() {
            tokio::task::spawn_blocking(move || admin.shutdown()).await.ok();
        }
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
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

/// How the service port talks to clients: TLS, the admin services when configured there, the
/// shared health statuses, stream limits.
struct Edge {
    tls: Option<tonic::transport::ServerTlsConfig>,
    admin: Option<(RegistryHandle, risk_service::Risk, security::AdminAuth)>,
    health: HealthReporter,
    stream: StreamSection,
    shard: crate::shard::ShardConfig,
    streams: Arc<streams::Streams>,
    telemetry: Arc<Telemetry>,
    journal: Option<Journal>,
    /// `engine.max_window`: the widest input a ModelInfer request may carry.
    max_window: usize,
}

/// Serves the service port's router on the TCP listener and, when there is one, on the Unix
/// socket, until `stop` turns true.
fn serve_grpc(
    (tcp, unix): (TcpListener, Option<tokio::net::UnixListener>),
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    edge: Edge,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, StartError> {
    let st = edge.stream;
    let health = tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(edge.health));
    // Reflection as both `grpc.reflection.v1` and `v1alpha`: grpcio-reflection's Python client
    // and older tools speak only v1alpha.
    let reflect = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(INFERENCE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflect().build_v1().map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflect().build_v1alpha().map_err(|e| StartError::Reflection(e.to_string()))?;
    let limits = tick_stream::StreamLimits {
        window: st.window,
        outbound_limit: st.outbound_limit,
        mode: st.backpressure,
        max_symbols: st.max_symbols_per_stream,
        max_batch_ticks: st.max_batch_ticks,
        reply_spin: std::time::Duration::from_micros(st.reply_spin_us),
        idle_timeout: millis(st.idle_timeout_ms),
        shard: edge.shard,
        route: crate::routes::BY_SYMBOL,
    };
    // A ModelInfer request carries up to MAX_INFER_ROWS windows of FP32 rows.
    let inference = GrpcInferenceServiceServer::new(kserve::Inference::new(engine.clone(), telemetry.clone()))
        .max_decoding_message_size(st.max_message_bytes.max(kserve::max_request_bytes(edge.max_window)));
    let signals =
        SignalServiceServer::new(signal_service::Signals::new(engine, telemetry, limits, edge.streams, edge.journal))
            .max_decoding_message_size(st.max_message_bytes);
    let (admin, risk) = match edge.admin {
        Some((registry, risk, auth)) => (
            Some(ModelAdminServer::with_interceptor(admin_service::Admin::new(registry), auth.clone())),
            Some(RiskAdminServer::with_interceptor(risk, auth)),
        ),
        None => (None, None),
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = edge.tls {
        builder = builder.tls_config(tls).map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let router = builder
        .http2_keepalive_interval(millis(st.keepalive_interval_ms))
        .http2_keepalive_timeout(millis(st.keepalive_timeout_ms))
        .initial_stream_window_size(st.h2_stream_window_bytes)
        .initial_connection_window_size(st.h2_connection_window_bytes)
        .max_concurrent_streams(st.max_streams_per_connection)
        .http2_max_header_list_size(headers::transport_limit(st.max_header_bytes))
        .layer(headers::HeaderBudget::layer(st.max_header_bytes, edge.telemetry.clone()))
        .add_service(health)
        .add_optional_service(admin)
        .add_optional_service(risk)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(inference)
        .add_service(signals);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    // `Incoming` sets TCP_NODELAY on every accepted TCP socket: tonic sets it only on listeners it
    // binds itself, and without it Nagle's algorithm holds small signals back by up to a
    // millisecond.
    let incoming = |l: listen::Listener| listen::Incoming::new(l, st.conn_limits(), edge.telemetry.clone());
    let on_unix = unix.map(|u| {
        router.clone().serve_with_incoming_shutdown(incoming(listen::Listener::Unix(u)), stopped(stop.clone()))
    });
    let on_tcp = router.serve_with_incoming_shutdown(incoming(tcp.into()), stopped(stop));
    Ok(async move {
        match on_unix {
            Some(on_unix) => {
                let (tcp, unix) = tokio::join!(on_tcp, on_unix);
                tcp.and(unix)
            }
            None => on_tcp.await,
        }
    })
}

/// Binds the Unix socket at `path` with the section's mode and owner. A stale socket file (no
/// server answers on it) is replaced; a live socket, or a file that is not a socket, is refused.
fn bind_unix(path: &std::path::Path, s: &UnixSection) -> Result<tokio::net::UnixListener, StartError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |msg: String| StartError::Unix { path: path.to_owned(), msg };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err("another server is listening on it".into()));
            }
            std::fs::remove_file(path).map_err(|e| err(format!("removing the stale socket file: {e}")))?;
            tracing::info!(path = %path.display(), "replaced a stale socket file (no server answered on it)");
        }
        Ok(_) => return Err(err("the file exists and is not a socket; not removing it".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    if let Some(mode) = s.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| err(format!("setting mode {mode:#o}: {e}")))?;
    }
    if s.uid.is_some() || s.gid.is_some() {
        std::os::unix::fs::chown(path, s.uid, s.gid).map_err(|e| err(format!("setting the owner: {e}")))?;
    }
    listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    tokio::net::UnixListener::from_std(listener).map_err(|e| err(e.to_string()))
}

/// The journal's newest ticks per symbol for a warm start (`engine.warm_start = "journal"`). A
/// journal that cannot be read is logged and the server starts cold: serving beats waiting.
fn warm_start_ticks(dir: &std::path::Path, tail: WarmTail) -> Vec<crate::journal::TickRecord> {
    let since = crate::clock::realtime_ns().saturating_sub(tail.max_age.as_nanos() as u64);
    let started = std::time::Instant::now();
    match crate::journal::warm::tail(dir, since, tail.max_ticks) {
        Ok(ticks) => {
            tracing::info!(ticks = ticks.len(), dir = %dir.display(), read_ms = started.elapsed().as_secs_f64() * 1e3, "warm start: journal tail read");
            ticks
        }
        Err(error) => {
            tracing::error!(%error, "warm start: the journal cannot be read; every symbol starts cold");
            Vec::new()
        }
    }
}
