//! The portable reference: executes a [`Plan`] exactly as its module doc defines, one row at a
//! time, in plain scalar Rust with the standard library's rounding. It is the yardstick the
//! native kernel (bit-exact) and ONNX Runtime (within a model's stated bound) are held to.
//!
//! Control path only: model verification at load, tools and tests. Allocates freely.

use super::plan::{Dense, Plan, QParam};

/// `QuantizeLinear` to u8 of one float: clamp, round half to even, shift by the zero point. NaN
/// gives the lower bound. Returns the value and whether it was clamped.
pub fn quantize(x: f32, q: QParam) -> (u8, bool) {
    let lo = -q.zero as f32;
    let hi = (255 - q.zero) as f32;
    let t = x / q.scale;
    if t.is_nan() {
        return (0, true);
    }
    let clamped = t.round_ties_even() < lo || t.round_ties_even() > hi;
    ((t.clamp(lo, hi).round_ties_even() as i32 + q.zero) as u8, clamped)
}

/// Requantizes one accumulator of output channel `c`: the u8 output and whether it was clamped
/// at a saturating bound (see [`Dense::counts_low`]).
pub fn requantize(layer: &Dense, c: usize, acc: i32) -> (u8, bool) {
    let z = layer.output.zero;
    let t = acc as f32 * layer.requant_scale(c);
    let r = t.round_ties_even();
    let high = r + z as f32 > 255.0;
    let low = r + (z as f32) < 0.0;
    let y = (t.clamp(-z as f32, (255 - z) as f32).round_ties_even() as i32 + z).max(layer.floor());
    (y as u8, high || (low && layer.counts_low()))
}

/// One dense layer on u8 inputs: exact accumulation, then requantization. Adds the clamped
/// count to `clamped`.
pub fn dense(layer: &Dense, a: &[u8], clamped: &mut u64) -> Vec<u8> {
    (0..layer.outputs)
        .map(|c| {
            let w = &layer.weights[c * layer.inputs..(c + 1) * layer.inputs];
            let acc: i64 = a
                .iter()
                .zip(w)
                .map(|(&a, &w)| (i64::from(a) - i64::from(layer.input.zero)) * i64::from(w))
                .sum::<i64>()
                + i64::from(layer.bias[c]);
            let acc = i32::try_from(acc).expect("plan checked the accumulator fits int32");
            let (y, sat) = requantize(layer, c, acc);
            *clamped += u64::from(sat);
            y
        })
        .collect()
}

/// Scores one row; `clamped[s]` gains the clamped values of stage `s` (input, then each layer).
pub fn score_row(plan: &Plan, row: &[f32], clamped: &mut [u64]) -> f32 {
    assert_eq!(row.len(), plan.features);
    let mut a: Vec<u8> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let x = plan.front.iter().fold(x, |x, op| op.apply(i, x));
            let (q, sat) = quantize(x, plan.input);
            clamped[0] += u64::from(sat);
            q
        })
        .collect();
    for (l, layer) in plan.layers.iter().enumerate() {
        a = dense(layer, &a, &mut clamped[l + 1]);
    }
    let out = plan.output();
    (i32::from(a[0]) - out.zero) as f32 * out.scale
}

/// Scores rows (`n * features` floats); returns one score per row and the clamped counts per stage.
pub fn score(plan: &Plan, rows: &[f32]) -> (Vec<f32>, Vec<u64>) {
    let mut clamped = vec![0; plan.layers.len() + 1];
    let scores = rows.chunks_exact(plan.features).map(|r| score_row(plan, r, &mut clamped)).collect();
    (scores, clamped)
}
