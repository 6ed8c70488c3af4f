//! Overload, faults and hostile input against a real server: each back-pressure mode and the
//! time-to-live under a burst, a slow consumer beside a fast one, disconnects, an injected engine
//! panic, 10k symbols, and malformed or oversize protobuf on a raw HTTP/2 connection.

mod common;

use std::time::Duration;

use common::*;
use quantd::config::Config;
use quantd::proto::{Signal, Tick, TickKind};
use quantd::server::settings::Backpressure;
use tokio::sync::mpsc;

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const ETH_QUOTES: &str = "binance_usdm_ethusdt_20240808_quotes.csv.gz";

fn config(mode: Backpressure, window: usize) -> Config {
    let mut c = test_config();
    c.stream.backpressure = mode;
    c.stream.window = window;
    c.stream.ttl_ms = 0;
    c
}

/// Sends `ticks` on one stream from a task (so a blocked send does not block the test) and
/// collects the replies.
fn spawn_stream(
    mut c: quantd::proto::signal_service_client::SignalServiceClient<tonic::transport::Channel>,
    ticks: Vec<Tick>,
) -> tokio::task::JoinHandle<Result<Vec<Signal>, tonic::Status>> {
    tokio::spawn(async move {
        let mut replies = c.stream_ticks(tokio_stream::iter(ticks)).await?.into_inner();
        let mut out = Vec::new();
        while let Some(s) = replies.message().await? {
            out.push(s);
        }
        Ok(out)
    })
}

fn burst() -> Vec<Tick> {
    recorded(&[BTC_QUOTES, ETH_QUOTES], 2_000)
}

fn in_order(ticks: &[Tick], signals: &[Signal]) {
    assert_eq!(signals.len(), ticks.len(), "one signal per tick");
    assert!(ticks.iter().zip(signals).all(|(t, s)| t.seq == s.seq), "in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_mode_pushes_back_and_loses_nothing() {
    let server = start(&config(Backpressure::Block, 64)).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let ticks = burst();
    let task = spawn_stream(client(&server).await, ticks.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.depth(), 64, "the stream stopped reading at its window");
    engine.set_paused(false);
    let signals = task.await.unwrap().unwrap();
    in_order(&ticks, &signals);
    assert!(signals.iter().all(|s| s.reject_reason.is_empty()));
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_answers_overloaded_at_once() {
    let server = start(&config(Backpressure::Reject, 64)).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let ticks = burst();
    let task = spawn_stream(client(&server).await, ticks.clone());
    wait_for_depth(&engine, 64).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.set_paused(false);
    let signals = task.await.unwrap().unwrap();
    in_order(&ticks, &signals);
    let overloaded = signals.iter().filter(|s| s.reject_reason.starts_with("overloaded: ")).count();
    assert_eq!(overloaded, 2_000 - 64, "everything past the window was refused, nothing queued without bound");
    let m = wait_for_metric(&server, "quantd_rejects_total{reason=\"overloaded\"}", 1_936.0).await;
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"overloaded\"}"), Some(1_936.0));
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_mode_scores_only_the_newest_tick_per_symbol_and_pass() {
    let mut cfg = config(Backpressure::Conflate, 2_048);
    cfg.engine.max_batch = 64;
    let server = start(&cfg).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let ticks = burst();
    let task = spawn_stream(client(&server).await, ticks.clone());
    wait_for_depth(&engine, 2_000).await;
    engine.set_paused(false);
    let signals = task.await.unwrap().unwrap();
    in_order(&ticks, &signals);
    let conflated = signals.iter().filter(|s| s.conflated).count();
    let scored = signals.iter().filter(|s| !s.conflated && s.reject_reason.is_empty()).count();
    assert_eq!(conflated + scored, 2_000, "{conflated} + {scored}");
    // 2000 queued ticks are taken 64 at a time: at most two symbols scored per pass.
    assert!(scored <= 2 * 2_000usize.div_ceil(64), "scored {scored}");
    assert!(signals.iter().filter(|s| s.conflated).all(|s| s.score == 0.0 && s.reject_reason.is_empty()));
    // The newest tick of the burst is always scored.
    assert!(!signals.last().unwrap().conflated);
    wait_for_metric(&server, "quantd_ticks_total{outcome=\"conflated\"}", conflated as f64).await;
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_past_their_time_to_live_are_answered_expired_but_still_update_features() {
    let mut cfg = config(Backpressure::Block, 1_024);
    cfg.stream.ttl_ms = 50;
    let server = start(&cfg).await;
    let engine = server.engine().unwrap();
    let ticks = recorded(&[BTC_QUOTES], 101);
    engine.set_paused(true);
    let task = spawn_stream(client(&server).await, ticks[..100].to_vec());
    tokio::time::sleep(Duration::from_millis(150)).await;
    engine.set_paused(false);
    let signals = task.await.unwrap().unwrap();
    assert!(signals.iter().all(|s| s.reject_reason.starts_with("expired: ")), "{:?}", signals[0]);
    // Those 100 ticks still fed the features: the 101st is past the 100-tick warm-up.
    let mut c = client(&server).await;
    let next = c.predict(ticks[100].clone()).await.unwrap().into_inner();
    assert!(next.reject_reason.is_empty() && !next.warming_up, "{next:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_a_fast_one_is_unaffected() {
    let mut cfg = config(Backpressure::Reject, 64);
    cfg.stream.outbound_limit = 256;
    let server = start(&cfg).await;
    // The slow client sends 20k ticks and reads nothing.
    let mut slow = client(&server).await;
    let (tx, rx) = mpsc::channel::<Tick>(64);
    let slow_call =
        tokio::spawn(async move { slow.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let feeder = tokio::spawn(async move {
        for t in recorded(&[BTC_QUOTES], 20_000) {
            if tx.send(t).await.is_err() {
                break;
            }
        }
    });
    // The fast client reads as fast as it sends: never more than 32 ticks ahead of its replies.
    let ticks = recorded(&[ETH_QUOTES], 5_000);
    let mut fast_client = client(&server).await;
    let (ftx, frx) = mpsc::channel::<Tick>(64);
    let mut replies =
        fast_client.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(frx)).await.unwrap().into_inner();
    let mut fast = Vec::new();
    for chunk in ticks.chunks(32) {
        for t in chunk {
            ftx.send(t.clone()).await.unwrap();
        }
        for _ in chunk {
            fast.push(replies.message().await.unwrap().unwrap());
        }
    }
    drop(ftx);
    assert!(replies.message().await.unwrap().is_none());
    in_order(&ticks, &fast);
    let bad: Vec<_> = fast.iter().filter(|s| !s.reject_reason.is_empty()).map(|s| &s.reject_reason).collect();
    assert!(bad.is_empty(), "the fast stream is untouched: {} rejects, first {:?}", bad.len(), bad.first());
    // The error may arrive as the call's own result (nothing was ever read) or on the stream.
    let err = match slow_call.await.unwrap() {
        Err(e) => e,
        Ok(r) => {
            let mut replies = r.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the slow stream should have been ended with an error"),
                    Err(e) => break e,
                }
            }
        }
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("slow consumer"), "{err}");
    feeder.abort();
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_and_reconnect_loops_leave_the_server_healthy() {
    let mut cfg = test_config();
    cfg.stream.max_streams = 4;
    let server = start(&cfg).await;
    let engine = server.engine().unwrap();
    let ticks = recorded(&[BTC_QUOTES], 2_000);
    // A client disconnects mid-stream with ticks queued: they are dropped and counted.
    engine.set_paused(true);
    let task = spawn_stream(client(&server).await, ticks[..500].to_vec());
    wait_for_depth(&engine, 1).await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.set_paused(false);
    wait_for_metric(&server, "quantd_ticks_total{outcome=\"dropped\"}", 1.0).await;
    // 50 connect / stream / disconnect cycles with max_streams = 4: every slot is released.
    for i in 0..50 {
        let task = spawn_stream(client(&server).await, ticks[i * 10..i * 10 + 40].to_vec());
        if i % 2 == 0 {
            task.abort();
            let _ = task.await;
        } else {
            assert_eq!(task.await.unwrap().unwrap().len(), 40);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = client(&server).await;
        let (tx, rx) = mpsc::channel::<Tick>(1);
        let resp = c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
        held.push((tx, resp));
    }
    let mut c = client(&server).await;
    let refused = c.stream_ticks(tokio_stream::iter(Vec::<Tick>::new())).await;
    let refused = match refused {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    drop(held);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_is_answered_reported_and_recovered_from() {
    let server = start(&test_config()).await;
    let engine = server.engine().unwrap();
    let ticks = recorded(&[BTC_QUOTES], 300);
    let mut c = client(&server).await;
    let first = stream_all(&mut c, ticks[..150].to_vec()).await;
    assert!(first.iter().all(|s| s.reject_reason.is_empty()));
    engine.inject_panic();
    let hit = c.predict(ticks[150].clone()).await.unwrap().into_inner();
    assert!(hit.reject_reason.starts_with("engine_error: "), "{hit:?}");
    assert_eq!(engine.restarts(), 1);
    let after = stream_all(&mut c, ticks[151..].to_vec()).await;
    assert_eq!(after.len(), 149, "never a hung stream");
    assert!(after.iter().all(|s| s.reject_reason.is_empty()));
    assert!(after[0].warming_up, "symbol state was reset and warms up again");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_symbols_on_one_stream() {
    let mut config = test_config();
    config.stream.max_symbols_per_stream = 10_000; // the whole engine table from one stream
    let server = start(&config).await;
    let mut c = client(&server).await;
    let ticks: Vec<Tick> = (0..30_000u64)
        .map(|i| Tick {
            symbol: format!("SYM{:05}", i % 10_000),
            seq: i,
            exchange_ts_ns: 1_000_000 + i as i64,
            kind: TickKind::Quote as i32,
            bid_px: 100.0 + (i % 7) as f64 * 0.01,
            bid_qty: 1.0,
            ask_px: 100.1 + (i % 7) as f64 * 0.01,
            ask_qty: 2.0,
            ..Default::default()
        })
        .collect();
    let signals = stream_all(&mut c, ticks.clone()).await;
    in_order(&ticks, &signals);
    assert!(signals.iter().all(|s| s.reject_reason.is_empty()));
    let extra = Tick { symbol: "ONE-TOO-MANY".into(), ..ticks[0].clone() };
    let refused = c.predict(extra).await.unwrap().into_inner();
    assert!(refused.reject_reason.starts_with("too_many_symbols: "), "{refused:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// Sends one gRPC request with a raw body on a raw HTTP/2 connection; returns grpc-status.
async fn raw_grpc(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from(body), true).unwrap();
    let resp = resp.await.unwrap();
    if let Some(s) = resp.headers().get("grpc-status") {
        return s.to_str().unwrap().to_owned();
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    trailers.get("grpc-status").unwrap().to_str().unwrap().to_owned()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_protobuf_on_raw_http2_are_refused_and_the_server_stays_up() {
    let server = start(&test_config()).await;
    let addr = server.addr();
    // Not a protobuf: field 1 says "length-delimited, 127 bytes" and the message ends.
    let garbage = framed(&[0x0a, 0x7f, 0xff, 0xff]);
    assert_eq!(raw_grpc(addr, "/quantd.v1.SignalService/Predict", garbage.clone()).await, "13"); // INTERNAL
    assert_eq!(raw_grpc(addr, "/quantd.v1.SignalService/StreamTicks", garbage).await, "13");
    // A frame header announcing more bytes than the body holds.
    let mut truncated = framed(&[0u8; 10]);
    truncated.truncate(8);
    assert_ne!(raw_grpc(addr, "/quantd.v1.SignalService/Predict", truncated).await, "0");
    // Over stream.max_message_bytes (64 KiB by default).
    let huge = framed(&vec![0u8; 200 * 1024]);
    assert_eq!(raw_grpc(addr, "/quantd.v1.SignalService/Predict", huge).await, "11"); // OUT_OF_RANGE (tonic's code for too large)
    let mut c = client(&server).await;
    let ok = c.predict(recorded(&[BTC_QUOTES], 1)[0].clone()).await.unwrap().into_inner();
    assert!(ok.reject_reason.is_empty(), "the server still serves");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed_with_a_clear_status() {
    let mut cfg = test_config();
    cfg.stream.idle_timeout_ms = 200;
    let server = start(&cfg).await;
    let mut c = client(&server).await;
    let (tx, rx) = mpsc::channel::<Tick>(8);
    let mut replies = c.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(recorded(&[BTC_QUOTES], 1)[0].clone()).await.unwrap();
    assert!(replies.message().await.unwrap().unwrap().reject_reason.is_empty());
    let started = std::time::Instant::now();
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    drop(tx);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chooses_its_own_back_pressure_mode_per_stream() {
    let server = start(&config(Backpressure::Block, 64)).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let mut c = client(&server).await;
    let ticks = burst();
    let mut req = tonic::Request::new(tokio_stream::iter(ticks.clone()));
    req.metadata_mut().insert("x-quantd-backpressure", "reject".parse().unwrap());
    let call = tokio::spawn(async move {
        let mut replies = c.stream_ticks(req).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(s) = replies.message().await.unwrap() {
            out.push(s);
        }
        out
    });
    wait_for_depth(&engine, 64).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.set_paused(false);
    let signals = call.await.unwrap();
    in_order(&ticks, &signals);
    assert_eq!(signals.iter().filter(|s| s.reject_reason.starts_with("overloaded")).count(), 2_000 - 64);

    let mut c = client(&server).await;
    let mut bad = tonic::Request::new(tokio_stream::iter(Vec::<Tick>::new()));
    bad.metadata_mut().insert("x-quantd-backpressure", "drop-everything".parse().unwrap());
    let err = match c.stream_ticks(bad).await {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    server.shutdown(Duration::from_secs(2)).await;
}
