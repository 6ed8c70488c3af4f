//! The native kernel against the reference on crafted plans, at every ISA level this CPU runs.
//! (Real models and real feature rows: `tests/int8.rs`.)

use super::kernel::NativeKernel;
use super::plan::{Dense, FrontOp, Plan, QParam};
use super::{Isa, reference};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// A dense layer with int8 weights in `-w_max..=w_max` (and -128 when `w_max` is 127).
fn layer(rng: &mut StdRng, shape: (usize, usize), w_max: i8, input: QParam, output: QParam, relu: bool) -> Dense {
    let (inputs, outputs) = shape;
    let low = if w_max == 127 { -128 } else { -w_max };
    Dense {
        inputs,
        outputs,
        weights: (0..inputs * outputs).map(|_| rng.random_range(low..=w_max)).collect(),
        w_scale: (0..outputs).map(|_| rng.random_range(0.001..0.02)).collect(),
        bias: (0..outputs).map(|_| rng.random_range(-20_000..20_000)).collect(),
        input,
        output,
        relu,
    }
}

/// A 14-h-h-1 MLP with int8 weights up to `w_max` (127: the full range `VPMADDUBSW` saturates
/// on; 64: the reduced range, which the AVX2 level multiplies with it) and zero points of every kind.
fn crafted(rng: &mut StdRng, hidden: usize, w_max: i8) -> Plan {
    let q = |scale, zero| QParam { scale, zero };
    let f = 14;
    let (qi, q1, q2, qo) = (q(0.13, 123), q(0.05, 0), q(0.04, 17), q(0.03, 196));
    let relu = rng.random_bool(0.5);
    Plan {
        features: f,
        front: vec![
            FrontOp::Sub((0..f).map(|i| i as f32 * 0.1).collect()),
            FrontOp::Mul((0..f).map(|i| 1.0 + i as f32 * 0.05).collect()),
        ],
        input: qi,
        layers: vec![
            layer(rng, (f, hidden), w_max, qi, q1, true),
            layer(rng, (hidden, hidden), w_max, q1, q2, relu),
            layer(rng, (hidden, 1), w_max, q2, qo, false),
        ],
    }
}

fn rows(rng: &mut StdRng, n: usize, f: usize) -> Vec<f32> {
    (0..n * f)
        .map(|_| match rng.random_range(0..100) {
            0 => f32::NAN,
            1 => 1e30,
            2 => -1e30,
            3..10 => rng.random_range(-500.0..500.0),
            _ => rng.random_range(-20.0..20.0),
        })
        .collect()
}

#[test]
fn every_level_this_cpu_runs_is_bit_exact_with_the_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    println!("CPU {}; levels {:?}", super::isa::cpu_flags(), Isa::available_levels());
    for (hidden, w_max) in [1, 2, 3, 5, 16, 33, 128].into_iter().flat_map(|h| [(h, 127), (h, 64)]) {
        let plan = crafted(&mut rng, hidden, w_max);
        let x = rows(&mut rng, 3000, plan.features);
        let (want, want_clamped) = reference::score(&plan, &x);
        for isa in Isa::available_levels() {
            let mut k = NativeKernel::new(&plan, isa, 64).unwrap();
            let before = k.monitor().snapshot();
            let mut got = Vec::new();
            for (i, chunk) in x.chunks(plan.features * 37).enumerate() {
                let n = if i % 2 == 0 { chunk.len() } else { plan.features };
                for rows in chunk.chunks(n) {
                    got.extend_from_slice(k.score(rows));
                }
            }
            let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{isa} hidden {hidden} weights to ±{w_max}");
            let after = k.monitor().snapshot();
            let clamped: Vec<u64> = after.1.iter().zip(&before.1).map(|(a, b)| a - b).collect();
            assert_eq!(clamped, want_clamped, "{isa} hidden {hidden} weights to ±{w_max}: clamped counts");
            assert_eq!(after.0 - before.0, 3000);
        }
    }
}

#[test]
fn a_level_this_cpu_lacks_is_refused_by_name() {
    let mut rng = StdRng::seed_from_u64(1);
    let plan = crafted(&mut rng, 8, 127);
    for isa in Isa::ALL.into_iter().filter(|i| !i.available()) {
        let err = NativeKernel::new(&plan, isa, 1).err().unwrap();
        assert!(err.contains(isa.label()), "{err}");
    }
    assert!(Isa::Portable.available());
}

#[test]
fn the_saturation_counter_equals_a_hand_count() {
    // 2 features, input scale 1 zero 10: a feature clamps below -10 or above 245. One layer of
    // 2 outputs, output zero 0 without Relu (so the low clamp is the removed Relu, not counted)
    // and one layer of 1 output with zero 100 (both bounds count).
    let q = |scale, zero| QParam { scale, zero };
    let (qi, q1, qo) = (q(1.0, 10), q(1.0, 0), q(1.0, 100));
    let l1 = Dense {
        inputs: 2,
        outputs: 2,
        weights: vec![1, 0, 0, 1],
        w_scale: vec![1.0; 2],
        bias: vec![0; 2],
        input: qi,
        output: q1,
        relu: false,
    };
    let l2 = Dense {
        inputs: 2,
        outputs: 1,
        weights: vec![1, 1],
        w_scale: vec![1.0],
        bias: vec![0],
        input: q1,
        output: qo,
        relu: false,
    };
    let plan = Plan { features: 2, front: vec![], input: qi, layers: vec![l1, l2] };
    // Each row's hand count, as [input, layer0, layer1]:
    let cases: [([f32; 2], [u64; 3]); 5] = [
        ([1.0, 2.0], [0, 0, 0]),      // layer0 = (1, 2), layer1 = 3 → 103
        ([300.0, 2.0], [1, 0, 1]),    // input clamps 300 → 245; layer1 247 → 347 > 255
        ([-50.0, -3.0], [1, 0, 0]),   // input -50 → -10 clamps; layer0 (-10 → 0 uncounted, -3 → 0 uncounted)
        ([200.0, 200.0], [0, 0, 1]),  // layer1 400 + 100 clamps at 255
        ([f32::NAN, 0.0], [1, 0, 0]), // NaN → 0, i.e. -10 → layer0 0 uncounted
    ];
    let x: Vec<f32> = cases.iter().flat_map(|(r, _)| *r).collect();
    let hand: Vec<u64> = (0..3).map(|s| cases.iter().map(|(_, c)| c[s]).sum()).collect();
    assert_eq!(reference::score(&plan, &x).1, hand);
    for isa in Isa::available_levels() {
        let mut k = NativeKernel::new(&plan, isa, 8).unwrap();
        let scores = k.score(&x).to_vec();
        assert_eq!(scores, [3.0, 155.0, 0.0, 155.0, 0.0], "{isa}");
        assert_eq!(k.monitor().snapshot(), (5, hand.clone()), "{isa}");
    }
}

#[test]
fn onnx_runtime_counts_as_exact_for_weights_within_the_vpmaddubsw_bound_on_any_cpu() {
    // The bound: two u8 × s8 products fit an i16 pair sum at ±64, not at ±65.
    let pair = |w: i32| 2 * 255 * w;
    let bound = i32::from(super::isa::VPMADDUBSW_SAFE_WEIGHT);
    assert!(pair(bound) <= i32::from(i16::MAX) && pair(bound + 1) > i32::from(i16::MAX));
    assert!(super::isa::ort_u8s8_exact_for(Some(0)) && super::isa::ort_u8s8_exact_for(Some(64)));
    let vnni = super::isa::ort_u8s8_exact();
    assert_eq!(super::isa::ort_u8s8_exact_for(Some(65)), vnni);
    assert_eq!(super::isa::ort_u8s8_exact_for(None), vnni);
}
