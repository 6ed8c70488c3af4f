//! Soak: recorded Binance ticks and synthetic ticks over 10,000 symbols, streamed at a steady
//! rate by clients that reconnect every couple of seconds, while the model is hot-swapped on a
//! schedule. Checks that no signal is lost or duplicated, that RSS stays flat after warm-up, and
//! that latency does not drift between the first and the last part of the run; prints the RSS
//! curve and the outcome counts.
//!
//! `make test` runs a short version (QUANTD_SOAK_SECS, default 30 s). `make soak` runs the long
//! one: 600 s in release, higher rate, a swap every 30 s.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use quantd::proto::Tick;
use tokio::sync::mpsc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 4096.0 / (1 << 20) as f64
}

/// An endless, time-ordered tick source for one stream.
enum Source {
    Recorded { ticks: Vec<Tick>, span: i64, i: usize },
    Synthetic { first: usize, symbols: usize, i: usize },
}

impl Source {
    fn next(&mut self) -> Tick {
        match self {
            Source::Recorded { ticks, span, i } => {
                let mut t = ticks[*i % ticks.len()].clone();
                t.exchange_ts_ns += (*i / ticks.len()) as i64 * *span;
                *i += 1;
                t
            }
            Source::Synthetic { first, symbols, i } => {
                *i += 1;
                quantd::synthetic::quote(*first, *symbols, *i - 1)
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    sessions: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let secs = env_or("QUANTD_SOAK_SECS", 30);
    let rate = env_or("QUANTD_SOAK_RATE", 2_000); // per stream
    let swap_every = env_or("QUANTD_SOAK_SWAP_SECS", (secs / 4).max(1));
    let models = tempfile::tempdir().unwrap();
    for v in ["1", "2"] {
        let dst = models.path().join("quantd-mlp").join(v);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(repo().join("models/quantd-mlp/1/model.onnx"), dst.join("model.onnx")).unwrap();
        std::fs::copy(repo().join("models/quantd-mlp/1/verify.npy"), dst.join("verify.npy")).unwrap();
        let m = std::fs::read_to_string(repo().join("models/quantd-mlp/1/manifest.toml")).unwrap();
        std::fs::write(dst.join("manifest.toml"), m.replacen("version = \"1\"", &format!("version = \"{v}\""), 1))
            .unwrap();
    }
    let mut cfg = test_config();
    cfg.models_dir = models.path().to_owned();
    cfg.model = Some("quantd-mlp@1".into());
    cfg.engine.max_symbols = 10_100;
    cfg.metrics_interval_ms = 1_000;
    let server = start(&cfg).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tally = Arc::new(Tally::default());

    let mut sources = Vec::new();
    for files in [
        ["binance_usdm_btcusdt_20240808_quotes.csv.gz", "binance_usdm_btcusdt_20240808_trades.csv.gz"],
        ["binance_usdm_ethusdt_20240808_quotes.csv.gz", "binance_usdm_ethusdt_20240808_trades.csv.gz"],
    ] {
        let ticks = recorded(&files, usize::MAX);
        let span = ticks.last().unwrap().exchange_ts_ns - ticks[0].exchange_ts_ns + 1;
        sources.push(Source::Recorded { ticks, span, i: 0 });
    }
    sources.push(Source::Synthetic { first: 0, symbols: 5_000, i: 0 });
    sources.push(Source::Synthetic { first: 5_000, symbols: 5_000, i: 0 });

    // Server latency of the first and the last 10% of the run (constant memory).
    let started = Instant::now();
    let edge = Duration::from_secs_f64(secs as f64 * 0.1);
    let mut streams = Vec::new();
    for mut source in sources {
        let server_addr = server.addr();
        let tally = tally.clone();
        streams.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut first = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).unwrap();
            let mut last = first.clone();
            while Instant::now() < deadline {
                // One session: ~2 s of ticks on a fresh connection, then reconnect.
                let mut c =
                    quantd::proto::signal_service_client::SignalServiceClient::connect(format!("http://{server_addr}"))
                        .await
                        .unwrap();
                let (tx, rx) = mpsc::channel::<Tick>(1024);
                let mut replies =
                    c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
                let per_ms = (rate / 1000).max(1);
                let session_end = (Instant::now() + Duration::from_secs(2)).min(deadline);
                let sender = tokio::spawn(async move {
                    let mut sent = Vec::new();
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    while Instant::now() < session_end {
                        tick.tick().await;
                        for _ in 0..per_ms {
                            let mut t = source.next();
                            seq += 1;
                            t.seq = seq;
                            sent.push(seq);
                            if tx.send(t).await.is_err() {
                                return (source, seq, sent);
                            }
                        }
                    }
                    (source, seq, sent)
                });
                let mut got = Vec::new();
                while let Some(s) = replies.message().await.unwrap() {
                    let key = if !s.reject_reason.is_empty() {
                        s.reject_reason.split(':').next().unwrap_or("?").to_owned()
                    } else if s.warming_up {
                        "warming_up".into()
                    } else {
                        "scored".into()
                    };
                    *outcomes.entry(key).or_default() += 1;
                    let lat = s.server_send_ns - s.server_recv_ns;
                    if started.elapsed() < edge {
                        first.saturating_record(lat);
                    } else if deadline.saturating_duration_since(Instant::now()) < edge {
                        last.saturating_record(lat);
                    }
                    got.push(s.seq);
                }
                let (back, last_seq, sent) = sender.await.unwrap();
                source = back;
                seq = last_seq;
                assert_eq!(got, sent, "every tick of the session answered exactly once, in order");
                tally.sent.fetch_add(sent.len() as u64, Ordering::Relaxed);
                tally.answered.fetch_add(got.len() as u64, Ordering::Relaxed);
                tally.sessions.fetch_add(1, Ordering::Relaxed);
            }
            (outcomes, first, last)
        }));
    }

    let registry = server.registry().clone();
    let swapper = tokio::spawn(async move {
        let mut n = 0u64;
        let mut next = Instant::now() + Duration::from_secs(swap_every);
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            let v = if n.is_multiple_of(2) { "2" } else { "1" };
            registry.activate("quantd-mlp", v).await.unwrap();
            n += 1;
            next += Duration::from_secs(swap_every);
        }
        n
    });
    let sampler = tokio::spawn(async move {
        let mut curve = Vec::new();
        while Instant::now() < deadline {
            curve.push((started.elapsed().as_secs_f64(), rss_mib()));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        curve
    });

    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).unwrap();
    let mut last_h = first_h.clone();
    for s in streams {
        let (o, f, l) = s.await.unwrap();
        for (k, v) in o {
            *outcomes.entry(k).or_default() += v;
        }
        first_h.add(f).unwrap();
        last_h.add(l).unwrap();
    }
    let swaps = swapper.await.unwrap();
    let curve = sampler.await.unwrap();
    let (first, last) = (first_h.value_at_quantile(0.5), last_h.value_at_quantile(0.5));
    let sent = tally.sent.load(Ordering::Relaxed);
    let answered = tally.answered.load(Ordering::Relaxed);
    println!(
        "soak: {secs} s, {} sessions, {sent} ticks sent, {answered} answered, {swaps} model swaps",
        tally.sessions.load(Ordering::Relaxed)
    );
    println!("soak: outcomes {outcomes:?}");
    println!(
        "soak: server latency first 10%: p50 {first} ns p99 {} ns; last 10%: p50 {last} ns p99 {} ns",
        first_h.value_at_quantile(0.99),
        last_h.value_at_quantile(0.99)
    );
    println!(
        "soak: RSS MiB by second: {}",
        curve.iter().map(|(t, r)| format!("{t:.0}s={r:.0}")).collect::<Vec<_>>().join(" ")
    );
    assert_eq!(sent, answered, "no signal lost or duplicated");
    assert!(swaps >= 1);
    assert!(outcomes.keys().all(|k| ["scored", "warming_up", "expired"].contains(&k.as_str())), "{outcomes:?}");
    // RSS flat after warm-up: from 30% of the run on, it may not keep climbing.
    let after: Vec<f64> = curve.iter().filter(|(t, _)| *t >= secs as f64 * 0.3).map(|(_, r)| *r).collect();
    if after.len() >= 2 {
        let growth = after.last().unwrap() - after.first().unwrap();
        assert!(growth < 64.0, "RSS grew {growth:.0} MiB after warm-up");
    }
    if secs >= 120 {
        // Judged on long runs only: a 30 s debug run on a shared 2-core machine is too noisy.
        assert!(last <= 2 * first + 100_000, "latency drift: median {first} ns first, {last} ns last");
    }
    server.shutdown(Duration::from_secs(2)).await;
}
