//! `quantd replay` and the risk layer: determinism, replay == live server, every risk limit and
//! kill-switch trigger live and in replay, VaR on a real file, and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use quantd::backtest::CostModel;
use quantd::config::Config;
use quantd::engine::{ActiveModel, Control, SyncEngine};
use quantd::proto::risk_admin_client::RiskAdminClient;
use quantd::proto::{KillSwitchRequest, Tick, TickKind};
use quantd::replay::{ReplayError, ReplayOptions, run};
use quantd::risk::{RiskConfig, VarConfig};
use quantd::telemetry::Telemetry;

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const BTC_TRADES: &str = "binance_usdm_btcusdt_20240808_trades.csv.gz";

fn default_model() -> PathBuf {
    repo().join("models/quantd-mlp/1")
}

/// Limits tight enough that each binds on real BTCUSDT data (1 coin per unit, ~57k USDT).
fn binding_risk() -> RiskConfig {
    RiskConfig {
        max_position: 0.4, // set so that each limit binds on this excerpt with quantd-mlp@1
        max_gross_notional: 20_000.0,
        max_changes: 4,
        change_window_ms: 1_000,
        feature_range_slack: 0.0,
        ..RiskConfig::default()
    }
}

fn config(risk: RiskConfig) -> Config {
    let mut c = test_config();
    c.risk = risk;
    c.stream.ttl_ms = 0; // replay has no queue to wait in; keep the live server's answers comparable
    c.model = Some("quantd-mlp@1".into()); // the live server runs the model these replays run
    c.validate().expect("valid");
    c
}

fn options(ticks: Vec<PathBuf>, out: Option<PathBuf>, config: Config) -> ReplayOptions {
    ReplayOptions {
        ticks,
        models: vec![default_model()],
        out,
        config,
        cost: CostModel { feed_latency_ns: 500_000, order_latency_ns: 1_000_000, ..CostModel::default() },
        batch: 1,
        eval_from: 0.0,
        progress: false,
        latency_from: None,
    }
}

/// With `latency_from`, the realistic-latency backtest charges latencies drawn from a live run's
/// end-to-end distribution: zero-latency figures and the signals are unchanged, the
/// realistic-latency ones move, and a bad report is refused with the reason.
#[test]
fn latency_drawn_from_a_live_run() {
    quantd::model::runtime::init(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = excerpt(dir.path(), 6_000);
    let base = run(&options(vec![file.clone()], None, Config::default())).unwrap();
    // A slow live run: 40 to 80 ms end to end.
    let slow = dir.path().join("slow.json");
    std::fs::write(&slow, r#"{"distribution": [[0.0, 40000.0], [50.0, 50000.0], [100.0, 80000.0]]}"#).unwrap();
    let drawn = run(&ReplayOptions {
        latency_from: Some(slow.clone()),
        ..options(vec![file.clone()], None, Config::default())
    })
    .unwrap();
    let (b, d) = (&base.models[0], &drawn.models[0]);
    assert_eq!(b.signals.len(), d.signals.len());
    assert!(b.signals.iter().zip(&d.signals).all(|(x, y)| x.target_position == y.target_position));
    assert_eq!(format!("{:?}", b.zero_latency), format!("{:?}", d.zero_latency));
    assert_ne!(format!("{:?}", b.with_latency), format!("{:?}", d.with_latency));
    assert_eq!(drawn.latency_from.as_deref(), Some(slow.as_path()));

    std::fs::write(&slow, "{}").unwrap();
    let e =
        run(&ReplayOptions { latency_from: Some(slow), ..options(vec![file], None, Config::default()) }).unwrap_err();
    assert!(e.to_string().contains("distribution"), "{e}");
}

/// The first `n` BTCUSDT quotes and trades, as a canonical tick file (what both sides read).
fn excerpt(dir: &Path, n: usize) -> (PathBuf, Vec<Tick>) {
    let paths = [shared_ticks(BTC_QUOTES), shared_ticks(BTC_TRADES)];
    let ticks: Vec<_> = quantd::tickfile::TickReader::open(&paths).unwrap().take(n).map(Result::unwrap).collect();
    let path = dir.join("excerpt.csv");
    quantd::tickfile::write_canonical(std::fs::File::create(&path).unwrap(), &ticks).unwrap();
    (path, ticks.iter().map(|t| t.to_proto()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_deterministic_and_equals_what_the_live_server_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ticks) = excerpt(dir.path(), 20_000);
    let cfg = config(binding_risk());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let first = run(&options(vec![file.clone()], Some(a.clone()), cfg.clone())).unwrap();
    // A different batch size must not change a single byte.
    run(&ReplayOptions { batch: 64, ..options(vec![file.clone()], Some(b.clone()), cfg.clone()) }).unwrap();
    let (csv_a, csv_b) = (
        std::fs::read(a.join("signals-quantd-mlp_1.csv")).unwrap(),
        std::fs::read(b.join("signals-quantd-mlp_1.csv")).unwrap(),
    );
    if csv_a != csv_b {
        let (la, lb) = (String::from_utf8_lossy(&csv_a), String::from_utf8_lossy(&csv_b));
        let diff = la.lines().zip(lb.lines()).find(|(x, y)| x != y);
        panic!("replay is not byte-identical across batch sizes; first difference: {diff:?}");
    }
    assert!(a.join("summary.json").is_file());
    assert!(std::fs::read(a.join("equity.png")).unwrap().starts_with(b"\x89PNG"), "equity.png is a PNG");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("summary.json")).unwrap()).unwrap();
    for key in
        ["pnl", "sharpe", "sortino", "max_drawdown", "calmar", "turnover", "hit_rate", "avg_holding_s", "ic", "rank_ic"]
    {
        assert!(summary["models"][0]["zero_latency"].get(key).is_some(), "{key} missing from summary.json");
    }
    let m = &first.models[0];
    for limit in ["position_limit", "gross_notional", "change_rate", "kill_features"] {
        assert!(m.risk_bindings.get(limit).is_some_and(|n| *n > 0), "{limit} never bound: {:?}", m.risk_bindings);
    }

    // The same ticks through a live server with the same settings: the same signals.
    let server = start(&cfg).await;
    let mut c = client(&server).await;
    let live = stream_all(&mut c, ticks).await;
    assert_eq!(live.len(), m.signals.len());
    for (l, r) in live.iter().zip(&m.signals) {
        let risk: Vec<&str> = r.risk.codes().collect();
        assert_eq!(
            (l.symbol.as_str(), l.seq, l.score, l.policy_position, l.target_position, l.warming_up),
            (r.symbol.as_str(), r.seq, r.score, r.policy_position, r.target_position, r.warming_up),
            "seq {}",
            r.seq
        );
        assert_eq!(l.risk, risk, "seq {}", r.seq);
        assert_eq!(l.reject_reason.split(':').next().unwrap_or(""), r.reject.map_or("", |x| x.code()));
    }
    // Every binding limit is counted by reason.
    let metrics = wait_for_metric(&server, "quantd_risk_total{reason=\"change_rate\"}", 1.0).await;
    assert!(sample(&metrics, "quantd_risk_total{reason=\"gross_notional\"}").unwrap() > 0.0);
    server.shutdown(Duration::from_secs(2)).await;
}

/// Quotes of one symbol every `gap_ms`, from `start_ms`, with a slowly moving price.
fn quotes(symbol: &str, seq0: u64, start_ms: i64, gap_ms: i64, n: usize) -> Vec<Tick> {
    (0..n)
        .map(|i| {
            let px = 100.0 + ((i % 20) as f64) * 0.05;
            Tick {
                symbol: symbol.into(),
                seq: seq0 + i as u64,
                exchange_ts_ns: (start_ms + i as i64 * gap_ms) * 1_000_000,
                kind: TickKind::Quote as i32,
                bid_px: px,
                bid_qty: 1.0 + (i % 3) as f64,
                ask_px: px + 0.01,
                ask_qty: 1.0,
                ..Default::default()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_triggers_live_stale_data_admin_and_feed_delay() {
    let server = start(&config(RiskConfig { stale_after_ms: 500, ..RiskConfig::default() })).await;
    let mut c = client(&server).await;
    let mut admin = RiskAdminClient::connect(format!("http://{}", server.admin_addr())).await.unwrap();
    // Warm up (policy warm-up is 100 ticks), then a 2 s gap: the tick after it is killed as stale.
    let mut ticks = quotes("KILLME", 0, 1_000, 10, 150);
    ticks.extend(quotes("KILLME", 150, 1_000 + 150 * 10 + 2_000, 10, 5));
    let s = stream_all(&mut c, ticks).await;
    assert!(s[..150].iter().all(|s| s.risk.is_empty()), "{:?}", &s[149]);
    assert_eq!(s[150].risk, ["kill_stale"]);
    assert!(s[150].reject_reason.starts_with("kill_switch: the symbol's data is stale"), "{:?}", s[150]);
    assert_eq!(s[150].target_position, 0.0);
    assert!(s[151].risk.is_empty() && s[151].reject_reason.is_empty(), "fresh again: {:?}", s[151]);

    // Admin: one symbol, then all, then released.
    let kill = |symbol: &str, engaged| KillSwitchRequest { symbol: symbol.into(), engaged, reason: "test".into() };
    admin.set_kill_switch(kill("KILLME", true)).await.unwrap();
    let s = stream_all(&mut c, quotes("KILLME", 155, 5_000, 10, 2)).await;
    assert!(s.iter().all(|s| s.risk == ["kill_admin"] && s.target_position == 0.0), "{s:?}");
    admin.set_kill_switch(kill("KILLME", false)).await.unwrap();
    admin.set_kill_switch(kill("", true)).await.unwrap();
    let s = stream_all(&mut c, quotes("KILLME", 157, 5_100, 10, 1)).await;
    assert_eq!(s[0].risk, ["kill_admin"]);
    let status = admin.get_risk(quantd::proto::GetRiskRequest {}).await.unwrap().into_inner();
    assert!(status.global_kill, "GetRisk reports the engaged switch: {status:?}");
    admin.set_kill_switch(kill("", false)).await.unwrap();
    let s = stream_all(&mut c, quotes("KILLME", 158, 5_200, 10, 1)).await;
    assert!(s[0].risk.is_empty() && s[0].reject_reason.is_empty(), "{s:?}");
    let m = wait_for_metric(&server, "quantd_risk_total{reason=\"kill_admin\"}", 3.0).await;
    assert!(sample(&m, "quantd_risk_total{reason=\"kill_stale\"}").unwrap() >= 1.0);
    assert!(sample(&m, "quantd_rejects_total{reason=\"kill_switch\"}").unwrap() >= 4.0);
    server.shutdown(Duration::from_secs(2)).await;

    // Feed delay (live only): recorded 2024 timestamps lag the server clock by far more than 1 s.
    let server = start(&config(RiskConfig { max_feed_delay_ms: 1_000, ..RiskConfig::default() })).await;
    let mut c = client(&server).await;
    let s = stream_all(&mut c, recorded(&[BTC_QUOTES], 120)).await;
    assert!(s[110..].iter().all(|s| s.risk == ["kill_feed_delay"] && s.target_position == 0.0), "{:?}", s[110]);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_answered_expired_still_count_as_fresh_data() {
    // Staleness is the gap since the symbol's previous accepted tick, scored or not: ticks that
    // waited past the time-to-live update the features, so the tick after them is not stale.
    let mut cfg = config(RiskConfig { stale_after_ms: 500, ..RiskConfig::default() });
    cfg.stream.ttl_ms = 50;
    let server = start(&cfg).await;
    let engine = server.engine().unwrap();
    let mut c = client(&server).await;
    assert!(stream_all(&mut c, quotes("EXP", 0, 1_000, 10, 150)).await.iter().all(|s| s.reject_reason.is_empty()));
    // 1 s of exchange time at 10 ms gaps, held in the queue past the TTL.
    engine.set_paused(true);
    let mut c2 = client(&server).await;
    let held = tokio::spawn(async move { stream_all(&mut c2, quotes("EXP", 150, 2_500, 10, 100)).await });
    wait_for_depth(&engine, 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.set_paused(false);
    let held = held.await.unwrap();
    assert!(held.iter().all(|s| s.reject_reason.starts_with("expired")), "{:?}", held[0]);
    let next = stream_all(&mut c, quotes("EXP", 250, 3_500, 10, 1)).await;
    assert!(next[0].risk.is_empty() && next[0].reject_reason.is_empty(), "{:?}", next[0]);
    server.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn kill_switch_triggers_in_replay_code_admin_and_stale() {
    quantd::model::runtime::init(None).unwrap();
    let m = quantd::model::LoadedModel::load(&default_model(), 64).unwrap();
    let cfg = config(RiskConfig { stale_after_ms: 500, ..RiskConfig::default() });
    let active = ActiveModel::new(m.scorer, &m.manifest.label(), m.manifest.policy);
    let mut engine = SyncEngine::new(&cfg.engine_config(), Box::new(active), Telemetry::new());
    let to_ticks =
        |v: Vec<Tick>| v.into_iter().map(|t| quantd::tick::Tick::from_proto(&t).unwrap()).collect::<Vec<_>>();
    let mut out = Vec::new();
    for chunk in to_ticks(quotes("K", 0, 1_000, 10, 150)).chunks(50) {
        engine.run(chunk, &mut out);
    }
    engine.run(&to_ticks(quotes("K", 150, 4_000, 10, 1)), &mut out);
    assert_eq!(out[150].risk.codes().collect::<Vec<_>>(), ["kill_stale"]);
    engine.control(Control::Kill { symbol: Some(quantd::tick::Symbol::new("K").unwrap()), engaged: true, done: None });
    engine.run(&to_ticks(quotes("K", 151, 4_010, 10, 1)), &mut out);
    assert_eq!(out[151].risk.codes().collect::<Vec<_>>(), ["kill_admin"]);
    assert_eq!(out[151].target_position, 0.0);
}

#[test]
fn replay_reports_var_and_its_backtest_on_a_real_file() {
    quantd::model::runtime::init(None).unwrap();
    // The shared captures span under 6 minutes: a 5 s horizon gives enough non-overlapping
    // windows to back-test.
    let var = VarConfig {
        limit: 10.0,
        paths: 1_000,
        horizon_ms: 5_000,
        sample_ms: 500,
        interval_ms: 1_000,
        min_history: 60,
        ..VarConfig::default()
    };
    let risk = RiskConfig { var, ..RiskConfig::default() };
    let report = run(&options(vec![shared_ticks(BTC_QUOTES), shared_ticks(BTC_TRADES)], None, config(risk))).unwrap();
    let m = &report.models[0];
    let v = m.var.iter().find(|v| v.symbol == "BTCUSDT").expect("BTCUSDT sized");
    assert!(v.var_per_unit > 10.0 && v.scale < 1.0, "1 BTC carries more than 10 USDT of 5 s VaR: {v:?}");
    assert!(v.checks > 30, "{v:?}");
    assert!(v.kupiec_p.is_finite());
    assert!(m.risk_bindings.get("var_scale").is_some_and(|n| *n > 0), "{:?}", m.risk_bindings);
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_written() {
    quantd::model::runtime::init(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Unsorted file: the error names the file and line.
    let unsorted = dir.path().join("unsorted.csv");
    let q = |seq: u64, ts: i64| format!("{seq},{ts},BTCUSDT,quote,100,1,100.5,1,0,0,\n");
    let header = quantd::tickfile::CANONICAL_HEADER;
    std::fs::write(&unsorted, format!("{header}\n{}{}", q(1, 2_000), q(2, 1_000))).unwrap();
    let e = run(&options(vec![unsorted], Some(out.clone()), config(RiskConfig::default()))).unwrap_err();
    assert!(e.to_string().contains("unsorted.csv:3"), "{e}");
    // A model that fails verification.
    let bad_model = dir.path().join("m/quantd-mlp/1");
    std::fs::create_dir_all(&bad_model).unwrap();
    std::fs::copy(default_model().join("manifest.toml"), bad_model.join("manifest.toml")).unwrap();
    std::fs::write(bad_model.join("model.onnx"), b"not a model").unwrap();
    let e = run(&ReplayOptions {
        models: vec![bad_model],
        ..options(vec![shared_ticks(BTC_QUOTES)], Some(out.clone()), config(RiskConfig::default()))
    })
    .unwrap_err();
    assert!(matches!(e, ReplayError::Model(_)) && e.to_string().contains("sha256"), "{e}");
    // Contradictory risk settings: every problem listed.
    let risk = RiskConfig { max_position: 2.0, max_changes: 3, change_window_ms: 0, ..RiskConfig::default() };
    let mut cfg = test_config();
    cfg.risk = risk;
    let e = run(&options(vec![shared_ticks(BTC_QUOTES)], Some(out.clone()), cfg)).unwrap_err().to_string();
    assert!(e.contains("max_position") && e.contains("change_window_ms"), "{e}");
    assert!(!out.exists(), "no output directory after a refusal");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial"))
    );
    // An existing output directory is never overwritten.
    std::fs::create_dir(&out).unwrap();
    let e =
        run(&options(vec![shared_ticks(BTC_QUOTES)], Some(out.clone()), config(RiskConfig::default()))).unwrap_err();
    assert!(matches!(e, ReplayError::OutExists(_)), "{e}");
}
