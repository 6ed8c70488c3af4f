//! Hostile or buggy clients against a real server on loopback (issue 20): poisoned ticks are
//! refused without touching their symbol, junk symbols cannot lock real ones out, admin calls
//! never create symbols, and malformed stream options are refused with a status.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quantd::proto::risk_admin_client::RiskAdminClient;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{KillSwitchRequest, ResetSymbolRequest, Signal, Tick, TickKind};
use tonic::transport::Channel;

fn now_ns() -> i64 {
    quantd::clock::realtime_ns() as i64
}

/// A quote of `symbol` at `px` (spread 1 bp), stamped `ts_ns`.
fn quote(symbol: &str, seq: u64, ts_ns: i64, px: f64) -> Tick {
    Tick {
        symbol: symbol.into(),
        seq,
        exchange_ts_ns: ts_ns,
        kind: TickKind::Quote as i32,
        bid_px: px,
        bid_qty: 1.0,
        ask_px: px * 1.0001,
        ask_qty: 1.0,
        ..Default::default()
    }
}

/// A quote with bid = ask = `px` (extreme prices whose spread would overflow).
fn flat(symbol: &str, seq: u64, ts_ns: i64, px: f64) -> Tick {
    Tick { ask_px: px, ..quote(symbol, seq, ts_ns, px) }
}

/// `n` quotes of `symbol` 1 ms apart ending just before now, price wandering around 100.
fn warm(symbol: &str, seq0: u64, n: usize) -> Vec<Tick> {
    let t0 = now_ns() - n as i64 * 1_000_000 - 1_000_000_000;
    (0..n).map(|i| quote(symbol, seq0 + i as u64, t0 + i as i64 * 1_000_000, 100.0 + (i % 7) as f64 * 0.01)).collect()
}

async fn one(c: &mut SignalServiceClient<Channel>, t: Tick) -> Signal {
    c.predict(t).await.expect("predict answers").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_tick_is_refused_and_the_next_valid_one_is_scored() {
    let server = start(&test_config()).await;
    let (mut gateway, mut other) = (client(&server).await, client(&server).await);
    let s = stream_all(&mut gateway, warm("BTCUSDT", 0, 120)).await;
    assert!(!s[119].warming_up && s[119].reject_reason.is_empty(), "warm: {:?}", s[119]);
    let now = now_ns();
    let poison = [
        (quote("BTCUSDT", 1000, i64::MAX, 100.0), "future_timestamp"),
        (quote("BTCUSDT", 1001, now.saturating_mul(1000), 100.0), "future_timestamp"),
        (flat("BTCUSDT", 1002, 0, 1e308), "price_jump"),
        (flat("BTCUSDT", 1003, 0, 5e-324), "price_jump"),
        (flat("BTCUSDT", 1004, 0, 1e-300), "price_jump"),
    ];
    for (seq, (mut bad, why)) in (2000..).zip(poison) {
        if bad.exchange_ts_ns == 0 {
            bad.exchange_ts_ns = now_ns() - 1_000;
        }
        // Sent by another client, as a stray Predict would be.
        let r = one(&mut other, bad.clone()).await;
        assert!(r.reject_reason.starts_with(why), "{bad:?} -> {r:?}");
        assert_eq!(r.target_position, 0.0);
        // The gateway's next tick of the symbol is scored as if nothing happened.
        let next = one(&mut gateway, quote("BTCUSDT", seq, now_ns() - 1_000, 100.02)).await;
        assert!(next.reject_reason.is_empty() && !next.warming_up && next.risk.is_empty(), "after {why}: {next:?}");
    }
    let ts = now_ns() - 1_000;
    // A brand-new symbol whose first tick overflows the features is refused and leaves nothing.
    let r = one(&mut other, quote("NEWCOIN", 1, ts, 1.7e308)).await;
    assert!(r.reject_reason.starts_with("non_finite_features"), "{r:?}");
    let r = one(&mut other, quote("NEWCOIN", 2, ts + 1, 3.0)).await;
    assert!(r.reject_reason.is_empty() && r.warming_up, "{r:?}");
    // The export is periodic: wait for the reject counted last, then every earlier one is in.
    let m = wait_for_metric(&server, "quantd_rejects_total{reason=\"non_finite_features\"}", 1.0).await;
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"price_jump\"}"), Some(3.0));
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"future_timestamp\"}"), Some(2.0));
    assert_eq!(sample(&m, "quantd_rejects_total{reason=\"non_finite_features\"}"), Some(1.0));
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_new_price_level_is_taken_after_agreeing_jumps_and_reset_symbol_starts_afresh() {
    let server = start(&test_config()).await;
    let mut c = client(&server).await;
    let mut admin = RiskAdminClient::new(admin_channel(&server).await);
    stream_all(&mut c, warm("ETHUSDT", 0, 120)).await;
    let ts = now_ns() - 100_000_000;
    // The price moves 10x for good: five agreeing jumps (ticks.jump_reset_ticks) reset the symbol.
    let moved: Vec<Tick> = (0..6).map(|i| quote("ETHUSDT", 200 + i, ts + i as i64, 1000.0 + i as f64)).collect();
    let s = stream_all(&mut c, moved).await;
    assert!(s[..4].iter().all(|s| s.reject_reason.starts_with("price_jump")), "{s:?}");
    assert!(s[4].reject_reason.is_empty() && s[4].warming_up, "the new level is taken: {:?}", s[4]);
    assert!(s[5].reject_reason.is_empty() && s[5].warming_up, "{:?}", s[5]);
    let m = wait_for_metric(&server, "quantd_symbol_resets_total{reason=\"level_shift\"}", 1.0).await;
    assert_eq!(sample(&m, "quantd_symbol_resets_total{reason=\"admin\"}"), Some(0.0));

    // ResetSymbol: a known symbol warms up again; an unknown one is not created.
    stream_all(&mut c, warm("SOLUSDT", 0, 120)).await;
    let reset = |symbol: &str| ResetSymbolRequest { symbol: symbol.into(), reason: "test".into() };
    let r = admin.reset_symbol(reset("SOLUSDT")).await.unwrap().into_inner();
    assert!(r.applied && r.reason.is_empty(), "{r:?}");
    let s = one(&mut c, quote("SOLUSDT", 500, now_ns() - 1_000, 100.0)).await;
    assert!(s.warming_up && s.reject_reason.is_empty(), "{s:?}");
    let r = admin.reset_symbol(reset("NEVERSEEN")).await.unwrap().into_inner();
    assert!(!r.applied && r.reason.contains("no state for this symbol"), "{r:?}");
    let err = admin.reset_symbol(reset("BAD\u{202E}SYM")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    wait_for_metric(&server, "quantd_symbol_resets_total{reason=\"admin\"}", 1.0).await;
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_calls_on_unknown_symbols_never_fill_the_table() {
    let mut config = test_config();
    config.engine.max_symbols = 8;
    let server = start(&config).await;
    let mut admin = RiskAdminClient::new(admin_channel(&server).await);
    for i in 0..20 {
        let req = KillSwitchRequest { symbol: format!("JUNK{i}"), engaged: true, reason: "x".repeat(1_000_000) };
        let r = admin.set_kill_switch(req).await.unwrap().into_inner();
        assert!(!r.applied && r.reason.contains("all-symbols kill switch"), "{r:?}");
    }
    let mut c = client(&server).await;
    let s = stream_all(&mut c, warm("BTCUSDT", 0, 5)).await;
    assert!(s.iter().all(|s| s.reject_reason.is_empty()), "the table has room: {:?}", s[0]);
    let req = KillSwitchRequest { symbol: "BTCUSDT".into(), engaged: true, reason: String::new() };
    assert!(admin.set_kill_switch(req).await.unwrap().into_inner().applied);
    let s = one(&mut c, quote("BTCUSDT", 9, now_ns() - 1_000, 100.0)).await;
    assert_eq!(s.risk, ["kill_admin"], "the switch an applied answer reports holds: {s:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// One junk symbol per tick, from one stream.
fn junk(n: usize) -> Vec<Tick> {
    let ts = now_ns() - 1_000_000;
    (0..n).map(|i| quote(&format!("JUNK{i:05}"), i as u64, ts, 1.0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_symbols_are_evicted_so_a_real_new_symbol_gets_in() {
    let mut config = test_config();
    config.engine.max_symbols = 2_000;
    config.stream.max_symbols_per_stream = 2_000;
    config.engine.symbol_idle_ms = 1_000;
    let server = start(&config).await;
    let (mut junker, mut gateway) = (client(&server).await, client(&server).await);
    let s = stream_all(&mut junker, junk(10_000)).await;
    assert_eq!(s.iter().filter(|s| s.reject_reason.starts_with("too_many_symbols")).count(), 8_000);
    let r = one(&mut gateway, quote("SOLUSDT", 1, now_ns() - 1_000, 150.0)).await;
    assert!(r.reject_reason.starts_with("too_many_symbols"), "the table is full of junk: {r:?}");
    let t0 = Instant::now();
    let admitted = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = one(&mut gateway, quote("SOLUSDT", 2, now_ns() - 1_000, 150.0)).await;
        if r.reject_reason.is_empty() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never admitted: {r:?}");
    };
    // symbol_idle_ms plus one sweep (an eighth of it): the junk went at most 1.125 s after it came.
    eprintln!("a new real symbol was admitted {admitted:?} after 10,000 junk symbols filled the table");
    assert!(admitted <= Duration::from_millis(1_300), "admitted after {admitted:?}");
    let m = wait_for_metric(&server, "quantd_symbol_resets_total{reason=\"evicted\"}", 2_000.0).await;
    assert!(sample(&m, "quantd_rejects_total{reason=\"too_many_symbols\"}").unwrap() >= 8_001.0);
    server.shutdown(Duration::from_secs(2)).await;

    // With a per-stream cap (the default is half the table) the junk stops at the cap, and the
    // real symbol gets in at once.
    let mut config = test_config();
    config.engine.max_symbols = 2_000;
    config.stream.max_symbols_per_stream = 1_000;
    let server = start(&config).await;
    let (mut junker, mut gateway) = (client(&server).await, client(&server).await);
    let s = stream_all(&mut junker, junk(10_000)).await;
    assert_eq!(s.iter().filter(|s| s.reject_reason.starts_with("too_many_symbols")).count(), 9_000);
    let r = one(&mut gateway, quote("SOLUSDT", 1, now_ns() - 1_000, 150.0)).await;
    assert!(r.reject_reason.is_empty(), "{r:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_symbols_and_repeated_stream_options_are_refused() {
    let server = start(&test_config()).await;
    let mut c = client(&server).await;
    let ts = now_ns() - 1_000;
    for bad in ["BTC\0USDT", "BTC\u{202E}USDT", "BTC\u{200B}USDT", "\u{FEFF}BTCUSDT", "   ", "BTCUSDT "] {
        let r = one(&mut c, quote(bad, 1, ts, 100.0)).await;
        assert!(r.reject_reason.starts_with("invalid_symbol"), "{bad:?}: {r:?}");
    }
    let mut req = tonic::Request::new(tokio_stream::iter(warm("BTCUSDT", 0, 1)));
    req.metadata_mut().append("x-quantd-backpressure", "block".parse().unwrap());
    req.metadata_mut().append("x-quantd-backpressure", "reject".parse().unwrap());
    let err = c.stream_ticks(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("2 times"), "{err}");
    // The refused stream released its slot: a plain one opens.
    assert_eq!(stream_all(&mut c, warm("BTCUSDT", 0, 3)).await.len(), 3);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_are_capped_per_connection_and_per_client_address_over_all_their_streams() {
    let mut config = test_config();
    config.stream.max_symbols_per_peer = 3;
    config.stream.max_symbols_per_connection = 2;
    let server = start(&config).await;
    let (mut one, mut two) = (client(&server).await, client(&server).await);
    let ts = now_ns() - 1_000;
    let q = |s: &str, seq| quote(s, seq, ts + seq as i64, 100.0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Tick>(8);
    let mut open = one.stream_ticks(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for (i, s) in ["A", "B"].into_iter().enumerate() {
        tx.send(q(s, i as u64)).await.unwrap();
        assert!(open.message().await.unwrap().unwrap().reject_reason.is_empty());
    }
    // A second stream on the same connection shares its cap of 2: E does not fit, B is known.
    let s = stream_all(&mut one.clone(), vec![q("E", 5), q("B", 6)]).await;
    assert!(s[0].reject_reason.starts_with("too_many_symbols"), "{:?}", s[0]);
    assert!(s[1].reject_reason.is_empty(), "{:?}", s[1]);
    // The same address's second connection shares the address's cap of 3 (E, refused, was not
    // charged to it): C fits, D does not; A is known to the address and fits the connection's 2.
    let s = stream_all(&mut two, vec![q("C", 10), q("D", 11), q("A", 12)]).await;
    assert!(s[0].reject_reason.is_empty(), "{:?}", s[0]);
    assert!(s[1].reject_reason.starts_with("too_many_symbols"), "{:?}", s[1]);
    assert!(s[2].reject_reason.is_empty(), "{:?}", s[2]);
    drop(tx);
    assert!(open.message().await.unwrap().is_none());
    server.shutdown(Duration::from_secs(2)).await;
}
