//! Warm-up of a freshly loaded model, on the registry thread, before the engine ever sees it.

use std::time::{Duration, Instant};

use crate::features::NUM_FEATURES;
use crate::model::{LoadedModel, ModelError};

/// Runs a freshly loaded model at every batch size on `rows` (recent engine input, or the
/// golden rows before there is any) so its first live call is not its slowest, and refuses it
/// if it produces a non-finite score.
pub fn warm_up(m: &mut LoadedModel, recent: &[f32], max_batch: usize) -> Result<Duration, ModelError> {
    let started = Instant::now();
    // Feature rows, NUM_FEATURES each (golden inputs are windows of consecutive rows).
    let rows: Vec<f32> = if recent.len() >= NUM_FEATURES {
        recent.to_vec()
    } else {
        m.manifest.golden.iter().flat_map(|g| g.features.iter().copied()).collect()
    };
    let n_rows = rows.len() / NUM_FEATURES;
    if n_rows == 0 {
        return Ok(started.elapsed());
    }
    let window = m.scorer.window();
    let mut batch = Vec::with_capacity(max_batch * window * NUM_FEATURES);
    let mut n = 1;
    while n <= max_batch {
        batch.clear();
        // Input i: `window` consecutive rows (cyclically) starting at row i.
        for i in 0..n * window {
            let r = (i / window + i % window) % n_rows;
            batch.extend_from_slice(&rows[r * NUM_FEATURES..(r + 1) * NUM_FEATURES]);
        }
        for _ in 0..10 {
            let out = m
                .scorer
                .score(&batch)
                .map_err(|e| ModelError::Runtime { model: m.manifest.label(), msg: e.to_string() })?;
            if out.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Refused {
                    model: m.manifest.label(),
                    problems: vec![crate::problem::Problem::new(
                        "model_file",
                        crate::problem::Kind::NonFinite,
                        "the model emits non-finite scores on real inputs during warm-up",
                    )],
                });
            }
        }
        n = if n == max_batch { max_batch + 1 } else { (n * 2).min(max_batch) };
    }
    Ok(started.elapsed())
}
