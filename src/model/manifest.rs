//! `manifest.toml`: what a model file is, how to feed it and how to check it; and the
//! verification that turns a model directory into a ready [`LoadedModel`].
//!
//! Runs on the control path. A model is refused, with every reason spelled out, when its file's
//! sha256 differs from the manifest, its manifest is unsigned or badly signed while a public key
//! is configured, its feature schema hash differs from the server's, its input/output names,
//! types or shapes differ from the manifest, its golden rows do not reproduce, or the execution
//! provider asked for cannot run it (unless falling back to the CPU is allowed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, ValueType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backend::{self, BackendConfig, BackendReport};
use super::provider::{self, ExecutionProvider, ProviderConfig};
use super::scorer::{OrtScorer, Scorer};
use super::signing;
pub use super::signing::MANIFEST_FILE;
use crate::features;
use crate::files::{self, FileLimits};
use crate::policy::PolicyParams;
use crate::problem::{Kind, Problem, Problems};

/// A model version's `manifest.toml`: what the model is, what it reads and writes, how it was quantized and trained, and the rows that prove it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The model's name (its directory's parent).
    pub name: String,
    /// The version (its directory's name).
    pub version: String,
    /// What the model is, in words.
    #[serde(default)]
    pub description: String,
    /// Model file, relative to the manifest's directory.
    pub model_file: String,
    /// Hex sha256 of `model_file`.
    pub sha256: String,
    /// The version (same name, same models directory) of the FP32 model this one was quantized
    /// from: a third candidate of `backend = auto` where `backend.allow_fp32_sibling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32_sibling: Option<String>,
    /// The feature schema the model was trained on, its window and training ranges.
    pub features: FeatureSection,
    /// Input and output tensor names and shapes.
    pub io: IoSection,
    /// How the model was quantized.
    pub quantization: QuantizationSection,
    /// The policy its scores are served with (unless the config overrides it).
    pub policy: PolicyParams,
    /// Largest absolute difference allowed between a golden row's expected and actual output.
    pub golden_tolerance: f32,
    /// Feature rows with the outputs the model must reproduce when loaded.
    pub golden: Vec<GoldenRow>,
    /// The verification set every backend is held to at load (required for INT8 models the
    /// native kernel covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySection>,
    /// The native kernel's saturation on the validation period (training records it): the
    /// baseline of `quantd_quant_saturation_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<SaturationSection>,
    /// Free-form training facts (data, split, metrics); informational.
    #[serde(default)]
    pub training: toml::Table,
}

/// `[features]`: the schema, the window and the training ranges.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSection {
    /// The schema's version (`quantd-features/v1`).
    pub schema_version: String,
    /// The schema's hash; the server refuses a model trained on another schema.
    pub schema_hash: String,
    /// The feature names, in input order.
    pub names: Vec<String>,
    /// Feature rows per model input: 1 (the latest row, input `[-1, F]`) or T (the symbol's
    /// last T rows, oldest first, input `[-1, T, F]`; the engine keeps a ring per symbol).
    #[serde(default = "one")]
    pub window: usize,
    /// Smallest value of each feature in the training data (with `train_max`: the range the
    /// risk layer's kill switch checks live features against). Empty: no range check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_min: Vec<f32>,
    /// Each feature's largest training value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train_max: Vec<f32>,
}

fn one() -> usize {
    1
}

/// Largest window a manifest may ask for.
pub const MAX_WINDOW: usize = 256;

/// The model input's shape for a window of `window` feature rows, -1 for the batch: `[-1, 14]`
/// for one row, `[-1, window, 14]` otherwise.
pub fn input_shape(window: usize) -> Vec<i64> {
    let f = features::NUM_FEATURES as i64;
    if window == 1 { vec![-1, f] } else { vec![-1, window as i64, f] }
}

impl FeatureSection {
    /// (min, max) per feature when the manifest gives the training ranges.
    pub fn ranges(&self) -> Option<Vec<(f32, f32)>> {
        (!self.train_min.is_empty())
            .then(|| self.train_min.iter().copied().zip(self.train_max.iter().copied()).collect())
    }
}

/// `[io]`: the model's input and output.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IoSection {
    /// The input tensor's name.
    pub input: String,
    /// `[-1, F]`: a dynamic batch of feature vectors.
    pub input_shape: Vec<i64>,
    /// The output tensor's name.
    pub output: String,
    /// `[-1, 1]`: one score per row.
    pub output_shape: Vec<i64>,
    /// What the score means (units, horizon).
    pub output_meaning: String,
    /// How the policy reads the score (default `return_bps`).
    #[serde(default)]
    pub output_kind: OutputKind,
}

/// What a model's one output is, and so where its neutral point lies: the policy sizes
/// `score - centre` against the manifest's thresholds, in the output's own units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, strum::IntoStaticStr, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OutputKind {
    /// A predicted forward return in bps (quantd's own models): neutral at 0.
    #[default]
    ReturnBps,
    /// A probability that the price goes up: neutral at 0.5.
    PUp,
    /// A signed class score or logit (positive: up): neutral at 0.
    Score,
}

impl OutputKind {
    /// The output's neutral point: no view, no position.
    pub fn center(self) -> f64 {
        match self {
            OutputKind::PUp => 0.5,
            OutputKind::ReturnBps | OutputKind::Score => 0.0,
        }
    }
}

/// `[quantization]`: how the model was quantized, as recorded by training.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizationSection {
    /// e.g. `ptq_static_qdq`, `qat_qdq`, `dynamic`, `fp32`.
    pub method: String,
    /// Weight type and granularity, in words.
    #[serde(default)]
    pub weights: String,
    /// Activation type and granularity, in words.
    #[serde(default)]
    pub activations: String,
    /// How activation ranges were calibrated, in words.
    #[serde(default)]
    pub calibration: String,
}

/// Fewest rows a verification set may hold.
pub const MIN_VERIFY_ROWS: usize = 1000;

/// `[verify]`: real feature rows, made by training, on which every backend is compared with the
/// model's reference semantics at load.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// A `.npy` of f32 model inputs, `[rows, window * features]`, beside the manifest.
    pub file: String,
    /// Hex sha256 of `file`.
    pub sha256: String,
    /// Largest difference from the reference, in output steps, with which ONNX Runtime may serve
    /// this model (0: exact).
    #[serde(default)]
    pub ort_max_steps: u32,
}

/// The share of values the native kernel clamped at an integer limit, per stage, on the
/// validation period: what the serve-time ratio is compared with (the quantization-collapse
/// alert, `deploy/prometheus/alerts.yml`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaturationSection {
    /// Validation rows the ratios were measured on.
    pub rows: u64,
    /// Clamped share per stage: `input`, `layer0`, `layer1`, ...
    pub baseline: std::collections::BTreeMap<String, f64>,
}

/// A golden row: an input and the output the model must reproduce at every load.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenRow {
    /// The input row (window × features, flattened).
    pub features: Vec<f32>,
    /// The expected output.
    pub output: Vec<f32>,
}

/// Why a model version was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid.
    #[error("{path}: invalid manifest: {msg}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// The model failed checks; every problem is listed.
    #[error("model {model} refused:\n  - {}", crate::problem::bullet_list(problems))]
    Refused {
        /// The model's `name@version`.
        model: String,
        /// What failed, typed.
        problems: Vec<Problem>,
    },
    /// ONNX Runtime could not build or run its session.
    #[error("model {model}: ONNX Runtime: {msg}")]
    Runtime {
        /// The model's `name@version`.
        model: String,
        /// ONNX Runtime's message.
        msg: String,
    },
    /// The models directory holds no version.
    #[error("no model found under {0}: expected <name>/<version>/manifest.toml")]
    NoneFound(PathBuf),
    /// The configured model or version is not there.
    #[error("model {0} not found")]
    NotFound(String),
    /// Several model names and nothing says which to serve.
    #[error(
        "several model names under {dir} ({names}); choose one with `model = \"name\"` or \"name@version\" in the config, or name it in {dir}/DEFAULT"
    )]
    Ambiguous {
        /// The models directory.
        dir: PathBuf,
        /// The names found.
        names: String,
    },
}

impl ModelError {
    /// A short stable code for metrics (`quantd_model_failures_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::Io { .. } => "io",
            ModelError::Manifest { .. } => "manifest",
            ModelError::Runtime { .. } => "runtime",
            ModelError::NoneFound(_) | ModelError::NotFound(_) | ModelError::Ambiguous { .. } => "not_found",
            ModelError::Refused { problems, .. } => crate::problem::reason(problems),
        }
    }
}

impl Manifest {
    /// Reads and parses a manifest (within the manifest size limit).
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = files::read_regular_text(path, FileLimits::default().max_manifest_bytes)
            .map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, ModelError> {
        toml::from_str(text).map_err(|e| ModelError::Manifest { path: path.to_owned(), msg: e.to_string() })
    }

    /// `name@version`, the label every signal carries.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Checks that need no ONNX Runtime: schema and shapes against this server's features.
    pub fn check_static(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        let ours = features::schema_hash();
        p.check(self.features.schema_hash != ours, "features.schema_hash", Schema, || {
            format!(
                "feature schema hash {} differs from this server's {ours} ({}); retrain on `quantd features` output",
                self.features.schema_hash,
                features::SCHEMA_VERSION
            )
        });
        let names: Vec<_> = features::names().collect();
        p.check(self.features.names != names, "features.names", Schema, || {
            format!("feature names {:?} differ from this server's {:?}", self.features.names, names)
        });
        let (lo, hi) = (&self.features.train_min, &self.features.train_max);
        let ranges_ok = (lo.is_empty() && hi.is_empty())
            || (lo.len() == names.len() && hi.len() == names.len() && lo.iter().zip(hi).all(|(l, h)| l <= h));
        p.check(!ranges_ok, "features.train_min", Manifest, || {
            format!("features.train_min/train_max must both be empty or hold {} values with min <= max", names.len())
        });
        let window = self.features.window;
        p.check(!(1..=MAX_WINDOW).contains(&window), "features.window", IoMismatch, || {
            format!("features.window {window} must be in 1..={MAX_WINDOW}")
        });
        let expected = input_shape(window);
        p.check(self.io.input_shape != expected, "io.input_shape", IoMismatch, || {
            format!("manifest input_shape {:?} is not {expected:?} (window {window})", self.io.input_shape)
        });
        p.check(self.policy.warmup_ticks < window as u64, "policy.warmup_ticks", IoMismatch, || {
            format!(
                "policy.warmup_ticks {} must be >= features.window {window}: a symbol's first window must be full before it trades",
                self.policy.warmup_ticks
            )
        });
        p.check(self.io.output_shape != [-1, 1], "io.output_shape", IoMismatch, || {
            format!("manifest output_shape {:?} is not [-1, 1]", self.io.output_shape)
        });
        let plain_name = !self.model_file.is_empty()
            && Path::new(&self.model_file).file_name().is_some_and(|n| n == self.model_file.as_str());
        p.check(!plain_name || self.model_file.starts_with('.'), "model_file", Manifest, || {
            format!("model_file {:?} must be a plain file name inside the version directory", self.model_file)
        });
        p.check(
            !(self.golden_tolerance.is_finite() && self.golden_tolerance >= 0.0),
            "golden_tolerance",
            Golden,
            || format!("golden_tolerance {} must be a finite number >= 0", self.golden_tolerance),
        );
        p.check(self.golden.is_empty(), "golden", Golden, || "manifest has no golden rows".into());
        if let Some(v) = &self.fp32_sibling
            && (v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') || *v == self.version)
        {
            p.push(
                "fp32_sibling",
                Manifest,
                format!("fp32_sibling {v:?} must name another version directory of {}", self.name),
            );
        }
        if let Some(sat) = &self.saturation
            && let Some((stage, r)) = sat.baseline.iter().find(|(_, r)| !(0.0..=1.0).contains(*r))
        {
            p.push(
                "saturation.baseline",
                Manifest,
                format!("saturation.baseline.{stage} = {r} must be a share in 0..=1"),
            );
        }
        p.check(self.golden.len() > files::MAX_GOLDEN_ROWS, "golden", Golden, || {
            format!(
                "manifest has {} golden rows; at most {} are run at load",
                self.golden.len(),
                files::MAX_GOLDEN_ROWS
            )
        });
        let shown = self.golden.len().min(files::MAX_GOLDEN_ROWS);
        for (i, g) in self.golden[..shown].iter().enumerate() {
            if p.len() >= 16 {
                break; // enough to say what is wrong; the rest is the same story
            }
            if g.features.len() != window.max(1) * features::NUM_FEATURES || g.output.len() != 1 {
                p.push(
                    format!("golden[{i}]"),
                    Golden,
                    format!("golden row {i} has {} features and {} outputs", g.features.len(), g.output.len()),
                );
            }
        }
        if let Err(e) = self.policy.validate() {
            p.push("policy", Manifest, format!("policy: {e}"));
        }
        p
    }
}

/// The sha256 of a file, hex (read within the model size limit).
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    read_hashed(path, FileLimits::default().max_model_bytes).map(|(_, sha256)| sha256)
}

/// A file from a model directory, read once under `limit`, with its sha256 (hex): what is
/// checked against the manifest is what is then used.
pub fn read_hashed(path: &Path, limit: u64) -> Result<(Vec<u8>, String), ModelError> {
    let bytes = files::read_regular(path, limit).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha256))
}

/// How every model of a server is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Tensors are pre-allocated for batches of 1..=max_batch.
    pub max_batch: usize,
    /// The execution provider and what to do when it cannot run.
    pub provider: ProviderConfig,
    /// When set, `manifest.toml.sig` must be this key's signature of the manifest.
    pub public_key: Option<ed25519_dalek::VerifyingKey>,
    /// Largest `features.window` the engine keeps rows for (`engine.max_window`).
    pub max_window: usize,
    /// Which backends may serve, and the native kernel's ISA level.
    pub backend: BackendConfig,
    /// Size limits on the files read (`registry.max_model_bytes`, `max_manifest_bytes`).
    pub limits: FileLimits,
}

impl LoadOptions {
    /// CPU provider, no signature required, any window.
    pub fn cpu(max_batch: usize) -> Self {
        Self {
            max_batch,
            provider: ProviderConfig::default(),
            public_key: None,
            max_window: MAX_WINDOW,
            backend: BackendConfig::default(),
            limits: FileLimits::default(),
        }
    }
}

/// A verified model, ready to hand to the engine.
pub struct LoadedModel {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The version directory.
    pub dir: PathBuf,
    /// The scorer the engine runs (native kernel or ONNX Runtime).
    pub scorer: Scorer,
    /// The execution provider running the session (CPU after a fallback).
    pub provider: ExecutionProvider,
    /// Which backend serves and why (native kernel or ONNX Runtime).
    pub backend: BackendReport,
    /// Reading and checking the manifest, the file's sha256, shapes and golden rows.
    pub verify_time: Duration,
    /// Building the ONNX Runtime session (graph optimisation included).
    pub load_time: Duration,
}

fn shape_ok(actual: &[i64], expected: &[i64]) -> bool {
    // ONNX uses -1 (or a symbolic dim, also reported as -1) for the dynamic batch.
    actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, e)| a == e || (*e == -1 && *a <= 0))
}

fn check_io(session: &Session, m: &Manifest) -> Problems {
    let mut p = Problems::new();
    let describe = |t: &ValueType| match t {
        ValueType::Tensor { ty, shape, .. } => format!("{ty:?} {:?}", &shape[..]),
        other => format!("{other:?}"),
    };
    let check = |kind: &str, outlets: &[ort::value::Outlet], name: &str, shape: &[i64], p: &mut Problems| {
        let field = format!("io.{kind}");
        p.check(outlets.len() != 1, &field, Kind::IoMismatch, || {
            format!("model has {} {kind}s; quantd feeds exactly one", outlets.len())
        });
        match outlets.iter().find(|o| o.name() == name) {
            None => p.push(
                field,
                Kind::IoMismatch,
                format!(
                    "model has no {kind} named {name:?} (it has {:?})",
                    outlets.iter().map(|o| o.name()).collect::<Vec<_>>()
                ),
            ),
            Some(o) => match o.dtype() {
                ValueType::Tensor { ty: TensorElementType::Float32, shape: s, .. } if shape_ok(s, shape) => {}
                t => p.push(
                    field,
                    Kind::IoMismatch,
                    format!("model {kind} {name:?} is {}, manifest says Float32 {shape:?}", describe(t)),
                ),
            },
        }
    };
    check("input", session.inputs(), &m.io.input, &m.io.input_shape, &mut p);
    check("output", session.outputs(), &m.io.output, &m.io.output_shape, &mut p);
    p
}

/// Scores of many model inputs and the native kernel's saturation over them (`quantd score`).
#[derive(Debug, Serialize)]
pub struct ScoredRows {
    /// One score per input row.
    pub scores: Vec<f32>,
    /// Clamped share per stage over these rows (`None` on ONNX Runtime, which has no counters).
    pub saturation: Option<std::collections::BTreeMap<String, f64>>,
}

impl LoadedModel {
    /// Scores `rows` (`n * width` floats) in calls of at most `batch` inputs (capped at the
    /// load's `max_batch`), on the scorer the model serves on.
    pub fn score_rows(&mut self, rows: &[f32], batch: usize) -> Result<ScoredRows, super::ScoreError> {
        let width = self.scorer.width();
        let batch = batch.clamp(1, self.scorer.max_batch());
        let monitor = self.scorer.saturation();
        let before = monitor.as_ref().map(|m| m.snapshot());
        let mut scores = Vec::with_capacity(rows.len() / width);
        for chunk in rows.chunks(batch * width) {
            scores.extend_from_slice(self.scorer.score(chunk)?);
        }
        let saturation = monitor.zip(before).and_then(|(m, before)| {
            let ratios = m.ratios(&before, &m.snapshot())?;
            Some(m.stages.iter().cloned().zip(ratios).collect())
        });
        Ok(ScoredRows { scores, saturation })
    }

    /// [`LoadedModel::load_with`] on the CPU provider with no signature check.
    pub fn load(dir: &Path, max_batch: usize) -> Result<Self, ModelError> {
        Self::load_with(dir, &LoadOptions::cpu(max_batch))
    }

    /// Reads `dir/manifest.toml`, verifies everything (signature, sha256, schema, shapes),
    /// builds the session on the configured execution provider with tensors for batches up to
    /// `max_batch`, and runs the golden rows. Every problem found is reported.
    pub fn load_with(dir: &Path, opts: &LoadOptions) -> Result<Self, ModelError> {
        let started = Instant::now();
        let manifest_path = dir.join(MANIFEST_FILE);
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            files::real_dir(d).map_err(|source| ModelError::Io { path: d.to_owned(), source })?;
        }
        let text = files::read_regular_text(&manifest_path, opts.limits.max_manifest_bytes)
            .map_err(|source| ModelError::Io { path: manifest_path.clone(), source })?;
        let manifest = Manifest::parse(&manifest_path, &text)?;
        let label = manifest.label();
        let mut problems = Problems::new();
        if let Some(key) = &opts.public_key
            && let Err(why) = signing::verify(dir, text.as_bytes(), key)
        {
            problems.push(signing::SIGNATURE_FILE, Kind::Signature, why);
        }
        problems.extend(manifest.check_static());
        problems.check(manifest.features.window > opts.max_window, "features.window", Kind::IoMismatch, || {
            format!(
                "features.window {} exceeds this server's engine.max_window {}",
                manifest.features.window, opts.max_window
            )
        });
        // models/<name>/<version>/: the directory must say what the manifest says.
        let dir_version = dir.file_name().and_then(|v| v.to_str()).unwrap_or_default();
        let dir_name = dir.parent().and_then(|n| n.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
        problems.check(
            (dir_name, dir_version) != (manifest.name.as_str(), manifest.version.as_str()),
            "version",
            Kind::Manifest,
            || format!("manifest says {label} but the directory is {dir_name}/{dir_version}"),
        );
        let model_path = dir.join(&manifest.model_file);
        // What was hashed is what is loaded: ONNX Runtime gets these bytes, not the path.
        let (model_bytes, actual) = read_hashed(&model_path, opts.limits.max_model_bytes)?;
        problems.check(actual != manifest.sha256, "sha256", Kind::Sha256, || {
            format!("sha256 of {} is {actual}, manifest says {}", manifest.model_file, manifest.sha256)
        });
        if !problems.is_empty() {
            return Err(ModelError::Refused { model: label, problems: problems.into_vec() });
        }
        let runtime = |msg: String| ModelError::Runtime { model: label.clone(), msg };
        let env = super::runtime::environment().ok_or_else(|| runtime("ONNX Runtime is not initialised".into()))?;
        let load_started = Instant::now();
        let builder = (|| -> Result<_, String> {
            let b = Session::builder(env).map_err(|e| e.to_string())?;
            let b = b.with_intra_threads(1).map_err(|e| e.to_string())?;
            let b = b.with_inter_threads(1).map_err(|e| e.to_string())?;
            let b = b.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| e.to_string())?;
            b.with_intra_op_spinning(false).map_err(|e| e.to_string())
        })();
        let mut builder = builder.map_err(runtime)?;
        let provider = provider::register(&opts.provider, &mut builder).map_err(|why| ModelError::Refused {
            model: label.clone(),
            problems: vec![Problem::new("execution_provider", Kind::Provider, why)],
        })?;
        let session = builder
            .commit_from_memory(&model_bytes)
            .map_err(|e| runtime(format!("cannot load {}: {e}", model_path.display())))?;
        let load_time = load_started.elapsed();
        check_io(&session, &manifest)
            .into_result()
            .map_err(|problems| ModelError::Refused { model: label.clone(), problems })?;
        let ort_scorer = OrtScorer::new(
            session,
            &manifest.io.input,
            &manifest.io.output,
            (manifest.features.window, features::NUM_FEATURES),
            1,
            opts.max_batch.max(1),
        )
        .map_err(|e| runtime(e.to_string()))?;
        let (mut scorer, backend) = choose_backend(dir, &manifest, opts, (&model_path, &model_bytes), ort_scorer)?;
        let mut problems = Problems::new();
        // The FP32 sibling reproduced its own golden rows when it was loaded; this model's are
        // the INT8 outputs.
        let golden = if backend.backend == backend::FP32_SIBLING { &[][..] } else { &manifest.golden[..] };
        for (i, g) in golden.iter().enumerate() {
            let got = scorer.score(&g.features).map_err(|e| runtime(e.to_string()))?[0];
            let want = g.output[0];
            problems.check(
                !(got.is_finite() && (got - want).abs() <= manifest.golden_tolerance),
                &format!("golden[{i}]"),
                Kind::Golden,
                || {
                    format!(
                        "golden row {i}: output {got} differs from expected {want} by more than {} ({} backend)",
                        manifest.golden_tolerance, backend.backend
                    )
                },
            );
        }
        problems.into_result().map_err(|problems| ModelError::Refused { model: label, problems })?;
        let verify_time = started.elapsed().saturating_sub(load_time);
        Ok(Self { manifest, dir: dir.to_owned(), scorer, provider, backend, verify_time, load_time })
    }
}

/// Reads model inputs from a `.npy`: `[rows, width]` f32 (or `[rows, window, features]`).
pub fn read_rows(path: &Path, width: usize) -> Result<Vec<f32>, String> {
    let bytes = files::read_regular(path, FileLimits::default().max_model_bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    rows_from_npy(&bytes, path, width)
}

/// [`read_rows`] on a `.npy` already read from `path` (named in the errors).
fn rows_from_npy(bytes: &[u8], path: &Path, width: usize) -> Result<Vec<f32>, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let shape = npy.shape().to_vec();
    let rows: Vec<f32> = npy.into_vec().map_err(|e| format!("{}: not f32: {e}", path.display()))?;
    let per_row: u64 = shape.iter().skip(1).product();
    if shape.is_empty() || per_row as usize != width {
        return Err(format!("{} has shape {shape:?}; each row must hold {width} floats", path.display()));
    }
    Ok(rows)
}

/// A verification set (see [`read_rows`]), read from `path`, of at least [`MIN_VERIFY_ROWS`] rows.
fn verify_set(bytes: &[u8], path: &Path, width: usize) -> Result<Vec<f32>, String> {
    let rows = rows_from_npy(bytes, path, width).map_err(|e| format!("verification set {e}"))?;
    if rows.len() / width < MIN_VERIFY_ROWS {
        return Err(format!(
            "verification set {} has {} rows; at least {MIN_VERIFY_ROWS} are needed",
            path.display(),
            rows.len() / width
        ));
    }
    Ok(rows)
}

/// The FP32 sibling's scorer when `auto` may consider it: loaded as a model of its own on ONNX
/// Runtime (sha256, golden rows), and required to be FP32 with this model's inputs.
fn fp32_sibling(
    dir: &Path,
    manifest: &Manifest,
    opts: &LoadOptions,
    choice: backend::BackendChoice,
) -> Option<Result<OrtScorer, String>> {
    let version = manifest.fp32_sibling.as_ref()?;
    if !opts.backend.allow_fp32_sibling || choice != backend::BackendChoice::Auto {
        return None;
    }
    let mut sib_opts = opts.clone();
    sib_opts.backend =
        BackendConfig { default: backend::BackendChoice::Ort, models: Default::default(), ..opts.backend.clone() };
    sib_opts.backend.allow_fp32_sibling = false;
    let sibling = dir.parent().unwrap_or(dir).join(version);
    Some(match LoadedModel::load_with(&sibling, &sib_opts) {
        Err(e) => Err(format!("the FP32 sibling {}@{version} cannot serve: {e}", manifest.name)),
        Ok(s) if s.manifest.quantization.method != "fp32" => Err(format!(
            "the FP32 sibling {} is quantized ({}), not FP32",
            s.manifest.label(),
            s.manifest.quantization.method
        )),
        Ok(s) if s.manifest.features.window != manifest.features.window => Err(format!(
            "the FP32 sibling {} takes a window of {} rows, not {}",
            s.manifest.label(),
            s.manifest.features.window,
            manifest.features.window
        )),
        Ok(s) => match s.scorer {
            Scorer::Ort(o) => Ok(o),
            Scorer::Native(_) => unreachable!("loaded on ONNX Runtime"),
        },
    })
}

/// The backend that serves the model on this CPU (see [`backend`]), checked on the manifest's
/// verification set followed by its golden rows. `model` is the model file's path and the bytes
/// whose sha256 was checked: the native kernel is planned from those bytes, not a second read.
fn choose_backend(
    dir: &Path,
    manifest: &Manifest,
    opts: &LoadOptions,
    (model_path, model_bytes): (&Path, &[u8]),
    ort_scorer: OrtScorer,
) -> Result<(Scorer, BackendReport), ModelError> {
    let label = manifest.label();
    let refused = |field: &str, kind: Kind, why: Vec<String>| ModelError::Refused {
        model: label.clone(),
        problems: why.into_iter().map(|d| Problem::new(field, kind, d)).collect(),
    };
    let window = manifest.features.window;
    let width = window * features::NUM_FEATURES;
    let proto = crate::int8::onnx::decode_model(model_bytes, model_path);
    let plan = match &proto {
        Ok(model) if window == 1 => crate::int8::Plan::from_model(model, width),
        Ok(_) => Err(crate::int8::Unsupported(format!("a window of {window} rows (the native kernel takes one)"))),
        Err(e) => Err(crate::int8::Unsupported(e.clone())),
    };
    let max_abs_weight = proto.ok().and_then(|m| crate::int8::onnx::max_abs_int8(m.graph.as_ref()?).ok());
    let mut rows = match &manifest.verify {
        Some(v) => {
            let path = dir.join(&v.file);
            let (bytes, actual) = read_hashed(&path, opts.limits.max_model_bytes)?;
            if actual != v.sha256 {
                return Err(refused(
                    "verify.sha256",
                    Kind::Sha256,
                    vec![format!("sha256 of verification set {} is {actual}, manifest says {}", v.file, v.sha256)],
                ));
            }
            verify_set(&bytes, &path, width).map_err(|e| refused("verify", Kind::Backend, vec![e]))?
        }
        None if plan.is_ok() => {
            return Err(refused(
                "verify",
                Kind::Backend,
                vec![format!(
                    "INT8 model without a verification set: add [verify] with a .npy of at least {MIN_VERIFY_ROWS} real feature rows (training writes one)"
                )],
            ));
        }
        None => Vec::new(),
    };
    rows.extend(manifest.golden.iter().filter(|g| g.features.len() == width).flat_map(|g| g.features.iter().copied()));
    let choice = opts.backend.for_model(&manifest.name);
    let input = backend::Inputs {
        choice,
        config: &opts.backend,
        int8: plan.is_ok() || manifest.quantization.method != "fp32",
        plan,
        rows: &rows,
        width,
        max_batch: opts.max_batch.max(1),
        ort_max_steps: manifest.verify.as_ref().map_or(0, |v| v.ort_max_steps),
        ort_exact: crate::int8::isa::ort_u8s8_exact_for(max_abs_weight),
        fp32_sibling: fp32_sibling(dir, manifest, opts, choice),
    };
    let (scorer, report) = backend::choose(input, ort_scorer).map_err(|why| refused("backend", Kind::Backend, why))?;
    tracing::info!(model = %label, backend = report.backend, isa = report.isa, "backend: {}", report.summary());
    Ok((scorer, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest without `io.output_kind` is a return in bps (every manifest written before the
    /// key existed); a probability is neutral at 0.5.
    #[test]
    fn output_kind_defaults_to_a_return_and_names_its_neutral_point() {
        let io = |extra: &str| -> IoSection {
            toml::from_str(&format!(
                "input = \"x\"\ninput_shape = [-1, 14]\noutput = \"y\"\noutput_shape = [-1, 1]\noutput_meaning = \"\"\n{extra}"
            ))
            .unwrap()
        };
        assert_eq!(io("").output_kind, OutputKind::ReturnBps);
        assert_eq!(io("output_kind = \"p_up\"").output_kind.center(), 0.5);
        assert_eq!(io("output_kind = \"score\"").output_kind.center(), 0.0);
        assert!(toml::from_str::<IoSection>("output_kind = \"odds\"").is_err());
        let written = toml::to_string(&io("output_kind = \"p_up\"")).unwrap();
        assert!(written.contains("output_kind = \"p_up\""), "{written}");
    }
}
