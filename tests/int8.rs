//! The INT8 path on real data, on whatever CPU runs the suite (it prints which features it has):
//!
//! - the native kernel is bit-exact with the reference semantics on 100k+ real feature rows, at
//!   every ISA level this CPU runs (portable included);
//! - ONNX Runtime against the reference for every committed INT8 model: within the manifest's
//!   bound, or refused on this CPU with the missing feature named; every committed model has
//!   reduced-range weights, so it loads on `auto` and on ONNX Runtime on any x86 CPU;
//! - a graph the native kernel does not cover runs on ONNX Runtime; a crafted model whose weights
//!   saturate `VPMADDUBSW` is served natively; `auto` picks one backend and reports it.

mod common;

use std::path::{Path, PathBuf};

use quantd::dataset::FeatureEngine;
use quantd::features::NUM_FEATURES;
use quantd::int8::{Isa, NativeKernel, Plan, isa, reference};
use quantd::model::{BackendChoice, BackendConfig, LoadOptions, LoadedModel, ModelError};

fn model(dir: &str) -> PathBuf {
    common::repo().join("models").join(dir)
}

/// Every feature row the engine computes for the recorded USDⓈ-M BTCUSDT and ETHUSDT ticks.
fn real_rows() -> Vec<f32> {
    let mut out = Vec::new();
    for sym in ["btcusdt", "ethusdt"] {
        let files = [
            common::shared_ticks(&format!("binance_usdm_{sym}_20240808_quotes.csv.gz")),
            common::shared_ticks(&format!("binance_usdm_{sym}_20240808_trades.csv.gz")),
        ];
        let mut engine = FeatureEngine::new(16, 16);
        let mut row = [0f32; NUM_FEATURES];
        for t in quantd::tickfile::read_all(&files).unwrap() {
            if engine.update(&t, &mut row).is_ok() {
                out.extend_from_slice(&row);
            }
        }
    }
    out
}

fn options(choice: BackendChoice, native_isa: &str) -> LoadOptions {
    let mut o = LoadOptions::cpu(64);
    o.backend =
        BackendConfig { default: choice, native_isa: native_isa.into(), timing_calls: 50, ..Default::default() };
    o
}

fn init() {
    quantd::model::runtime::init(None).expect("ONNX Runtime (run `make setup`)");
    println!("CPU {}; native levels {:?}", isa::cpu_flags(), Isa::available_levels());
}

/// The committed INT8 models of one feature row: the graphs the native kernel covers.
const NATIVE_MODELS: [&str; 5] = [
    "quantd-mlp/1",
    "quantd-mlp/2",
    "quantd-mlp/2-ptq-minmax",
    "quantd-mlp/2-ptq-entropy",
    "quantd-mlp/2-ptq-percentile",
];

#[test]
fn native_is_bit_exact_with_the_reference_on_real_rows_at_every_level() {
    init();
    let rows = real_rows();
    assert!(rows.len() / NUM_FEATURES >= 100_000, "{} rows", rows.len() / NUM_FEATURES);
    for dir in ["quantd-mlp/1", "quantd-mlp/2"] {
        let plan = Plan::from_file(&model(dir).join("model.onnx"), NUM_FEATURES).unwrap();
        let (want, clamped) = reference::score(&plan, &rows);
        println!("{dir}: {} rows, clamped per stage {clamped:?}", want.len());
        for level in Isa::available_levels() {
            let mut k = NativeKernel::new(&plan, level, 64).unwrap();
            for batch in [1, 7, 64] {
                let got: Vec<f32> = rows.chunks(batch * NUM_FEATURES).flat_map(|c| k.score(c).to_vec()).collect();
                let bad = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                assert_eq!(bad, 0, "{dir} on {level} at batch {batch}: {bad} rows differ from the reference");
            }
        }
    }
}

/// Largest |served - reference| in output steps over `rows`, and the rows that differ.
fn vs_reference(m: &mut LoadedModel, dir: &str, rows: &[f32]) -> (u32, usize) {
    let plan = Plan::from_file(&model(dir).join("model.onnx"), NUM_FEATURES).unwrap();
    let (want, _) = reference::score(&plan, rows);
    let step = plan.output().scale;
    let got: Vec<f32> = rows.chunks(64 * NUM_FEATURES).flat_map(|c| m.scorer.score(c).unwrap().to_vec()).collect();
    let steps: Vec<u32> = got.iter().zip(&want).map(|(g, w)| ((g - w).abs() / step).round() as u32).collect();
    (steps.iter().copied().max().unwrap_or(0), steps.iter().filter(|&&s| s > 0).count())
}

#[test]
fn onnx_runtime_matches_the_reference_within_the_manifest_bound_or_is_refused_naming_the_cpu_feature() {
    init();
    let rows = real_rows();
    let rows = &rows[..30_000 * NUM_FEATURES];
    for dir in NATIVE_MODELS {
        let forced = LoadedModel::load_with(&model(dir), &options(BackendChoice::Ort, "auto"));
        match forced {
            Ok(mut m) => {
                let (worst, off) = vs_reference(&mut m, dir, rows);
                println!(
                    "{dir}: ONNX Runtime within {worst} output steps of the reference ({off} of 30000 rows differ)"
                );
                assert_eq!(worst, 0, "{dir}: the manifests state a bound of 0 steps");
                assert!(isa::ort_u8s8_exact() || worst == 0);
            }
            Err(e @ ModelError::Refused { .. }) => {
                let msg = e.to_string();
                println!("{dir}: ONNX Runtime refused on this CPU: {msg}");
                assert!(!isa::ort_u8s8_exact(), "{dir}: refused on a CPU with exact u8s8 kernels: {msg}");
                assert!(msg.contains("avx512_vnni") && msg.contains("VPMADDUBSW"), "{msg}");
                assert_eq!(e.reason(), "backend");
                // `auto` still serves it, natively and exactly.
                let m = LoadedModel::load_with(&model(dir), &options(BackendChoice::Auto, "auto")).unwrap();
                assert_eq!(m.backend.backend, "native");
            }
            Err(e) => panic!("{dir}: {e}"),
        }
    }
}

#[test]
fn every_committed_model_is_portable_and_loads_on_auto_and_on_onnx_runtime() {
    init();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(common::repo().join("models"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|v| v.unwrap().path())
        .filter(|p| p.join("manifest.toml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 14, "{dirs:?}");
    for dir in dirs {
        // Reduced-range int8 weights: exact under ONNX Runtime on every x86 CPU, VNNI or not.
        let proto = quantd::int8::onnx::read_model(&dir.join("model.onnx")).unwrap();
        let max_w = quantd::int8::onnx::max_abs_int8(proto.graph.as_ref().unwrap()).unwrap();
        assert!(max_w <= isa::VPMADDUBSW_SAFE_WEIGHT, "{}: int8 weights up to ±{max_w}", dir.display());
        let m = LoadedModel::load_with(&dir, &options(BackendChoice::Auto, "auto"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        println!("{}: {}", m.manifest.label(), m.backend.summary());
        if let Err(e) = LoadedModel::load_with(&dir, &options(BackendChoice::Ort, "auto")) {
            panic!("{} on ONNX Runtime: {e}", dir.display());
        }
    }
}

#[test]
fn auto_times_both_exact_backends_and_reports_its_pick() {
    init();
    let m = LoadedModel::load_with(&model("quantd-mlp/2"), &options(BackendChoice::Auto, "auto")).unwrap();
    println!("{}", m.backend.summary());
    assert!(["native", "ort"].contains(&m.backend.backend));
    assert_eq!(m.backend.verified_rows, 2048 + 8);
    let native = m.backend.candidates.iter().find(|c| c.backend == "native").unwrap();
    assert!(native.refused.is_none());
    if m.backend.candidates.iter().all(|c| c.refused.is_none()) {
        assert!(m.backend.candidates.iter().all(|c| c.p50_b1_us.is_some() && c.p50_max_us.is_some()));
    } else {
        assert_eq!(m.backend.backend, "native");
    }
    assert_eq!(m.scorer.saturation().is_some(), m.backend.backend == "native");
}

#[test]
fn auto_with_the_fp32_sibling_allowed_times_three_candidates_and_serves_one() {
    init();
    let mut opts = options(BackendChoice::Auto, "auto");
    opts.backend.allow_fp32_sibling = true;
    let m = LoadedModel::load_with(&model("quantd-mlp/2"), &opts).unwrap();
    println!("{}", m.backend.summary());
    assert_eq!(m.manifest.fp32_sibling.as_deref(), Some("2-fp32"));
    let names: Vec<_> = m.backend.candidates.iter().map(|c| c.backend).collect();
    assert_eq!(names, ["native", "ort", "fp32-sibling"]);
    for c in &m.backend.candidates {
        assert!(c.refused.is_none() && c.p50_b1_us.is_some() && c.p50_max_us.is_some(), "{c:?}");
    }
    assert!(names.contains(&m.backend.backend));
    assert_eq!(m.scorer.saturation().is_some(), m.backend.backend == "native");
    // Off by default: the sibling is not considered.
    let m = LoadedModel::load_with(&model("quantd-mlp/2"), &options(BackendChoice::Auto, "auto")).unwrap();
    assert!(m.backend.candidates.iter().all(|c| c.backend != "fp32-sibling"));
    // A sibling that cannot serve is a refused candidate, never a failed load.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("quantd-mlp");
    std::fs::create_dir_all(copy.join("2")).unwrap();
    for f in ["model.onnx", "manifest.toml", "verify.npy"] {
        std::fs::copy(model("quantd-mlp/2").join(f), copy.join("2").join(f)).unwrap();
    }
    let m = LoadedModel::load_with(&copy.join("2"), &opts).unwrap();
    let sib = m.backend.candidates.iter().find(|c| c.backend == "fp32-sibling").unwrap();
    assert!(sib.refused.as_deref().is_some_and(|r| r.contains("quantd-mlp@2-fp32")), "{sib:?}");
    assert_ne!(m.backend.backend, "fp32-sibling");
}

#[test]
fn every_native_level_can_be_forced_and_serves_the_same_scores() {
    init();
    let mut scores = Vec::new();
    for level in Isa::ALL {
        let r = LoadedModel::load_with(&model("quantd-mlp/2"), &options(BackendChoice::Native, level.label()));
        if !level.available() {
            let msg = r.err().unwrap().to_string();
            assert!(msg.contains(level.label()), "{msg}");
            continue;
        }
        let mut m = r.unwrap();
        assert_eq!((m.backend.backend, m.backend.isa), ("native", level.label()));
        let golden: Vec<f32> = m.manifest.golden.iter().flat_map(|g| g.features.clone()).collect();
        scores.push(m.scorer.score(&golden).unwrap().to_vec());
    }
    assert!(scores.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_graph_the_native_kernel_does_not_cover_runs_on_onnx_runtime() {
    init();
    let m = LoadedModel::load_with(&model("quantd-mlp/2-fp32"), &options(BackendChoice::Auto, "auto")).unwrap();
    assert_eq!(m.backend.backend, "ort");
    let native = &m.backend.candidates[0];
    assert!(native.refused.as_deref().unwrap().contains("does not cover"), "{native:?}");
    let err =
        LoadedModel::load_with(&model("quantd-mlp/2-fp32"), &options(BackendChoice::Native, "auto")).err().unwrap();
    assert!(err.to_string().contains("does not cover"), "{err}");
}

/// Copies `src` to a temp models dir with its weights pushed to the full int8 range (±127 on
/// every nonzero weight of the first hidden layer): every pair sum of `VPMADDUBSW` then overflows
/// int16 for large enough activations. The manifest's golden outputs and sha are re-made by the
/// reference (the model's own semantics), so only the backends' exactness decides.
fn saturating_copy(root: &Path) -> PathBuf {
    use prost::Message;
    use quantd::int8::onnx;
    let src = model("quantd-mlp/2");
    let dst = root.join("quantd-mlp/2");
    std::fs::create_dir_all(&dst).unwrap();
    let mut m = onnx::read_model(&src.join("model.onnx")).unwrap();
    let g = m.graph.as_mut().unwrap();
    let w = g.initializer.iter_mut().find(|t| t.name() == "_frozen_param1").unwrap();
    let raw = w.raw_data.as_mut().unwrap();
    for b in raw.iter_mut() {
        *b = if (*b as i8) >= 0 { 127 } else { (-127i8) as u8 };
    }
    std::fs::write(dst.join("model.onnx"), m.encode_to_vec()).unwrap();
    std::fs::copy(src.join("verify.npy"), dst.join("verify.npy")).unwrap();
    let plan = Plan::from_file(&dst.join("model.onnx"), NUM_FEATURES).unwrap();
    let mut text = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
    let mut manifest: quantd::model::Manifest = toml::from_str(&text).unwrap();
    for gr in &mut manifest.golden {
        gr.output = reference::score(&plan, &gr.features).0;
    }
    manifest.sha256 = quantd::model::manifest::sha256_file(&dst.join("model.onnx")).unwrap();
    text = toml::to_string(&manifest).unwrap();
    std::fs::write(dst.join("manifest.toml"), text).unwrap();
    dst
}

#[test]
fn a_model_that_saturates_vpmaddubsw_is_served_natively_and_onnx_runtime_only_where_exact() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = saturating_copy(tmp.path());
    let m = LoadedModel::load_with(&dir, &options(BackendChoice::Auto, "auto")).unwrap();
    println!("{}", m.backend.summary());
    match LoadedModel::load_with(&dir, &options(BackendChoice::Ort, "auto")) {
        Ok(_) => assert!(isa::ort_u8s8_exact(), "ONNX Runtime passed a saturating model without VNNI"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!isa::ort_u8s8_exact(), "{msg}");
            assert!(msg.contains("VPMADDUBSW") && msg.contains("avx512_vnni"), "{msg}");
            assert_eq!(m.backend.backend, "native");
        }
    }
    // The portable level is exact on any CPU.
    let p = LoadedModel::load_with(&dir, &options(BackendChoice::Native, "portable")).unwrap();
    assert_eq!(p.backend.isa, "portable");
}
