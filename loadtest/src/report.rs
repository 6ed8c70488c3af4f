//! The run's report (printed, and written as JSON), the progress line, and the server's own
//! histogram read from its Prometheus endpoint.

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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub streams: usize,
    pub target_rate: f64,
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
    pub server_to_client: Percentiles,
    /// The server's own `quantd_tick_to_signal_seconds` over the run (bucket upper bounds).
    pub server_histogram: Option<Percentiles>,
}

impl Report {
    pub fn print(&self) {
        println!(
            "{} stream(s) to {}: target {:.0} ticks/s, achieved {:.0}; sent {}, received {}, rejected {}, errors {}",
            self.streams,
            self.target,
            self.target_rate,
            self.achieved_rate,
            self.sent,
            self.received,
            self.rejected,
            self.errors.len()
        );
        let row = |name: &str, p: &Percentiles| {
            println!(
                "  {name:<22} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  p99.99 {:>9.1}  max {:>9.1}  µs",
                p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.p9999_us, p.max_us
            )
        };
        row("end-to-end", &self.end_to_end);
        row("client -> server", &self.client_to_server);
        row("server internal", &self.server_internal);
        row("server -> client", &self.server_to_client);
        if let Some(h) = &self.server_histogram {
            row("server /metrics (<=)", h);
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

/// A progress line on stderr, once a second, until dropped.
pub struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    pub fn start(total: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                eprint!("\r  {:>5.0} s of {:.0} s", t0.elapsed().as_secs_f64(), total.as_secs_f64());
            }
            eprintln!();
        });
        Self { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Cumulative `quantd_tick_to_signal_seconds_bucket` counts: (upper bound in seconds, count).
pub async fn scrape_buckets(addr: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("quantd_tick_to_signal_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le.parse().unwrap_or(f64::INFINITY), count))
        })
        .collect())
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
