//! Which backend serves a model, decided at load on this CPU: the native INT8 kernel or ONNX
//! Runtime, each held against the model's reference semantics on its verification set, the
//! fastest exact one chosen by measurement (`auto`), with the model's FP32 sibling as a third
//! candidate where the config allows it. Owns the `[backend]` config section.
//!
//! Control path only (model load, on start-up or the registry thread).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::scorer::{OrtScorer, Scorer};
use crate::int8::{self, Isa, NativeKernel, Plan, Unsupported, reference};
use crate::problem::{Kind, Problems};

/// Which backend a model may be served by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The fastest exact backend on this CPU, timed at load.
    #[default]
    Auto,
    /// quantd's integer kernel only (refused when it does not cover the graph).
    Native,
    /// ONNX Runtime only.
    Ort,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "native" => Ok(BackendChoice::Native),
            "ort" => Ok(BackendChoice::Ort),
            other => Err(format!("unknown backend {other:?}; one of auto, native, ort")),
        }
    }
}

/// The `[backend]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Backend of every model not named in `models`.
    pub default: BackendChoice,
    /// Backend per model name, e.g. `models = { "quantd-mlp" = "ort" }`.
    pub models: BTreeMap<String, BackendChoice>,
    /// The native kernel's ISA level: `auto` (the fastest this CPU runs) or one of
    /// `avx512vnni`, `avxvnni`, `avx2`, `portable` (to run and test one level on any machine).
    pub native_isa: String,
    /// Model calls timed per candidate at batch 1 when `auto` compares two (a tenth as many at
    /// the largest batch).
    pub timing_calls: u64,
    /// Let `auto` also time an INT8 model's FP32 sibling (the manifest's `fp32_sibling`, the
    /// FP32 model it was quantized from) on ONNX Runtime, and serve it when it is the fastest.
    /// Its scores are the FP32 model's, not the INT8 semantics (their golden rows are checked),
    /// under the INT8 version's label and policy. Off by default.
    pub allow_fp32_sibling: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            default: BackendChoice::Auto,
            models: BTreeMap::new(),
            native_isa: "auto".into(),
            timing_calls: 400,
            allow_fp32_sibling: false,
        }
    }
}

impl BackendConfig {
    /// Every problem with the section.
    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        if let Err(e) = self.isa() {
            p.push("backend.native_isa", Kind::Invalid, format!("backend.native_isa: {e}"));
        }
        p.check(self.timing_calls == 0, "backend.timing_calls", Kind::OutOfRange, || {
            "backend.timing_calls must be at least 1".into()
        });
        p
    }

    /// The configured ISA level (`auto`: the fastest this CPU runs).
    pub fn isa(&self) -> Result<Isa, String> {
        if self.native_isa == "auto" { Ok(Isa::best()) } else { self.native_isa.parse() }
    }

    /// The choice for model `name`.
    pub fn for_model(&self, name: &str) -> BackendChoice {
        self.models.get(name).copied().unwrap_or(self.default)
    }
}

/// One backend considered for a model, and how it fared.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// `native` or `ort`.
    pub backend: &'static str,
    /// The native kernel's ISA level, or the best level of this CPU for ONNX Runtime (MLAS
    /// dispatches on the same features).
    pub isa: &'static str,
    /// Why it may not serve (`None`: it is exact on this CPU).
    pub refused: Option<String>,
    /// Median model call at batch 1 and at the largest batch, µs (when `auto` timed it).
    pub p50_b1_us: Option<f64>,
    /// See `p50_b1_us`.
    pub p50_max_us: Option<f64>,
}

/// What serves a model and why: logged at load, exported as `quantd_model_backend_info`, shown by
/// `quantd bench-model`.
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    /// The serving backend: `native` or `ort`.
    pub backend: &'static str,
    /// Its ISA level (see [`Candidate::isa`]).
    pub isa: &'static str,
    /// Verification rows it was checked on.
    pub verified_rows: usize,
    /// Every backend considered.
    pub candidates: Vec<Candidate>,
}

impl BackendReport {
    /// One line for logs and tools.
    pub fn summary(&self) -> String {
        let each: Vec<String> = self
            .candidates
            .iter()
            .map(|c| match (&c.refused, c.p50_b1_us, c.p50_max_us) {
                (Some(why), ..) => format!("{} refused: {why}", c.backend),
                (None, Some(b1), Some(bm)) => {
                    format!("{}/{} p50 {b1:.2} µs at batch 1, {bm:.2} µs at the largest", c.backend, c.isa)
                }
                (None, ..) => format!("{}/{} exact", c.backend, c.isa),
            })
            .collect();
        format!("{}/{} ({} verification rows; {})", self.backend, self.isa, self.verified_rows, each.join("; "))
    }
}

/// What the loader knows when it picks a backend.
pub(crate) struct Inputs<'a> {
    pub choice: BackendChoice,
    pub config: &'a BackendConfig,
    /// The graph's INT8 plan, or why the native kernel does not cover it (an FP32 graph too).
    pub plan: Result<Plan, Unsupported>,
    /// Whether the model is an INT8 model (a plan, or a quantization method other than fp32).
    pub int8: bool,
    /// Verification inputs, `rows * width` floats (the verification set, then the golden rows).
    pub rows: &'a [f32],
    pub width: usize,
    pub max_batch: usize,
    /// Largest ONNX Runtime difference from the reference allowed, in output steps.
    pub ort_max_steps: u32,
    /// Whether ONNX Runtime's u8×s8 kernels are exact for this graph on this CPU (VNNI, or int8
    /// weights within [`int8::isa::VPMADDUBSW_SAFE_WEIGHT`]).
    pub ort_exact: bool,
    /// The FP32 sibling's ONNX Runtime scorer (its golden rows reproduced), or why it cannot
    /// serve; `None` when it is not a candidate (`allow_fp32_sibling` off, or no sibling named).
    pub fp32_sibling: Option<Result<OrtScorer, String>>,
}

/// [`Candidate::backend`] of the FP32 sibling.
pub const FP32_SIBLING: &str = "fp32-sibling";

/// Scores `rows` in calls of `batch` rows.
fn score_all(scorer: &mut Scorer, rows: &[f32], width: usize, batch: usize) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(rows.len() / width);
    for chunk in rows.chunks(batch * width) {
        out.extend_from_slice(scorer.score(chunk).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The native kernel, if it is exact: bit for bit the reference on every verification row, in
/// single calls and in full batches.
fn native(input: &Inputs<'_>, plan: &Plan, want: &[f32]) -> Result<Scorer, String> {
    let isa = input.config.isa()?;
    let mut s = Scorer::Native(NativeKernel::new(plan, isa, input.max_batch)?);
    for batch in [1, input.max_batch] {
        let got = score_all(&mut s, input.rows, input.width, batch)?;
        let bad = got.iter().zip(want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
        if bad > 0 {
            return Err(format!(
                "the native kernel ({isa}) differs from the reference on {bad} of {} rows at batch {batch}: a quantd bug, please report it; backend = \"ort\" serves meanwhile",
                want.len()
            ));
        }
    }
    Ok(s)
}

/// ONNX Runtime, if it is exact enough: within `ort_max_steps` output steps of the reference on
/// every verification row (in single calls for the first 256 rows, then in full batches), or,
/// for an INT8 graph the reference does not cover, only where its u8×s8 kernels are exact.
fn ort(input: &Inputs<'_>, mut s: Scorer, want: Option<(&[f32], f32)>) -> Result<Scorer, String> {
    let Some((want, step)) = want else {
        if input.int8 && !input.ort_exact {
            let why = input.plan.as_ref().err().map_or(String::new(), |u| format!(" ({u})"));
            return Err(format!(
                "ONNX Runtime's u8×s8 kernels are not exact on this CPU ({}) for int8 weights beyond ±{}: they need \
                 avx512_vnni or avx_vnni, and the native kernel does not cover this graph{why}; serve this model on a \
                 CPU with VNNI, or re-make it with reduced-range weights (quantd's training emits them)",
                int8::isa::cpu_flags(),
                int8::isa::VPMADDUBSW_SAFE_WEIGHT
            ));
        }
        return Ok(s);
    };
    let singles = input.rows.len().min(256 * input.width);
    let mut got = score_all(&mut s, &input.rows[..singles], input.width, 1)?;
    got.extend(score_all(&mut s, &input.rows[singles..], input.width, input.max_batch)?);
    let steps: Vec<u32> = got.iter().zip(want).map(|(g, w)| ((g - w).abs() / step).round() as u32).collect();
    let worst = steps.iter().copied().max().unwrap_or(0);
    if worst > input.ort_max_steps {
        let off = steps.iter().filter(|&&d| d > 0).count();
        let hint = if input.ort_exact {
            String::new()
        } else {
            format!(
                ": without avx512_vnni or avx_vnni its u8×s8 kernels use VPMADDUBSW, whose int16 pair sums saturate with int8 \
                 weights beyond ±{} (re-make the model with reduced-range weights, or serve it on the native backend)",
                int8::isa::VPMADDUBSW_SAFE_WEIGHT
            )
        };
        return Err(format!(
            "ONNX Runtime differs from the model's integer semantics on {off} of {} verification rows, by up to {worst} output steps \
             ({:.4}), beyond the manifest's bound of {} steps, on this CPU ({}){hint}",
            want.len(),
            worst as f32 * step,
            input.ort_max_steps,
            int8::isa::cpu_flags()
        ));
    }
    Ok(s)
}

/// Median µs of `calls` calls at batch `n` (of the first `n` verification rows, repeated).
fn time(s: &mut Scorer, rows: &[f32], width: usize, n: usize, calls: u64) -> f64 {
    let batch: Vec<f32> = rows.iter().copied().cycle().take(n * width).collect();
    let mut t: Vec<u64> = (0..calls.max(1))
        .map(|_| {
            let start = Instant::now();
            let _ = std::hint::black_box(s.score(&batch));
            start.elapsed().as_nanos() as u64
        })
        .collect();
    t.sort_unstable();
    t[t.len() / 2] as f64 / 1e3
}

/// Picks the backend (see the module doc). `ort_session` is the model's ONNX Runtime scorer.
/// Returns the scorer and its report, or every reason no backend may serve.
pub(crate) fn choose(mut input: Inputs<'_>, ort_session: OrtScorer) -> Result<(Scorer, BackendReport), Vec<String>> {
    let want = input.plan.as_ref().ok().map(|p| (reference::score(p, input.rows).0, p.output().scale));
    let best = Isa::best().label();
    let mut cands: Vec<(Candidate, Option<Scorer>)> = Vec::new();
    if input.choice != BackendChoice::Ort {
        let r = match (&input.plan, &want) {
            (Ok(plan), Some((w, _))) => native(&input, plan, w),
            (Err(u), _) => Err(format!("the native kernel does not cover this graph: {u}")),
            _ => unreachable!("a plan has reference scores"),
        };
        let isa = input.config.isa().map_or("none", Isa::label);
        cands.push(candidate("native", isa, r));
    }
    if input.choice != BackendChoice::Native {
        let r = ort(&input, Scorer::Ort(ort_session), want.as_ref().map(|(w, s)| (w.as_slice(), *s)));
        cands.push(candidate("ort", best, r));
    }
    if let Some(sibling) = input.fp32_sibling.take() {
        cands.push(candidate(FP32_SIBLING, best, sibling.map(Scorer::Ort)));
    }
    let exact = cands.iter().filter(|(_, s)| s.is_some()).count();
    if exact == 0 {
        let mut why: Vec<String> = cands.iter().filter_map(|(c, _)| c.refused.clone()).collect();
        why.insert(0, format!("no backend is exact on this CPU ({})", int8::isa::cpu_flags()));
        return Err(why);
    }
    if exact > 1 {
        // Both were just run over the whole verification set, so they are warm.
        let calls = input.config.timing_calls;
        for (c, s) in cands.iter_mut() {
            if let Some(s) = s.as_mut() {
                c.p50_b1_us = Some(time(s, input.rows, input.width, 1, calls));
                c.p50_max_us = Some(time(s, input.rows, input.width, input.max_batch, calls.div_ceil(10)));
            }
        }
    }
    let cost = |c: &Candidate| c.p50_b1_us.unwrap_or(0.0) + c.p50_max_us.unwrap_or(0.0) / input.max_batch as f64;
    let pick = cands
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| s.is_some())
        .min_by(|a, b| cost(&a.1.0).total_cmp(&cost(&b.1.0)))
        .map(|(i, _)| i)
        .expect("one exact candidate");
    let scorer = cands[pick].1.take().expect("picked an exact one");
    let report = BackendReport {
        backend: cands[pick].0.backend,
        isa: cands[pick].0.isa,
        verified_rows: input.rows.len() / input.width,
        candidates: cands.into_iter().map(|(c, _)| c).collect(),
    };
    Ok((scorer, report))
}

fn candidate(backend: &'static str, isa: &'static str, r: Result<Scorer, String>) -> (Candidate, Option<Scorer>) {
    let (refused, s) = match r {
        Ok(s) => (None, Some(s)),
        Err(e) => (Some(e), None),
    };
    (Candidate { backend, isa, refused, p50_b1_us: None, p50_max_us: None }, s)
}
