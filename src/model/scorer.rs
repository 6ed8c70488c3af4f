//! What the engine thread calls to score a batch: a [`Scorer`], either the native INT8 kernel
//! ([`crate::int8::NativeKernel`]) or an ONNX Runtime session ([`OrtScorer`]) with its input and
//! output tensors allocated once per batch size and reused.
//!
//! Built on the control path ([`OrtScorer::new`], [`crate::int8::NativeKernel::new`]), then moved to and owned by the engine thread
//! (`ort::session::Session` is `Send`; `Session::run` needs `&mut self`, so one session per
//! engine thread). [`Scorer::score`] makes no Rust heap allocation: it calls the C API's `Run`
//! directly with pre-allocated output values, because the safe wrapper collects its outputs
//! into fresh containers on every call.

use std::ffi::CString;
use std::ptr;

use ort::AsPointer;
use ort::session::Session;
use ort::value::Tensor;

/// The backend serving a model, as the engine thread calls it.
pub enum Scorer {
    /// ONNX Runtime (any graph; the FP32 and the non-native INT8 models).
    Ort(OrtScorer),
    /// quantd's own integer kernel (the QDQ MLPs it covers), bit-exact with the reference.
    Native(crate::int8::NativeKernel),
}

/// A failed model call (ONNX Runtime's error; the native kernel does not fail).
#[derive(Debug, thiserror::Error)]
#[error("ONNX Runtime: {0}")]
pub struct ScoreError(#[from] pub ort::Error);

impl Scorer {
    /// Largest batch [`Scorer::score`] takes.
    pub fn max_batch(&self) -> usize {
        match self {
            Scorer::Ort(s) => s.max_batch(),
            Scorer::Native(k) => k.max_batch(),
        }
    }

    /// Floats per model input: `window * features`.
    pub fn width(&self) -> usize {
        match self {
            Scorer::Ort(s) => s.width(),
            Scorer::Native(k) => k.width(),
        }
    }

    /// Feature rows per model input (1: the latest row only; the native kernel takes 1).
    pub fn window(&self) -> usize {
        match self {
            Scorer::Ort(s) => s.window(),
            Scorer::Native(_) => 1,
        }
    }

    /// The native kernel's clamped-value counters (`None` on ONNX Runtime).
    pub fn saturation(&self) -> Option<std::sync::Arc<crate::int8::Saturation>> {
        match self {
            Scorer::Native(k) => Some(k.monitor()),
            Scorer::Ort(_) => None,
        }
    }

    /// Scores `n` inputs (`rows.len() == n * width`, `n` in `1..=max_batch`): one score each.
    /// No heap allocation on either backend.
    #[inline]
    pub fn score(&mut self, rows: &[f32]) -> Result<&[f32], ScoreError> {
        match self {
            Scorer::Ort(s) => Ok(s.score(rows)?),
            Scorer::Native(k) => Ok(k.score(rows)),
        }
    }
}

/// A session plus, for every batch size `n` in `1..=max_batch`, an input tensor (`[n, features]`,
/// or `[n, window, features]` for a windowed model) and an output tensor `[n, out_width]`.
pub struct OrtScorer {
    session: Session,
    input_name: CString,
    output_name: CString,
    inputs: Vec<Tensor<f32>>,
    outputs: Vec<Tensor<f32>>,
    window: usize,
    width: usize,
    out_width: usize,
}

impl OrtScorer {
    /// Pre-allocates tensors for batches of 1..=`max_batch` inputs of `window` rows of
    /// `features` floats (`window` 1: a plain `[n, features]` input).
    pub fn new(
        session: Session,
        input: &str,
        output: &str,
        (window, features): (usize, usize),
        out_width: usize,
        max_batch: usize,
    ) -> ort::Result<Self> {
        let mut inputs = Vec::with_capacity(max_batch);
        let mut outputs = Vec::with_capacity(max_batch);
        for n in 1..=max_batch {
            inputs.push(if window == 1 {
                Tensor::<f32>::new(session.allocator(), [n, features])?
            } else {
                Tensor::<f32>::new(session.allocator(), [n, window, features])?
            });
            outputs.push(Tensor::<f32>::new(session.allocator(), [n, out_width])?);
        }
        let cstr = |s: &str| CString::new(s).map_err(|e| ort::Error::new(e.to_string()));
        Ok(Self {
            input_name: cstr(input)?,
            output_name: cstr(output)?,
            session,
            inputs,
            outputs,
            window,
            width: window * features,
            out_width,
        })
    }

    /// The largest batch one call takes.
    pub fn max_batch(&self) -> usize {
        self.inputs.len()
    }

    /// Floats per model input: `window * features`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Feature rows per model input (1: the latest row only).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Runs the model on `rows` (row-major, `n * width` floats: for a windowed model each input
    /// is its `window` feature rows, oldest first) and returns `n * out_width` scores. `n` must
    /// be in `1..=max_batch`.
    pub fn score(&mut self, rows: &[f32]) -> ort::Result<&[f32]> {
        let n = rows.len() / self.width;
        debug_assert!(n >= 1 && n <= self.inputs.len() && rows.len() == n * self.width);
        let input = &mut self.inputs[n - 1];
        input.extract_tensor_mut().1.copy_from_slice(rows);
        let output = &mut self.outputs[n - 1];
        let input_names = [self.input_name.as_ptr()];
        let output_names = [self.output_name.as_ptr()];
        let input_values = [input.ptr()];
        let mut output_values = [output.ptr_mut()];
        // SAFETY: the session, names and values outlive the call; the output value is a
        // pre-allocated tensor of exactly the shape the model produces for `n` rows (checked at
        // load by `check_io`), which ONNX Runtime fills in place.
        unsafe {
            let status = (ort::api().Run)(
                self.session.ptr().cast_mut(),
                ptr::null(),
                input_names.as_ptr(),
                input_values.as_ptr(),
                1,
                output_names.as_ptr(),
                1,
                output_values.as_mut_ptr(),
            );
            ort::Error::result_from_status(status)?;
        }
        Ok(&output.extract_tensor().1[..n * self.out_width])
    }
}
