//! Per-call latency of a loaded model's session at chosen batch sizes: the `quantd bench-model`
//! tool, which times the same [`Scorer`](super::Scorer) the engine thread calls, on whichever
//! execution provider the model was loaded with.
//!
//! Runs on the calling thread (a tool, never the server).

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadedModel;
use crate::features::NUM_FEATURES;

/// Latency of one batch size, in microseconds per model call.
#[derive(Clone, Debug, Serialize)]
pub struct CallLatency {
    pub batch: usize,
    pub calls: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Mean cost per row (p50 / batch).
    pub p50_per_row_us: f64,
}

/// Times `calls` model calls at each batch size after `warmup` untimed ones. The rows are the
/// manifest's golden feature rows, repeated to fill the batch.
pub fn time_calls(
    m: &mut LoadedModel,
    batches: &[usize],
    warmup: u64,
    calls: u64,
) -> Result<Vec<CallLatency>, ort::Error> {
    let golden: Vec<f32> = m.manifest.golden.iter().flat_map(|g| g.features.iter().copied()).collect();
    let mut out = Vec::new();
    for &batch in batches {
        let rows: Vec<f32> = golden.iter().copied().cycle().take(batch * NUM_FEATURES).collect();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        for i in 0..warmup + calls {
            let t = Instant::now();
            std::hint::black_box(m.scorer.score(&rows)?);
            if i >= warmup {
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        out.push(CallLatency {
            batch,
            calls,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            max_us: h.max() as f64 / 1e3,
            p50_per_row_us: us(0.5) / batch as f64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_every_batch_size_asked_for() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        crate::model::runtime::init(None).expect("ONNX Runtime (run `make setup`)");
        let mut m = LoadedModel::load(&repo.join("models/quantd-mlp/1"), 8).unwrap();
        let r = time_calls(&mut m, &[1, 8], 5, 20).unwrap();
        assert_eq!(r.iter().map(|c| (c.batch, c.calls)).collect::<Vec<_>>(), [(1, 20), (8, 20)]);
        assert!(r.iter().all(|c| c.p50_us > 0.0 && c.p50_us <= c.p99_us && c.p99_us <= c.max_us));
    }
}
