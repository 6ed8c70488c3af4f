//! The run's report (printed, and written as JSON), the progress line, and the server's own
//! histograms read from its Prometheus endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Self {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: h.max() as f64 / 1e3,
        }
    }
}

/// Server latency of ticks due close to a model swap against the rest of the same run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwapReport {
    pub swaps: usize,
    /// Ticks due within [−0.2 s, +1 s] of a swap.
    pub around: Percentiles,
    pub steady: Percentiles,
}

impl SwapReport {
    /// `swaps`: offsets (ns) of the swaps; `per_tick`: (due offset ns, server latency ns).
    pub fn split(swaps: &[u64], per_tick: &[(u64, u64)]) -> Self {
        let (mut around, mut steady) = (super::histogram(), super::histogram());
        for &(due, lat) in per_tick {
            let close = swaps.iter().any(|&s| due + 200_000_000 >= s && due <= s + 1_000_000_000);
            if close { around.saturating_record(lat) } else { steady.saturating_record(lat) }
        }
        Self { swaps: swaps.len(), around: Percentiles::from(&around), steady: Percentiles::from(&steady) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    /// The schedule: `Fixed { rate }`, `Poisson { rate }` or `Recorded { speed }`.
    pub pace: String,
    pub streams: usize,
    /// Ticks per message (1: `StreamTicks`; more: `StreamTickBatches`).
    #[serde(default = "one")]
    pub batch: usize,
    /// How ticks were sent: `stream`, `predict` (a unary call each) or `kserve:<model>` (a
    /// unary Open Inference Protocol ModelInfer each).
    #[serde(default = "stream")]
    pub protocol: String,
    /// Ticks per second the schedule asked for (warm-up included).
    pub target_rate: f64,
    /// Seconds measured (after the warm-up).
    pub duration_s: f64,
    pub achieved_rate: f64,
    pub sent: u64,
    pub received: u64,
    /// Replies with a reject reason (answered, but not scored).
    pub rejected: u64,
    /// Missing, late or out-of-order replies and failed streams. Empty on a clean run.
    pub errors: Vec<String>,
    /// From each tick's scheduled send time to its reply at the client.
    pub end_to_end: Percentiles,
    pub client_to_server: Percentiles,
    pub server_internal: Percentiles,
    /// Server internal per model that scored the tick (the signal's `model`, `name@version`).
    #[serde(default)]
    pub server_internal_by_model: BTreeMap<String, Percentiles>,
    pub server_to_client: Percentiles,
    /// How late the load generator released ticks against their schedule (part of end-to-end).
    pub send_lag: Percentiles,
    /// The server's own `quantd_tick_to_signal_seconds` over the run (bucket upper bounds).
    pub server_histogram: Option<Percentiles>,
    /// The server's `quantd_stage_seconds` per stage over the run (bucket upper bounds).
    pub server_stages: BTreeMap<String, Percentiles>,
    pub swaps: Option<SwapReport>,
    /// Kill-switch and scrape probes (`--kill-switch-pairs`, `--scrapes`).
    #[serde(default)]
    pub probes: Option<crate::ProbeReport>,
    /// End-to-end percentile distribution: (percentile 0–100, µs), for plots.
    pub distribution: Vec<(f64, f64)>,
}

fn stream() -> String {
    "stream".into()
}

fn one() -> usize {
    1
}

fn print_row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<22} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  p99.99 {:>9.1}  max {:>9.1}  µs",
        p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.p9999_us, p.max_us
    )
}

impl Report {
    pub fn print(&self) {
        println!(
            "{}: {} stream(s) to {} ({}), {} tick(s) per message, {}; target {:.0} ticks/s, achieved {:.0}; sent {}, \
             received {}, rejected {}, errors {}",
            self.label,
            self.streams,
            self.target,
            self.protocol,
            self.batch,
            self.pace,
            self.target_rate,
            self.achieved_rate,
            self.sent,
            self.received,
            self.rejected,
            self.errors.len()
        );
        print_row("end-to-end", &self.end_to_end);
        // The split needs the server's stamps (quantd's Signal); a ModelInfer answer has none.
        for (name, p) in [
            ("client -> server", &self.client_to_server),
            ("server internal", &self.server_internal),
            ("server -> client", &self.server_to_client),
        ] {
            if p.count > 0 {
                print_row(name, p);
            }
        }
        if self.server_internal_by_model.len() > 1 {
            for (model, p) in &self.server_internal_by_model {
                print_row(&format!("  server internal {model}"), p);
            }
        }
        print_row("client send lag", &self.send_lag);
        if let Some(h) = &self.server_histogram {
            print_row("server /metrics (<=)", h);
        }
        for (stage, p) in &self.server_stages {
            print_row(&format!("  stage {stage} (<=)"), p);
        }
        if let Some(s) = &self.swaps {
            println!("  {} swaps; server latency of ticks due within [-0.2 s, +1 s] of a swap vs the rest:", s.swaps);
            print_row("  around swaps", &s.around);
            print_row("  steady", &s.steady);
            println!(
                "  ratio around/steady: p99 {:.2}, p99.9 {:.2}",
                s.around.p99_us / s.steady.p99_us,
                s.around.p999_us / s.steady.p999_us
            );
        }
        if let Some(p) = &self.probes {
            println!("  control plane under this load ({} engaged unseen):", p.kill_unseen);
            print_row("  SetKillSwitch call", &p.kill_call);
            print_row("  first kill_admin", &p.first_flat);
            print_row("  ... after return", &p.first_flat_after_return);
            print_row("  GET /metrics", &p.scrape);
            for f in &p.failures {
                println!("  probe failure: {f}");
            }
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

/// The percentile distribution of a histogram at 1 − 10^(−k/20) for k = 0..=100 (0% to
/// 99.999%) and the maximum: the points of an HdrHistogram percentile plot.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, f64)> = (0..=100)
        .map(|k| 1.0 - 10f64.powf(-(k as f64) / 20.0))
        .take_while(|q| (1.0 - q) * h.len() as f64 >= 1.0)
        .map(|q| (q * 100.0, h.value_at_quantile(q) as f64 / 1e3))
        .collect();
    let (last, max) = (100.0 * (1.0 - 1.0 / h.len() as f64), h.max() as f64 / 1e3);
    match out.last_mut() {
        Some(p) if p.0 >= last => p.1 = max,
        _ => out.push((last, max)),
    }
    out
}

/// A progress line on stderr, once a second, until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
}

impl Progress {
    pub fn start(total: Duration, sent: Arc<AtomicU64>, received: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                eprint!(
                    "\r  {:>4.0} s of {:.0} s: sent {:>10}, received {:>10}",
                    t0.elapsed().as_secs_f64(),
                    total.as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed)
                );
            }
            eprintln!();
        });
        Self { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Cumulative histogram buckets of a scrape: series name (`tick_to_signal` or the stage label)
/// → (upper bound in seconds, count).
pub type Buckets = BTreeMap<String, Vec<(f64, f64)>>;

/// One `GET /metrics` exchange with `addr` (HTTP/1.0: the server closes when done); `answer`
/// gets the whole HTTP answer, status line and headers included.
pub async fn fetch_metrics(addr: &str, answer: &mut Vec<u8>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    answer.clear();
    conn.read_to_end(answer).await?;
    Ok(())
}

/// Reads the server's `quantd_tick_to_signal_seconds` and `quantd_stage_seconds` buckets.
pub async fn scrape(addr: &str) -> anyhow::Result<Buckets> {
    let mut answer = Vec::new();
    fetch_metrics(addr, &mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(parse_buckets(text.split_once("\r\n\r\n").map_or(&*text, |(_, body)| body)))
}

/// The two latency histograms of a text exposition, parsed by `prometheus-parse`.
fn parse_buckets(text: &str) -> Buckets {
    let mut out = Buckets::new();
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else { return out };
    for sample in scrape.samples {
        let series = match (sample.metric.as_str(), sample.labels.get("stage")) {
            ("quantd_tick_to_signal_seconds", _) => "tick_to_signal",
            ("quantd_stage_seconds", Some(stage)) => stage,
            _ => continue,
        };
        if let prometheus_parse::Value::Histogram(counts) = &sample.value {
            out.insert(series.to_owned(), counts.iter().map(|c| (c.less_than, c.count)).collect());
        }
    }
    out
}

/// Percentiles (bucket upper bounds) of what the server recorded between two scrapes.
pub fn bucket_percentiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<Percentiles> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let q = |q: f64| delta.iter().find(|(_, c)| *c >= q * total).map_or(f64::NAN, |(le, _)| le * 1e6);
    Some(Percentiles {
        count: total as u64,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        p9999_us: q(0.9999),
        max_us: q(1.0),
    })
}

/// The server's tick→signal percentiles and per-stage percentiles between two scrapes.
pub fn server_side(before: &Buckets, after: &Buckets) -> (Option<Percentiles>, BTreeMap<String, Percentiles>) {
    let delta = |name: &str| bucket_percentiles(before.get(name).map_or(&[][..], |b| b), after.get(name)?);
    let stages = after.keys().filter(|k| *k != "tick_to_signal").filter_map(|k| Some((k.clone(), delta(k)?))).collect();
    (delta("tick_to_signal"), stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_read_per_series_and_differenced() {
        let before = parse_buckets(
            "# TYPE quantd_tick_to_signal_seconds histogram\n\
             quantd_tick_to_signal_seconds_bucket{le=\"0.00001\"} 5\n\
             quantd_tick_to_signal_seconds_bucket{le=\"0.0001\"} 5\n\
             quantd_tick_to_signal_seconds_bucket{le=\"+Inf\"} 5\n",
        );
        let after = parse_buckets(
            "# HELP x\n# TYPE quantd_tick_to_signal_seconds histogram\n\
             quantd_tick_to_signal_seconds_bucket{le=\"0.00001\"} 10\n\
             quantd_tick_to_signal_seconds_bucket{le=\"0.0001\"} 14\n\
             quantd_tick_to_signal_seconds_bucket{le=\"+Inf\"} 15\n\
             # TYPE quantd_stage_seconds histogram\n\
             quantd_stage_seconds_bucket{stage=\"inference\",le=\"0.00001\"} 3\n\
             quantd_stage_seconds_bucket{stage=\"inference\",le=\"+Inf\"} 3\n",
        );
        let (t2s, stages) = server_side(&before, &after);
        let t2s = t2s.unwrap();
        assert_eq!(t2s.count, 10);
        assert_eq!(t2s.p50_us, 10.0);
        assert!((t2s.p90_us - 100.0).abs() < 1e-9);
        assert!(t2s.p999_us.is_infinite());
        assert_eq!(stages["inference"].count, 3);
    }

    #[test]
    fn the_distribution_reaches_the_max_and_never_decreases() {
        let mut h = crate::histogram();
        for v in 1..=100_000u64 {
            h.record(v * 1000).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d[0].0, 0.0);
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{d:?}");
        assert!((d.last().unwrap().1 - 100_000.0).abs() < 100.0);
        assert!(d.iter().any(|(q, _)| (*q - 99.99).abs() < 1e-6));
    }
}
