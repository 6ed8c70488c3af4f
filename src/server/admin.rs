//! The `quantd-admin` thread: the control plane's own current-thread tokio runtime, so that a
//! kill switch, a model swap, a health probe or a metrics scrape never waits behind tick
//! streams on the data plane's runtime.
//!
//! It serves, until [`AdminThread::shutdown`]:
//! - `ModelAdmin`, `RiskAdmin` and `grpc.health.v1.Health` on the admin listener
//!   (`admin_listen`), behind the admin interceptor and the same TLS as the service port;
//! - `GET /metrics` on `metrics_listen`;
//! - the health sync task: [`Readiness`] changes → the health statuses of both ports (the service
//!   port's health service shares the same status table);
//! - the stuck-engine watchdog (`engine.watchdog_ms`);
//! - once [`AdminThread::watch_signals`] is called, SIGTERM/SIGINT: readiness goes to draining at
//!   once (health answers NOT_SERVING), then the caller is told to start the graceful shutdown.

use crate::control_thread::ControlThread;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use super::{StartError, admin_service, risk_service, security};
use crate::engine::EngineHandle;
use crate::proto::model_admin_server::ModelAdminServer;
use crate::proto::risk_admin_server::RiskAdminServer;
use crate::proto::signal_service_server::SignalServiceServer;
use crate::readiness::{Cause, Readiness};
use crate::registry::RegistryHandle;
use crate::telemetry::exporter::serve_metrics;

/// The gRPC service name the health services report for the tick path.
pub const SIGNAL_SERVICE: &str =
    <SignalServiceServer<super::signal_service::Signals> as tonic::server::NamedService>::NAME;

/// Everything the admin thread serves, built on the control path at start-up.
pub struct AdminPlane {
    /// Bound admin gRPC listener (non-blocking).
    pub grpc: std::net::TcpListener,
    /// Bound `/metrics` listener (non-blocking).
    pub metrics: std::net::TcpListener,
    /// TLS on the admin listener (the service port's).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Who may call the admin services.
    pub auth: security::AdminAuth,
    /// The registry the model admin calls reach.
    pub registry: RegistryHandle,
    /// The risk admin service.
    pub risk: risk_service::Risk,
    /// The health statuses both ports report.
    pub health: HealthReporter,
    /// The Prometheus exporter `/metrics` renders.
    pub prometheus: PrometheusHandle,
    /// The server's readiness (start, drain, stuck engine).
    pub readiness: Arc<Readiness>,
    /// The engine (its heartbeat, for the watchdog).
    pub engine: EngineHandle,
    /// Not ready when the engine has had work waiting this long without a completed pass.
    pub watchdog: Option<Duration>,
    /// The thread's nice value (`admin.nice`; 0: unchanged).
    pub nice: i32,
    /// Connection cap and handshake deadline of the admin gRPC listener.
    pub conns: super::listen::ConnLimits,
    /// Counters the admin listener writes.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

/// The running admin thread.
pub struct AdminThread {
    runtime: tokio::runtime::Handle,
    /// SIGTERM and SIGINT, registered when the thread starts (before the server says it is
    /// serving, so a signal sent right after is never lost); taken by [`AdminThread::watch_signals`].
    signals: std::sync::Mutex<Option<Signals>>,
    readiness: Arc<Readiness>,
    thread: ControlThread,
}

/// Sets both health entries (the whole server, `""`, and the tick service) to `ready`.
pub async fn report(health: &HealthReporter, ready: bool) {
    let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status("", status).await;
    health.set_service_status(SIGNAL_SERVICE, status).await;
}

impl AdminThread {
    /// Starts the thread and its runtime; the listeners are already bound, so nothing here can
    /// fail after the thread runs but the runtime itself.
    pub fn start(plane: AdminPlane) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("quantd-admin")
            .build()
            .map_err(StartError::Thread)?;
        let handle = runtime.handle().clone();
        let signals = std::sync::Mutex::new(Some({
            let _context = handle.enter();
            Signals::register()
        }));
        let readiness = plane.readiness.clone();
        let (stop, stopped) = oneshot::channel();
        let thread = ControlThread::spawn_with(
            "quantd-admin",
            move || {
                if plane.nice != 0 {
                    crate::control_thread::renice(plane.nice, "admin");
                }
                runtime.block_on(serve(plane, stopped))
            },
            move |_| {
                let _ = stop.send(());
            },
        )
        .map_err(StartError::Thread)?;
        Ok(Self { runtime: handle, signals, readiness, thread })
    }

    /// Handles SIGTERM and SIGINT on the admin thread: readiness goes to draining at once, then
    /// the returned receiver resolves (the caller starts [`super::Server::shutdown`]). The
    /// handlers were registered when the thread started, so a signal sent as soon as the server
    /// logs `serving` is kept, not fatal; only the first call gets them.
    pub fn watch_signals(&self) -> oneshot::Receiver<&'static str> {
        let (tx, rx) = oneshot::channel();
        let readiness = self.readiness.clone();
        let signals = self.signals.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.runtime.spawn(async move {
            let name = match signals {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            };
            readiness.drain();
            tracing::info!(signal = name, "shutdown requested: health NOT_SERVING, draining");
            let _ = tx.send(name);
        });
        rx
    }

    /// Stops serving (admin calls in flight finish) and joins the thread.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

/// SIGTERM and SIGINT as streams of the admin runtime (ctrl-c elsewhere than Unix).
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Registers the handlers now (call inside the admin runtime's context): a signal that
    /// arrives before anyone waits is kept for [`Signals::next`].
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Self { streams: Some((term, int)) },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot handle SIGTERM/SIGINT; the server stops only when killed");
                    Self { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The first signal's name.
    async fn next(self) -> &'static str {
        #[cfg(unix)]
        {
            match self.streams {
                Some((mut term, mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                None => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

async fn serve(plane: AdminPlane, stopped: oneshot::Receiver<()>) {
    let AdminPlane {
        grpc,
        metrics,
        tls,
        auth,
        registry,
        risk,
        health,
        prometheus,
        readiness,
        engine,
        watchdog,
        nice: _,
        conns,
        telemetry,
    } = plane;
    let (grpc, metrics) = match (tokio::net::TcpListener::from_std(grpc), tokio::net::TcpListener::from_std(metrics)) {
        (Ok(g), Ok(m)) => (g, m),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "admin listeners cannot join the admin runtime; admin and metrics are off");
            return;
        }
    };
    let (stop_tx, _) = tokio::sync::watch::channel(false);
    let stopping = |tx: &tokio::sync::watch::Sender<bool>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let health_sync = tokio::spawn(sync_health(readiness.clone(), health.clone(), stopping(&stop_tx)));
    let dog = watchdog.map(|limit| tokio::spawn(watch_engine(engine, readiness, limit, stopping(&stop_tx))));
    let scrape = tokio::spawn(serve_metrics(metrics, prometheus, stopping(&stop_tx)));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        match builder.tls_config(tls) {
            Ok(b) => builder = b,
            Err(e) => {
                tracing::error!(error = %e, "admin listener TLS; admin services are off");
                return;
            }
        }
    }
    let admin = ModelAdminServer::with_interceptor(admin_service::Admin::new(registry), auth.clone());
    let risk = RiskAdminServer::with_interceptor(risk, auth);
    let budget = super::headers::HeaderBudget::layer(conns.max_header_bytes, telemetry.clone());
    let incoming = super::listen::Incoming::new(grpc, conns, telemetry);
    let served = builder
        .http2_max_header_list_size(super::headers::transport_limit(conns.max_header_bytes))
        .layer(budget)
        .add_service(tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(health)))
        .add_service(admin)
        .add_service(risk)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin gRPC server failed");
    }
    let _ = stop_tx.send(true);
    let _ = tokio::join!(health_sync, scrape);
    if let Some(dog) = dog {
        let _ = dog.await;
    }
}

/// Keeps the health statuses equal to readiness, until `stop`.
async fn sync_health(readiness: Arc<Readiness>, health: HealthReporter, stop: impl std::future::Future<Output = ()>) {
    let mut changes = readiness.subscribe();
    tokio::pin!(stop);
    loop {
        let ready = *changes.borrow_and_update();
        report(&health, ready).await;
        tokio::select! {
            _ = &mut stop => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// The stuck-engine watchdog: the engine is stuck when ticks or control messages wait while its
/// pass counter has not moved for `limit`. Checked every `limit / 4` (at least every ms).
async fn watch_engine(
    engine: EngineHandle,
    readiness: Arc<Readiness>,
    limit: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut every = tokio::time::interval((limit / 4).max(Duration::from_millis(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut since) = (engine.passes(), Instant::now());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => {}
        }
        let now = Instant::now();
        let p = engine.passes();
        if p != passes || !engine.has_work() {
            (passes, since) = (p, now);
            if readiness.holds(Cause::EngineStuck) {
                tracing::info!("engine is passing again: ready");
            }
            readiness.set_engine_stuck(false);
        } else if now - since >= limit && !readiness.holds(Cause::EngineStuck) {
            tracing::error!(
                waited_ms = (now - since).as_millis() as u64,
                depth = engine.depth(),
                "engine has not completed a pass with work waiting: not ready"
            );
            readiness.set_engine_stuck(true);
        }
    }
}

/// Binds a listener for the admin thread (non-blocking, so the admin runtime can adopt it).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    l.set_nonblocking(true).map_err(|source| StartError::Bind { addr, source })?;
    Ok(l)
}
