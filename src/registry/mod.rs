//! The model registry: discovers versions in the models directory, verifies, loads and warms
//! them, hands them to the engine between two batches, keeps the previous model loaded for an
//! instant rollback, runs shadow comparisons, and rolls back automatically when a new model
//! misbehaves in its first seconds.
//!
//! - [`startup`]: which name and version the server starts on;
//! - [`loading`]: discovery (rescans) and loading, verifying and warming a version;
//! - [`lifecycle`]: the swap/shadow/rollback state machine;
//! - [`publish`]: the admin API's views and the telemetry publication;
//! - [`entry`]: one known version's record; [`api`]: the handle and its requests.
//!
//! Everything here runs on the `quantd-registry` control thread; the engine only ever receives
//! a ready `Box<ActiveModel>` through its control queue, and replaced models come back to be
//! dropped here. Admin gRPC calls reach the thread through [`RegistryHandle`] and never touch
//! the engine's hot path.

mod api;
pub mod discover;
mod entry;
mod lifecycle;
mod loading;
mod publish;
pub mod settings;
mod startup;
mod warm;

pub use api::{ActiveView, LoadMode, ModelStatus, RegistryError, RegistryHandle, State};
use api::{Key, Request};
pub use settings::RegistrySection;
pub use warm::warm_up;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use self::entry::Entry;
use self::lifecycle::Lane;
use crate::control_thread::ControlThread;
use crate::engine::EngineHandle;
use crate::journal::Journal;
use crate::model::LoadOptions;
use crate::policy::PolicyParams;
use crate::telemetry::Telemetry;

/// Registry settings (from the server config).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The model repository: `<models_dir>/<name>/<version>/`.
    pub models_dir: PathBuf,
    /// The model name served; `None`: the only name present.
    pub name: Option<String>,
    /// A pinned version: never switch automatically.
    pub pinned: Option<String>,
    /// Batch size, execution provider and signature key every version is loaded with.
    pub load: LoadOptions,
    /// Replaces every manifest's `[policy]` when set.
    pub policy_override: Option<PolicyParams>,
    /// Discovery, shadow, probation and rollback (`[registry]`).
    pub settings: RegistrySection,
}

/// The registry thread's state.
pub struct Registry {
    cfg: RegistryConfig,
    /// The default model name (what ticks no route claims are scored by).
    served: String,
    entries: BTreeMap<Key, Entry>,
    /// Each live model name's versions and life cycle.
    lanes: BTreeMap<String, Lane>,
    /// Names pinned to a version by a route (`model = "name@version"`): never swapped by a rescan.
    pinned: std::collections::BTreeSet<String>,
    telemetry: Arc<Telemetry>,
    swaps: u64,
    rollbacks: u64,
    /// Refused loads by model name and reason.
    failures: BTreeMap<(String, &'static str), u64>,
    last_load: Option<[f64; 3]>,
    /// Where each load is recorded (what the signals' `model` names stand for), and each route
    /// change the engine applied.
    journal: Option<Journal>,
    /// Route changes sent to the engine and not yet confirmed: journaled once the engine says
    /// which pass they preceded.
    unconfirmed_routes: Vec<(crate::journal::ControlRecord, tokio::sync::oneshot::Receiver<crate::engine::Applied>)>,
}

impl Registry {
    /// Starts the control thread. `engine` must be running `start`'s model.
    pub fn spawn(mut self, engine: EngineHandle) -> std::io::Result<(RegistryHandle, RegistryThread)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (watch_tx, watch_rx) = crossbeam_channel::unbounded();
        let watcher = if self.cfg.settings.watch { self.watch(watch_tx) } else { None };
        let stop = tx.clone();
        let nice = self.cfg.settings.nice;
        let thread = ControlThread::spawn_with(
            "quantd-registry",
            move || {
                if nice != 0 {
                    crate::control_thread::renice(nice, "quantd-registry");
                }
                let _watcher = watcher;
                self.run(&engine, &rx, &watch_rx);
            },
            move |_| {
                let _ = stop.send(Request::Stop);
            },
        )?
        .wait_at_most(STOP_WITHIN);
        Ok((RegistryHandle { tx }, RegistryThread { thread }))
    }

    fn watch(&self, tx: Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut w = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = tx.send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; relying on the periodic rescan"))
        .ok()?;
        match w.watch(&self.cfg.models_dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the models directory; relying on the periodic rescan");
                None
            }
        }
    }

    fn run(&mut self, engine: &EngineHandle, requests: &Receiver<Request>, changes: &Receiver<()>) {
        let mut last_scan = Instant::now();
        loop {
            crossbeam_channel::select! {
                recv(requests) -> r => match r {
                    Ok(Request::Stop) | Err(_) => break,
                    Ok(r) => self.handle(r, engine),
                },
                recv(changes) -> _ => {
                    // Let a burst of file events settle, then look once.
                    std::thread::sleep(Duration::from_millis(50));
                    while changes.try_recv().is_ok() {}
                    self.rescan(engine);
                    last_scan = Instant::now();
                },
                default(Duration::from_millis(100)) => {},
            }
            if last_scan.elapsed() >= self.cfg.settings.rescan() {
                self.rescan(engine);
                last_scan = Instant::now();
            }
            self.collect_retired(engine);
            self.journal_routes();
            self.check_probation(engine);
            self.check_shadow(engine);
            self.publish();
        }
        // A route change sent just before the stop: the engine, still running, confirms it
        // within a pass or two.
        let deadline = Instant::now() + Duration::from_millis(200);
        while !self.unconfirmed_routes.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            self.journal_routes();
        }
        tracing::info!("registry stopped");
    }

    fn handle(&mut self, r: Request, engine: &EngineHandle) {
        match r {
            Request::List(reply) => {
                let _ = reply.send(self.list(engine));
            }
            Request::Routes(reply) => {
                let _ = reply.send(engine.served().routes().ok_or(RegistryError::Stopped));
            }
            Request::SetRoute { spec, reply } => {
                let _ = reply.send(self.set_route(spec, engine));
            }
            Request::Active { name, reply } => {
                let name = if name.is_empty() { self.served.clone() } else { name };
                let _ = reply.send(self.view(&name));
            }
            Request::Load { key, mode, reply } => {
                let r = self.admin_load(&key, mode, engine);
                let _ = reply.send(r);
            }
            Request::Activate { key, reply } => {
                let r = self.admin_load(&key, LoadMode::Activate, engine);
                let _ = reply.send(r);
            }
            Request::Rollback { name, reply } => {
                let name = if name.is_empty() { self.served.clone() } else { name };
                let r = self.rollback(&name, "rolled back by admin request", engine);
                let _ = reply.send(r);
            }
            Request::Stop => {}
        }
        self.publish();
    }
}

/// The running registry thread.
pub struct RegistryThread {
    thread: ControlThread,
}

/// How long shutdown waits for the registry thread to finish what it is doing: a load stuck in
/// a file read (a hung network filesystem) must not hold up shutdown. After this the thread is
/// left to the process exit, logged.
pub const STOP_WITHIN: Duration = Duration::from_secs(2);

impl RegistryThread {
    /// Asks the thread to stop and waits for it, at most [`STOP_WITHIN`].
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}
