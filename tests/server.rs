//! The spine end to end: a real server on port 0, the real INT8 default model, real recorded
//! Binance ticks streamed over gRPC.

mod common;

use std::time::Duration;

use common::*;
use quantd::proto::{Tick, TickKind};

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const BTC_TRADES: &str = "binance_usdm_btcusdt_20240808_trades.csv.gz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_recorded_ticks_and_exports_latency() {
    let server = start(&test_config()).await;
    assert_eq!(server.model(), DEFAULT_MODEL);
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES, BTC_TRADES], 20_000);
    assert!(
        ticks.iter().any(|t| t.kind == TickKind::Trade as i32)
            && ticks.iter().any(|t| t.kind == TickKind::Quote as i32)
    );
    let signals = stream_all(&mut c, ticks.clone()).await;
    check_signals(&ticks, &signals, DEFAULT_MODEL);
    // The manifest's warm-up is 100 ticks: exactly the first 99 signals of the symbol are warming up.
    assert_eq!(signals.iter().filter(|s| s.warming_up).count(), 99);
    assert!(signals.iter().any(|s| s.target_position != 0.0), "the policy takes positions on real data");

    let m = wait_for_metric(&server, "quantd_tick_to_signal_seconds_count", 20_000.0).await;
    assert!(m.contains("quantd_tick_to_signal_seconds_bucket{le=\"0.000001\"}"), "no 1 µs bucket:\n{m}");
    let info = "quantd_model_info{name=\"quantd-mlp\",version=\"2\",state=\"active\",provider=\"cpu\"}";
    assert_eq!(sample(&m, info), Some(1.0), "{info}:\n{m}");
    for needle in [
        "quantd_stage_seconds_count{stage=\"queue_wait\"}",
        "quantd_stage_seconds_count{stage=\"features\"}",
        "quantd_stage_seconds_count{stage=\"inference\"}",
        "quantd_stage_seconds_count{stage=\"policy\"}",
        "quantd_stage_seconds_count{stage=\"egress\"}",
        "quantd_stage_seconds_count{stage=\"total\"}",
        "quantd_inference_batch_size_count",
        "quantd_engine_queue_depth",
    ] {
        let v = sample(&m, needle);
        assert!(v.is_some(), "{needle} missing:\n{m}");
        if needle.contains("_count") {
            assert!(v.unwrap() > 0.0, "{needle} is zero");
        }
    }
    // Histograms and counters are published one after the other, and a scrape can fall between
    // them: wait for the counters themselves before checking their exact values.
    wait_for_metric(&server, "quantd_ticks_total{outcome=\"scored\"}", 20_000.0 - 99.0).await;
    let m = wait_for_metric(&server, "quantd_ticks_total{outcome=\"warming_up\"}", 99.0).await;
    assert_eq!(sample(&m, "quantd_ticks_total{outcome=\"scored\"}"), Some(20_000.0 - 99.0));
    assert_eq!(sample(&m, "quantd_ticks_total{outcome=\"warming_up\"}"), Some(99.0));
    // The backend `auto` picked, and on the native kernel its saturation per stage beside the
    // baseline the manifest records from the validation period.
    let m = wait_for_metric(&server, "quantd_model_backend_info{model=\"quantd-mlp@2\"", 1.0).await;
    let info = m.lines().find(|l| l.starts_with("quantd_model_backend_info{model=\"quantd-mlp@2\"")).unwrap();
    if info.contains("backend=\"native\"") {
        for stage in ["input", "layer0", "layer1", "layer2"] {
            let labels = format!("{{model=\"quantd-mlp@2\",layer=\"{stage}\"}}");
            let m = wait_for_metric(&server, &format!("quantd_quant_saturation_ratio{labels}"), 0.0).await;
            let ratio = sample(&m, &format!("quantd_quant_saturation_ratio{labels}")).unwrap();
            let baseline = sample(&m, &format!("quantd_quant_saturation_baseline{labels}"));
            assert!(
                (0.0..=1.0).contains(&ratio) && baseline.is_some_and(|b| (0.0..=1.0).contains(&b)),
                "{stage}:\n{m}"
            );
        }
    } else {
        assert!(info.contains("backend=\"ort\""), "{info}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_and_health_and_reflection() {
    let server = start(&test_config()).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 150);
    let mut last = None;
    for t in &ticks {
        last = Some(c.predict(t.clone()).await.unwrap().into_inner());
    }
    let last = last.unwrap();
    assert!(!last.warming_up && last.reject_reason.is_empty() && last.score.is_finite());
    assert_eq!(last.seq, ticks.last().unwrap().seq);

    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.addr())).unwrap().connect().await.unwrap();
    assert_tick_service_serving_and_reflected(channel).await;
    server.shutdown(Duration::from_secs(1)).await;
}

fn quote(symbol: &str, seq: u64, ts: i64, bid: f64, ask: f64) -> Tick {
    Tick {
        symbol: symbol.into(),
        seq,
        exchange_ts_ns: ts,
        kind: TickKind::Quote as i32,
        bid_px: bid,
        bid_qty: 1.0,
        ask_px: ask,
        ask_qty: 2.0,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_rejected_with_a_reason_and_the_stream_stays_up() {
    let mut config = test_config();
    config.engine.max_symbols = 2;
    let server = start(&config).await;
    let mut c = client(&server).await;
    let long = "S".repeat(33);
    let mut trade_nan = quote("A", 0, 0, 1.0, 1.0);
    trade_nan.kind = TickKind::Trade as i32;
    trade_nan.trade_px = f64::NAN;
    trade_nan.trade_qty = 1.0;
    let mut neg_qty = quote("A", 0, 0, 100.0, 100.1);
    neg_qty.ask_qty = -1.0;
    let mut bad_enum = quote("A", 0, 0, 100.0, 100.1);
    bad_enum.kind = 9;
    let cases: Vec<(Tick, &str)> = vec![
        (quote("A", 0, 1_000, 100.0, 100.1), ""),
        (quote("A", 0, 2_000, f64::NAN, 100.1), "non_finite"),
        (quote("A", 0, 2_000, 100.0, f64::INFINITY), "non_finite"),
        (trade_nan, "non_finite"),
        (quote("A", 0, 2_000, 0.0, 100.1), "non_positive"),
        (neg_qty, "non_positive"),
        (quote("A", 0, 2_000, 100.2, 100.1), "crossed_book"),
        (quote("", 0, 2_000, 100.0, 100.1), "empty_symbol"),
        (quote(&long, 0, 2_000, 100.0, 100.1), "symbol_too_long"),
        (bad_enum, "invalid_enum"),
        (quote("A", 0, 999, 100.0, 100.1), "stale_timestamp"),
        (quote("B", 0, 5, 10.0, 10.1), ""),
        (quote("C", 0, 5, 10.0, 10.1), "too_many_symbols"),
        (quote("A", 0, 3_000, 100.0, 100.1), ""),
    ];
    let ticks: Vec<Tick> =
        cases.iter().enumerate().map(|(i, (t, _))| Tick { seq: i as u64 + 1, ..t.clone() }).collect();
    let signals = stream_all(&mut c, ticks.clone()).await;
    assert_eq!(signals.len(), cases.len());
    for ((s, (t, want)), sent) in signals.iter().zip(&cases).zip(&ticks) {
        assert_eq!(s.seq, sent.seq);
        assert_eq!(s.symbol, t.symbol, "the symbol is echoed as sent");
        if want.is_empty() {
            assert!(s.reject_reason.is_empty(), "seq {}: {}", s.seq, s.reject_reason);
        } else {
            assert!(
                s.reject_reason.starts_with(&format!("{want}: ")),
                "seq {}: want {want}, got {:?}",
                s.seq,
                s.reject_reason
            );
            assert_eq!(s.target_position, 0.0);
        }
    }
    // The same stream keeps serving after a run of bad input.
    let more = stream_all(&mut c, vec![quote("A", 99, 4_000, 100.0, 100.1)]).await;
    assert!(more[0].reject_reason.is_empty());

    let m = wait_for_metric(&server, "quantd_rejects_total{reason=\"too_many_symbols\"}", 1.0).await;
    for (reason, n) in [
        ("non_finite", 3.0),
        ("non_positive", 2.0),
        ("crossed_book", 1.0),
        ("empty_symbol", 1.0),
        ("symbol_too_long", 1.0),
        ("invalid_enum", 1.0),
        ("stale_timestamp", 1.0),
    ] {
        assert_eq!(sample(&m, &format!("quantd_rejects_total{{reason=\"{reason}\"}}")), Some(n), "{reason}");
    }
    assert_eq!(sample(&m, "quantd_ticks_total{outcome=\"rejected\"}"), Some(11.0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_queue_is_an_explicit_counted_outcome() {
    let mut config = test_config();
    config.engine.queue_capacity = 4;
    config.stream.window = 4;
    let server = start(&config).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    let ticks = |sym: &str| (1..=4).map(|i| quote(sym, i, i as i64, 10.0, 10.1)).collect::<Vec<_>>();
    // Stream A fills the paused engine's queue; then stream B's ticks find it full.
    let fut_a = tokio::spawn(async move { stream_all(&mut a, ticks("A")).await });
    wait_for_depth(&engine, 4).await;
    assert_eq!(engine.depth(), 4);
    let got_b = stream_all(&mut b, ticks("B")).await;
    assert!(got_b.iter().all(|s| s.reject_reason.starts_with("queue_full: ")), "{got_b:?}");
    engine.set_paused(false);
    let got_a = fut_a.await.unwrap();
    assert!(got_a.iter().all(|s| s.reject_reason.is_empty()));
    let m = wait_for_metric(&server, "quantd_rejects_total{reason=\"queue_full\"}", 4.0).await;
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"queue_full\"}"), Some(4.0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_tick_already_read() {
    let server = start(&test_config()).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 500);
    let n = ticks.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Tick>(n);
    for t in ticks {
        tx.send(t).await.unwrap();
    }
    let mut replies = c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    wait_for_depth(&engine, 1).await;
    drop(tx); // the client half-closes; the server still owes every signal
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    let mut got = 0;
    let end = loop {
        match replies.message().await {
            Ok(Some(s)) => {
                assert!(
                    s.reject_reason.is_empty() || s.reject_reason.starts_with("shutting_down"),
                    "{}",
                    s.reject_reason
                );
                got += 1;
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(got, n, "every tick read before shutdown is answered");
    // Then a status, not a reset: OK if the server saw the half-close first, else UNAVAILABLE
    // naming the last tick answered.
    if let Some(status) = end {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert_eq!(status.metadata().get("x-quantd-last-seq").unwrap().to_str().unwrap(), n.to_string());
    }
    shutdown.await.unwrap();
}

#[test]
fn the_example_config_parses_and_validates() {
    // `models_dir = "models"` is relative: cargo runs tests in the repository root.
    let c = quantd::config::Config::load(Some(&repo().join("deploy/quantd.toml")), Default::default());
    assert!(c.is_ok(), "{:?}", c.err());
}

/// A replica owning one shard of two: ticks of a symbol hashed to the other shard are answered
/// `wrong_shard` (streamed and unary) and counted; its own symbols are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_replica_refuses_symbols_of_other_shards() {
    let btc = recorded(&[BTC_QUOTES], 200);
    let owner = quantd::shard::shard_of(&btc[0].symbol, 2);
    let mut config = test_config();
    config.shard = quantd::shard::ShardConfig { index: 1 - owner, count: 2 };
    let server = start(&config).await;
    let mut c = client(&server).await;
    let signals = stream_all(&mut c, btc.clone()).await;
    assert_eq!(signals.len(), btc.len());
    assert!(signals.iter().all(|s| s.reject_reason.starts_with("wrong_shard")), "{:?}", signals[0].reject_reason);
    let unary = c.predict(btc[0].clone()).await.unwrap().into_inner();
    assert!(unary.reject_reason.starts_with("wrong_shard"), "{}", unary.reject_reason);
    wait_for_metric(&server, "quantd_rejects_total{reason=\"wrong_shard\"}", (btc.len() + 1) as f64).await;
    server.shutdown(Duration::from_secs(1)).await;

    config.shard.index = owner;
    let server = start(&config).await;
    let mut c = client(&server).await;
    check_signals(&btc, &stream_all(&mut c, btc.clone()).await, DEFAULT_MODEL);
    server.shutdown(Duration::from_secs(1)).await;
}

/// `execution_provider = "cuda"` where it cannot run (this build or this ONNX Runtime has no
/// CUDA): refused at start-up by default, served on the CPU with `provider_fallback = "cpu"`,
/// and `quantd_model_info` says which provider runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_gpu_provider_fails_fast_or_falls_back_to_cpu() {
    use quantd::model::{ExecutionProvider, ProviderFallback};
    let mut config = test_config();
    config.execution_provider = ExecutionProvider::Cuda;
    let refused = match config.validate() {
        Err(e) => e.to_string(), // built without the cuda feature
        Ok(()) => quantd::server::Server::start(&config.server_config().unwrap())
            .await
            .err()
            .expect("no CUDA here: refused")
            .to_string(),
    };
    assert!(refused.contains("cuda"), "{refused}");

    config.provider_fallback = ProviderFallback::Cpu;
    config.validate().unwrap();
    let server = start(&config).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 150);
    check_signals(&ticks, &stream_all(&mut c, ticks.clone()).await, DEFAULT_MODEL);
    let m = wait_for_metric(&server, "quantd_model_info{", 1.0).await;
    assert!(m.contains("state=\"active\",provider=\"cpu\"} 1"), "{m}");
    server.shutdown(Duration::from_secs(1)).await;
}
