//! `quantd-load`: command line for the open-loop load generator (see the library docs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use quantd_load::{Pace, Report, SwapPlan};

#[derive(Clone, Copy, ValueEnum)]
enum PaceArg {
    /// `--rate` ticks per second, evenly spaced.
    Fixed,
    /// Poisson arrivals at `--rate` per second on average.
    Poisson,
    /// The recorded exchange timestamps of `--ticks`, sped up by `--speed`.
    Recorded,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// quantd's StreamTicks (StreamTickBatches with --batch > 1).
    Stream,
    /// One unary quantd Predict per tick.
    Predict,
    /// One unary Open Inference Protocol ModelInfer per tick (KServe V2 / Triton gRPC) with the
    /// tick's feature row: quantd's own, or another model server's (--model, --input-name).
    Kserve,
}

#[derive(Parser)]
#[command(
    name = "quantd-load",
    about = "Open-loop load generator for quantd's SignalService",
    after_help = "Plot saved reports side by side: quantd-load --compare a.json b.json --plot out.svg"
)]
struct Args {
    /// host:port of the gRPC server, or unix:PATH for its Unix domain socket.
    #[arg(long, required_unless_present_any = ["compare", "uds"])]
    target: Option<String>,
    /// The server's Unix domain socket (the same as --target unix:PATH).
    #[arg(long, conflicts_with = "target")]
    uds: Option<String>,
    /// host:port of the admin services (swaps, kill-switch probes); default: --target.
    #[arg(long)]
    admin: Option<String>,
    /// Engage and release the all-symbols kill switch this many times during the measured time
    /// (RiskAdmin.SetKillSwitch) and report the call latency and the delay to the first signal it
    /// binds.
    #[arg(long, default_value_t = 0)]
    kill_switch_pairs: usize,
    /// Scrape --metrics this many times during the measured time and report the latency.
    #[arg(long, default_value_t = 0, requires = "metrics")]
    scrapes: usize,
    /// Recorded tick files (canonical CSV or Binance captures, gzip ok); replayed in a loop.
    #[arg(long, num_args = 1.., conflicts_with = "synthetic")]
    ticks: Vec<PathBuf>,
    /// Synthetic ticks instead of recorded ones.
    #[arg(long)]
    synthetic: bool,
    /// Symbols for --synthetic.
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    #[arg(long, value_enum, default_value = "fixed")]
    pace: PaceArg,
    /// Ticks per second over all streams (fixed and Poisson pace).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Speed-up of the recorded pace (10 = ten times faster than recorded).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Ticks per message: 1 streams single ticks (StreamTicks); N > 1 sends TickBatch messages of
    /// N ticks (StreamTickBatches), each released when its last tick is due.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How each tick is sent.
    #[arg(long, value_enum, default_value = "stream")]
    protocol: ProtocolArg,
    /// The model name ModelInfer requests name (--protocol kserve).
    #[arg(long, default_value = "quantd-mlp")]
    model: String,
    /// The model's input tensor name (--protocol kserve).
    #[arg(long, default_value = "features")]
    input_name: String,
    /// The server's Prometheus endpoint (host:port), to read its own histograms too.
    #[arg(long)]
    metrics: Option<String>,
    /// Hot-swap the model every this many seconds (ModelAdmin.ActivateModel) and report server
    /// latency around the swaps against the rest of the run.
    #[arg(long)]
    swap_every: Option<f64>,
    /// `name@version,name@version`: the versions --swap-every alternates between.
    #[arg(long, default_value = "quantd-mlp@2,quantd-mlp@1")]
    swap_versions: String,
    /// The run's name in the report and plots (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-percentile plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Plot these saved JSON reports together (with --plot) instead of running a load.
    #[arg(long, num_args = 1.., conflicts_with_all = ["target", "json"], requires = "plot")]
    compare: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress line (there is none either when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

fn swap_plan(every: Option<f64>, versions: &str) -> anyhow::Result<Option<SwapPlan>> {
    let Some(every) = every else { return Ok(None) };
    if !(every.is_finite() && every > 0.0) {
        bail!("--swap-every must be positive");
    }
    let versions = versions
        .split(',')
        .map(|v| {
            v.split_once('@')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("--swap-versions: {v:?} is not name@version"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(SwapPlan { every: Duration::from_secs_f64(every), versions }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.compare.is_empty() {
        let reports = a
            .compare
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str::<Report>(&text)
                    .with_context(|| format!("{} is not a quantd-load report", p.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let plot = a.plot.expect("clap requires --plot with --compare");
        let title = a.label.unwrap_or_else(|| "end-to-end latency by percentile".into());
        return quantd_load::plot::percentile_plot(&plot, &title, &reports);
    }
    if a.ticks.is_empty() && !a.synthetic {
        bail!("give --ticks FILE... or --synthetic");
    }
    let pace = match a.pace {
        PaceArg::Fixed => Pace::Fixed { rate: a.rate },
        PaceArg::Poisson => Pace::Poisson { rate: a.rate },
        PaceArg::Recorded if a.synthetic => bail!("--pace recorded needs --ticks"),
        PaceArg::Recorded => Pace::Recorded { speed: a.speed },
    };
    let target =
        a.uds.map(|p| format!("unix:{p}")).or(a.target).expect("clap requires --target or --uds without --compare");
    let admin = a.admin.unwrap_or_else(|| target.clone());
    let probe = (a.kill_switch_pairs > 0 || a.scrapes > 0).then(|| quantd_load::ProbePlan {
        admin: admin.clone(),
        kill_pairs: a.kill_switch_pairs,
        scrapes: a.scrapes,
    });
    let report = quantd_load::run(quantd_load::Options {
        target,
        admin,
        label: a.label,
        ticks: a.ticks,
        symbols: a.symbols,
        pace,
        streams: a.streams,
        batch: a.batch,
        protocol: match a.protocol {
            ProtocolArg::Stream => quantd_load::Protocol::Stream,
            ProtocolArg::Predict => quantd_load::Protocol::Predict,
            ProtocolArg::Kserve => quantd_load::Protocol::Kserve { model: a.model, input: a.input_name },
        },
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        metrics: a.metrics,
        swap: swap_plan(a.swap_every, &a.swap_versions)?,
        probe,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        seed: a.seed,
    })
    .await?;
    report.print();
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &a.plot {
        let title = format!("{}: end-to-end latency, {:.0} ticks/s", report.label, report.target_rate);
        quantd_load::plot::percentile_plot(path, &title, std::slice::from_ref(&report))?;
    }
    if !report.errors.is_empty() {
        bail!("{} errors (missing, late or out-of-order replies)", report.errors.len());
    }
    Ok(())
}
