//! quantd-load against a real in-process quantd (default model, recorded Binance ticks).

use std::path::PathBuf;
use std::time::Duration;

use quantd::config::Config;
use quantd::server::Server;
use quantd_load::{Options, Pace, Protocol, Report, run};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Ephemeral ports, the repo's models, fast metrics.
fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        models_dir: repo().join("models"),
        metrics_interval_ms: 100,
        ..Config::default()
    }
}

async fn start(config: Config) -> Server {
    Server::start(&config.server_config().unwrap()).await.expect("quantd starts")
}

async fn server() -> Server {
    start(config()).await
}

fn options(server: &Server, rate: f64, secs: f64) -> Options {
    Options {
        target: server.addr().to_string(),
        admin: server.admin_addr().to_string(),
        label: None,
        ticks: vec![repo().join("../shared/data/ticks/binance_usdm_btcusdt_20240808_quotes.csv.gz")],
        symbols: 0,
        pace: Pace::Fixed { rate },
        streams: 2,
        batch: 1,
        protocol: Protocol::Stream,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs_f64(secs),
        metrics: Some(server.metrics_addr().to_string()),
        swap: None,
        probe: None,
        progress: false,
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_rate_run_is_clean_and_its_json_holds_every_field() {
    let server = server().await;
    let report =
        run(Options { pace: Pace::Poisson { rate: 1_000.0 }, ..options(&server, 1_000.0, 2.0) }).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.sent, report.received, "counts match");
    assert_eq!(report.rejected, 0);
    assert!(report.end_to_end.count > 1_500, "{}", report.end_to_end.count);
    assert!(report.server_internal.p50_us > 0.0 && report.server_internal.p50_us <= report.end_to_end.p50_us);
    assert!(report.server_histogram.as_ref().is_some_and(|h| h.count > 0), "the server's own histogram was read");
    let json = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for field in [
        "achieved_rate",
        "end_to_end",
        "client_to_server",
        "server_internal",
        "server_to_client",
        "errors",
        "server_histogram",
    ] {
        assert!(v.get(field).is_some(), "{field} missing");
    }
    for p in ["p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us"] {
        assert!(v["end_to_end"].get(p).is_some(), "{p} missing");
    }
    assert_eq!(back.sent, report.sent);
    assert!(!report.distribution.is_empty() && report.server_stages.contains_key("inference"));
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("latency.svg");
    quantd_load::plot::percentile_plot(&svg, "test", &[report.clone(), back]).unwrap();
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("99.9%") && svg.contains("<polyline"), "{svg:.300}");
    // A second run against the same server is accepted too (timestamps start at the run's time) ...
    // ... also at the recorded pace of the file, sped up 20×.
    let again = run(Options { pace: Pace::Recorded { speed: 20.0 }, ..options(&server, 0.0, 0.5) }).await.unwrap();
    assert!(again.received > 0 && again.pace.starts_with("Recorded"), "{again:?}");
    assert!(again.errors.is_empty() && again.rejected == 0, "{:?} rejected {}", again.errors, again.rejected);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_shows_up_in_the_open_loop_percentiles() {
    let server = server().await;
    let engine = server.engine().unwrap();
    let stall = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_800)).await;
        engine.set_paused(true);
        tokio::time::sleep(Duration::from_millis(400)).await;
        engine.set_paused(false);
    });
    let report = run(options(&server, 500.0, 3.0)).await.unwrap();
    stall.await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // A 400 ms stall at 500 ticks/s delays ~200 ticks (~13% of 1,500 measured). Measured from
    // their scheduled times, they all carry the stall; a closed-loop client would have sent
    // (and timed) just one of them.
    assert!(report.end_to_end.max_us >= 300_000.0, "max {} µs", report.end_to_end.max_us);
    assert!(report.end_to_end.p90_us >= 50_000.0, "p90 {} µs", report.end_to_end.p90_us);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_probes_see_every_kill_switch_call_bind_the_stream() {
    let server = server().await;
    let probe = quantd_load::ProbePlan { admin: server.admin_addr().to_string(), kill_pairs: 5, scrapes: 5 };
    let report = run(Options { probe: Some(probe), ..options(&server, 1_000.0, 1.5) }).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let p = report.probes.expect("probes ran");
    assert!(p.failures.is_empty(), "{:?}", p.failures);
    assert_eq!((p.kill_call.count, p.first_flat.count, p.kill_unseen), (10, 5, 0), "{p:?}");
    assert_eq!(p.scrape.count, 5, "{p:?}");
    assert!(report.rejected > 0, "signals bound by the kill switch are answered with its reason");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_the_unix_socket_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("quantd.sock");
    let mut config = config();
    config.unix.path = Some(sock.clone());
    let server = start(config).await;
    let opts = Options { target: format!("unix:{}", sock.display()), ..options(&server, 1_000.0, 1.5) };
    let report = run(opts).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.sent, report.received, "every tick answered over the socket");
    assert!(report.end_to_end.count > 1_000, "{}", report.end_to_end.count);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sends_answer_every_tick_and_time_each_from_its_own_due_time() {
    let server = server().await;
    let report = run(Options { batch: 16, ..options(&server, 4_000.0, 1.5) }).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.sent, report.received, "every tick answered, in order");
    assert_eq!(report.batch, 16);
    // 2,000 ticks/s per stream: a batch of 16 fills in 7.5 ms, and its first tick waits all of
    // that. Timed from each tick's own due time, the median tick waits about half of it.
    assert!(report.end_to_end.p50_us >= 2_500.0, "p50 {} µs", report.end_to_end.p50_us);
    assert!(report.end_to_end.p90_us >= 5_000.0, "p90 {} µs", report.end_to_end.p90_us);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_protocols_answer_every_tick_in_release_order() {
    let server = server().await;
    for protocol in [Protocol::Predict, Protocol::Kserve { model: "quantd-mlp".into(), input: "features".into() }] {
        // Concurrent unary Predict calls of one symbol may reach the engine out of order, and a
        // tick older than its symbol's last is refused (stale_timestamp). One recorded symbol
        // gets a call every 2 ms per stream, so a machine busy with the rest of the suite
        // reorders them often; 64 synthetic symbols put 64 ms between one symbol's calls, and
        // a reorder (so a reject) stays rare. The stateless ModelInfer has no such order, and
        // needs the recorded ticks' feature rows.
        let opts = match protocol {
            Protocol::Predict => Options { ticks: Vec::new(), symbols: 64, ..options(&server, 1_000.0, 1.0) },
            _ => options(&server, 1_000.0, 1.0),
        };
        let report = run(Options { protocol: protocol.clone(), ..opts }).await.unwrap();
        assert!(report.errors.is_empty(), "{protocol:?}: {:?}", report.errors);
        assert_eq!(report.sent, report.received, "{protocol:?}: one answer per tick, in order");
        let allowed = if protocol == Protocol::Predict { report.sent / 100 } else { 0 };
        assert!(report.rejected <= allowed, "{protocol:?}: {} rejected", report.rejected);
        assert!(report.end_to_end.count > 800, "{protocol:?}: {}", report.end_to_end.count);
    }
    let metrics = reqwest_free_scrape(&server).await;
    assert!(metrics.contains("quantd_infer_requests_total{outcome=\"answered\"}"), "ModelInfer calls were served");
    // The kserve protocol needs the ticks' feature rows: recorded ticks only.
    let synthetic = Options {
        ticks: Vec::new(),
        symbols: 10,
        protocol: Protocol::Kserve { model: "quantd-mlp".into(), input: "features".into() },
        ..options(&server, 1_000.0, 0.5)
    };
    assert!(run(synthetic).await.unwrap_err().to_string().contains("needs recorded --ticks"));
    // A model the server does not serve: every call fails, and the report says so.
    let unknown = Options {
        protocol: Protocol::Kserve { model: "no-such-model".into(), input: "features".into() },
        ..options(&server, 200.0, 0.5)
    };
    let report = run(unknown).await.unwrap();
    assert!(report.errors.iter().any(|e| e.contains("not served here")), "{:?}", report.errors);
    server.shutdown(Duration::from_secs(2)).await;
}

/// The server's `/metrics` text over a plain TCP exchange.
async fn reqwest_free_scrape(server: &Server) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.metrics_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
