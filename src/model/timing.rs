//! Per-call latency of loaded models' sessions at chosen batch sizes: the `quantd bench-model`
//! tool, which times the same [`Scorer`](super::Scorer) the engine thread calls, on whichever
//! execution provider each model was loaded with. Several models are timed side by side in
//! interleaved rounds, so a noisy moment on a shared machine hits them all alike.
//!
//! Runs on the calling thread (a tool, never the server).

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadedModel;

/// Latency of one batch size, in microseconds per model call.
#[derive(Clone, Debug, Serialize)]
pub struct CallLatency {
    /// The batch size timed.
    pub batch: usize,
    /// Calls timed.
    pub calls: u64,
    /// Median per call, µs.
    pub p50_us: f64,
    /// 90th percentile per call, µs.
    pub p90_us: f64,
    /// 99th percentile per call, µs.
    pub p99_us: f64,
    /// Slowest call, µs.
    pub max_us: f64,
    /// Cost per input at the median (p50 / batch).
    pub p50_per_row_us: f64,
}

/// Times `calls` model calls of each model at each batch size, after `warmup` untimed ones, in
/// `rounds` interleaved rounds (model A, B, ... then A, B, ... again). Inputs are each manifest's
/// golden inputs, repeated to fill the batch. Returns one list per model, in order.
pub fn time_calls(
    models: &mut [LoadedModel],
    batches: &[usize],
    warmup: u64,
    calls: u64,
    rounds: u64,
) -> Result<Vec<Vec<CallLatency>>, super::ScoreError> {
    let rounds = rounds.clamp(1, calls.max(1));
    let mut out = vec![Vec::new(); models.len()];
    for &batch in batches {
        let inputs: Vec<Vec<f32>> = models
            .iter()
            .map(|m| {
                let golden = m.manifest.golden.iter().flat_map(|g| g.features.iter().copied());
                golden.cycle().take(batch * m.scorer.width()).collect()
            })
            .collect();
        for (m, rows) in models.iter_mut().zip(&inputs) {
            for _ in 0..warmup {
                std::hint::black_box(m.scorer.score(rows)?);
            }
        }
        let mut hists: Vec<Histogram<u64>> = (0..models.len())
            .map(|_| Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"))
            .collect();
        for round in 0..rounds {
            let n = calls / rounds + u64::from(round < calls % rounds);
            for ((m, rows), h) in models.iter_mut().zip(&inputs).zip(&mut hists) {
                for _ in 0..n {
                    let t = Instant::now();
                    std::hint::black_box(m.scorer.score(rows)?);
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                }
            }
        }
        for (h, o) in hists.iter().zip(&mut out) {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            o.push(CallLatency {
                batch,
                calls,
                p50_us: us(0.5),
                p90_us: us(0.9),
                p99_us: us(0.99),
                max_us: h.max() as f64 / 1e3,
                p50_per_row_us: us(0.5) / batch as f64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_every_model_and_batch_size_asked_for() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        crate::model::runtime::init(None).expect("ONNX Runtime (run `make setup`)");
        let load = || LoadedModel::load(&repo.join("models/quantd-mlp/1"), 8).unwrap();
        let mut models = [load(), load()];
        let r = time_calls(&mut models, &[1, 8], 5, 21, 4).unwrap();
        assert_eq!(r.len(), 2);
        for m in &r {
            assert_eq!(m.iter().map(|c| (c.batch, c.calls)).collect::<Vec<_>>(), [(1, 21), (8, 21)]);
            assert!(m.iter().all(|c| c.p50_us > 0.0 && c.p50_us <= c.p99_us && c.p99_us <= c.max_us));
        }
    }
}
