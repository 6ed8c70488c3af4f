//! Model registry and hot swap against a real server: versions copied into a live models
//! directory, admin calls over gRPC, shadow mode, rollback (by admin and automatic), and every
//! kind of bad model refused while the running model keeps answering.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use quantd::config::Config;
use quantd::proto::model_admin_client::ModelAdminClient;
use quantd::proto::{self, Signal, Tick};
use quantd::registry::State;
use quantd::server::Server;
use tokio::sync::mpsc;

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const BTC_TRADES: &str = "binance_usdm_btcusdt_20240808_trades.csv.gz";
const NAME: &str = "quantd-mlp";

fn default_model() -> PathBuf {
    repo().join("models").join(NAME).join("1")
}

/// A models directory holding a copy of the default model as version 1.
fn models_with_v1() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    add_version(d.path(), "1", |m| m, None);
    d
}

/// Adds `<models>/quantd-mlp/<version>` the way a deployment should: staged in a hidden
/// directory (model file first, manifest last) and renamed into place. `edit` rewrites the
/// manifest text (its version is set first); `model` replaces the model bytes.
fn add_version(models: &Path, version: &str, edit: impl FnOnce(String) -> String, model: Option<Vec<u8>>) {
    let stage = models.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&stage).unwrap();
    let bytes = model.unwrap_or_else(|| std::fs::read(default_model().join("model.onnx")).unwrap());
    std::fs::write(stage.join("model.onnx"), bytes).unwrap();
    std::fs::copy(default_model().join("verify.npy"), stage.join("verify.npy")).unwrap();
    let manifest = std::fs::read_to_string(default_model().join("manifest.toml")).unwrap();
    let manifest = edit(manifest.replacen("version = \"1\"", &format!("version = \"{version}\""), 1));
    std::fs::write(stage.join("manifest.toml"), manifest).unwrap();
    std::fs::create_dir_all(models.join(NAME)).unwrap();
    std::fs::rename(&stage, models.join(NAME).join(version)).unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn replace_line(manifest: &str, key: &str, value: &str) -> String {
    manifest
        .lines()
        .map(|l| if l.starts_with(&format!("{key} = ")) { format!("{key} = {value}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Golden rows that do not reproduce: the first expected output moved far away.
fn break_first_golden(manifest: String) -> String {
    let i = manifest.find("\noutput = [").expect("a golden row") + 1;
    let end = i + manifest[i..].find('\n').unwrap();
    format!("{}output = [1000.0]{}", &manifest[..i], &manifest[end..])
}

fn config(models: &Path) -> Config {
    let mut c = test_config();
    c.models_dir = models.to_owned();
    c.registry.rescan_ms = 100;
    c.registry.shadow_promote_after_ticks = 0;
    c
}

async fn active(server: &Server) -> String {
    let v = server.registry().active("").await.unwrap();
    let a = v.active.unwrap();
    format!("{}@{}", a.name, a.version)
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A stream fed through a channel, so the test can send while swaps happen.
struct LiveStream {
    tx: mpsc::Sender<Tick>,
    collector: tokio::task::JoinHandle<Vec<Signal>>,
}

async fn live_stream(server: &Server) -> LiveStream {
    let mut c = client(server).await;
    let (tx, rx) = mpsc::channel::<Tick>(4096);
    let collector = tokio::spawn(async move {
        let mut replies = c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(s) = replies.message().await.unwrap() {
            out.push(s);
        }
        out
    });
    LiveStream { tx, collector }
}

fn check_one_per_tick(ticks: &[Tick], signals: &[Signal]) {
    assert_eq!(signals.len(), ticks.len(), "every tick gets exactly one signal");
    for (t, s) in ticks.iter().zip(signals) {
        assert_eq!(t.seq, s.seq, "in order");
        assert!(s.reject_reason.is_empty(), "seq {}: {}", s.seq, s.reject_reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_copied_in_goes_live_between_ticks_with_none_lost() {
    let models = models_with_v1();
    let server = start(&config(models.path())).await;
    let ticks = recorded(&[BTC_QUOTES, BTC_TRADES], 20_000);
    let live = live_stream(&server).await;
    for (i, t) in ticks.iter().enumerate() {
        live.tx.send(t.clone()).await.unwrap();
        if i == 8_000 {
            add_version(models.path(), "2", |m| m, None);
            wait_until("version 2 active", async || active(&server).await == "quantd-mlp@2").await;
        }
    }
    drop(live.tx);
    let signals = live.collector.await.unwrap();
    check_one_per_tick(&ticks, &signals);
    let first_v2 = signals.iter().position(|s| s.model == "quantd-mlp@2").expect("v2 served");
    assert!(first_v2 > 0, "v1 served first");
    assert!(signals[..first_v2].iter().all(|s| s.model == "quantd-mlp@1"));
    assert!(signals[first_v2..].iter().all(|s| s.model == "quantd-mlp@2"), "the switch happens once, between ticks");
    let list = server.registry().list().await.unwrap();
    let state = |v: &str| list.iter().find(|m| m.version == v).unwrap().state;
    assert_eq!((state("1"), state("2")), (State::Previous, State::Active));
    let m = wait_for_metric(&server, "quantd_model_swaps_total", 1.0).await;
    assert!(
        m.contains("quantd_model_info{name=\"quantd-mlp\",version=\"2\",state=\"active\",provider=\"cpu\"} 1"),
        "{m}"
    );
    assert!(m.contains("quantd_model_load_seconds{phase=\"warm\"}"));
    server.shutdown(Duration::from_secs(2)).await;
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

fn median_server_ns(signals: &[Signal]) -> u64 {
    let mut v: Vec<u64> = signals.iter().map(|s| s.server_send_ns - s.server_recv_ns).collect();
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_load_lose_nothing_and_leak_nothing() {
    let models = models_with_v1();
    add_version(models.path(), "2", |m| m, None);
    let mut cfg = config(models.path());
    cfg.model = Some(format!("{NAME}@1")); // pinned: swaps only by admin call
    let server = start(&cfg).await;
    let ticks = recorded(&[BTC_QUOTES, BTC_TRADES], 40_000);
    let live = live_stream(&server).await;
    let registry = server.registry().clone();
    let mut rss_after_warm = 0;
    let mut swaps = 0;
    let paced = |i: usize| !(1_000..39_000).contains(&i);
    for (i, t) in ticks.iter().enumerate() {
        if i == 39_000 {
            tokio::time::sleep(Duration::from_millis(500)).await; // let any backlog drain
        }
        if paced(i) && i % 5 == 0 {
            // ~5k ticks/s: the first and last thousand measure the path, not a queue
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        live.tx.send(t.clone()).await.unwrap();
        if i == 2_000 {
            // the first load of v2 (and ORT's arenas) belong to warm-up
            registry.activate(NAME, "2").await.unwrap();
            registry.activate(NAME, "1").await.unwrap();
            rss_after_warm = rss_bytes();
        }
        if i > 2_000 && i < 38_000 && i % 360 == 0 && swaps < 100 {
            let v = if swaps % 2 == 0 { "2" } else { "1" };
            registry.activate(NAME, v).await.unwrap();
            swaps += 1;
        }
    }
    drop(live.tx);
    let signals = live.collector.await.unwrap();
    assert_eq!(swaps, 100);
    check_one_per_tick(&ticks, &signals);
    let served: std::collections::BTreeSet<_> = signals.iter().map(|s| s.model.as_str()).collect();
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["quantd-mlp@1", "quantd-mlp@2"]);
    let growth = rss_bytes().saturating_sub(rss_after_warm);
    assert!(growth < 64 << 20, "RSS grew by {} MiB over 100 swaps", growth >> 20);
    // A generous bound: it catches a hot path that degrades with reloads, not scheduling noise.
    let (first, last) = (median_server_ns(&signals[..1_000]), median_server_ns(&signals[39_000..]));
    eprintln!(
        "100 swaps: RSS growth {} KiB; median server latency first/last thousand: {first}/{last} ns",
        growth >> 10
    );
    assert!(last <= 3 * first + 100_000, "median tick latency {first} ns in the first thousand, {last} ns in the last");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_versions_are_refused_with_reasons_while_the_running_model_answers() {
    let models = models_with_v1();
    let server = start(&config(models.path())).await;
    let model = std::fs::read(default_model().join("model.onnx")).unwrap();
    let mut flipped = model.clone();
    flipped[model.len() / 2] ^= 0xFF;
    let truncated = model[..model.len() / 3].to_vec();
    let truncated_sha = sha256(&truncated);
    type Edit = Box<dyn FnOnce(String) -> String>;
    let cases: Vec<(&str, Edit, Option<Vec<u8>>, &str)> = vec![
        ("2", Box::new(|m| m), Some(flipped), "sha256 of model.onnx is"),
        ("3", Box::new(|_| "this is [not toml".into()), None, "invalid manifest"),
        (
            "4",
            Box::new(|m| replace_line(&m, "schema_hash", &format!("\"{}\"", "0".repeat(64)))),
            None,
            "feature schema hash",
        ),
        ("5", Box::new(|m| replace_line(&m, "input", "\"x\"")), None, "model has no input named \"x\""),
        ("6", Box::new(break_first_golden), None, "golden row 0"),
        (
            "7",
            Box::new(move |m| replace_line(&m, "sha256", &format!("\"{truncated_sha}\""))),
            Some(truncated),
            "cannot load",
        ),
        (
            "8",
            Box::new(|m| m.replacen("version = \"8\"", "version = \"80\"", 1)),
            None,
            "but the directory is quantd-mlp/8",
        ),
    ];
    let probe = recorded(&[BTC_QUOTES], 200);
    let mut c = client(&server).await;
    for (version, edit, bytes, needle) in cases {
        add_version(models.path(), version, edit, bytes);
        let registry = server.registry().clone();
        let v = version.to_owned();
        wait_until(&format!("version {version} refused"), async || {
            registry.list().await.unwrap().iter().any(|m| m.version == v && m.state == State::Failed)
        })
        .await;
        let list = server.registry().list().await.unwrap();
        let failed = list.iter().find(|m| m.version == version).unwrap();
        assert!(failed.error.contains(needle), "version {version}: {:?} lacks {needle:?}", failed.error);
        assert_eq!(active(&server).await, "quantd-mlp@1");
        let s = c.predict(probe[version.parse::<usize>().unwrap()].clone()).await.unwrap().into_inner();
        assert!(s.reject_reason.is_empty() && s.model == "quantd-mlp@1", "the running model keeps answering");
    }
    let m = wait_for_metric(&server, "quantd_model_failures_total{model=\"quantd-mlp\",reason=\"sha256\"}", 1.0).await;
    for reason in ["manifest", "schema", "io_mismatch", "golden", "runtime"] {
        assert!(
            sample(&m, &format!("quantd_model_failures_total{{model=\"quantd-mlp\",reason=\"{reason}\"}}")).is_some(),
            "{reason}:\n{m}"
        );
    }
    // Two versions at once: the higher goes live, the lower stays discovered.
    add_version(models.path(), "20", |m| m, None);
    add_version(models.path(), "19", |m| m, None);
    wait_until("version 20 active", async || active(&server).await == "quantd-mlp@20").await;
    let list = server.registry().list().await.unwrap();
    assert_eq!(list.iter().find(|m| m.version == "19").unwrap().state, State::Discovered);
    server.shutdown(Duration::from_secs(2)).await;
}

/// Writes a fixture model from `tests/fixtures` as a version whose manifest passes every load
/// check: golden rows are the default model's feature rows with `expect` as their output.
fn add_fixture_model(models: &Path, version: &str, file: &str, expect: fn(&[f32]) -> f32) {
    let bytes = std::fs::read(repo().join("tests/fixtures").join(file)).unwrap();
    let sha = sha256(&bytes);
    let golden = quantd::model::Manifest::read(&default_model().join("manifest.toml")).unwrap().golden;
    add_version(
        models,
        version,
        move |m| {
            let mut m = replace_line(&m, "sha256", &format!("\"{sha}\""));
            m.truncate(m.find("[[golden]]").unwrap());
            for g in golden {
                let want = expect(&g.features);
                m.push_str(&format!("[[golden]]\nfeatures = {:?}\noutput = [{want:?}]\n\n", g.features));
            }
            m
        },
        Some(bytes),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_emits_nan_live_is_rolled_back_automatically() {
    let models = models_with_v1();
    let mut cfg = config(models.path());
    cfg.registry.probation_ms = 60_000;
    let server = start(&cfg).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 400);
    assert!(stream_all(&mut c, ticks[..200].to_vec()).await.iter().all(|s| s.model == "quantd-mlp@1"));
    add_fixture_model(models.path(), "2", "nan_on_wide_spread.onnx", |f| (50.0f32 - f[6]).sqrt());
    wait_until("the NaN model active", async || active(&server).await == "quantd-mlp@2").await;
    let mut wide = ticks[200].clone();
    // ~100 bps around the symbol's price (a price far from it would be refused `price_jump`):
    // sqrt(50 - 100) is NaN.
    let mid = 0.5 * (wide.bid_px + wide.ask_px);
    (wide.bid_px, wide.ask_px) = (mid * 0.995, mid * 1.005);
    let s = c.predict(wide).await.unwrap().into_inner();
    assert!(s.reject_reason.starts_with("model_error: "), "a NaN score is never sent as a position: {s:?}");
    assert_eq!(
        (s.risk.as_slice(), s.target_position),
        (&["kill_model".to_owned()][..], 0.0),
        "the risk layer flattens"
    );
    wait_until("automatic rollback", async || active(&server).await == "quantd-mlp@1").await;
    let after = stream_all(&mut c, ticks[201..].to_vec()).await;
    assert!(after.iter().all(|s| s.model == "quantd-mlp@1" && s.reject_reason.is_empty()));
    let list = server.registry().list().await.unwrap();
    let v2 = list.iter().find(|m| m.version == "2").unwrap();
    assert_eq!(v2.state, State::RolledBack);
    assert!(v2.error.contains("automatic rollback"), "{}", v2.error);
    wait_for_metric(&server, "quantd_model_rollbacks_total", 1.0).await;
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reports_agreement_then_admin_promotes_and_rolls_back() {
    let models = models_with_v1();
    let mut cfg = config(models.path());
    cfg.model = Some(NAME.into());
    cfg.registry.shadow_new_versions = true; // new versions go to shadow, not live
    let server = start(&cfg).await;
    let mut admin = ModelAdminClient::connect(format!("http://{}", server.admin_addr())).await.unwrap();
    let mut c = client(&server).await;
    add_version(models.path(), "2", |m| m, None);
    let registry = server.registry().clone();
    wait_until("v2 in shadow", async || registry.active("").await.unwrap().shadow.is_some()).await;
    let ticks = recorded(&[BTC_QUOTES, BTC_TRADES], 3_000);
    let signals = stream_all(&mut c, ticks[..1_500].to_vec()).await;
    assert!(signals.iter().all(|s| s.model == "quantd-mlp@1"), "a shadow never emits signals");
    let view = admin.get_active(proto::GetActiveRequest::default()).await.unwrap().into_inner();
    assert_eq!(view.shadow.as_ref().unwrap().version, "2");
    let stats = view.shadow_stats.unwrap();
    assert_eq!(stats.compared, 1_500, "the shadow scored every tick");
    assert_eq!(stats.agreement, 1.0, "identical models agree everywhere");

    let promoted = admin.activate_model(proto::ModelRef { name: NAME.into(), version: "2".into() }).await.unwrap();
    assert_eq!(promoted.into_inner().state, "active");
    let mid = stream_all(&mut c, ticks[1_500..2_000].to_vec()).await;
    assert!(mid.iter().all(|s| s.model == "quantd-mlp@2"));
    let back = admin.rollback(proto::RollbackRequest::default()).await.unwrap().into_inner();
    assert_eq!((back.version.as_str(), back.state.as_str()), ("1", "active"));
    let after = stream_all(&mut c, ticks[2_000..].to_vec()).await;
    assert!(after.iter().all(|s| s.model == "quantd-mlp@1"));

    let err = admin.rollback(proto::RollbackRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let err = admin.activate_model(proto::ModelRef { name: NAME.into(), version: "9".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let listed = admin.list_models(proto::ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(listed.len(), 2);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_agrees_is_promoted_automatically() {
    let models = models_with_v1();
    let mut cfg = config(models.path());
    cfg.registry.shadow_new_versions = true;
    cfg.registry.shadow_promote_after_ticks = 500;
    cfg.registry.shadow_min_agreement = 0.99;
    let server = start(&cfg).await;
    add_version(models.path(), "2", |m| m, None);
    let registry = server.registry().clone();
    wait_until("v2 in shadow", async || registry.active("").await.unwrap().shadow.is_some()).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 2_000);
    let signals = stream_all(&mut c, ticks.clone()).await;
    check_one_per_tick(&ticks, &signals);
    wait_until("automatic promotion", async || active(&server).await == "quantd-mlp@2").await;
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_runtime_error_fails_one_batch_and_the_engine_goes_on() {
    // The fixture is the only model: there is nothing to roll back to, so it keeps serving.
    let models = tempfile::tempdir().unwrap();
    add_fixture_model(models.path(), "1", "error_on_wide_spread.onnx", |_| 0.25);
    let server = start(&config(models.path())).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 300);
    let before = stream_all(&mut c, ticks[..150].to_vec()).await;
    assert!(before.iter().all(|s| s.reject_reason.is_empty() && s.score == 0.25));
    let mut wide = ticks[150].clone();
    // ~100 bps around the symbol's price: the Gather index is out of bounds, ONNX Runtime errors.
    let mid = 0.5 * (wide.bid_px + wide.ask_px);
    (wide.bid_px, wide.ask_px) = (mid * 0.995, mid * 1.005);
    let failed = c.predict(wide).await.unwrap().into_inner();
    assert!(failed.reject_reason.starts_with("model_error: "), "{failed:?}");
    let after = stream_all(&mut c, ticks[151..].to_vec()).await;
    assert_eq!(after.len(), 149);
    assert!(after.iter().all(|s| s.reject_reason.is_empty() && s.score == 0.25), "the next batches are fine");
    server.shutdown(Duration::from_secs(2)).await;
}
