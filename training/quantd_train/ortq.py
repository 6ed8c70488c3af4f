"""ONNX Runtime side: post-training static quantization (QDQ, per-channel, calibrated on the
training period with MinMax, Percentile or Entropy), dynamic quantization, running a model, and
the proof that an INT8 model runs integer kernels.

The proof: load the model, let ONNX Runtime optimise it (ORT_ENABLE_EXTENDED, the level at which
QDQ groups are fused), save the optimised graph, and require every MatMul/Gemm/Conv to have become
an integer op. A QDQ model whose DequantizeLinear -> MatMul pairs were not fused runs in float
with extra work (onnxruntime issue #20052); this check catches it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

INTEGER_OPS = {"QGemm", "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention"}
FLOAT_COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "LSTM", "GRU"}


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, batch: int = 512):
        # Equal batches only: the histogram calibrators stack them into one array.
        self.it = iter([{"features": x[i:i + batch]} for i in range(0, len(x) - batch + 1, batch)])

    def get_next(self):
        return next(self.it, None)


def quantize_ptq(fp32: Path, out: Path, calib: np.ndarray, method: str, weight_range: str = "reduced") -> Path:
    """Static QDQ: uint8 per-tensor activations, int8 per-channel symmetric weights, in the reduced
    range -64..64 unless `weight_range` is "full" (why: `quantizer.py`)."""
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra = {"CalibPercentile": 99.99} if method == "percentile" else {}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=weight_range == "reduced", calibrate_method=methods[method], extra_options={"WeightSymmetric": True, **extra},
                        op_types_to_quantize=["MatMul", "Gemm", "Conv", "Relu"])
    return out


def quantize_dyn(fp32: Path, out: Path) -> Path:
    """Dynamic: int8 weights in the reduced range -64..64 (why: `quantizer.py`), activations
    quantized per call (MatMul/Gemm and LSTM). The graph is
    constant-folded first: the exporter builds the LSTM's weight tensors with Concat/Reshape
    nodes, and quantize_dynamic only quantizes weights that are initializers."""
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        session(fp32, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, folded)
        quantize_dynamic(str(folded), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm", "LSTM"])
    return out


def session(path: Path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_to: Path | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if optimized_to:
        so.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(path: Path, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(["score"], {"features": x[i:i + batch]})[0][:, 0] for i in range(0, len(x), batch)])


def optimized_ops(path: Path) -> list[str]:
    """Op types of the graph ONNX Runtime runs after ORT_ENABLE_EXTENDED optimisation."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        session(path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, opt)
        return [n.op_type for n in onnx.load(str(opt)).graph.node]


def integer_kernel_report(path: Path) -> tuple[bool, dict[str, int]]:
    """(every matmul/conv is an integer kernel, op counts of the optimised graph)."""
    ops = optimized_ops(path)
    counts = {op: ops.count(op) for op in sorted(set(ops))}
    integer = sum(counts.get(op, 0) for op in INTEGER_OPS)
    float_compute = sum(counts.get(op, 0) for op in FLOAT_COMPUTE_OPS)
    return integer > 0 and float_compute == 0, counts


def max_abs_int8(path: Path) -> int:
    """Largest |value| of the graph's int8 tensors (its quantized weights); 0 if it has none. At
    most 64 means ONNX Runtime's u8×s8 kernels cannot saturate on any x86 CPU."""
    m = onnx.load(str(path))
    tensors = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant"
                                           for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return max([int(np.max(np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)))) for t in tensors
                if t.data_type == onnx.TensorProto.INT8 and onnx.numpy_helper.to_array(t).size] + [0])


def output_scale(path: Path) -> float | None:
    """Scale of the QuantizeLinear feeding the graph output's DequantizeLinear, if any."""
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    producer = {o: n for n in m.graph.node for o in n.output}
    node = producer.get(m.graph.output[0].name)
    while node is not None and node.op_type != "DequantizeLinear":
        node = producer.get(node.input[0]) if node.input else None
    if node is None:
        return None
    scale = inits.get(node.input[1], consts.get(node.input[1]))
    return float(np.max(scale)) if scale is not None else None
