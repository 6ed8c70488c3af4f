//! What a quantd INT8 model computes, read from its ONNX QDQ graph: the reference semantics.
//!
//! Control path only (model load). A [`Plan`] is the graph training emits for an MLP, written as
//! integer arithmetic:
//!
//! 1. **Front end** (float, per feature, in graph order): `Sub`/`Add`/`Mul`/`Div` by constants, and
//!    `BatchNormalization` as ONNX Runtime evaluates it (`x * (scale / sqrt(var + eps)) +
//!    (bias - mean * that)`), each one f32 operation, correctly rounded, no fused multiply-add.
//! 2. **Input quantization** (`QuantizeLinear`, u8, per tensor):
//!    `q = clamp(round_half_even(x / s), -z, 255 - z) + z`; NaN gives 0 (MLAS's MAXPS semantics).
//! 3. **Dense layers** (`DequantizeLinear` → `Gemm` → `Relu` → `QuantizeLinear`), with u8
//!    activations `a` (zero point `za`), int8 per-output-channel symmetric weights `w` (zero point 0):
//!    - exact int32 accumulation `acc[c] = Σ_k (a[k] - za) · w[c][k] + bias_q[c]`;
//!    - `bias_q[c]` is the graph's int32 bias when it is a `DequantizeLinear` of int32 with scale
//!      `sa · sw[c]`, or a float bias quantized as ONNX Runtime's bias quantization does:
//!      `round_half_even(bias[c] / (sa · sw[c]))` in f32;
//!    - requantization as the QGemm definition: `M[c] = (sa · sw[c]) / sy` in f32,
//!      `y = clamp(round_half_even(f32(acc) · M[c]), -zy, 255 - zy) + zy`; a `Relu` before the
//!      `QuantizeLinear` is `max(y, zy)` (exact: rounding is monotone and 0 maps to `zy`).
//! 4. **Output** (`DequantizeLinear` of the last layer): `(y - zy) · sy` in f32.
//!
//! On a CPU whose u8×s8 dot products are exact (AVX-512 VNNI, AVX-VNNI) ONNX Runtime's fused
//! graph (QGemm) computes exactly this; the tests check it on real feature rows. A graph of any
//! other shape is [`Unsupported`] here and runs on ONNX Runtime only.

use std::collections::HashMap;
use std::path::Path;

use super::onnx::{self, Const, Values, pb};

/// Quantization parameters of a u8 tensor (per tensor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParam {
    /// Real value of one step.
    pub scale: f32,
    /// The u8 value that stands for 0.0.
    pub zero: i32,
}

/// One float operation of the front end, applied per feature (vectors hold one value per feature).
#[derive(Clone, Debug, PartialEq)]
pub enum FrontOp {
    /// `x - v`
    Sub(Vec<f32>),
    /// `x + v`
    Add(Vec<f32>),
    /// `x * v`
    Mul(Vec<f32>),
    /// `x / v`
    Div(Vec<f32>),
}

impl FrontOp {
    /// Applies the operation to feature `i` of a row.
    #[inline]
    pub fn apply(&self, i: usize, x: f32) -> f32 {
        match self {
            FrontOp::Sub(v) => x - v[i],
            FrontOp::Add(v) => x + v[i],
            FrontOp::Mul(v) => x * v[i],
            FrontOp::Div(v) => x / v[i],
        }
    }

    /// Applies the operation to a whole row in place (the same operation per feature as
    /// [`apply`](Self::apply), in a loop the compiler vectorizes).
    #[inline]
    pub fn apply_row(&self, row: &mut [f32]) {
        fn each(row: &mut [f32], v: &[f32], op: impl Fn(f32, f32) -> f32) {
            for (x, &v) in row.iter_mut().zip(v) {
                *x = op(*x, v);
            }
        }
        match self {
            FrontOp::Sub(v) => each(row, v, |x, v| x - v),
            FrontOp::Add(v) => each(row, v, |x, v| x + v),
            FrontOp::Mul(v) => each(row, v, |x, v| x * v),
            FrontOp::Div(v) => each(row, v, |x, v| x / v),
        }
    }
}

/// One quantized dense layer (`Gemm` between QDQ pairs).
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Inputs (K).
    pub inputs: usize,
    /// Outputs (N).
    pub outputs: usize,
    /// int8 weights, `[outputs][inputs]` row-major.
    pub weights: Vec<i8>,
    /// Per-output-channel weight scale.
    pub w_scale: Vec<f32>,
    /// int32 bias in accumulator units (scale `sa · sw[c]`).
    pub bias: Vec<i32>,
    /// The layer's input quantization.
    pub input: QParam,
    /// The layer's output quantization.
    pub output: QParam,
    /// A `Relu` sits between the `Gemm` and the output `QuantizeLinear`.
    pub relu: bool,
}

impl Dense {
    /// The requantization multiplier of output channel `c`, `(sa · sw[c]) / sy`, as QGemm computes it.
    pub fn requant_scale(&self, c: usize) -> f32 {
        (self.input.scale * self.w_scale[c]) / self.output.scale
    }

    /// The lowest output value: `zy` after a Relu, else 0.
    pub fn floor(&self) -> i32 {
        if self.relu { self.output.zero } else { 0 }
    }

    /// Whether values clamped at the lower bound count as saturation: not when the lower bound is
    /// the Relu (or a zero point of 0, which is how quantizers express a removed Relu).
    pub fn counts_low(&self) -> bool {
        !self.relu && self.output.zero > 0
    }
}

/// The whole INT8 computation of a model, from feature row to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Floats per input row.
    pub features: usize,
    /// Float operations before the input quantization, in order.
    pub front: Vec<FrontOp>,
    /// The input quantization.
    pub input: QParam,
    /// The dense layers, in order; the last one has one output.
    pub layers: Vec<Dense>,
}

impl Plan {
    /// The output's quantization (the last layer's), whose scale is one output step.
    pub fn output(&self) -> QParam {
        self.layers.last().expect("a plan has layers").output
    }

    /// Names of the places where the saturation monitor counts: `input`, then `layer0`, ...
    pub fn stage_names(&self) -> Vec<String> {
        std::iter::once("input".to_owned()).chain((0..self.layers.len()).map(|i| format!("layer{i}"))).collect()
    }

    /// Values per row at each counted stage (features, then each layer's outputs).
    pub fn stage_widths(&self) -> Vec<usize> {
        std::iter::once(self.features).chain(self.layers.iter().map(|l| l.outputs)).collect()
    }
}

/// Why a graph is not one the native path executes; it then runs on ONNX Runtime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

struct Graph<'a> {
    consts: HashMap<String, Const>,
    consumers: HashMap<&'a str, Vec<&'a pb::NodeProto>>,
    producer: HashMap<&'a str, &'a pb::NodeProto>,
    outputs: Vec<&'a str>,
    /// Nodes matched by the pattern, by identity (a node matched twice counts once).
    used: std::collections::HashSet<*const pb::NodeProto>,
}

impl<'a> Graph<'a> {
    fn only_consumer(&self, value: &str) -> Result<&'a pb::NodeProto, Unsupported> {
        if self.outputs.contains(&value) {
            return unsupported(format!("intermediate value {value:?} is also a graph output"));
        }
        match self.consumers.get(value).map(Vec::as_slice) {
            Some([n]) => Ok(n),
            Some([]) | None => unsupported(format!("value {value:?} is not consumed")),
            Some(many) => unsupported(format!("value {value:?} feeds {} nodes", many.len())),
        }
    }

    fn f32s(&self, name: &str) -> Result<&[f32], Unsupported> {
        match self.consts.get(name).map(|c| &c.values) {
            Some(Values::F32(v)) => Ok(v),
            _ => unsupported(format!("{name:?} is not a float constant")),
        }
    }

    /// A per-tensor (one value) scale and u8 zero point of a Quantize/DequantizeLinear node.
    fn qparam(&self, n: &pb::NodeProto) -> Result<QParam, Unsupported> {
        let scale = self.f32s(n.input.get(1).map_or("", String::as_str))?;
        let zero = match n.input.get(2).and_then(|z| self.consts.get(z)).map(|c| &c.values) {
            Some(Values::U8(z)) if z.len() == 1 => i32::from(z[0]),
            _ => return unsupported(format!("{} {:?} is not u8 with a constant zero point", n.op_type(), n.name())),
        };
        match scale {
            [s] if s.is_finite() && *s > 0.0 => Ok(QParam { scale: *s, zero }),
            _ => unsupported(format!("{} {:?} is not per-tensor with a positive scale", n.op_type(), n.name())),
        }
    }

    /// Marks one node as part of the pattern (every node must be, see [`Plan::from_model`]).
    fn take(&mut self, n: &pb::NodeProto) {
        self.used.insert(n);
    }
}

/// Per-feature vector of a front-end constant: one value per feature, or one for all.
fn per_feature(v: &[f32], features: usize, what: &str) -> Result<Vec<f32>, Unsupported> {
    match v.len() {
        1 => Ok(vec![v[0]; features]),
        n if n == features => Ok(v.to_vec()),
        n => unsupported(format!("{what} has {n} values for {features} features")),
    }
}

/// The weights `[N][K]` of a Gemm's `B` input: a `DequantizeLinear` of a constant int8 tensor,
/// per output channel, zero point 0.
fn weights(g: &mut Graph<'_>, gemm: &pb::NodeProto, inputs: usize) -> Result<(Vec<i8>, Vec<f32>, usize), Unsupported> {
    let dq = match gemm.input.get(1).and_then(|b| g.producer.get(b.as_str())) {
        Some(dq) if dq.op_type() == "DequantizeLinear" => *dq,
        _ => return unsupported("Gemm weights are not a DequantizeLinear of int8"),
    };
    let w = g.consts.get(dq.input[0].as_str()).cloned();
    let Some(Const { dims, values: Values::I8(w) }) = w else {
        return unsupported("Gemm weights are not a constant int8 tensor");
    };
    let trans_b = onnx::attr_int(gemm, "transB", 0) == 1;
    let [d0, d1] = dims[..] else { return unsupported("Gemm weights are not 2-D") };
    let (n, k) = if trans_b { (d0 as usize, d1 as usize) } else { (d1 as usize, d0 as usize) };
    if k != inputs {
        return unsupported(format!("Gemm weights have {k} inputs, the layer receives {inputs}"));
    }
    let scale = g.f32s(dq.input.get(1).map_or("", String::as_str))?.to_vec();
    let axis = onnx::attr_int(dq, "axis", 1);
    let channel_axis = if trans_b { 0 } else { 1 };
    let w_scale = match scale.len() {
        1 => vec![scale[0]; n],
        len if len == n && (axis == channel_axis || axis == channel_axis - 2) => scale,
        len => return unsupported(format!("weight scale of {len} values does not run along the {n} outputs")),
    };
    if w_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return unsupported("a weight scale is not a positive number");
    }
    match dq.input.get(2).and_then(|z| g.consts.get(z)).map(|c| &c.values) {
        None => {}
        Some(Values::I8(z)) if z.iter().all(|&z| z == 0) => {}
        _ => return unsupported("weights are not symmetric int8 (zero point 0)"),
    }
    let rows =
        if trans_b { w } else { (0..n).flat_map(|c| (0..k).map(move |j| (c, j))).map(|(c, j)| w[j * n + c]).collect() };
    g.take(dq);
    Ok((rows, w_scale, n))
}

/// The int32 bias of a Gemm (see the module doc for the two forms accepted).
fn bias(g: &mut Graph<'_>, gemm: &pb::NodeProto, sa: f32, w_scale: &[f32]) -> Result<Vec<i32>, Unsupported> {
    let n = w_scale.len();
    let Some(name) = gemm.input.get(2).filter(|c| !c.is_empty()) else { return Ok(vec![0; n]) };
    let acc_scale: Vec<f32> = w_scale.iter().map(|&sw| sa * sw).collect();
    if let Some(Const { values: Values::F32(b), .. }) = g.consts.get(name.as_str()) {
        let b = per_feature(b, n, "Gemm bias")?;
        return Ok(b
            .iter()
            .zip(&acc_scale)
            .map(|(&b, &s)| {
                let q = (b / s).round_ties_even();
                q.clamp(i32::MIN as f32, i32::MAX as f32) as i32
            })
            .collect());
    }
    let dq = match g.producer.get(name.as_str()) {
        Some(dq) if dq.op_type() == "DequantizeLinear" => *dq,
        _ => return unsupported("Gemm bias is neither a float constant nor a DequantizeLinear of int32"),
    };
    let Some(Const { values: Values::I32(q), .. }) = g.consts.get(dq.input[0].as_str()).cloned() else {
        return unsupported("Gemm bias DequantizeLinear is not of a constant int32 tensor");
    };
    let scale = per_feature(g.f32s(dq.input.get(1).map_or("", String::as_str))?, n, "bias scale")?;
    if scale.iter().zip(&acc_scale).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return unsupported("int32 bias scale is not input scale × weight scale");
    }
    match dq.input.get(2).and_then(|z| g.consts.get(z)).map(|c| &c.values) {
        None => {}
        Some(Values::I32(z)) if z.iter().all(|&z| z == 0) => {}
        _ => return unsupported("int32 bias has a non-zero zero point"),
    }
    g.take(dq);
    match q.len() {
        1 => Ok(vec![q[0]; n]),
        len if len == n => Ok(q),
        len => unsupported(format!("int32 bias has {len} values for {n} outputs")),
    }
}

impl Plan {
    /// Reads a model file and extracts its plan; `features` is the input row width.
    pub fn from_file(path: &Path, features: usize) -> Result<Self, Unsupported> {
        let model = onnx::read_model(path).map_err(Unsupported)?;
        Self::from_model(&model, features)
    }

    /// Extracts the plan of a decoded model (see the module doc for the graphs accepted).
    pub fn from_model(model: &pb::ModelProto, features: usize) -> Result<Self, Unsupported> {
        let Some(graph) = model.graph.as_ref() else { return unsupported("the model has no graph") };
        let consts = onnx::constants(graph).map_err(Unsupported)?;
        let mut consumers: HashMap<&str, Vec<&pb::NodeProto>> = HashMap::new();
        let mut producer = HashMap::new();
        for n in &graph.node {
            if !n.domain().is_empty() && n.domain() != "ai.onnx" {
                return unsupported(format!("node {:?} is of domain {:?}", n.name(), n.domain()));
            }
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(i.as_str()).or_default().push(n);
            }
            for o in &n.output {
                producer.insert(o.as_str(), n);
            }
        }
        let inputs: Vec<_> = graph.input.iter().filter(|i| !consts.contains_key(i.name())).collect();
        let ([input], [output]) = (&inputs[..], &graph.output[..]) else {
            return unsupported("the graph does not have exactly one input and one output");
        };
        let outputs = vec![output.name()];
        let used = graph.node.iter().filter(|n| n.op_type() == "Constant").map(std::ptr::from_ref).collect();
        let mut g = Graph { consts, consumers, producer, outputs, used };
        let mut cur: &str = input.name();
        let mut front = Vec::new();
        // 1. Float front end, up to the input QuantizeLinear.
        let (q_in, mut q_node) = loop {
            let n = g.only_consumer(cur)?;
            g.take(n);
            let other = || n.input.iter().find(|i| i.as_str() != cur).map_or("", String::as_str);
            match n.op_type() {
                op @ ("Sub" | "Add" | "Mul" | "Div") => {
                    if n.input.first().map(String::as_str) != Some(cur) && op != "Add" && op != "Mul" {
                        return unsupported(format!("{op} with the features as its second operand"));
                    }
                    let v = per_feature(g.f32s(other())?, features, op)?;
                    front.push(match op {
                        "Sub" => FrontOp::Sub(v),
                        "Add" => FrontOp::Add(v),
                        "Mul" => FrontOp::Mul(v),
                        _ => FrontOp::Div(v),
                    });
                }
                "BatchNormalization" => {
                    if n.output.len() > 1 || onnx::attr_int(n, "training_mode", 0) != 0 {
                        return unsupported("BatchNormalization in training mode");
                    }
                    let p = |i: usize| -> Result<Vec<f32>, Unsupported> {
                        per_feature(g.f32s(n.input.get(i).map_or("", String::as_str))?, features, "BatchNormalization")
                    };
                    let (scale, b, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
                    let eps = onnx::attr_float(n, "epsilon", 1e-5);
                    let mul: Vec<f32> = (0..features).map(|i| (1.0 / (var[i] + eps).sqrt()) * scale[i]).collect();
                    let add = (0..features).map(|i| b[i] - mean[i] * mul[i]).collect();
                    front.push(FrontOp::Mul(mul));
                    front.push(FrontOp::Add(add));
                }
                "QuantizeLinear" => break (g.qparam(n)?, n),
                op => return unsupported(format!("{op} before the input QuantizeLinear")),
            }
            cur = n.output[0].as_str();
        };
        let mut layers = Vec::new();
        let mut q = q_in;
        let mut width = features;
        // 2. QuantizeLinear → DequantizeLinear → Gemm → [Relu] → QuantizeLinear, repeated, then the
        //    output DequantizeLinear.
        loop {
            let dq = g.only_consumer(q_node.output[0].as_str())?;
            if dq.op_type() != "DequantizeLinear" || g.qparam(dq)? != q {
                return unsupported("a QuantizeLinear not followed by its DequantizeLinear");
            }
            g.take(dq);
            if g.outputs.contains(&dq.output[0].as_str()) {
                break;
            }
            let gemm = g.only_consumer(dq.output[0].as_str())?;
            if gemm.op_type() != "Gemm" || gemm.input.first() != Some(&dq.output[0]) {
                return unsupported(format!("{} after a DequantizeLinear (only Gemm is native)", gemm.op_type()));
            }
            if onnx::attr_int(gemm, "transA", 0) != 0
                || onnx::attr_float(gemm, "alpha", 1.0) != 1.0
                || onnx::attr_float(gemm, "beta", 1.0) != 1.0
            {
                return unsupported("Gemm with transA, alpha or beta");
            }
            g.take(gemm);
            let (w, w_scale, n) = weights(&mut g, gemm, width)?;
            let bias = bias(&mut g, gemm, q.scale, &w_scale)?;
            let mut next = g.only_consumer(gemm.output[0].as_str())?;
            let relu = next.op_type() == "Relu";
            if relu {
                g.take(next);
                next = g.only_consumer(next.output[0].as_str())?;
            }
            if next.op_type() != "QuantizeLinear" {
                return unsupported(format!("{} after a Gemm (a QuantizeLinear is native)", next.op_type()));
            }
            g.take(next);
            let out = g.qparam(next)?;
            let max_acc = (width as i64) * 255 * 128 + bias.iter().map(|b| i64::from(*b).abs()).max().unwrap_or(0);
            if max_acc > i64::from(i32::MAX) {
                return unsupported("the layer's accumulator could leave int32");
            }
            layers.push(Dense { inputs: width, outputs: n, weights: w, w_scale, bias, input: q, output: out, relu });
            q = out;
            width = n;
            q_node = next;
        }
        if layers.is_empty() || width != 1 {
            return unsupported("the graph does not end in a one-output dense layer");
        }
        if g.used.len() != graph.node.len() {
            return unsupported(format!(
                "{} of the graph's {} nodes are outside the QDQ MLP pattern",
                graph.node.len() - g.used.len(),
                graph.node.len()
            ));
        }
        Ok(Plan { features, front, input: q_in, layers })
    }
}
