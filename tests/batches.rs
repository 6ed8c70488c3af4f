//! Batched ticks (`StreamTickBatches`, `PredictBatch`) against a real server and real recorded
//! ticks: one SignalBatch per TickBatch with one Signal per Tick in order, the same answers as
//! single-tick streaming, rejects inside a batch, empty and oversize batches on a stream that
//! stays up, back-pressure with batches, and single-tick and batch streams at once.

mod common;

use std::time::Duration;

use common::*;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{Signal, SignalBatch, Tick, TickBatch};
use quantd::server::settings::Backpressure;
use tonic::transport::Channel;

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const ETH_QUOTES: &str = "binance_usdm_ethusdt_20240808_quotes.csv.gz";

/// `ticks` in batches of the given sizes (cycled), in order.
fn batches(ticks: &[Tick], sizes: &[usize]) -> Vec<TickBatch> {
    let (mut out, mut at) = (Vec::new(), 0);
    for &n in sizes.iter().cycle() {
        if at >= ticks.len() {
            break;
        }
        let end = (at + n).min(ticks.len());
        out.push(TickBatch { ticks: ticks[at..end].to_vec() });
        at = end;
    }
    out
}

async fn stream_batches(c: &mut SignalServiceClient<Channel>, batches: Vec<TickBatch>) -> Vec<SignalBatch> {
    let mut replies = c.stream_tick_batches(tokio_stream::iter(batches)).await.expect("stream opens").into_inner();
    let mut out = Vec::new();
    while let Some(b) = replies.message().await.expect("stream stays healthy") {
        out.push(b);
    }
    out
}

fn flat(answers: &[SignalBatch]) -> Vec<Signal> {
    answers.iter().flat_map(|b| b.signals.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signal_batch_per_tick_batch_with_the_single_tick_answers() {
    let server = start(&test_config()).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES, ETH_QUOTES], 3_000);
    let sent = batches(&ticks, &[1, 64, 7, 300, 16]);
    let answers = stream_batches(&mut c, sent.clone()).await;
    assert_eq!(answers.len(), sent.len(), "one SignalBatch per TickBatch");
    for (b, a) in sent.iter().zip(&answers) {
        assert_eq!(a.signals.len(), b.ticks.len(), "one Signal per Tick");
    }
    let signals = flat(&answers);
    check_signals(&ticks, &signals, DEFAULT_MODEL);
    // The same ticks, one per message, on other symbols: the same decisions.
    let single: Vec<Tick> = ticks.iter().map(|t| Tick { symbol: format!("{}.1", t.symbol), ..t.clone() }).collect();
    let one_by_one = stream_all(&mut c, single).await;
    let decisions =
        |s: &[Signal]| s.iter().map(|s| (s.score.to_bits(), s.target_position.to_bits())).collect::<Vec<_>>();
    assert_eq!(decisions(&signals), decisions(&one_by_one));
    // PredictBatch answers a batch as a whole, the same way.
    let unary: Vec<Tick> =
        ticks[..500].iter().map(|t| Tick { symbol: format!("{}.2", t.symbol), ..t.clone() }).collect();
    let answer = c.predict_batch(TickBatch { ticks: unary.clone() }).await.unwrap().into_inner();
    check_signals(&unary, &answer.signals, DEFAULT_MODEL);
    assert_eq!(decisions(&answer.signals), decisions(&signals[..500]));
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_inside_empty_and_oversize_batches_and_the_stream_stays_up() {
    let mut config = test_config();
    config.stream.max_batch_ticks = 100;
    let server = start(&config).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 400);
    let mut mixed = ticks[..50].to_vec();
    mixed[10].bid_px = f64::NAN;
    mixed[20].symbol = String::new();
    let sent = vec![
        TickBatch { ticks: mixed },
        TickBatch { ticks: Vec::new() },
        TickBatch { ticks: ticks[50..250].to_vec() }, // 200 > 100: every tick refused
        TickBatch { ticks: Vec::new() },
        TickBatch { ticks: ticks[250..300].to_vec() },
    ];
    let answers = stream_batches(&mut c, sent).await;
    assert_eq!(answers.iter().map(|a| a.signals.len()).collect::<Vec<_>>(), [50, 0, 200, 0, 50]);
    let first = &answers[0].signals;
    assert!(first[10].reject_reason.starts_with("non_finite: "), "{}", first[10].reject_reason);
    assert!(first[20].reject_reason.starts_with("empty_symbol: "), "{}", first[20].reject_reason);
    assert_eq!(first.iter().filter(|s| !s.reject_reason.is_empty()).count(), 2);
    assert!(answers[2].signals.iter().all(|s| s.reject_reason.starts_with("batch_too_large: ")));
    assert_eq!(
        answers[2].signals.iter().map(|s| s.seq).collect::<Vec<_>>(),
        ticks[50..250].iter().map(|t| t.seq).collect::<Vec<_>>()
    );
    // The oversize batch was not processed: the next ticks continue the symbol's state.
    assert!(answers[4].signals.iter().all(|s| s.reject_reason.is_empty()), "{:?}", answers[4].signals[0]);
    // Unary: an empty batch gets an empty answer, an oversize one is refused tick by tick.
    assert!(c.predict_batch(TickBatch::default()).await.unwrap().into_inner().signals.is_empty());
    let big = c.predict_batch(TickBatch { ticks: ticks[299..400].to_vec() }).await.unwrap().into_inner();
    assert_eq!(big.signals.len(), 101);
    assert!(big.signals.iter().all(|s| s.reject_reason.starts_with("batch_too_large: ")));
    let m = wait_for_metric(&server, "quantd_rejects_total{reason=\"batch_too_large\"}", 301.0).await;
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"batch_too_large\"}"), Some(301.0));
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_refuses_the_ticks_of_a_batch_past_the_window() {
    let mut config = test_config();
    config.stream.backpressure = Backpressure::Reject;
    config.stream.window = 64;
    config.stream.ttl_ms = 0;
    let server = start(&config).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    let ticks = recorded(&[BTC_QUOTES], 1_000);
    let sent = batches(&ticks, &[250]);
    let mut c = client(&server).await;
    let task = tokio::spawn(async move { stream_batches(&mut c, sent).await });
    wait_for_depth(&engine, 64).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.set_paused(false);
    let answers = task.await.unwrap();
    assert_eq!(answers.iter().map(|a| a.signals.len()).collect::<Vec<_>>(), [250; 4]);
    let signals = flat(&answers);
    assert_eq!(signals.iter().map(|s| s.seq).collect::<Vec<_>>(), ticks.iter().map(|t| t.seq).collect::<Vec<_>>());
    let overloaded = signals.iter().filter(|s| s.reject_reason.starts_with("overloaded: ")).count();
    assert_eq!(overloaded, 1_000 - 64, "past the window every tick is refused at once, batches or not");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_tick_and_batch_streams_at_once_on_one_connection() {
    let server = start(&test_config()).await;
    let c = client(&server).await;
    let btc = recorded(&[BTC_QUOTES], 2_000);
    let eth = recorded(&[ETH_QUOTES], 2_000);
    let (mut a, mut b) = (c.clone(), c);
    let (single, batched) = tokio::join!(stream_all(&mut a, btc.clone()), stream_batches(&mut b, batches(&eth, &[64])));
    check_signals(&btc, &single, DEFAULT_MODEL);
    check_signals(&eth, &flat(&batched), DEFAULT_MODEL);
    assert!(batched.iter().all(|b| b.signals.len() <= 64));
    server.shutdown(Duration::from_secs(2)).await;
}

/// An empty batch read in the same poll as the next batch, whose ticks the edge answers at once
/// (here: refused as malformed), still gets its own empty answer before that batch's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_keeps_its_place_before_a_batch_answered_at_the_edge() {
    let server = start(&test_config()).await;
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 200);
    let mut sent = Vec::new();
    for (i, t) in ticks.iter().enumerate() {
        sent.push(TickBatch::default());
        // Every other batch is refused at the edge (a NaN price), the rest go to the engine.
        let t = if i % 2 == 0 { Tick { bid_px: f64::NAN, ..t.clone() } } else { t.clone() };
        sent.push(TickBatch { ticks: vec![t] });
    }
    sent.push(TickBatch::default());
    sent.push(TickBatch::default());
    let answers = stream_batches(&mut c, sent.clone()).await;
    assert_eq!(
        answers.iter().map(|a| a.signals.len()).collect::<Vec<_>>(),
        sent.iter().map(|b| b.ticks.len()).collect::<Vec<_>>(),
        "one answer per batch, in order, empty ones included"
    );
    let seqs: Vec<u64> = flat(&answers).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, ticks.iter().map(|t| t.seq).collect::<Vec<_>>());
    server.shutdown(Duration::from_secs(2)).await;
}

/// An empty batch is the client's sign of life: a stream that sends only empty batches for
/// longer than `stream.idle_timeout_ms` stays up, and an idle one is still closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_batches_keep_a_stream_from_its_idle_timeout() {
    let mut config = test_config();
    config.stream.idle_timeout_ms = 300;
    let server = start(&config).await;
    let mut c = client(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<TickBatch>(8);
    let mut replies =
        c.stream_tick_batches(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // 900 ms of empty batches, one every 100 ms: three idle timeouts' worth.
    for _ in 0..9 {
        tx.send(TickBatch::default()).await.unwrap();
        assert!(replies.message().await.unwrap().unwrap().signals.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ticks = recorded(&[BTC_QUOTES], 3);
    tx.send(TickBatch { ticks: ticks.clone() }).await.unwrap();
    let answer = replies.message().await.expect("the stream is still up").unwrap();
    check_signals(&ticks, &answer.signals, DEFAULT_MODEL);
    // Silence past the timeout closes it.
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    drop(tx);
    server.shutdown(Duration::from_secs(2)).await;
}
