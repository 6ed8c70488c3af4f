//! quantd-load: an open-loop load generator for quantd's `SignalService`.
//!
//! Each stream has a schedule (fixed rate or Poisson arrivals, seeded) and a sender thread that
//! releases tick *i* at its scheduled time whether or not replies have come. Latency is measured
//! from the scheduled time, so a stall in the server shows up in every tick that should have been
//! sent during it — coordinated omission cannot hide it (no correction needed or applied). Every
//! reply is checked: one per tick, in order, `seq` echoed. End-to-end latency is split with the
//! server's `server_recv_ns`/`server_send_ns` stamps (same host, CLOCK_REALTIME).

pub mod report;
mod schedule;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{Tick, TickKind};

pub use report::{Percentiles, Report};
use schedule::Schedule;

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: String,
    /// Recorded tick files (merged by time, replayed in a loop); empty: synthetic ticks.
    pub ticks: Vec<PathBuf>,
    /// Symbols for synthetic ticks.
    pub symbols: usize,
    /// Total ticks per second over all streams.
    pub rate: f64,
    /// Poisson arrivals instead of a fixed interval.
    pub poisson: bool,
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The server's Prometheus endpoint (host:port): its own tick→signal percentiles are read
    /// from `quantd_tick_to_signal_seconds` before and after the run.
    pub metrics: Option<String>,
    /// Print a progress line every second.
    pub progress: bool,
    pub seed: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds")
}

/// The ticks one stream sends, in order: recorded ones cycled, or synthetic quotes. Their
/// exchange timestamps are set by the sender to each tick's scheduled wall-clock time, so they
/// always increase (also across runs against the same server). With several streams each gets
/// its own symbol suffix so streams never share a symbol.
fn source(opts: &Options, stream: usize, n: usize) -> anyhow::Result<Vec<Tick>> {
    let suffix = if opts.streams > 1 { format!(".{stream}") } else { String::new() };
    if opts.ticks.is_empty() {
        let symbols = opts.symbols.max(1);
        return Ok((0..n)
            .map(|i| {
                let s = i % symbols;
                let px = 100.0 + (s % 17) as f64 + ((i / symbols) % 40) as f64 * 0.01;
                Tick {
                    symbol: format!("SYN{s:05}{suffix}"),
                    seq: i as u64,
                    exchange_ts_ns: 0,
                    kind: TickKind::Quote as i32,
                    bid_px: px,
                    bid_qty: 1.0 + (i % 5) as f64,
                    ask_px: px + 0.01,
                    ask_qty: 1.0 + (i % 3) as f64,
                    ..Default::default()
                }
            })
            .collect());
    }
    let recorded = quantd::tickfile::read_all(&opts.ticks)?;
    if recorded.is_empty() {
        bail!("no ticks in {:?}", opts.ticks);
    }
    Ok((0..n)
        .map(|i| {
            let mut t = recorded[i % recorded.len()].to_proto();
            t.seq = i as u64;
            t.symbol.push_str(&suffix);
            t
        })
        .collect())
}

/// What one stream measured.
struct StreamResult {
    sent: u64,
    received: u64,
    rejected: u64,
    errors: Vec<String>,
    e2e: Histogram<u64>,
    to_server: Histogram<u64>,
    server: Histogram<u64>,
    to_client: Histogram<u64>,
}

async fn run_stream(opts: Options, stream: usize, start: Instant, start_ns: u64) -> anyhow::Result<StreamResult> {
    let per_stream_rate = opts.rate / opts.streams as f64;
    let total = ((opts.warmup + opts.duration).as_secs_f64() * per_stream_rate).ceil() as usize;
    let warm = (opts.warmup.as_secs_f64() * per_stream_rate) as usize;
    let ticks = source(&opts, stream, total)?;
    let mut client =
        SignalServiceClient::connect(format!("http://{}", opts.target)).await.context("connecting to the target")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let seed = opts.seed + stream as u64;
    let poisson = opts.poisson;
    let sender = std::thread::Builder::new().name(format!("load-send-{stream}")).spawn(move || {
        let mut schedule = Schedule::new(per_stream_rate, poisson, seed);
        for mut t in ticks {
            let offset = schedule.next_offset();
            let due = start + offset;
            t.exchange_ts_ns = (start_ns + offset.as_nanos() as u64) as i64;
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(150));
                } else {
                    std::hint::spin_loop();
                }
            }
            if tx.send(t).is_err() {
                break;
            }
        }
    })?;
    let mut replies = client.stream_ticks(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await?.into_inner();
    let mut r = StreamResult {
        sent: total as u64,
        received: 0,
        rejected: 0,
        errors: Vec::new(),
        e2e: histogram(),
        to_server: histogram(),
        server: histogram(),
        to_client: histogram(),
    };
    let mut schedule = Schedule::new(per_stream_rate, poisson, seed);
    let mut expected = 0u64;
    // After the last scheduled send, replies get at most this long to arrive.
    let end = start + opts.warmup + opts.duration + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(end.into(), replies.message()).await;
        let s = match next {
            Err(_) => {
                r.errors.push(format!("stream {stream}: {} replies missing after the run", total as u64 - expected));
                break;
            }
            Ok(Err(status)) => {
                r.errors.push(format!("stream {stream}: stream failed: {status}"));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(s))) => s,
        };
        let now = Instant::now();
        let now_rt = now_ns();
        let offset = schedule.next_offset();
        if s.seq != expected {
            r.errors.push(format!(
                "stream {stream}: reply seq {} where {expected} was due (out of order or missing)",
                s.seq
            ));
            break;
        }
        expected += 1;
        r.received += 1;
        if !s.reject_reason.is_empty() {
            r.rejected += 1;
        }
        if s.seq as usize >= warm {
            let due = start + offset;
            let due_ns = start_ns + offset.as_nanos() as u64;
            r.e2e.saturating_record(now.saturating_duration_since(due).as_nanos() as u64);
            if s.server_recv_ns > 0 {
                r.to_server.saturating_record(s.server_recv_ns.saturating_sub(due_ns));
                r.server.saturating_record(s.server_send_ns.saturating_sub(s.server_recv_ns));
                r.to_client.saturating_record(now_rt.saturating_sub(s.server_send_ns));
            }
        }
        if expected == total as u64 {
            break;
        }
    }
    let _ = sender.join();
    r.errors.truncate(20);
    Ok(r)
}

/// Runs the load and returns the report. Errors are failures to run at all; a run with missing or
/// out-of-order replies returns a report whose `errors` say so.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.streams == 0 || opts.rate.is_nan() || opts.rate <= 0.0 {
        bail!("--streams and --rate must be positive");
    }
    let before = match &opts.metrics {
        Some(m) => Some(report::scrape_buckets(m).await?),
        None => None,
    };
    // Start a little in the future so every stream is connected before its first due time.
    let start = Instant::now() + Duration::from_millis(300);
    let start_ns = now_ns() + 300_000_000;
    let progress = opts.progress.then(|| report::Progress::start(opts.warmup + opts.duration));
    let mut tasks = Vec::new();
    for stream in 0..opts.streams {
        tasks.push(tokio::spawn(run_stream(opts.clone(), stream, start, start_ns)));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    drop(progress);
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let after = match &opts.metrics {
        Some(m) => {
            tokio::time::sleep(Duration::from_millis(1200)).await; // one export interval
            Some(report::scrape_buckets(m).await?)
        }
        None => None,
    };
    let mut e2e = histogram();
    let (mut to_server, mut server, mut to_client) = (histogram(), histogram(), histogram());
    let (mut sent, mut received, mut rejected) = (0, 0, 0);
    let mut errors = Vec::new();
    for r in results {
        sent += r.sent;
        received += r.received;
        rejected += r.rejected;
        errors.extend(r.errors);
        e2e.add(&r.e2e)?;
        to_server.add(&r.to_server)?;
        server.add(&r.server)?;
        to_client.add(&r.to_client)?;
    }
    Ok(Report {
        target: opts.target.clone(),
        streams: opts.streams,
        target_rate: opts.rate,
        achieved_rate: received as f64 / elapsed,
        sent,
        received,
        rejected,
        errors,
        end_to_end: Percentiles::from(&e2e),
        client_to_server: Percentiles::from(&to_server),
        server_internal: Percentiles::from(&server),
        server_to_client: Percentiles::from(&to_client),
        server_histogram: match (before, after) {
            (Some(b), Some(a)) => report::bucket_percentiles(&b, &a),
            _ => None,
        },
    })
}
