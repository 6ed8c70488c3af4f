//! Shared helpers for the integration tests: a real server on port 0 with the real default
//! model, real recorded ticks from `../shared/data/ticks`, and a Prometheus scrape.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use quantd::config::Config;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{Signal, Tick};
use quantd::server::Server;
use tonic::transport::Channel;

/// The model `models/` serves by default (`models/DEFAULT` names it; its highest release).
pub const DEFAULT_MODEL: &str = "quantd-mlp@2";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data/ticks/<name>` next to the repository.
pub fn shared_ticks(name: &str) -> PathBuf {
    let p = repo().join("../shared/data/ticks").join(name);
    assert!(p.is_file(), "recorded tick file {} missing: tests need ../shared beside the repo", p.display());
    p
}

/// A config for tests: ephemeral ports, the repo's models, fast metrics.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        models_dir: repo().join("models"),
        metrics_interval_ms: 50,
        ..Config::default()
    };
    c.validate().expect("test config is valid");
    c.engine.idle = quantd::engine::IdleStrategy::SpinPark;
    c
}

pub async fn start(config: &Config) -> Server {
    Server::start(&config.server_config().expect("a valid config")).await.expect("server starts")
}

pub async fn client(server: &Server) -> SignalServiceClient<Channel> {
    SignalServiceClient::connect(format!("http://{}", server.addr())).await.expect("connect")
}

/// A channel to the server's admin listener (ModelAdmin, RiskAdmin, health).
pub async fn admin_channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.admin_addr())).unwrap().connect().await.expect("connect to admin")
}

/// The first `n` ticks (merged by time) of the given recorded files, as wire ticks.
pub fn recorded(files: &[&str], n: usize) -> Vec<Tick> {
    let paths: Vec<_> = files.iter().map(|f| shared_ticks(f)).collect();
    quantd::tickfile::TickReader::open(&paths).unwrap().take(n).map(|t| t.unwrap().to_proto()).collect()
}

/// Streams `ticks` on one call and collects every signal.
pub async fn stream_all(client: &mut SignalServiceClient<Channel>, ticks: Vec<Tick>) -> Vec<Signal> {
    let mut out = Vec::with_capacity(ticks.len());
    let mut replies = client.stream_ticks(tokio_stream::iter(ticks)).await.expect("stream opens").into_inner();
    while let Some(s) = replies.message().await.expect("stream stays healthy") {
        out.push(s);
    }
    out
}

pub async fn scrape(server: &Server) -> String {
    reqwest::get(format!("http://{}/metrics", server.metrics_addr())).await.unwrap().text().await.unwrap()
}

/// The value of the first sample in a scrape (parsed by `prometheus-parse`) that `selector`
/// picks: a metric name, optionally with labels as the exposition writes them
/// (`quantd_ticks_total{outcome="scored"}`; the closing brace may be left off, and labels not
/// given may have any value).
pub fn sample(metrics: &str, selector: &str) -> Option<f64> {
    use prometheus_parse::Value::{Counter, Gauge, Untyped};
    let (name, labels) = selector.split_once('{').unwrap_or((selector, ""));
    let wanted: Vec<(&str, &str)> = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim_matches('"')))
        .collect();
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).expect("a text exposition");
    scrape
        .samples
        .into_iter()
        .find(|s| s.metric == name && wanted.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Counter(v) | Gauge(v) | Untyped(v) => Some(v),
            _ => None,
        })
}

/// Scrapes until `prefix` reaches `at_least` (the exporter publishes every 50 ms in tests).
pub async fn wait_for_metric(server: &Server, prefix: &str, at_least: f64) -> String {
    for _ in 0..100 {
        let m = scrape(server).await;
        if sample(&m, prefix).is_some_and(|v| v >= at_least) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metric {prefix} never reached {at_least}:\n{}", scrape(server).await)
}

/// Waits (up to 2 s) until the engine queue holds at least `n` ticks; returns the depth seen.
pub async fn wait_for_depth(engine: &quantd::engine::EngineHandle, n: usize) -> usize {
    for _ in 0..200 {
        if engine.depth() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.depth()
}

/// The contract every answered stream keeps: one signal per tick, in order, seq, symbol and
/// exchange time echoed, no reject on recorded ticks, a finite score and a bounded position,
/// the model named, and the server times stamped.
pub fn check_signals(ticks: &[Tick], signals: &[Signal], model: &str) {
    assert_eq!(signals.len(), ticks.len(), "one signal per tick");
    for (t, s) in ticks.iter().zip(signals) {
        assert_eq!(s.seq, t.seq, "in order, seq echoed");
        assert_eq!(s.symbol, t.symbol);
        assert_eq!(s.exchange_ts_ns, t.exchange_ts_ns);
        assert!(s.reject_reason.is_empty(), "recorded tick {} rejected: {}", t.seq, s.reject_reason);
        assert!(s.score.is_finite());
        assert!((-1.0..=1.0).contains(&s.target_position));
        assert_eq!(s.model, model);
        assert!(s.server_recv_ns > 0 && s.server_send_ns >= s.server_recv_ns);
        if s.warming_up {
            assert_eq!(s.target_position, 0.0);
        }
    }
}

/// Health reports the tick service SERVING on `channel`, and server reflection lists it, as
/// `grpc.reflection.v1` and as `v1alpha` (grpcio-reflection's client speaks only v1alpha).
pub async fn assert_tick_service_serving_and_reflected(channel: Channel) {
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: "quantd.v1.SignalService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    macro_rules! list_services {
        ($v:ident) => {{
            use tonic_reflection::pb::$v::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            };
            let mut refl = ServerReflectionClient::new(channel.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
            let Some(MessageResponse::ListServicesResponse(list)) =
                resp.message().await.unwrap().unwrap().message_response
            else {
                panic!("expected a service list")
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }};
    }
    for names in [list_services!(v1), list_services!(v1alpha)] {
        assert!(names.contains(&"quantd.v1.SignalService".to_string()), "{names:?}");
    }
}
