//! The engine makes no heap allocation per tick after warm-up: real recorded ticks go through
//! the real engine thread and real models (a plain MLP and a windowed TCN) while a counting global
//! allocator (`stats_alloc`) watches the whole process. (ONNX Runtime's own C++ allocations do not pass through Rust's allocator;
//! this checks quantd's code: queue, features, scorer call, policy, replies, latency hand-over.)

use std::alloc::System;
use std::path::PathBuf;
use std::time::Instant;

use quantd::config::Config;
use quantd::engine::worker::ActiveModel;
use quantd::engine::{EngineConfig, IdleStrategy, ReplyQueue, WorkItem};
use quantd::model::LoadedModel;
use quantd::telemetry::Telemetry;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn engine_hot_path_does_not_allocate_after_warm_up() {
    // A plain model on the native INT8 kernel and on ONNX Runtime, and a windowed one (the
    // engine fills each tick's window from its ring; ONNX Runtime).
    use quantd::model::BackendChoice::{Native, Ort};
    for (model, backend) in
        [("models/quantd-mlp/2", Native), ("models/quantd-mlp/1", Ort), ("models/quantd-tcn/2", Ort)]
    {
        check(model, backend);
    }
}

fn check(model: &str, backend: quantd::model::BackendChoice) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = repo.join("../shared/data/ticks");
    let ticks = quantd::tickfile::read_all(&[
        d.join("binance_usdm_ethusdt_20240808_quotes.csv.gz"),
        d.join("binance_usdm_ethusdt_20240808_trades.csv.gz"),
    ])
    .unwrap();
    quantd::model::runtime::init(None).unwrap();
    let mut opts = quantd::model::LoadOptions::cpu(64);
    opts.backend.default = backend;
    let m = LoadedModel::load_with(&repo.join(model), &opts).unwrap();
    assert_eq!(m.backend.backend, if backend == quantd::model::BackendChoice::Native { "native" } else { "ort" });
    let telemetry = Telemetry::new();
    let cfg = EngineConfig { idle: IdleStrategy::SpinYield, ..Config::default().engine_config() };
    let active = Box::new(ActiveModel::new(m.scorer, &m.manifest.label(), m.manifest.policy));
    let engine = quantd::engine::spawn(&cfg, active, telemetry.clone(), &[]).unwrap();
    let handle = engine.handle();
    let replies = ReplyQueue::new(4096);
    let mut totals = telemetry.latency.new_set();

    // Sends ticks[range] in bursts (to exercise batching), waits for every reply.
    let mut run = |range: std::ops::Range<usize>| {
        let mut outstanding = 0usize;
        let mut scored = 0usize;
        for (i, t) in ticks[range].iter().enumerate() {
            let item =
                WorkItem { tick: *t, reply_to: replies.clone(), recv: Instant::now(), recv_ns: 0, conflate: false };
            assert!(handle.submit(item).is_ok());
            outstanding += 1;
            if i % 50 == 49 {
                while outstanding > 0 {
                    if let Some(r) = replies.pop() {
                        assert!(r.reject.is_none());
                        scored += !r.warming_up as usize;
                        outstanding -= 1;
                    }
                }
                telemetry.latency.collect(&mut totals); // the hand-over runs during the window too
            }
        }
        while outstanding > 0 {
            if replies.pop().is_some() {
                outstanding -= 1;
            }
        }
        scored
    };

    run(0..5_000); // warm-up: symbols, ORT arenas, every batch size seen so far
    let region = Region::new(GLOBAL);
    let scored = run(5_000..25_000);
    let change = region.change();
    assert!(scored > 19_000, "{model}: the window really scored ticks ({scored})");
    assert_eq!(
        change.allocations + change.reallocations,
        0,
        "{model}: heap allocations while the engine processed 20000 ticks: {change:?}"
    );
    telemetry.latency.collect(&mut totals);
    assert!(!totals.get(quantd::telemetry::Series::Inference).unwrap().is_empty());
    engine.shutdown();
}
