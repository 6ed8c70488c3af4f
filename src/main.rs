//! The `quantd` binary: parses the command line and calls the library. Nothing else lives here.

use std::net::SocketAddr;
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
        #[arg(long, env = "QUANTD_LISTEN")]
        listen: Option<SocketAddr>,
        #[arg(long, env = "QUANTD_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Model repository (<dir>/<name>/<version>/).
        #[arg(long = "models", env = "QUANTD_MODELS")]
        models_dir: Option<PathBuf>,
        /// Model to serve: name or name@version.
        #[arg(long, env = "QUANTD_MODEL")]
        model: Option<String>,
        /// Core to pin the engine thread to.
        #[arg(long, env = "QUANTD_ENGINE_CORE")]
        engine_core: Option<usize>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
        /// Log JSON lines.
        #[arg(long, env = "QUANTD_LOG_JSON")]
        log_json: Option<bool>,
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
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
    /// Verify a model directory as the server would at load (sha256, schema, shapes, golden rows).
    VerifyModel {
        dir: PathBuf,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_dylib_path: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config, listen, metrics_listen, models_dir, model, engine_core, ort_dylib_path, log_json } => {
            let overrides =
                Overrides { listen, metrics_listen, models_dir, model, ort_dylib_path, log_json, engine_core };
            let config = Config::load(config.as_deref(), overrides)?;
            quantd::telemetry::logging::init(config.log_json);
            serve(config)
        }
        Command::Features { ticks, out } => {
            let rows = quantd::features::export::write_features(&ticks, &out)?;
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
            };
            let report = quantd::replay::run(&opts)?;
            quantd::replay::print_table(&report);
            if let Some(out) = out {
                eprintln!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::VerifyModel { dir, ort_dylib_path } => {
            quantd::model::runtime::init(ort_dylib_path.as_deref())?;
            let m = quantd::model::LoadedModel::load(&dir, 64)?;
            println!("ok: {} ({} golden rows reproduced)", m.manifest.label(), m.manifest.golden.len());
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
        let server = quantd::server::Server::start(&config).await?;
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining");
        server.shutdown(Duration::from_millis(config.shutdown_grace_ms)).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
