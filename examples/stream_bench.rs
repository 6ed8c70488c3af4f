//! Streams recorded ticks at a fixed rate to a running quantd and prints the server's own
//! tick→signal percentiles (from each signal's `server_send_ns - server_recv_ns`) beside the
//! client's end-to-end latency.
//!
//! Open loop: a dedicated thread releases tick `i` at `start + i / rate` whether or not replies
//! have come, and end-to-end latency is measured from that scheduled time, so a stall shows up
//! in the percentiles instead of slowing the sender down.
//!
//! `cargo run --release --example stream_bench -- --target 127.0.0.1:50051 --rate 10000 \
//!     --duration 20 --warmup 2 --ticks FILE...` (see scripts/stream-bench.sh)

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use quantd::proto::signal_service_client::SignalServiceClient;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: String,
    #[arg(long, required = true, num_args = 1..)]
    ticks: Vec<PathBuf>,
    /// Ticks per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds sent before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The server's Prometheus endpoint (host:port): print its per-stage percentiles too.
    #[arg(long)]
    metrics: Option<String>,
    /// Hot-swap the model every this many seconds (ModelAdmin.ActivateModel, alternating
    /// between `--swap-versions`), and report latency around the swaps against the rest.
    #[arg(long)]
    swap_every: Option<f64>,
    /// `name@v1,name@v2`: the versions to alternate between.
    #[arg(long, default_value = "quantd-mlp@2,quantd-mlp@1")]
    swap_versions: String,
}

/// Quantile from cumulative Prometheus buckets (upper bound of the bucket that holds it), µs.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    buckets.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| le * 1e6)
}

/// Per-stage p50/p99 (bucket upper bounds) from the server's `quantd_stage_seconds` histogram.
async fn print_stages(metrics: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(metrics).await?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let mut stages: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for line in text.lines().filter(|l| l.starts_with("quantd_stage_seconds_bucket{")) {
        let stage = line.split("stage=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("+Inf");
        let count: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        stages.entry(stage.to_owned()).or_default().push((le.parse().unwrap_or(f64::INFINITY), count));
    }
    println!("server stages since start (Prometheus bucket upper bounds, µs):");
    for (stage, b) in stages {
        let (p50, p99) = (bucket_quantile(&b, 0.5).unwrap_or(f64::NAN), bucket_quantile(&b, 0.99).unwrap_or(f64::NAN));
        println!("  {stage:<12} p50 <= {p50:>7.0}   p99 <= {p99:>7.0}");
    }
    Ok(())
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<28} n={:<8} p50={:>8.1} p90={:>8.1} p99={:>8.1} p99.9={:>8.1} max={:>9.1}  (µs)",
        h.len(),
        pct(h, 0.5),
        pct(h, 0.9),
        pct(h, 0.99),
        pct(h, 0.999),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let recorded = quantd::tickfile::read_all(&args.ticks)?;
    if recorded.is_empty() {
        bail!("no ticks in the given files");
    }
    let total = (args.rate * (args.duration + args.warmup)) as usize;
    let warm = (args.rate * args.warmup) as usize;
    // Cycle through the file, shifting time forward on each pass so timestamps stay ordered.
    let span = recorded.last().unwrap().exchange_ts_ns - recorded[0].exchange_ts_ns + 1;
    let ticks: Vec<_> = (0..total)
        .map(|i| {
            let mut t = recorded[i % recorded.len()].to_proto();
            t.exchange_ts_ns += (i / recorded.len()) as i64 * span;
            t.seq = i as u64;
            t
        })
        .collect();

    let mut client = SignalServiceClient::connect(format!("http://{}", args.target)).await.context("connect")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now() + Duration::from_millis(200);
    let sender = std::thread::spawn(move || {
        for (i, t) in ticks.into_iter().enumerate() {
            let due = start + interval * i as u32;
            // Sleep while far from the due time (keeps a core free for the server), spin close to it.
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(150) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
            }
            if tx.send(t).is_err() {
                break;
            }
        }
    });
    // Swaps run from their own task over the admin API; their times are kept for the report.
    let swap_times = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    if let Some(every) = args.swap_every {
        let versions: Vec<(String, String)> = args
            .swap_versions
            .split(',')
            .filter_map(|v| v.split_once('@').map(|(n, v)| (n.to_owned(), v.to_owned())))
            .collect();
        let mut admin =
            quantd::proto::model_admin_client::ModelAdminClient::connect(format!("http://{}", args.target)).await?;
        let times = swap_times.clone();
        let end = start + Duration::from_secs(args.warmup + args.duration);
        tokio::spawn(async move {
            let mut i = 0;
            let mut next = start + Duration::from_secs(args.warmup) + Duration::from_secs_f64(every / 2.0);
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let (name, version) = versions[i % versions.len()].clone();
                let at = Instant::now();
                match admin.activate_model(quantd::proto::ModelRef { name, version }).await {
                    Ok(_) => times.lock().unwrap().push(at),
                    Err(e) => eprintln!("swap failed: {e}"),
                }
                i += 1;
                next += Duration::from_secs_f64(every);
            }
        });
    }
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut replies = client.stream_ticks(outbound).await?.into_inner();
    let mut server = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut e2e = server.clone();
    let mut seen = 0usize;
    // (due time, server latency) of every measured tick, for the around-swap split.
    let mut per_tick: Vec<(Instant, u64)> = Vec::with_capacity(total);
    let mut late_or_missing = VecDeque::new();
    while let Some(s) = replies.message().await? {
        let now = Instant::now();
        if s.seq as usize != seen {
            late_or_missing.push_back((seen, s.seq));
        }
        if !s.reject_reason.is_empty() {
            bail!("tick {} rejected: {}", s.seq, s.reject_reason);
        }
        if seen >= warm {
            let due = start + interval * seen as u32;
            e2e.saturating_record(now.saturating_duration_since(due).as_nanos() as u64);
            let lat = s.server_send_ns.saturating_sub(s.server_recv_ns);
            server.saturating_record(lat);
            per_tick.push((due, lat));
        }
        seen += 1;
        if seen == total {
            break;
        }
    }
    sender.join().ok();
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "sent {total} ticks at {} ticks/s ({} s warm-up excluded); achieved {:.0} ticks/s",
        args.rate,
        args.warmup,
        total as f64 / elapsed
    );
    report("server tick->signal", &server);
    report("end-to-end (open loop)", &e2e);
    let swaps = swap_times.lock().unwrap().clone();
    if !swaps.is_empty() {
        // Ticks due within 1 s after a swap (or 0.2 s before it) vs all the others.
        let mut near = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut steady = near.clone();
        for (due, lat) in &per_tick {
            let close =
                swaps.iter().any(|t| *due + Duration::from_millis(200) >= *t && *due <= *t + Duration::from_secs(1));
            if close { near.saturating_record(*lat) } else { steady.saturating_record(*lat) }
        }
        println!("{} swaps; tick->signal within [-0.2 s, +1 s] of a swap vs the rest:", swaps.len());
        report("  around swaps", &near);
        report("  steady", &steady);
        println!(
            "  p99 ratio {:.2}, p99.9 ratio {:.2} (around / steady)",
            pct(&near, 0.99) / pct(&steady, 0.99),
            pct(&near, 0.999) / pct(&steady, 0.999)
        );
    }
    if let Some(m) = &args.metrics {
        tokio::time::sleep(Duration::from_millis(1500)).await; // one export interval
        print_stages(m).await?;
    }
    if !late_or_missing.is_empty() || seen != total {
        bail!(
            "replies out of order or missing: {:?} (got {seen} of {total})",
            late_or_missing.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(())
}
