//! The server configuration: one struct, read from TOML, overridden by environment variables and
//! flags (in that order of precedence, lowest first), and validated as a whole.
//!
//! Built once in `main` (or a test) on the control path and passed to `server::Server::start`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, IdleStrategy};
use crate::journal::JournalConfig;
use crate::model::files::FileLimits;
use crate::model::{BackendConfig, ExecutionProvider, LoadOptions, ProviderConfig, ProviderFallback, signing};
use crate::plausibility::TickChecks;
use crate::policy::PolicyParams;
use crate::problem::{Kind, Problem, Problems};
use crate::registry::RegistryConfig;
use crate::risk::RiskConfig;
use crate::server::security::{self, AdminSection, TlsSection};
use crate::shard::ShardConfig;

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
    pub engine: EngineSection,
    pub stream: StreamSection,
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
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Engine queue capacity, ticks. A full queue answers `queue_full`.
    pub queue_capacity: usize,
    /// Most ticks scored in one model call.
    pub max_batch: usize,
    /// Distinct symbols the server tracks; more are rejected `too_many_symbols`.
    pub max_symbols: usize,
    /// Feature rows kept per symbol for windowed models (`features.window` in a manifest may not
    /// exceed it). Reserved up front: max_symbols x max_window x 14 floats, touched as used.
    pub max_window: usize,
    /// Core to pin the engine thread to (none: not pinned).
    pub core: Option<usize>,
    /// Pin the engine thread to the last core this process may run on (its cpuset: the
    /// exclusive cores a Kubernetes static CPU manager gives a Guaranteed pod, whatever their ids).
    pub pin_last_core: bool,
    pub idle: IdleStrategy,
    pub idle_spin_us: u64,
    pub idle_yield_us: u64,
    /// Health goes NOT_SERVING while ticks wait and the engine has not completed a pass for
    /// this long, ms (the stuck-engine watchdog; 0: off).
    pub watchdog_ms: u64,
    /// Evict a symbol not seen for this long (server receive time, ms; 0: never), so symbols
    /// that stopped ticking, or junk, free their slots for new ones. Symbols held by the admin
    /// kill switch stay. An evicted symbol warms up again when it returns.
    pub symbol_idle_ms: u64,
    /// `journal`: at start-up, rebuild each symbol's feature state from the tail of the journal
    /// (its last `warm_start_max_ticks` ticks received within `warm_start_max_age_ms`), so a
    /// restart does not send every symbol back to warm-up; `off`: start cold.
    pub warm_start: WarmStart,
    pub warm_start_max_age_ms: u64,
    pub warm_start_max_ticks: usize,
}

/// Where the engine's per-symbol state comes from at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmStart {
    /// Every symbol starts cold and warms up on its live ticks.
    #[default]
    Off,
    /// From the journal's newest ticks (`journal.dir`).
    Journal,
}

/// What a stream does when it has `window` ticks in flight to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Backpressure {
    /// Stop reading the stream: HTTP/2 flow control pushes back on the client.
    Block,
    /// Keep reading; answer each tick beyond the window at once with `overloaded`.
    Reject,
    /// Like `block`, and the engine scores only the newest tick of a symbol per pass; the
    /// superseded ones update the features and are answered `conflated`.
    Conflate,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSection {
    /// Most ticks of one stream in flight to the engine.
    pub window: usize,
    pub backpressure: Backpressure,
    /// Most signals answered but not yet taken by the client. In `block`/`conflate` mode the
    /// stream stops reading at this limit (flow control pushes back); in `reject` mode, which
    /// never pushes back, a client this far behind is cut off with RESOURCE_EXHAUSTED.
    pub outbound_limit: usize,
    /// Signal time-to-live, ms: a tick that waited longer for the engine is answered `expired`
    /// (0: off).
    pub ttl_ms: u64,
    /// Most concurrent `StreamTicks` calls on the server; more are refused RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Most concurrent `StreamTicks` calls from one client address; more are refused
    /// RESOURCE_EXHAUSTED (so one host leaking streams cannot take every slot).
    pub max_streams_per_peer: usize,
    /// Most concurrent HTTP/2 streams (any call) on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// A stream whose client has read no signal for this long while signals were ready for it
    /// is cut: its undelivered signals are counted `dropped`, and it ends with
    /// RESOURCE_EXHAUSTED saying how many (ms; 0: never).
    pub slow_consumer_ms: u64,
    /// HTTP/2 receive window per stream, bytes: how many unread tick bytes a client may send
    /// ahead. Small, so that a stream that stopped being read holds back its client quickly and
    /// never fills the connection's window or h2's small-frame budget for the other streams.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 receive window per connection, bytes (shared by its streams).
    pub h2_connection_window_bytes: u32,
    /// Most open connections on the service port; one more is accepted and closed at once.
    /// Each needs a file descriptor: the start-up check warns when the limit is lower.
    pub max_connections: usize,
    /// Close a connection that has not begun HTTP/2 (or TLS) within this, ms (0: never): a
    /// half-open connection must not hold a descriptor forever. Also on the admin listener.
    pub handshake_timeout_ms: u64,
    /// Most distinct symbols on one stream; more are rejected `too_many_symbols`.
    pub max_symbols_per_stream: usize,
    /// Most distinct symbols the streams from one client address may bring in (over all of
    /// them, forgotten when its last stream closes); more are rejected `too_many_symbols`
    /// (0: no cap of its own; the engine's table and `max_symbols_per_stream` still bound it).
    pub max_symbols_per_peer: usize,
    /// Most distinct symbols the streams of one connection may bring in (over all of them,
    /// forgotten when its last stream closes); more are rejected `too_many_symbols` (0: no cap
    /// of its own). Finer than the per-peer cap where gateways share an address.
    pub max_symbols_per_connection: usize,
    /// Largest request headers (metadata) a call may carry, bytes as HTTP/2 counts them; over
    /// it a call is refused RESOURCE_EXHAUSTED. The transport accepts up to 4 times this, so
    /// that the refusal can be a gRPC status (beyond: a bare HTTP 431, then GOAWAY).
    pub max_header_bytes: usize,
    /// Largest accepted gRPC message, bytes.
    pub max_message_bytes: usize,
    /// A stream that sends no tick for this long (and is owed no signal) is closed with
    /// DEADLINE_EXCEEDED, ms (0: never).
    pub idle_timeout_ms: u64,
    /// HTTP/2 keep-alive ping interval and timeout, ms (0: off): dead peers are dropped.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// Watch the models directory for new versions (besides the periodic rescan).
    pub watch: bool,
    /// Periodic rescan of the models directory, ms (the fallback when watching misses events).
    pub rescan_ms: u64,
    /// New versions go to shadow first instead of straight to active.
    pub shadow_new_versions: bool,
    /// Promote a shadow model after this many compared ticks if agreement is high enough
    /// (0: only by admin call).
    pub shadow_promote_after_ticks: u64,
    /// Fraction of ticks whose side must agree for automatic promotion.
    pub shadow_min_agreement: f64,
    /// How long a newly activated model is watched for automatic rollback, ms.
    pub probation_ms: u64,
    /// Roll back automatically when more than this fraction of the new model's scores are
    /// non-finite or its calls fail during probation.
    pub rollback_max_error_rate: f64,
    /// Largest `model.onnx` (or verification set) read, bytes; larger files are refused
    /// unread.
    pub max_model_bytes: u64,
    /// Largest `manifest.toml` read, bytes (this bounds its golden rows too).
    pub max_manifest_bytes: u64,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            watch: true,
            rescan_ms: 2_000,
            shadow_new_versions: false,
            shadow_promote_after_ticks: 10_000,
            shadow_min_agreement: 0.9,
            probation_ms: 10_000,
            rollback_max_error_rate: 0.0,
            max_model_bytes: FileLimits::default().max_model_bytes,
            max_manifest_bytes: FileLimits::default().max_manifest_bytes,
        }
    }
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
            registry: RegistrySection::default(),
            policy: None,
            risk: RiskConfig::default(),
            ticks: TickChecks::default(),
            tls: TlsSection::default(),
            admin: AdminSection::default(),
            shard: ShardConfig::default(),
            journal: JournalConfig::default(),
            backend: BackendConfig::default(),
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 64,
            max_symbols: 10_000,
            max_window: 32,
            core: None,
            pin_last_core: false,
            idle: IdleStrategy::SpinPark,
            idle_spin_us: 50,
            idle_yield_us: 2_000,
            watchdog_ms: 1_000,
            symbol_idle_ms: 900_000,
            warm_start: WarmStart::Off,
            warm_start_max_age_ms: 900_000,
            warm_start_max_ticks: 128,
        }
    }
}

impl Default for StreamSection {
    fn default() -> Self {
        Self {
            window: 1024,
            backpressure: Backpressure::Block,
            outbound_limit: 4096,
            ttl_ms: 250,
            max_streams: 1024,
            max_streams_per_peer: 256,
            max_streams_per_connection: 128,
            slow_consumer_ms: 3_000,
            h2_stream_window_bytes: 64 * 1024,
            h2_connection_window_bytes: 4 << 20,
            max_connections: 2_048,
            handshake_timeout_ms: 5_000,
            max_symbols_per_stream: 5_000,
            max_symbols_per_peer: 0,
            max_symbols_per_connection: 0,
            max_header_bytes: 16_384,
            max_message_bytes: 64 * 1024,
            idle_timeout_ms: 120_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

/// Values from the environment or the command line (`quantd serve` flags); each set one
/// replaces the file's.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    #[arg(long, env = "QUANTD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin gRPC address (ModelAdmin, RiskAdmin, health) on the admin thread.
    #[arg(long, env = "QUANTD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, env = "QUANTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Model repository (`<dir>/<name>/<version>/`).
    #[arg(long = "models", env = "QUANTD_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// Model to serve: name or name@version.
    #[arg(long, env = "QUANTD_MODEL")]
    pub model: Option<String>,
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
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

    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.listen {
            self.listen = v;
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
        let e = &self.engine;
        p.check(e.queue_capacity == 0, "engine.queue_capacity", OutOfRange, || {
            "engine.queue_capacity must be > 0".into()
        });
        p.check(e.max_batch == 0 || e.max_batch > 1024, "engine.max_batch", OutOfRange, || {
            format!("engine.max_batch {} must be in 1..=1024", e.max_batch)
        });
        p.check(e.core.is_some() && e.pin_last_core, "engine.pin_last_core", Conflict, || {
            "engine.core and engine.pin_last_core are both set; choose one".into()
        });
        let max_window = crate::model::manifest::MAX_WINDOW;
        p.check(!(1..=max_window).contains(&e.max_window), "engine.max_window", OutOfRange, || {
            format!("engine.max_window {} must be in 1..={max_window}", e.max_window)
        });
        p.check(e.max_symbols == 0, "engine.max_symbols", OutOfRange, || "engine.max_symbols must be > 0".into());
        p.check(e.warm_start == WarmStart::Journal && !self.journal.enabled, "engine.warm_start", Conflict, || {
            "engine.warm_start = \"journal\" needs the journal on (journal.enabled, or --journal DIR)".into()
        });
        p.check(
            e.warm_start == WarmStart::Journal && e.warm_start_max_ticks == 0,
            "engine.warm_start_max_ticks",
            OutOfRange,
            || "engine.warm_start_max_ticks must be > 0".into(),
        );
        let st = &self.stream;
        p.check(st.window == 0, "stream.window", OutOfRange, || "stream.window must be > 0".into());
        p.check(st.outbound_limit < st.window, "stream.outbound_limit", Conflict, || {
            format!("stream.outbound_limit {} must be >= stream.window {}", st.outbound_limit, st.window)
        });
        p.check(st.max_streams == 0 || st.max_symbols_per_stream == 0, "stream.max_streams", OutOfRange, || {
            "stream.max_streams and stream.max_symbols_per_stream must be > 0".into()
        });
        p.check(
            st.max_streams_per_peer == 0 || st.max_streams_per_connection == 0,
            "stream.max_streams_per_peer",
            OutOfRange,
            || "stream.max_streams_per_peer and max_streams_per_connection must be > 0".into(),
        );
        let windows = 65_535..=(1 << 31) - 1;
        p.check(
            !windows.contains(&st.h2_stream_window_bytes) || !windows.contains(&st.h2_connection_window_bytes),
            "stream.h2_stream_window_bytes",
            OutOfRange,
            || "stream.h2_stream_window_bytes and h2_connection_window_bytes must be in 65535..=2^31-1 (HTTP/2)".into(),
        );
        p.check(st.h2_stream_window_bytes > st.h2_connection_window_bytes, "stream.h2_stream_window_bytes", Conflict, || {
            "stream.h2_stream_window_bytes exceeds h2_connection_window_bytes: one stopped stream could stall the connection".into()
        });
        p.check(st.max_message_bytes < 256, "stream.max_message_bytes", OutOfRange, || {
            format!("stream.max_message_bytes {} is too small for one tick", st.max_message_bytes)
        });
        // Room for an authorization header and the usual gRPC ones; at most 1 GiB, since the
        // transport is told four times this as a u32.
        p.check(!(1_024..=1 << 30).contains(&st.max_header_bytes), "stream.max_header_bytes", OutOfRange, || {
            format!("stream.max_header_bytes {} must be in 1024..=2^30", st.max_header_bytes)
        });
        p.check(st.window > e.queue_capacity, "stream.window", Conflict, || {
            format!(
                "stream.window {} exceeds engine.queue_capacity {}: one stream could fill the queue alone",
                st.window, e.queue_capacity
            )
        });
        p.extend(self.risk.problems());
        p.extend(self.ticks.problems());
        let r = &self.registry;
        p.check(r.rescan_ms == 0, "registry.rescan_ms", OutOfRange, || "registry.rescan_ms must be > 0".into());
        p.check(r.max_model_bytes == 0 || r.max_manifest_bytes == 0, "registry.max_model_bytes", OutOfRange, || {
            "registry.max_model_bytes and registry.max_manifest_bytes must be > 0".into()
        });
        p.check(!(0.0..=1.0).contains(&r.shadow_min_agreement), "registry.shadow_min_agreement", OutOfRange, || {
            format!("registry.shadow_min_agreement {} must be in [0, 1]", r.shadow_min_agreement)
        });
        p.check(
            !(0.0..=1.0).contains(&r.rollback_max_error_rate),
            "registry.rollback_max_error_rate",
            OutOfRange,
            || format!("registry.rollback_max_error_rate {} must be in [0, 1]", r.rollback_max_error_rate),
        );
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
            limits: FileLimits {
                max_model_bytes: self.registry.max_model_bytes,
                max_manifest_bytes: self.registry.max_manifest_bytes,
            },
        })
    }

    pub fn registry_config(&self) -> Result<RegistryConfig, ConfigError> {
        let (name, pinned) = match self.model.as_deref().map(|m| m.split_once('@')) {
            Some(Some((n, v))) => (Some(n.to_owned()), Some(v.to_owned())),
            Some(None) => (self.model.clone(), None),
            None => (None, None),
        };
        let r = &self.registry;
        Ok(RegistryConfig {
            models_dir: self.models_dir.clone(),
            name,
            pinned,
            load: self.load_options()?,
            policy_override: self.policy,
            watch: r.watch,
            rescan: Duration::from_millis(r.rescan_ms),
            shadow_new_versions: r.shadow_new_versions,
            shadow_promote_after: r.shadow_promote_after_ticks,
            shadow_min_agreement: r.shadow_min_agreement,
            probation: Duration::from_millis(r.probation_ms),
            rollback_max_error_rate: r.rollback_max_error_rate,
        })
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            queue_capacity: self.engine.queue_capacity,
            max_batch: self.engine.max_batch,
            max_symbols: self.engine.max_symbols,
            max_window: self.engine.max_window,
            core: if self.engine.pin_last_core {
                core_affinity::get_core_ids().and_then(|ids| ids.last().map(|c| c.id))
            } else {
                self.engine.core
            },
            idle: self.engine.idle,
            idle_spin: Duration::from_micros(self.engine.idle_spin_us),
            idle_yield: Duration::from_micros(self.engine.idle_yield_us),
            ttl: (self.stream.ttl_ms > 0).then(|| Duration::from_millis(self.stream.ttl_ms)),
            risk: self.risk.clone(),
            ticks: self.ticks.clone(),
            symbol_idle: (self.engine.symbol_idle_ms > 0).then(|| Duration::from_millis(self.engine.symbol_idle_ms)),
        }
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

    #[test]
    fn reports_every_problem_at_once() {
        let mut c = Config { models_dir: "/nonexistent".into(), ..Config::default() };
        c.engine.max_batch = 0;
        c.stream.window = 0;
        c.metrics_listen = c.listen;
        c.stream.max_message_bytes = 10;
        c.stream.max_header_bytes = 100;
        c.admin_listen = "0.0.0.0:50052".parse().unwrap();
        let p = c.problems();
        for (field, kind) in [
            ("models_dir", Kind::Missing),
            ("engine.max_batch", Kind::OutOfRange),
            ("stream.window", Kind::OutOfRange),
            ("metrics_listen", Kind::Conflict),
            ("stream.max_message_bytes", Kind::OutOfRange),
            ("stream.max_header_bytes", Kind::OutOfRange),
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

    fn a_listen_flag() -> Option<SocketAddr> {
        Some("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn toml_then_overrides() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.toml");
        std::fs::write(&p, format!("models_dir = {:?}\n[engine]\nmax_batch = 8\nidle = \"busy-spin\"\n", d.path()))
            .unwrap();
        let c =
            Config::load(Some(&p), Overrides { listen: Some("127.0.0.1:1".parse().unwrap()), ..Default::default() })
                .unwrap();
        assert_eq!(c.engine.max_batch, 8);
        assert_eq!(c.engine.idle, IdleStrategy::BusySpin);
        assert_eq!(c.listen.port(), 1);

        std::fs::write(&p, "nonsense_key = 1\n").unwrap();
        let err = Config::load(Some(&p), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("nonsense_key"), "{err}");
    }
}
