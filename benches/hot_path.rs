//! Criterion benches of the hot paths, on real recorded ticks and the real default model:
//! - `features/update`: one per-symbol feature update;
//! - `ort/score/{1,64}`: the ONNX Runtime call alone, as the engine makes it;
//! - `engine/round_trip`: enqueue one tick → its reply popped from the stream's reply queue
//!   (engine thread busy-spinning, so no wake-up cost is included).
//!
//! Run with `cargo bench --bench hot_path` (or `make bench`).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use quantd::config::Config;
use quantd::engine::worker::ActiveModel;
use quantd::engine::{EngineConfig, IdleStrategy, ReplyQueue, WorkItem};
use quantd::features::{NUM_FEATURES, SymbolFeatures};
use quantd::model::LoadedModel;
use quantd::telemetry::Telemetry;
use quantd::tick::Tick;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ticks() -> Vec<Tick> {
    let d = repo().join("../shared/data/ticks");
    let files =
        [d.join("binance_usdm_btcusdt_20240808_quotes.csv.gz"), d.join("binance_usdm_btcusdt_20240808_trades.csv.gz")];
    quantd::tickfile::read_all(&files).expect("recorded ticks")
}

fn model(max_batch: usize) -> LoadedModel {
    quantd::model::runtime::init(None).expect("ONNX Runtime (run `make setup`)");
    LoadedModel::load(&repo().join("models/quantd-mlp/1"), max_batch).expect("default model")
}

fn bench_features(c: &mut Criterion) {
    let ticks = ticks();
    let mut state = SymbolFeatures::new();
    let mut out = [0f32; NUM_FEATURES];
    let mut i = 0;
    c.bench_function("features/update", |b| {
        b.iter(|| {
            let t = &ticks[i % ticks.len()];
            if i % ticks.len() == 0 {
                state = SymbolFeatures::new();
            }
            i += 1;
            state.update(black_box(t), &mut out);
            black_box(&out);
        })
    });
}

fn bench_ort(c: &mut Criterion) {
    let mut m = model(64);
    let rows: Vec<f32> = m.manifest.golden.iter().cycle().take(64).flat_map(|g| g.features.iter().copied()).collect();
    let mut g = c.benchmark_group("ort/score");
    for n in [1usize, 64] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| black_box(m.scorer.score(black_box(&rows[..n * NUM_FEATURES])).unwrap()[0]))
        });
    }
    g.finish();
}

fn bench_engine(c: &mut Criterion) {
    let m = model(64);
    let telemetry = Telemetry::new();
    let cfg = EngineConfig { idle: IdleStrategy::BusySpin, ..Config::default().engine_config() };
    let active = Box::new(ActiveModel::new(m.scorer, &m.manifest.label(), m.manifest.policy));
    let engine = quantd::engine::spawn(&cfg, active, telemetry, &[]).unwrap();
    let handle = engine.handle();
    let replies = ReplyQueue::new(1);
    let ticks = ticks();
    let mut i = 0usize;
    c.bench_function("engine/round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut tick = ticks[i % ticks.len()];
                // keep timestamps increasing across passes over the file
                tick.exchange_ts_ns += (i / ticks.len()) as i64 * 1_000_000_000_000;
                i += 1;
                let item = WorkItem {
                    tick,
                    reply_to: replies.clone(),
                    recv: Instant::now(),
                    recv_ns: 0,
                    conflate: false,
                    route: quantd::routes::BY_SYMBOL,
                };
                if handle.submit(item).is_err() {
                    panic!("engine queue refused a tick");
                }
                loop {
                    if let Some(r) = replies.pop() {
                        black_box(r);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            start.elapsed()
        })
    });
    engine.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench_features, bench_ort, bench_engine
}
criterion_main!(benches);
