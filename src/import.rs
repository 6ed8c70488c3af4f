//! `quantd import-model`: bring your own ONNX model. Reads a model made anywhere (scikit-learn,
//! PyTorch, a quantization tool), checks it against the engine's contract, computes everything
//! a manifest needs from recorded ticks run through the engine's own feature code, writes a
//! complete version directory, and loads it exactly as the server would. Runs on the caller's
//! thread (a tool, not the server).
//!
//! What it writes, in `<out>/<name>/<version>/` (staged beside it and renamed into place, so a
//! watching server never sees half a version):
//! - `model.onnx`, the bytes given;
//! - `verify.npy`: [`VERIFY_ROWS`] model inputs of warm symbols (past `--warmup-ticks`), spread
//!   over the ticks;
//! - `manifest.toml`: sha256, io names and shapes read from the graph, the feature schema and its
//!   hash, the window inferred from the input shape, the training ranges of those rows, golden
//!   rows with their outputs (the model's integer reference where quantd's kernel covers the
//!   graph, ONNX Runtime otherwise), the quantization read from the graph's operators, and
//!   policy thresholds from quantiles of the model's outputs on the ticks;
//! - `manifest.toml.sig` when a signing key is given.

use std::path::{Path, PathBuf};

use crate::features::{self, NUM_FEATURES};
use crate::files::FileLimits;
use crate::int8::onnx::pb;
use crate::model::manifest::{
    FeatureSection, GoldenRow, IoSection, LoadedModel, Manifest, OutputKind, QuantizationSection, VerifySection,
    input_shape, read_hashed, sha256_file,
};
use crate::model::scorer::OrtScorer;
use crate::model::{LoadOptions, signing};
use crate::policy::PolicyParams;
use crate::tick::{Symbol, Tick};
use crate::tickfile::TickReader;

/// Model inputs written to `verify.npy` (at least [`crate::model::manifest::MIN_VERIFY_ROWS`]).
pub const VERIFY_ROWS: usize = 2048;
/// Golden rows in the manifest.
pub const GOLDEN_ROWS: usize = 32;
/// Most inputs scored to set the policy thresholds.
const THRESHOLD_ROWS: usize = 20_000;

/// `quantd import-model`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct ImportOptions {
    /// The ONNX model: one FP32 input `[batch, 14]` (or `[batch, window, 14]`), one output `[batch, 1]`.
    #[arg(long)]
    pub onnx: PathBuf,
    /// The model name (`models/<name>/`).
    #[arg(long)]
    pub name: String,
    /// The version (`models/<name>/<version>/`); an existing version is never overwritten.
    #[arg(long)]
    pub version: String,
    /// Recorded ticks (canonical CSV, Binance captures or journal files): the verification and
    /// golden rows, the training ranges and the policy thresholds come from their features.
    #[arg(long, required = true, num_args = 1..)]
    pub ticks: Vec<PathBuf>,
    /// The FP32 model this one was quantized from: imported as version `<version>-fp32` and
    /// named as the sibling `backend = auto` may time.
    #[arg(long)]
    pub fp32: Option<PathBuf>,
    /// Sign the manifest with this ed25519 secret key (`quantd keygen`).
    #[arg(long)]
    pub sign: Option<PathBuf>,
    /// The models directory to write into.
    #[arg(long, default_value = "models")]
    pub out: PathBuf,
    /// What the output is: a return in bps, a probability of an up move (neutral at 0.5), or a
    /// signed class score.
    #[arg(long, value_enum, default_value = "return-bps")]
    pub output_kind: OutputKind,
    /// Ticks a symbol must see before it trades (at least the window).
    #[arg(long, default_value_t = 100)]
    pub warmup_ticks: u64,
    /// Quantile of |output - neutral| over the ticks at which a position opens.
    #[arg(long, default_value_t = 0.8)]
    pub entry_quantile: f64,
    /// Quantile at which an open position closes (at most the entry quantile).
    #[arg(long, default_value_t = 0.5)]
    pub exit_quantile: f64,
    /// Quantile at which the position is full size.
    #[arg(long, default_value_t = 0.98)]
    pub full_quantile: f64,
    /// A description for the manifest.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The model does not fit the engine's contract; the text says what to change.
    #[error("{model} does not fit quantd's contract: {why}")]
    Contract {
        /// The file.
        model: PathBuf,
        /// What is wrong and what to change.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The version directory exists already.
    #[error("{0} exists; a version is never overwritten (choose another --version)")]
    Exists(PathBuf),
    /// The ticks gave too few warm feature rows.
    #[error("the ticks give {got} model inputs of warm symbols; at least {need} are needed (give more ticks)")]
    TooFewRows {
        /// Inputs found.
        got: usize,
        /// Inputs needed.
        need: usize,
    },
    /// The tick files could not be read.
    #[error(transparent)]
    Ticks(#[from] crate::tickfile::TickFileError),
    /// ONNX Runtime failed on the model.
    #[error("{model}: ONNX Runtime: {msg}")]
    Runtime {
        /// The file.
        model: PathBuf,
        /// Its message.
        msg: String,
    },
    /// An option is out of range.
    #[error("{0}")]
    Options(String),
    /// The written version did not load as the server would load it (the directory was removed).
    #[error("the imported version does not load as the server would load it (removed): {0}")]
    Verify(#[from] crate::model::ModelError),
    /// Signing failed.
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
}

/// What was imported.
#[derive(Debug)]
pub struct Imported {
    /// The version directories written (the model, then its FP32 sibling).
    pub dirs: Vec<PathBuf>,
    /// The served backend and its ISA, as the server would choose it here.
    pub backend: String,
    /// The quantization read from the graph.
    pub quantization: String,
    /// The policy thresholds set from the ticks.
    pub policy: PolicyParams,
}

/// The graph as quantd will feed it: its io names, window, what its operators say about how it
/// was quantized, the integer kernel's plan of it where the kernel covers it, and one ONNX
/// Runtime scorer (read, decoded and built once per file).
struct Graph {
    input: String,
    output: String,
    window: usize,
    quantization: &'static str,
    bytes: Vec<u8>,
    sha256: String,
    plan: Option<crate::int8::Plan>,
    scorer: OrtScorer,
}

impl Graph {
    /// Scores `rows` (`n * window * 14` floats) with ONNX Runtime, 64 inputs per call.
    fn score(&mut self, rows: &[f32]) -> Result<Vec<f32>, String> {
        let width = self.window * NUM_FEATURES;
        let mut out = Vec::with_capacity(rows.len() / width);
        for chunk in rows.chunks(64 * width) {
            out.extend_from_slice(self.scorer.score(chunk).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

/// Imports `opts.onnx` (and its FP32 sibling) into `opts.out`. ONNX Runtime must be initialised.
pub fn import(opts: &ImportOptions) -> Result<Imported, ImportError> {
    check_options(opts)?;
    let mut graph = read_graph(&opts.onnx)?;
    let mut sibling = opts.fp32.as_deref().map(read_graph).transpose()?;
    if let Some(s) = &sibling
        && s.window != graph.window
    {
        return Err(ImportError::Options(format!(
            "--fp32 reads a window of {} rows, the model {}; a sibling must read the same inputs",
            s.window, graph.window
        )));
    }
    let inputs = model_inputs(&opts.ticks, graph.window, opts.warmup_ticks.max(graph.window as u64))?;
    let need = crate::model::manifest::MIN_VERIFY_ROWS;
    if inputs.n < need {
        return Err(ImportError::TooFewRows { got: inputs.n, need });
    }
    let mut dirs = Vec::new();
    // A failed import leaves nothing behind: the versions it wrote are removed again.
    let discard = |dirs: &[PathBuf]| {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    };
    let fp32_version = format!("{}-fp32", opts.version);
    if let Some(s) = &mut sibling {
        dirs.push(write_version(opts, &fp32_version, s, &inputs, None)?);
    }
    let named = sibling.is_some().then_some(fp32_version.as_str());
    match write_version(opts, &opts.version, &mut graph, &inputs, named) {
        Ok(dir) => dirs.push(dir),
        Err(e) => {
            discard(&dirs);
            return Err(e);
        }
    }
    let main = dirs.last().expect("written").clone();
    let loaded = LoadedModel::load_with(&main, &LoadOptions::cpu(64)).inspect_err(|_| discard(&dirs))?;
    Ok(Imported {
        dirs,
        backend: format!("{} ({})", loaded.backend.backend, loaded.backend.isa),
        quantization: graph.quantization.into(),
        policy: loaded.manifest.policy,
    })
}

fn check_options(o: &ImportOptions) -> Result<(), ImportError> {
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '@']) && s.len() <= 128;
    let mut bad = Vec::new();
    if !plain(&o.name) || !plain(&o.version) {
        bad.push("--name and --version must be plain directory names (no '/', '@' or leading '.')".to_owned());
    }
    let q = [o.exit_quantile, o.entry_quantile, o.full_quantile];
    if !(q.iter().all(|v| (0.0..1.0).contains(v)) && q[0] <= q[1] && q[1] <= q[2]) {
        bad.push(format!("quantiles must satisfy 0 <= exit {} <= entry {} <= full {} < 1", q[0], q[1], q[2]));
    }
    if bad.is_empty() { Ok(()) } else { Err(ImportError::Options(bad.join("; "))) }
}

/// Reads the model and checks it against the engine's contract, saying what to change.
fn read_graph(path: &Path) -> Result<Graph, ImportError> {
    let contract = |why: String| ImportError::Contract { model: path.to_owned(), why };
    let (bytes, sha256) = read_hashed(path, FileLimits::default().max_model_bytes).map_err(io_error)?;
    let proto = crate::int8::onnx::decode_model(&bytes, path).map_err(contract)?;
    let graph = proto.graph.as_ref().ok_or_else(|| contract("the file holds no graph".into()))?;
    if graph.initializer.iter().any(|t| t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)) {
        return Err(contract(
            "its weights are in an external data file; save them inside the model (torch.onnx.export(..., \
             external_data=False), or onnx.save_model(m, path, save_as_external_data=False))"
                .into(),
        ));
    }
    let runtime = |msg: String| ImportError::Runtime { model: path.to_owned(), msg };
    let session = session(&bytes).map_err(runtime)?;
    let (input, window) = check_input(session.inputs()).map_err(contract)?;
    let output = check_output(session.outputs()).map_err(contract)?;
    let width = window * NUM_FEATURES;
    let plan = (window == 1).then(|| crate::int8::Plan::from_model(&proto, width).ok()).flatten();
    let quantization = quantization(graph);
    let scorer =
        OrtScorer::new(session, &input, &output, (window, NUM_FEATURES), 1, 64).map_err(|e| runtime(e.to_string()))?;
    Ok(Graph { input, output, window, quantization, bytes, sha256, plan, scorer })
}

/// A file that could not be read: the I/O error with its path (`read_hashed` reports nothing else).
fn io_error(e: crate::model::ModelError) -> ImportError {
    match e {
        crate::model::ModelError::Io { path, source } => ImportError::Io { path, source },
        other => ImportError::Verify(other),
    }
}

fn check_input(inputs: &[ort::value::Outlet]) -> Result<(String, usize), String> {
    use ort::value::{TensorElementType, ValueType};
    let [input] = inputs else {
        return Err(format!("it has {} inputs; quantd feeds one, the feature rows", inputs.len()));
    };
    let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
        return Err(format!("input {:?} is not a tensor", input.name()));
    };
    if *ty != TensorElementType::Float32 {
        return Err(format!(
            "input {:?} is {ty:?}; quantd feeds float32 feature rows (cast inside the model, e.g. a Cast node, or \
             export with float32 inputs)",
            input.name()
        ));
    }
    let dims: Vec<i64> = shape.iter().copied().collect();
    let batch_fixed = dims.first().is_some_and(|d| *d > 0);
    let f = NUM_FEATURES as i64;
    let window = match dims.as_slice() {
        [_, w] if *w == f => 1,
        [_, t, w] if *w == f && *t >= 1 && *t as usize <= crate::model::manifest::MAX_WINDOW => *t as usize,
        _ => {
            return Err(format!(
                "input {:?} has shape {dims:?}; quantd feeds [batch, {f}] ({f} features: {}) or [batch, window, {f}] \
                 with a window of 1..={}",
                input.name(),
                features::names().collect::<Vec<_>>().join(", "),
                crate::model::manifest::MAX_WINDOW
            ));
        }
    };
    if batch_fixed {
        return Err(format!(
            "input {:?} has a fixed batch of {}; the engine batches ticks, so the first dimension must be dynamic \
             (torch.onnx.export(..., dynamic_axes={{'{0}': {{0: 'batch'}}}}) or dynamic_shapes; skl2onnx: \
             initial_types=[('{0}', FloatTensorType([None, {f}]))])",
            input.name(),
            dims[0]
        ));
    }
    Ok((input.name().to_owned(), window))
}

fn check_output(outputs: &[ort::value::Outlet]) -> Result<String, String> {
    use ort::value::{TensorElementType, ValueType};
    let [output] = outputs else {
        let names: Vec<_> = outputs.iter().map(|o| o.name()).collect();
        return Err(format!(
            "it has {} outputs {names:?}; quantd reads one score per row (keep one output; skl2onnx classifiers: \
             options={{'zipmap': False}} and keep the probability of the up class)",
            outputs.len()
        ));
    };
    let shape_ok = match output.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
            let dims: Vec<i64> = shape.iter().copied().collect();
            dims.len() == 2 && dims[0] <= 0 && dims[1] == 1
        }
        _ => false,
    };
    if !shape_ok {
        return Err(format!(
            "output {:?} is {:?}; quantd reads float32 [batch, 1], one score per row (reshape to [-1, 1] inside \
             the model)",
            output.name(),
            output.dtype()
        ));
    }
    Ok(output.name().to_owned())
}

/// How the graph was quantized, from its operators.
fn quantization(g: &pb::GraphProto) -> &'static str {
    let has = |ops: &[&str]| g.node.iter().any(|n| ops.contains(&n.op_type.as_deref().unwrap_or_default()));
    if has(&["DynamicQuantizeLinear", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"]) {
        "dynamic"
    } else if has(&["QLinearMatMul", "QLinearConv", "QGemm", "QLinearAdd", "MatMulInteger", "ConvInteger"]) {
        "qoperator"
    } else if has(&["QuantizeLinear", "DequantizeLinear"]) {
        "qdq"
    } else {
        "fp32"
    }
}

/// Model inputs (`window` feature rows each, oldest first) of every tick of a symbol that has
/// seen `window` rows, as the engine would feed them, and the newest row of each.
struct Inputs {
    rows: Vec<f32>,
    n: usize,
    width: usize,
}

impl Inputs {
    fn input(&self, i: usize) -> &[f32] {
        &self.rows[i * self.width..(i + 1) * self.width]
    }

    /// `k` inputs spread evenly over all of them.
    fn spread(&self, k: usize) -> Vec<f32> {
        let k = k.min(self.n);
        (0..k).flat_map(|j| self.input(j * self.n / k).iter().copied()).collect()
    }

    /// The newest feature row of input `i`.
    fn newest(&self, i: usize) -> &[f32] {
        let input = self.input(i);
        &input[input.len() - NUM_FEATURES..]
    }
}

/// Runs the ticks through the engine's checks and features ([`crate::dataset::FeatureEngine`]);
/// a symbol's inputs count from its `warmup` tick on (as the engine trades them).
fn model_inputs(ticks: &[PathBuf], window: usize, warmup: u64) -> Result<Inputs, ImportError> {
    let mut engine = crate::dataset::FeatureEngine::new(1 << 16, 64);
    let mut history: std::collections::HashMap<Symbol, std::collections::VecDeque<[f32; NUM_FEATURES]>> =
        Default::default();
    let mut rows = Vec::new();
    let mut n = 0;
    let mut row = [0.0f32; NUM_FEATURES];
    for tick in TickReader::open(ticks)? {
        let tick: Tick = tick?;
        let seen = match engine.update(&tick, &mut row) {
            Ok(state) => state.ticks(),
            Err(_) => continue, // refused by the engine's checks, as live
        };
        let h = history.entry(tick.symbol).or_default();
        h.push_back(row);
        if h.len() > window {
            h.pop_front();
        }
        if h.len() == window && seen >= warmup {
            rows.extend(h.iter().flatten());
            n += 1;
        }
    }
    Ok(Inputs { rows, n, width: window * NUM_FEATURES })
}

/// An ONNX Runtime session on one thread, from the model's bytes.
fn session(bytes: &[u8]) -> Result<ort::session::Session, String> {
    let env = crate::model::runtime::environment().ok_or("ONNX Runtime is not initialised")?;
    let builder = ort::session::Session::builder(env).map_err(|e| e.to_string())?;
    let mut builder = builder.with_intra_threads(1).map_err(|e| e.to_string())?;
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// The `q` quantile of `sorted` (ascending).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The policy thresholds: quantiles of |output - neutral| over the ticks' inputs.
fn thresholds(opts: &ImportOptions, scores: &[f32]) -> Result<PolicyParams, ImportError> {
    let center = opts.output_kind.center();
    let mut dist: Vec<f64> = scores.iter().map(|s| (f64::from(*s) - center).abs()).collect();
    dist.sort_by(f64::total_cmp);
    let entry = quantile(&dist, opts.entry_quantile);
    let exit = quantile(&dist, opts.exit_quantile);
    let full = quantile(&dist, opts.full_quantile).max(entry);
    let policy =
        PolicyParams { warmup_ticks: opts.warmup_ticks, entry_bps: entry, exit_bps: exit, full_position_bps: full };
    if full <= 0.0 {
        return Err(ImportError::Options(format!(
            "the model's outputs on these ticks hardly move from the neutral point {center} (quantile {} of \
             |output - {center}| is {full}); is --output-kind right?",
            opts.full_quantile
        )));
    }
    Ok(policy)
}

/// Golden outputs: the integer reference where quantd's kernel covers the graph (the model's
/// own semantics, the same on every CPU), ONNX Runtime otherwise.
fn golden_rows(graph: &Graph, rows: &[f32], ort: &[f32]) -> (Vec<GoldenRow>, f32, &'static str) {
    let width = graph.window * NUM_FEATURES;
    let (outputs, tolerance, source) = match &graph.plan {
        Some(plan) => (crate::int8::reference::score(plan, rows).0, 1e-5, "model's integer reference"),
        // A float graph, or a quantized one outside the kernel: ONNX Runtime's output here, with
        // room for another CPU's float summation order (FP32) or integer kernels (INT8).
        None if graph.quantization == "fp32" => (ort.to_vec(), 1e-3, "ONNX Runtime"),
        None => (ort.to_vec(), 1e-2, "ONNX Runtime"),
    };
    let golden = rows
        .chunks(width)
        .zip(outputs)
        .map(|(features, output)| GoldenRow { features: features.to_vec(), output: vec![output] })
        .collect();
    (golden, tolerance, source)
}

fn write_version(
    opts: &ImportOptions,
    version: &str,
    graph: &mut Graph,
    inputs: &Inputs,
    fp32_sibling: Option<&str>,
) -> Result<PathBuf, ImportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImportError::Io { path, source }
    };
    let name_dir = opts.out.join(&opts.name);
    let dir = name_dir.join(version);
    if dir.exists() {
        return Err(ImportError::Exists(dir));
    }
    std::fs::create_dir_all(&name_dir).map_err(io(&name_dir))?;
    let stage = name_dir.join(format!(".import-{version}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir(&stage).map_err(io(&stage))?;
    let result = (|| {
        let model_path = stage.join("model.onnx");
        std::fs::write(&model_path, &graph.bytes).map_err(io(&model_path))?;
        let runtime = |msg: String| ImportError::Runtime { model: opts.onnx.clone(), msg };
        let width = inputs.width;
        let sample = inputs.spread(THRESHOLD_ROWS);
        let scores = graph.score(&sample).map_err(runtime)?;
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(ImportError::Contract {
                model: opts.onnx.clone(),
                why: format!(
                    "it outputs {} on a real feature row ({:?})",
                    scores[i],
                    &sample[i * width..(i + 1) * width]
                ),
            });
        }
        let policy = thresholds(opts, &scores)?;
        let verify = inputs.spread(VERIFY_ROWS);
        let verify_path = stage.join("verify.npy");
        write_npy(&verify_path, &verify, width).map_err(io(&verify_path))?;
        let golden_inputs = inputs.spread(GOLDEN_ROWS);
        let golden_ort = graph.score(&golden_inputs).map_err(runtime)?;
        let (golden, golden_tolerance, golden_source) = golden_rows(graph, &golden_inputs, &golden_ort);
        let (train_min, train_max) = ranges(inputs);
        let manifest = Manifest {
            name: opts.name.clone(),
            version: version.to_owned(),
            description: match opts.description.as_str() {
                "" => format!("imported from {}", file_name(&opts.onnx)),
                d => d.to_owned(),
            },
            model_file: "model.onnx".into(),
            sha256: graph.sha256.clone(),
            fp32_sibling: fp32_sibling.map(str::to_owned),
            features: FeatureSection {
                schema_version: features::SCHEMA_VERSION.into(),
                schema_hash: features::schema_hash(),
                names: features::names().map(str::to_owned).collect(),
                window: graph.window,
                train_min,
                train_max,
            },
            io: IoSection {
                input: graph.input.clone(),
                input_shape: input_shape(graph.window),
                output: graph.output.clone(),
                output_shape: vec![-1, 1],
                output_meaning: match opts.output_kind {
                    OutputKind::ReturnBps => "a forward return, bps (imported model)".into(),
                    OutputKind::PUp => "probability of an up move (imported model)".into(),
                    OutputKind::Score => "a signed class score (imported model)".into(),
                },
                output_kind: opts.output_kind,
            },
            quantization: QuantizationSection {
                method: graph.quantization.into(),
                weights: String::new(),
                activations: String::new(),
                calibration: format!(
                    "read from the graph's operators by quantd import-model; golden outputs from {golden_source}"
                ),
            },
            policy: PolicyParams { warmup_ticks: policy.warmup_ticks.max(graph.window as u64), ..policy },
            golden_tolerance,
            golden,
            verify: Some(VerifySection {
                file: "verify.npy".into(),
                sha256: sha256_file(&verify_path).map_err(io_error)?,
                ort_max_steps: 0,
            }),
            saturation: None,
            training: import_facts(opts, inputs),
        };
        let text = toml::to_string(&manifest).map_err(|e| ImportError::Options(format!("manifest: {e}")))?;
        let manifest_path = stage.join(signing::MANIFEST_FILE);
        std::fs::write(&manifest_path, text).map_err(io(&manifest_path))?;
        if let Some(key) = &opts.sign {
            signing::sign(&stage, &signing::read_signing_key(key)?)?;
        }
        std::fs::rename(&stage, &dir).map_err(io(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    result.map(|()| dir)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The range of each feature over the newest rows of the inputs.
fn ranges(inputs: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let mut lo = vec![f32::INFINITY; NUM_FEATURES];
    let mut hi = vec![f32::NEG_INFINITY; NUM_FEATURES];
    for i in 0..inputs.n {
        for (j, v) in inputs.newest(i).iter().enumerate() {
            lo[j] = lo[j].min(*v);
            hi[j] = hi[j].max(*v);
        }
    }
    (lo, hi)
}

fn import_facts(opts: &ImportOptions, inputs: &Inputs) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("script".into(), "quantd import-model".into());
    t.insert("source".into(), file_name(&opts.onnx).into());
    let ticks: Vec<toml::Value> = opts.ticks.iter().map(|p| file_name(p).into()).collect();
    t.insert("ticks".into(), ticks.into());
    t.insert("inputs".into(), (inputs.n as i64).into());
    t.insert("output_kind".into(), <&str>::from(opts.output_kind).into());
    t.insert(
        "thresholds".into(),
        format!(
            "entry/exit/full = quantiles {}/{}/{} of |output - {}| over up to {THRESHOLD_ROWS} inputs",
            opts.entry_quantile,
            opts.exit_quantile,
            opts.full_quantile,
            opts.output_kind.center()
        )
        .into(),
    );
    t
}

/// Writes `rows` as a `.npy` of f32 `[n, width]`.
fn write_npy(path: &Path, rows: &[f32], width: usize) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[(rows.len() / width) as u64, width as u64])
        .writer(file)
        .begin_nd()?;
    w.extend(rows.iter().copied())?;
    w.finish()
}
