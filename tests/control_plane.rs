//! The control plane off the data path: the admin services on their own listener (served by the
//! `quantd-admin` thread), health on both ports with one state, and readiness that turns
//! NOT_SERVING when a drain starts or the engine is stuck.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quantd::proto::model_admin_client::ModelAdminClient;
use quantd::proto::risk_admin_client::RiskAdminClient;
use quantd::proto::{GetRiskRequest, KillSwitchRequest, ListModelsRequest, Tick};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn status(ch: &Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: service.into() }).await.unwrap();
    r.into_inner().status()
}

/// Polls `ch`'s health of the tick service until it is `want` (up to 5 s); how long that took.
async fn wait_for_status(ch: &Channel, want: ServingStatus) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if status(ch, "quantd.v1.SignalService").await == want {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("health never became {want:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_services_are_on_the_admin_listener_and_health_on_both() {
    let server = start(&test_config()).await;
    assert_ne!(server.admin_addr(), server.addr());
    let (data, admin) = (channel(server.addr()).await, admin_channel(&server).await);
    for ch in [&data, &admin] {
        assert_eq!(status(ch, "quantd.v1.SignalService").await, ServingStatus::Serving);
        assert_eq!(status(ch, "").await, ServingStatus::Serving);
    }
    ModelAdminClient::new(admin.clone()).list_models(ListModelsRequest {}).await.unwrap();
    RiskAdminClient::new(admin).get_risk(GetRiskRequest {}).await.unwrap();
    // Not on the service port unless the config says so.
    let err = ModelAdminClient::new(data.clone()).list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    let err = RiskAdminClient::new(data).set_kill_switch(KillSwitchRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    server.shutdown(Duration::from_secs(1)).await;

    let mut config = test_config();
    config.admin.on_service_port = true;
    let server = start(&config).await;
    let data = channel(server.addr()).await;
    ModelAdminClient::new(data.clone()).list_models(ListModelsRequest {}).await.unwrap();
    RiskAdminClient::new(data).get_risk(GetRiskRequest {}).await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_engine_is_stuck_and_counts_it() {
    let mut config = test_config();
    config.engine.watchdog_ms = 100;
    let server = start(&config).await;
    let (data, admin) = (channel(server.addr()).await, admin_channel(&server).await);
    // Idle for longer than the watchdog: an engine with nothing to do is not stuck.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&data, "quantd.v1.SignalService").await, ServingStatus::Serving);

    let engine = server.engine().unwrap();
    engine.set_paused(true); // the test hook: the engine takes nothing off its queue
    let mut c = client(&server).await;
    let tick = recorded(&[BTC_QUOTES], 1).remove(0);
    let pending = tokio::spawn(async move { c.predict(tick).await });
    wait_for_depth(&engine, 1).await;
    wait_for_status(&data, ServingStatus::NotServing).await;
    assert_eq!(status(&admin, "").await, ServingStatus::NotServing, "both ports report the same state");
    let m = wait_for_metric(&server, "quantd_not_ready_total{reason=\"engine_stuck\"}", 1.0).await;
    assert_eq!(sample(&m, "quantd_ready"), Some(0.0));

    engine.set_paused(false);
    let answered = pending.await.unwrap().unwrap().into_inner();
    assert!(answered.reject_reason.is_empty() || answered.reject_reason.starts_with("expired"), "{answered:?}");
    wait_for_status(&admin, ServingStatus::Serving).await;
    let m = wait_for_metric(&server, "quantd_ready", 1.0).await;
    assert_eq!(sample(&m, "quantd_not_ready_total{reason=\"engine_stuck\"}"), Some(1.0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_a_drain_starts_while_open_streams_are_still_answered() {
    let server = start(&test_config()).await;
    let admin = admin_channel(&server).await;
    let mut c = client(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Tick>(16);
    let mut ticks = recorded(&[BTC_QUOTES], 2).into_iter();
    tx.send(ticks.next().unwrap()).await.unwrap();
    let mut replies = c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(replies.message().await.unwrap().is_some(), "the stream is served");

    // A tick the engine holds (paused) keeps the drain open: the stream must answer it first.
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let held = ticks.next().unwrap();
    tx.send(held.clone()).await.unwrap();
    assert_eq!(wait_for_depth(&engine, 1).await, 1);
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    wait_for_status(&admin, ServingStatus::NotServing).await;
    assert!(!shutdown.is_finished(), "still draining");
    engine.set_paused(false);
    let s = replies.message().await.unwrap().expect("the tick read before the drain is answered");
    assert_eq!(s.seq, held.seq);
    // Then the stream ends with a status (not a reset) naming the last tick answered.
    let end = replies.message().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
    assert!(end.message().contains("shutting down"), "{end}");
    assert_eq!(end.metadata().get("x-quantd-last-seq").unwrap().to_str().unwrap(), held.seq.to_string());
    drop(tx);
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_on_the_admin_listener_binds_the_next_signal() {
    let server = start(&test_config()).await;
    let mut admin = RiskAdminClient::new(admin_channel(&server).await);
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 150);
    for t in &ticks[..120] {
        c.predict(t.clone()).await.unwrap();
    }
    let req = KillSwitchRequest { symbol: String::new(), engaged: true, reason: "test".into() };
    assert!(admin.set_kill_switch(req).await.unwrap().into_inner().applied);
    let s = c.predict(ticks[120].clone()).await.unwrap().into_inner();
    assert!(s.risk.iter().any(|r| r == "kill_admin") && s.target_position == 0.0, "{s:?}");
    assert!(admin.get_risk(GetRiskRequest {}).await.unwrap().into_inner().global_kill);
    server.shutdown(Duration::from_secs(1)).await;
}
