//! The `quantd` binary: parses the command line and calls the library; what it holds beyond
//! that is the printing of the tool commands' results (bench tables, JSON) and the `health` probe.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quantd::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "quantd", version, about = "Low-latency trading inference: ticks in over gRPC, signals out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the SignalService over gRPC (plus health, reflection and Prometheus metrics).
    Serve {
        /// TOML config file.
        #[arg(long, env = "QUANTD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Write the feature rows the server computes for recorded ticks (.csv or .npy).
    Features {
        /// Tick files (canonical CSV or Binance captures, optionally gzip), merged by time.
        #[arg(long, required = true, num_args = 1..)]
        ticks: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the feature schema and its hash.
    Schema {
        /// As TOML (the manifest's [features] section).
        #[arg(long)]
        toml: bool,
    },
    /// Replay recorded ticks through the serving engine (features, model, policy, risk) and
    /// backtest the signals; several --model directories are compared side by side.
    Replay {
        /// Tick files (canonical CSV or Binance captures, optionally gzip), merged by time.
        #[arg(long, required = true, num_args = 1..)]
        ticks: Vec<PathBuf>,
        /// Model version directories (<models>/<name>/<version>); repeat to compare.
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// Output directory for signals-*.csv, summary.json and the equity plot (must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Server config (TOML) for the engine, policy override and [risk] settings.
        #[arg(long, env = "QUANTD_CONFIG")]
        config: Option<PathBuf>,
        /// Exchange fee on traded notional, bps.
        #[arg(long, default_value_t = 0.0)]
        fee_bps: f64,
        /// Market data latency to the server, µs (added to each tick's measured engine time).
        #[arg(long, default_value_t = 500)]
        feed_latency_us: u64,
        /// Signal to exchange latency, µs.
        #[arg(long, default_value_t = 1_000)]
        order_latency_us: u64,
        /// Forward-return horizon for the IC, ms.
        #[arg(long, default_value_t = 1_000)]
        ic_horizon_ms: u64,
        /// Ticks per engine batch (1: every tick's engine time is its own).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Score only the data after this fraction of its time span (0.8: the last 20%, the
        /// default model's held-out test period).
        #[arg(long, default_value_t = 0.0)]
        eval_from: f64,
        /// Charge each signal an end-to-end latency drawn from this live run (a `quantd-load
        /// --json` report) instead of the replay's own engine time.
        #[arg(long)]
        latency_from: Option<PathBuf>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Prove a journal: re-run its ticks through the engine's code and the models that served
    /// them, in the live engine's batches, and check every signal bit for bit (exit 1 on any
    /// mismatch or gap).
    Audit {
        /// The journal directory (`serve --journal DIR`).
        #[arg(long)]
        journal: PathBuf,
        /// The models directory the server loaded from.
        #[arg(long, default_value = "models")]
        models: PathBuf,
        /// The server's config (TOML): engine, [ticks], [risk] and policy settings.
        #[arg(long, env = "QUANTD_CONFIG")]
        config: Option<PathBuf>,
        /// Mismatches reported in full (all are counted).
        #[arg(long, default_value_t = 10)]
        keep: usize,
        /// Write the report as JSON here too.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Verify a model directory as the server would at load (signature, sha256, schema, shapes,
    /// the verification set on every backend on this CPU, golden rows).
    VerifyModel {
        dir: PathBuf,
        /// Also require a valid manifest.toml.sig by this ed25519 public key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Backend to verify: auto (the fastest exact one), native or ort.
        #[arg(long, default_value = "auto")]
        backend: quantd::model::BackendChoice,
        /// The native kernel's ISA level: auto, avx512vnni, avxvnni, avx2 or portable.
        #[arg(long, default_value = "auto")]
        native_isa: String,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Score model inputs (a .npy of f32 `[rows, width]`) on the backend the model would serve on
    /// here, and print the backend and the native kernel's saturation per stage as JSON (training
    /// records the validation period's as the model's saturation baseline).
    Score {
        dir: PathBuf,
        /// The inputs: `[rows, window * features]` or `[rows, window, features]` f32.
        #[arg(long)]
        rows: PathBuf,
        /// Backend: auto (the fastest exact one), native or ort.
        #[arg(long, default_value = "auto")]
        backend: quantd::model::BackendChoice,
        /// Inputs per model call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Write the scores here as a .npy of f32 `[rows]`.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Time models per call at several batch sizes, on each backend asked for (the scorer the
    /// engine thread uses: the native INT8 kernel or an ONNX Runtime session on the chosen
    /// execution provider); every model × backend is timed side by side in interleaved rounds.
    BenchModel {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Backends to time each model on: auto, native, ort (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "auto")]
        backend: Vec<quantd::model::BackendChoice>,
        /// The native kernel's ISA level: auto, avx512vnni, avxvnni, avx2 or portable.
        #[arg(long, default_value = "auto")]
        native_isa: String,
        /// Batch sizes to time.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 20_000)]
        calls: u64,
        #[arg(long, default_value_t = 2_000)]
        warmup: u64,
        /// Interleaved rounds the calls are split into.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        #[arg(long, default_value = "cpu")]
        execution_provider: quantd::model::ExecutionProvider,
        /// Write the figures as JSON here too.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Ask a server's gRPC health service whether it is SERVING (exit 0) or not (exit 1): the
    /// container health check.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Service to check ("" is the whole server).
        #[arg(long, default_value = "quantd.v1.SignalService")]
        service: String,
        /// PEM CA to verify a TLS server with (use an https:// target).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
    },
    /// Bring your own ONNX model: check it against the engine's contract, write a complete
    /// version directory (model, manifest, verification and golden rows from the ticks' features,
    /// policy thresholds, signature) and load it as the server would.
    ImportModel {
        #[command(flatten)]
        options: quantd::import::ImportOptions,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Create an ed25519 key pair for model signing: <OUT>.key (secret, mode 0600) and <OUT>.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign model version directories: writes manifest.toml.sig beside each manifest.toml.
    Sign {
        /// Secret key file from `quantd keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config, overrides } => {
            let config = Config::load(config.as_deref(), overrides)?;
            quantd::telemetry::logging::init(config.log_json);
            serve(config)
        }
        Command::Features { ticks, out } => {
            let rows = quantd::dataset::write_features(&ticks, &out)?;
            eprintln!("wrote {rows} feature rows to {}", out.display());
            Ok(())
        }
        Command::Schema { toml } => {
            if toml {
                println!(
                    "[features]\nschema_version = {:?}\nschema_hash = {:?}",
                    quantd::features::SCHEMA_VERSION,
                    quantd::features::schema_hash()
                );
                println!("names = {:?}", quantd::features::names().collect::<Vec<_>>());
            } else {
                println!("{}# sha256 {}", quantd::features::schema_text(), quantd::features::schema_hash());
            }
            Ok(())
        }
        Command::Audit { journal, models, config, keep, json, ort_dylib_path } => {
            let config = Config::load(config.as_deref(), Overrides::default())?;
            quantd::model::runtime::init(ort_dylib_path.as_deref().or(config.ort_dylib_path.as_deref()))?;
            let opts = quantd::audit::AuditOptions { journal, models, config, keep_mismatches: keep };
            let report = quantd::audit::run(&opts)?;
            quantd::audit::print(&report);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Replay {
            ticks,
            models,
            out,
            config,
            fee_bps,
            feed_latency_us,
            order_latency_us,
            ic_horizon_ms,
            batch,
            eval_from,
            latency_from,
            ort_dylib_path,
        } => {
            let config = Config::load(config.as_deref(), Overrides::default())?;
            quantd::model::runtime::init(ort_dylib_path.as_deref().or(config.ort_dylib_path.as_deref()))?;
            let opts = quantd::replay::ReplayOptions {
                ticks,
                models,
                out: out.clone(),
                cost: quantd::backtest::CostModel {
                    fee_bps,
                    feed_latency_ns: feed_latency_us * 1_000,
                    order_latency_ns: order_latency_us * 1_000,
                    ic_horizon_ms,
                    ..Default::default()
                },
                config,
                batch,
                eval_from,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                latency_from,
            };
            let report = quantd::replay::run(&opts)?;
            quantd::replay::print_table(&report);
            if let Some(out) = out {
                eprintln!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::VerifyModel { dir, public_key, backend, native_isa, ort_dylib_path } => {
            quantd::model::runtime::init(ort_dylib_path.as_deref())?;
            let mut opts = quantd::model::LoadOptions::cpu(64);
            opts.public_key = public_key.as_deref().map(quantd::model::signing::read_public_key).transpose()?;
            opts.backend = quantd::model::BackendConfig { default: backend, native_isa, ..Default::default() };
            let m = quantd::model::LoadedModel::load_with(&dir, &opts)?;
            let signed = if opts.public_key.is_some() { ", signature valid" } else { "" };
            println!("ok: {} ({} golden rows reproduced{signed})", m.manifest.label(), m.manifest.golden.len());
            println!("backend: {}", m.backend.summary());
            Ok(())
        }
        Command::ImportModel { options, ort_dylib_path } => {
            quantd::model::runtime::init(ort_dylib_path.as_deref())?;
            let imported = match quantd::import::import(&options) {
                Ok(imported) => imported,
                Err(e) => {
                    eprintln!("import-model: {e}");
                    std::process::exit(2);
                }
            };
            for dir in &imported.dirs {
                println!("wrote {}", dir.display());
            }
            let p = imported.policy;
            println!(
                "ok: quantization {}, served here on {}; policy entry {} exit {} full {} warm-up {} ticks",
                imported.quantization, imported.backend, p.entry_bps, p.exit_bps, p.full_position_bps, p.warmup_ticks
            );
            Ok(())
        }
        Command::Score { dir, rows, backend, batch, out, ort_dylib_path } => {
            quantd::model::runtime::init(ort_dylib_path.as_deref())?;
            let mut opts = quantd::model::LoadOptions::cpu(batch.max(1));
            opts.backend = quantd::model::BackendConfig { default: backend, ..Default::default() };
            let mut m = quantd::model::LoadedModel::load_with(&dir, &opts)?;
            let x = quantd::model::read_rows(&rows, m.scorer.width()).map_err(anyhow::Error::msg)?;
            let scored = m.score_rows(&x, batch)?;
            if let Some(out) = &out {
                npyz::to_file_1d(out, scored.scores.iter().copied())?;
            }
            let doc = serde_json::json!({
                "model": m.manifest.label(),
                "backend": m.backend.backend,
                "isa": m.backend.isa,
                "rows": scored.scores.len(),
                "saturation": scored.saturation,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        Command::BenchModel {
            dirs,
            backend,
            native_isa,
            batch,
            calls,
            warmup,
            rounds,
            execution_provider,
            json,
            ort_dylib_path,
        } => {
            let lib = quantd::model::runtime::init(ort_dylib_path.as_deref())?;
            let mut opts = quantd::model::LoadOptions::cpu(batch.iter().copied().max().unwrap_or(1));
            opts.provider.provider = execution_provider;
            let mut models = Vec::new();
            for d in &dirs {
                for &b in &backend {
                    opts.backend = quantd::model::BackendConfig {
                        default: b,
                        native_isa: native_isa.clone(),
                        ..Default::default()
                    };
                    match quantd::model::LoadedModel::load_with(d, &opts) {
                        Ok(m) => models.push(m),
                        // A model × backend pair that cannot serve is skipped when several were asked for.
                        Err(e) if backend.len() > 1 => eprintln!("skipped {} on {b:?}: {e}", d.display()),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let figures = quantd::model::timing::time_calls(&mut models, &batch, warmup, calls, rounds)?;
            let mut doc = Vec::new();
            for (m, calls_of) in models.iter().zip(&figures) {
                let on = match m.backend.backend {
                    "native" => format!("the native kernel ({})", m.backend.isa),
                    _ => format!("ONNX Runtime {} ({})", m.provider.label(), lib.display()),
                };
                println!("{} on {on}, {calls} calls per batch size", m.manifest.label());
                for c in calls_of {
                    println!(
                        "  batch {:>4}: p50 {:>8.2} µs  p90 {:>8.2}  p99 {:>8.2}  max {:>9.2}  ({:.3} µs/input at p50)",
                        c.batch, c.p50_us, c.p90_us, c.p99_us, c.max_us, c.p50_per_row_us
                    );
                }
                doc.push(serde_json::json!({
                    "model": m.manifest.label(), "dir": m.dir, "provider": m.provider.label(),
                    "backend": m.backend.backend, "isa": m.backend.isa, "calls": calls_of
                }));
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&serde_json::json!({ "models": doc }))?)?;
            }
            Ok(())
        }
        Command::Health { target, service, ca, timeout_ms } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let status =
                runtime.block_on(health(&target, service.clone(), ca.as_deref(), Duration::from_millis(timeout_ms)))?;
            println!("{target} {service}: {status}");
            if status == "SERVING" { Ok(()) } else { std::process::exit(1) }
        }
        Command::Keygen { out } => {
            let (secret, public) = quantd::model::signing::generate(&out)?;
            println!("wrote {} (keep it secret) and {}", secret.display(), public.display());
            Ok(())
        }
        Command::Sign { key, dirs } => {
            let key = quantd::model::signing::read_signing_key(&key)?;
            for dir in dirs {
                println!("wrote {}", quantd::model::signing::sign(&dir, &key)?.display());
            }
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads)
        .thread_name("quantd-io")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let server = quantd::server::Server::start(&config.server_config()?).await?;
        // SIGTERM/SIGINT are handled on the admin thread: health turns NOT_SERVING at once, even
        // while tick streams keep this runtime busy.
        let _ = server.watch_signals().await;
        server.shutdown(Duration::from_millis(config.shutdown_grace_ms)).await;
        Ok(())
    })
}

async fn health(
    target: &str,
    service: String,
    ca: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(target.to_owned())?.timeout(timeout).connect_timeout(timeout);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {target}"))?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service }).await?.into_inner();
    Ok(reply.status().as_str_name().to_owned())
}
