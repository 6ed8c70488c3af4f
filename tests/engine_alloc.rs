//! The engine makes no heap allocation per tick after warm-up: real recorded ticks go through
//! the real engine thread and real models (a plain MLP and a windowed TCN) while a counting global
//! allocator (`stats_alloc`) watches the whole process. (ONNX Runtime's own C++ allocations do not pass through Rust's allocator;
//! this checks quantd's code: queue, features, scorer call, policy, replies, latency hand-over.)
//! Ticks go in one by one and as batches of 64 (queued together, one wake-up).

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
        check(model, backend, None);
    }
    // Several models live at once: ETH routed to the windowed TCN, BTC to the default MLP
    // (native): each batch makes one call per model.
    check("models/quantd-mlp/2", Native, Some("models/quantd-tcn/2"));
}

fn check(model: &str, backend: quantd::model::BackendChoice, routed: Option<&str>) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = repo.join("../shared/data/ticks");
    let mut files = vec![
        d.join("binance_usdm_ethusdt_20240808_quotes.csv.gz"),
        d.join("binance_usdm_ethusdt_20240808_trades.csv.gz"),
    ];
    if routed.is_some() {
        files.push(d.join("binance_usdm_btcusdt_20240808_quotes.csv.gz"));
    }
    let ticks = quantd::tickfile::read_all(&files).unwrap();
    quantd::model::runtime::init(None).unwrap();
    let mut opts = quantd::model::LoadOptions::cpu(64);
    opts.backend.default = backend;
    let m = LoadedModel::load_with(&repo.join(model), &opts).unwrap();
    assert_eq!(m.backend.backend, if backend == quantd::model::BackendChoice::Native { "native" } else { "ort" });
    let telemetry = Telemetry::new();
    let mut cfg = EngineConfig { idle: IdleStrategy::SpinYield, ..Config::default().engine_config() };
    let active = Box::new(ActiveModel::new(m.scorer, &m.manifest.label(), m.manifest.policy));
    let more: Vec<_> = routed
        .map(|dir| {
            let r = LoadedModel::load_with(&repo.join(dir), &quantd::model::LoadOptions::cpu(64)).unwrap();
            cfg.routes = vec![quantd::routes::RouteSpec {
                name: None,
                symbols: vec!["ETH*".into()],
                model: r.manifest.name.clone(),
                policy: None,
            }];
            Box::new(ActiveModel::from_loaded(r, None))
        })
        .into_iter()
        .collect();
    let engine = quantd::engine::spawn_models(&cfg, active, more, telemetry.clone(), &[]).unwrap();
    let handle = engine.handle();
    let replies = ReplyQueue::new(4096);
    let (mut totals, mut by_model) = (telemetry.latency.new_set(), std::collections::BTreeMap::new());
    let mut models_seen = std::collections::BTreeSet::new();

    // Sends ticks[range] in bursts of `burst` and waits for every reply after each burst (to
    // exercise batching): tick by tick with `submit`, or, as a TickBatch is, every tick of the
    // burst queued with `submit_deferred` and the engine woken once.
    let mut run = |range: std::ops::Range<usize>, burst: usize, as_batch: bool| {
        let mut scored = 0usize;
        for chunk in ticks[range].chunks(burst) {
            for t in chunk {
                let item = WorkItem {
                    tick: *t,
                    reply_to: replies.clone(),
                    recv: Instant::now(),
                    recv_ns: 0,
                    conflate: false,
                    route: quantd::routes::BY_SYMBOL,
                };
                if as_batch {
                    assert!(handle.submit_deferred(item).is_ok());
                } else {
                    assert!(handle.submit(item).is_ok());
                }
            }
            if as_batch {
                handle.wake();
            }
            let mut outstanding = chunk.len();
            while outstanding > 0 {
                if let Some(r) = replies.pop() {
                    assert!(r.reject.is_none());
                    if models_seen.len() < 2 && !models_seen.contains(r.model.as_deref().unwrap()) {
                        models_seen.insert(r.model.unwrap().to_string());
                    }
                    scored += !r.warming_up as usize;
                    outstanding -= 1;
                }
            }
            telemetry.latency.collect(&mut totals, &mut by_model); // the hand-over runs during the window too
        }
        scored
    };

    // Warm-up: symbols, ORT arenas, every batch size seen so far.
    run(0..3_000, 50, false);
    run(3_000..5_000, 64, true);
    let region = Region::new(GLOBAL);
    let scored = run(5_000..15_000, 50, false) + run(15_000..25_000, 64, true);
    let change = region.change();
    assert_eq!(models_seen.len(), 1 + routed.is_some() as usize, "{model}: models that answered: {models_seen:?}");
    assert!(scored > 19_000, "{model}: the window really scored ticks ({scored})");
    assert_eq!(
        change.allocations + change.reallocations,
        0,
        "{model}: heap allocations while the engine processed 20000 ticks, single and in batches of 64: {change:?}"
    );
    telemetry.latency.collect(&mut totals, &mut by_model);
    assert!(!totals.get(quantd::telemetry::Series::Inference).unwrap().is_empty());
    engine.shutdown();
}
