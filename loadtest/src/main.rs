//! `quantd-load`: command line for the open-loop load generator (see the library docs).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "quantd-load", about = "Open-loop load generator for quantd's SignalService")]
struct Args {
    /// host:port of the gRPC server.
    #[arg(long)]
    target: String,
    /// Recorded tick files (canonical CSV or Binance captures, gzip ok); replayed in a loop.
    #[arg(long, num_args = 1.., conflicts_with = "synthetic")]
    ticks: Vec<PathBuf>,
    /// Synthetic ticks instead of recorded ones.
    #[arg(long)]
    synthetic: bool,
    /// Symbols for --synthetic.
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    /// Ticks per second over all streams.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Poisson arrivals (exponential gaps) instead of a fixed interval.
    #[arg(long)]
    poisson: bool,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// The server's Prometheus endpoint (host:port), to read its own histogram too.
    #[arg(long)]
    metrics: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.ticks.is_empty() && !a.synthetic {
        anyhow::bail!("give --ticks FILE... or --synthetic");
    }
    let report = quantd_load::run(quantd_load::Options {
        target: a.target,
        ticks: a.ticks,
        symbols: a.symbols,
        rate: a.rate,
        poisson: a.poisson,
        streams: a.streams,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        metrics: a.metrics,
        progress: !a.quiet,
        seed: a.seed,
    })
    .await?;
    report.print();
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    if !report.errors.is_empty() {
        anyhow::bail!("{} errors (missing, late or out-of-order replies)", report.errors.len());
    }
    Ok(())
}
