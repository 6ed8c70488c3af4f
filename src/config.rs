//! The server configuration: one struct, read from TOML, overridden by environment variables and
//! flags (in that order of precedence, lowest first), and validated as a whole.
//!
//! Each subsystem owns its section (`engine::settings`, `server::settings`, `registry::settings`,
//! `risk`, `journal`, ...) with its own checks; this module only assembles them, reads the
//! environment and the flags, checks what spans sections, and builds what each subsystem is
//! started with ([`Config::server_config`]). Built once in `main` (or a test, or `quantd
//! replay`/`audit`) on the control path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::engine::settings::{EngineSection, WarmStart};
use crate::journal::JournalConfig;
use crate::model::{BackendConfig, ExecutionProvider, LoadOptions, ProviderConfig, ProviderFallback, signing};
use crate::plausibility::TickChecks;
use crate::policy::PolicyParams;
use crate::problem::{Kind, Problem, Problems};
use crate::registry::{RegistryConfig, RegistrySection};
use crate::risk::RiskConfig;
use crate::routes::RouteSpec;
use crate::server::security::{self, AdminSection, TlsSection};
use crate::server::settings::{StreamSection, UnixSection};
use crate::server::{ServerConfig, WarmTail};
use crate::shard::ShardConfig;

/// The whole server configuration; see the module documentation for where each part comes from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address of the tick path (SignalService, health, reflection), on the data plane's
    /// runtime.
    pub listen: SocketAddr,
    /// gRPC address of the admin services (ModelAdmin, RiskAdmin) and health, served by the
    /// `quantd-admin` thread's own runtime.
    pub admin_listen: SocketAddr,
    /// Prometheus `/metrics` address (also on the admin thread); may be a different interface
    /// than `listen`.
    pub metrics_listen: SocketAddr,
    /// Model repository: `<models_dir>/<name>/<version>/{model.onnx,manifest.toml}`.
    pub models_dir: PathBuf,
    /// `name` or `name@version`; unset: the only model name present, highest version.
    pub model: Option<String>,
    /// libonnxruntime to load; unset: `.cache/onnxruntime/` from `make setup`.
    pub ort_dylib_path: Option<PathBuf>,
    /// ONNX Runtime execution provider: `cpu`, `cuda` or `tensorrt` (the GPU ones need the
    /// cargo feature and the GPU build of ONNX Runtime).
    pub execution_provider: ExecutionProvider,
    /// When the provider cannot run: `fail` (refuse the model; the server does not start) or
    /// `cpu` (warn and run on the CPU provider).
    pub provider_fallback: ProviderFallback,
    /// CUDA device ordinal for the GPU providers.
    pub gpu_device_id: i32,
    /// Hex ed25519 public key file; when set, every model needs a valid `manifest.toml.sig`.
    pub model_public_key: Option<PathBuf>,
    /// Log JSON lines instead of text.
    pub log_json: bool,
    /// Threads for gRPC I/O (tokio workers). The engine has its own thread besides.
    pub io_threads: usize,
    /// How often the telemetry thread publishes metrics, ms.
    pub metrics_interval_ms: u64,
    /// After SIGTERM/ctrl-c, how long open streams may take to finish, ms.
    pub shutdown_grace_ms: u64,
    /// The engine thread: queue, batch, symbol table, core, idle strategy, warm start.
    pub engine: EngineSection,
    /// The tick streams and the service port's transport.
    pub stream: StreamSection,
    /// The service on a Unix domain socket too.
    pub unix: UnixSection,
    /// Model discovery, shadow, probation and rollback.
    pub registry: RegistrySection,
    /// Overrides the model manifest's `[policy]` when set.
    pub policy: Option<PolicyParams>,
    /// The risk layer after the policy: limits, kill switch, VaR sizing.
    pub risk: RiskConfig,
    /// Per-symbol plausibility checks on ticks (future timestamps, price jumps).
    pub ticks: TickChecks,
    /// TLS (optionally mutual) on the gRPC port.
    pub tls: TlsSection,
    /// Who may call the admin services.
    pub admin: AdminSection,
    /// Which shard of the symbols this replica serves (ticks of other symbols are rejected
    /// `wrong_shard`).
    pub shard: ShardConfig,
    /// The journal of every tick and signal (Arrow IPC files).
    pub journal: JournalConfig,
    /// Which backend serves each model (native INT8 kernel, ONNX Runtime, or `auto`) and the
    /// native kernel's ISA level.
    pub backend: BackendConfig,
    /// Which model scores which symbols, with its own policy (`[[routes]]`, first match wins;
    /// the rest go to the default model). See [`crate::routes`].
    pub routes: Vec<RouteSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("literal address"),
            admin_listen: "127.0.0.1:50052".parse().expect("literal address"),
            metrics_listen: "127.0.0.1:9100".parse().expect("literal address"),
            models_dir: PathBuf::from("models"),
            model: None,
            ort_dylib_path: None,
            execution_provider: ExecutionProvider::Cpu,
            provider_fallback: ProviderFallback::Fail,
            gpu_device_id: 0,
            model_public_key: None,
            log_json: false,
            io_threads: 1,
            metrics_interval_ms: 1000,
            shutdown_grace_ms: 5000,
            engine: EngineSection::default(),
            stream: StreamSection::default(),
            unix: UnixSection::default(),
            registry: RegistrySection::default(),
            policy: None,
            risk: RiskConfig::default(),
            ticks: TickChecks::default(),
            tls: TlsSection::default(),
            admin: AdminSection::default(),
            shard: ShardConfig::default(),
            journal: JournalConfig::default(),
            backend: BackendConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// Values from the environment or the command line (`quantd serve` flags); each set one
/// replaces the file's.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// gRPC address of the service port.
    /// The service's address: `HOST:PORT` (TCP), or `unix:PATH` for a Unix domain socket
    /// beside the TCP port (`[unix] path`); give it twice (or comma-separated) for both.
    #[arg(long, env = "QUANTD_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Listen>,
    /// Admin gRPC address (ModelAdmin, RiskAdmin, health) on the admin thread.
    #[arg(long, env = "QUANTD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Prometheus `/metrics` address.
    #[arg(long, env = "QUANTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Model repository (`<dir>/<name>/<version>/`).
    #[arg(long = "models", env = "QUANTD_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// Model to serve: name or name@version.
    #[arg(long, env = "QUANTD_MODEL")]
    pub model: Option<String>,
    /// libonnxruntime to load.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Log JSON lines.
    #[arg(long, env = "QUANTD_LOG_JSON")]
    pub log_json: Option<bool>,
    /// Core to pin the engine thread to.
    #[arg(long, env = "QUANTD_ENGINE_CORE")]
    pub engine_core: Option<usize>,
    /// ONNX Runtime execution provider: cpu, cuda or tensorrt.
    #[arg(long, env = "QUANTD_EXECUTION_PROVIDER")]
    pub execution_provider: Option<ExecutionProvider>,
    /// Bearer token for the admin services.
    #[arg(long, env = "QUANTD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "QUANTD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "QUANTD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mutual TLS).
    #[arg(long, env = "QUANTD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// This replica's shard of the symbols (a StatefulSet pod ordinal).
    #[arg(long, env = "QUANTD_SHARD_INDEX")]
    pub shard_index: Option<u32>,
    /// Number of shards (replicas).
    #[arg(long, env = "QUANTD_SHARD_COUNT")]
    pub shard_count: Option<u32>,
    /// Journal every tick and signal into this directory (turns `journal.enabled` on).
    #[arg(long = "journal", env = "QUANTD_JOURNAL")]
    pub journal_dir: Option<PathBuf>,
}

/// The value of `--listen`: a TCP address, or `unix:PATH`.
#[derive(Clone, Debug, PartialEq)]
pub enum Listen {
    /// `HOST:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path (unix:/run/quantd/quantd.sock)".into()),
            Some(path) => Ok(Listen::Unix(path.into())),
            None => s.parse().map(Listen::Tcp).map_err(|e| format!("{s:?}: {e}; expected HOST:PORT or unix:PATH")),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file (or the environment on top of it) is not valid TOML for this config.
    #[error("config {path}: {msg}")]
    Parse {
        /// The config file, and the environment variables applied.
        path: PathBuf,
        /// The parser's message, naming the key.
        msg: String,
    },
    /// Values that parse but do not make sense, all of them at once.
    #[error("invalid configuration:\n  - {}", crate::problem::bullet_list(.0))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Reads `path` (if any), applies the `QUANTD_*` environment ([`Config::load_with_env`]),
    /// then `overrides`, and validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars(), overrides)
    }

    /// [`Config::load`] with the environment given. Every key can be set from it: a top-level
    /// key as `QUANTD_<KEY>` (`QUANTD_IO_THREADS=2`), a key in a section as
    /// `QUANTD_<SECTION>__<KEY>`, one `__` per level (`QUANTD_ENGINE__MAX_BATCH=32`,
    /// `QUANTD_RISK__VAR__LIMIT=2.5`). Values are read as TOML values (numbers, booleans,
    /// arrays), anything else as a string. A nested name that is not a key is an error;
    /// `QUANTD_*` names without `__` that are not top-level keys are left alone (they belong to
    /// the flags, such as `QUANTD_MODELS`, or to other tools).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Parse { path: p.to_owned(), msg: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        let from_env = apply_env(&mut table, env);
        let source = match (path, from_env.is_empty()) {
            (Some(p), true) => p.to_owned(),
            (Some(p), false) => PathBuf::from(format!("{} + environment {}", p.display(), from_env.join(", "))),
            (None, _) => PathBuf::from(format!("environment {}", from_env.join(", "))),
        };
        let mut c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: source, msg: e.to_string() })?;
        c.apply(overrides);
        c.validate()?;
        Ok(c)
    }

    /// Applies the set flags and variables over the file's values.
    pub fn apply(&mut self, o: Overrides) {
        for l in o.listen {
            match l {
                Listen::Tcp(v) => self.listen = v,
                Listen::Unix(v) => self.unix.path = Some(v),
            }
        }
        if let Some(v) = o.admin_listen {
            self.admin_listen = v;
        }
        if let Some(v) = o.metrics_listen {
            self.metrics_listen = v;
        }
        if let Some(v) = o.models_dir {
            self.models_dir = v;
        }
        if o.model.is_some() {
            self.model = o.model;
        }
        if o.ort_dylib_path.is_some() {
            self.ort_dylib_path = o.ort_dylib_path;
        }
        if let Some(v) = o.log_json {
            self.log_json = v;
        }
        if o.engine_core.is_some() {
            self.engine.core = o.engine_core;
        }
        if let Some(v) = o.execution_provider {
            self.execution_provider = v;
        }
        if o.admin_token.is_some() {
            self.admin.token = o.admin_token;
            self.admin.token_file = None;
        }
        if o.tls_cert.is_some() {
            self.tls.cert = o.tls_cert;
        }
        if o.tls_key.is_some() {
            self.tls.key = o.tls_key;
        }
        if o.tls_client_ca.is_some() {
            self.tls.client_ca = o.tls_client_ca;
        }
        if let Some(v) = o.shard_index {
            self.shard.index = v;
        }
        if let Some(v) = o.shard_count {
            self.shard.count = v;
        }
        if let Some(v) = o.journal_dir {
            self.journal.enabled = true;
            self.journal.dir = v;
        }
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_result().map_err(ConfigError::Invalid)
    }

    /// Every problem, typed (what [`Config::validate`] reports).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        let ports =
            [("listen", self.listen), ("admin_listen", self.admin_listen), ("metrics_listen", self.metrics_listen)];
        for (i, (a, x)) in ports.iter().enumerate() {
            for (b, y) in &ports[i + 1..] {
                p.check(x == y && x.port() != 0, b, Conflict, || format!("{a} and {b} are both {x}"));
            }
        }
        p.check(!self.models_dir.is_dir(), "models_dir", Missing, || {
            format!("models_dir {} is not a directory", self.models_dir.display())
        });
        if let Some(path) = self.ort_dylib_path.as_ref().filter(|p| !p.is_file()) {
            p.push("ort_dylib_path", Missing, format!("ort_dylib_path {} does not exist", path.display()));
        }
        p.check(self.io_threads == 0 || self.io_threads > 256, "io_threads", OutOfRange, || {
            format!("io_threads {} must be in 1..=256", self.io_threads)
        });
        p.check(self.metrics_interval_ms == 0, "metrics_interval_ms", OutOfRange, || {
            "metrics_interval_ms must be > 0".into()
        });
        let (e, st) = (&self.engine, &self.stream);
        p.extend(e.problems());
        p.check(e.warm_start == WarmStart::Journal && !self.journal.enabled, "engine.warm_start", Conflict, || {
            "engine.warm_start = \"journal\" needs the journal on (journal.enabled, or --journal DIR)".into()
        });
        p.extend(st.problems());
        p.extend(self.unix.problems());
        p.check(st.window > e.queue_capacity, "stream.window", Conflict, || {
            format!(
                "stream.window {} exceeds engine.queue_capacity {}: one stream could fill the queue alone",
                st.window, e.queue_capacity
            )
        });
        p.extend(self.risk.problems());
        p.extend(self.ticks.problems());
        p.extend(self.registry.problems());
        if let Some(m) = &self.model
            && (m.is_empty() || m.starts_with('@') || m.ends_with('@'))
        {
            p.push("model", Invalid, format!("model {m:?} must be \"name\" or \"name@version\""));
        }
        if let Some(Err(e)) = self.policy.as_ref().map(PolicyParams::validate) {
            p.push("policy", OutOfRange, format!("policy: {e}"));
        }
        if let Err(e) = self.model_key() {
            p.push("model_public_key", Unreadable, format!("model_public_key: {e}"));
        }
        let ep = self.execution_provider;
        p.check(
            ep != ExecutionProvider::Cpu && !ep.compiled_in() && self.provider_fallback == ProviderFallback::Fail,
            "execution_provider",
            Unsupported,
            || {
                format!(
                    "execution_provider {} needs a build with `--features {}` (or provider_fallback = \"cpu\")",
                    ep.label(),
                    ep.label()
                )
            },
        );
        p.check(self.gpu_device_id < 0, "gpu_device_id", OutOfRange, || {
            format!("gpu_device_id {} must be >= 0", self.gpu_device_id)
        });
        p.extend(self.shard.problems());
        p.extend(crate::routes::problems(&self.routes));
        p.extend(self.journal.problems());
        p.extend(self.backend.validate());
        p.extend(security::tls_problems(&self.tls));
        let admin_on = [Some(self.admin_listen), self.admin.on_service_port.then_some(self.listen)];
        p.extend(security::admin_problems(&self.admin, &self.tls, admin_on.iter().flatten().copied()));
        p
    }

    fn model_key(&self) -> Result<Option<ed25519_dalek::VerifyingKey>, signing::SigningError> {
        self.model_public_key.as_deref().map(signing::read_public_key).transpose()
    }

    /// How models are loaded: batch size, execution provider, signature key.
    pub fn load_options(&self) -> Result<LoadOptions, ConfigError> {
        Ok(LoadOptions {
            max_batch: self.engine.max_batch,
            provider: ProviderConfig {
                provider: self.execution_provider,
                fallback: self.provider_fallback,
                device_id: self.gpu_device_id,
            },
            public_key: self.model_key().map_err(|e| {
                ConfigError::Invalid(vec![Problem::new("model_public_key", Kind::Unreadable, e.to_string())])
            })?,
            max_window: self.engine.max_window,
            backend: self.backend.clone(),
            limits: self.registry.file_limits(),
        })
    }

    /// What the registry thread is started with: the models directory, the served name and pinned version, load options and `[registry]`.
    pub fn registry_config(&self) -> Result<RegistryConfig, ConfigError> {
        let (name, pinned) = match self.model.as_deref().map(|m| m.split_once('@')) {
            Some(Some((n, v))) => (Some(n.to_owned()), Some(v.to_owned())),
            Some(None) => (self.model.clone(), None),
            None => (None, None),
        };
        Ok(RegistryConfig {
            models_dir: self.models_dir.clone(),
            name,
            pinned,
            load: self.load_options()?,
            policy_override: self.policy,
            settings: self.registry.clone(),
        })
    }

    /// What the engine thread is started with.
    pub fn engine_config(&self) -> EngineConfig {
        let engine = self.engine.engine_config(self.stream.ttl(), self.risk.clone(), self.ticks.clone());
        EngineConfig { routes: self.routes.clone(), ..engine }
    }

    /// What [`crate::server::Server::start`] needs: the listeners, the engine, registry, risk,
    /// journal and edge settings, assembled and validated.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let e = &self.engine;
        Ok(ServerConfig {
            listen: self.listen,
            admin_listen: self.admin_listen,
            metrics_listen: self.metrics_listen,
            ort_dylib_path: self.ort_dylib_path.clone(),
            metrics_interval: Duration::from_millis(self.metrics_interval_ms),
            engine: self.engine_config(),
            watchdog: e.watchdog(),
            warm_start: (e.warm_start == WarmStart::Journal).then_some(WarmTail {
                max_age: Duration::from_millis(e.warm_start_max_age_ms),
                max_ticks: e.warm_start_max_ticks,
            }),
            registry: self.registry_config()?,
            stream: self.stream.clone(),
            unix: self.unix.clone(),
            risk: self.risk.clone(),
            shard: self.shard,
            tls: self.tls.clone(),
            admin: self.admin.clone(),
            journal: self.journal.clone(),
        })
    }
}

/// Sets `table`'s keys from `QUANTD_*` variables (see [`Config::load_with_env`]); returns the
/// names of the variables used.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let top_level: Vec<String> = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t.into_iter().filter(|(_, v)| !v.is_table()).map(|(k, _)| k).collect(),
        _ => Vec::new(),
    };
    // The optional top-level keys, absent from the serialized defaults.
    let optional = ["model", "ort_dylib_path", "model_public_key"];
    let mut used = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix("QUANTD_") else { continue };
        let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty)
            || (path.len() == 1 && !top_level.contains(&path[0]) && !optional.contains(&path[0].as_str()))
        {
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let (last, sections) = path.split_last().expect("split yields at least one part");
        let mut at = &mut *table;
        for s in sections {
            let entry = at.entry(s.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            at = entry.as_table_mut().expect("made a table above");
        }
        at.insert(last.clone(), parsed);
        used.push(name);
    }
    used.sort();
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::IdleStrategy;
    use crate::server::settings::Backpressure;

    #[test]
    fn reports_every_problem_at_once() {
        let mut c = Config { models_dir: "/nonexistent".into(), ..Config::default() };
        c.engine.max_batch = 0;
        c.stream.window = 0;
        c.metrics_listen = c.listen;
        c.stream.max_message_bytes = 10;
        c.stream.max_header_bytes = 100;
        c.stream.reply_spin_us = 5_000;
        c.admin_listen = "0.0.0.0:50052".parse().unwrap();
        let p = c.problems();
        for (field, kind) in [
            ("models_dir", Kind::Missing),
            ("engine.max_batch", Kind::OutOfRange),
            ("stream.window", Kind::OutOfRange),
            ("metrics_listen", Kind::Conflict),
            ("stream.max_message_bytes", Kind::OutOfRange),
            ("stream.max_header_bytes", Kind::OutOfRange),
            ("stream.reply_spin_us", Kind::OutOfRange),
            ("admin.token", Kind::Exposed),
        ] {
            assert!(p.has(field, kind), "{field} ({kind}) missing from: {p:#?}");
        }
        let err = c.validate().unwrap_err().to_string();
        for needle in ["models_dir", "max_batch", "stream.window", "metrics_listen", "open to the network"] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.toml");
        std::fs::write(&p, format!("models_dir = {:?}\n[engine]\nmax_batch = 8\n", d.path())).unwrap();
        let env = |vars: &[(&str, &str)]| vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let c = Config::load_with_env(
            Some(&p),
            env(&[
                ("QUANTD_ENGINE__MAX_BATCH", "32"),
                ("QUANTD_RISK__VAR__LIMIT", "2.5"),
                ("QUANTD_STREAM__BACKPRESSURE", "reject"),
                ("QUANTD_ADMIN__ON_SERVICE_PORT", "true"),
                ("QUANTD_IO_THREADS", "2"),
                ("QUANTD_ADMIN_LISTEN", "127.0.0.1:7"),
                ("QUANTD_SOAK_SECS", "5"),
                ("QUANTD_MODELS", "/ignored/by/the/file/layer"),
                ("OTHER__KEY", "1"),
            ]),
            Overrides { listen: a_listen_flag(), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.engine.max_batch, 32, "the environment wins over the file");
        assert_eq!(c.risk.var.limit, 2.5);
        assert_eq!(c.stream.backpressure, Backpressure::Reject);
        assert!(c.admin.on_service_port);
        assert_eq!((c.io_threads, c.admin_listen.port()), (2, 7));
        // A flag wins over the environment.
        assert_eq!(c.listen.port(), 1);

        let err = Config::load_with_env(Some(&p), env(&[("QUANTD_ENGINE__MAX_BACH", "4")]), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bach") && err.contains("QUANTD_ENGINE__MAX_BACH"), "{err}");
    }

    fn a_listen_flag() -> Vec<Listen> {
        vec![Listen::Tcp("127.0.0.1:1".parse().unwrap())]
    }

    #[test]
    fn listen_takes_a_tcp_address_or_a_unix_socket_beside_it() {
        assert_eq!("127.0.0.1:7".parse::<Listen>(), Ok(Listen::Tcp("127.0.0.1:7".parse().unwrap())));
        assert_eq!("unix:/tmp/q.sock".parse::<Listen>(), Ok(Listen::Unix("/tmp/q.sock".into())));
        assert!("unix:".parse::<Listen>().is_err() && "nonsense".parse::<Listen>().is_err());
        let mut c = Config::default();
        let both = vec![Listen::Tcp("127.0.0.1:7".parse().unwrap()), Listen::Unix("/tmp/q.sock".into())];
        c.apply(Overrides { listen: both, ..Default::default() });
        assert_eq!((c.listen.port(), c.unix.path.as_deref()), (7, Some("/tmp/q.sock".as_ref())));
        c.unix = UnixSection { path: Some("/nonexistent/dir/q.sock".into()), mode: Some(0o1777), ..Default::default() };
        let p = c.unix.problems();
        assert!(p.has("unix.path", Kind::Missing) && p.has("unix.mode", Kind::OutOfRange), "{p:?}");
    }

    #[test]
    fn toml_then_overrides() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.toml");
        std::fs::write(&p, format!("models_dir = {:?}\n[engine]\nmax_batch = 8\nidle = \"busy-spin\"\n", d.path()))
            .unwrap();
        let c = Config::load(Some(&p), Overrides { listen: a_listen_flag(), ..Default::default() }).unwrap();
        assert_eq!(c.engine.max_batch, 8);
        assert_eq!(c.engine.idle, IdleStrategy::BusySpin);
        assert_eq!(c.listen.port(), 1);

        std::fs::write(&p, "nonsense_key = 1\n").unwrap();
        let err = Config::load(Some(&p), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("nonsense_key"), "{err}");
    }
}
