"""A PT2E quantizer that annotates a graph the way ONNX Runtime fuses QDQ into integer kernels.

`torchao`'s `X86InductorQuantizer` targets Inductor and leaves parts of these models unquantized
for ONNX Runtime, so this one annotates exactly:

* every `linear` and `conv1d`: input activation per-tensor affine uint8, weight per-channel
  symmetric int8 in the reduced range -64..64 (`WEIGHT_QMAX`), bias float. Reduced range makes
  the model exact on every x86 CPU: without VNNI, ONNX Runtime's u8×s8 kernels multiply with
  VPMADDUBSW, whose int16 sum of two u8×s8 products saturates above 32767; with |w| ≤ 64 it is
  at most 2·255·64 = 32640. The full range (`--weight-range full`) is 7 % finer per weight and
  differs from the exact integer result on AVX2-only CPUs (REPORT.md measures both);
* a ReLU right after one of them: its output quantized with the same activation spec (ONNX
  Runtime fuses Conv/Gemm + ReLU into one integer kernel); a layer without a ReLU after it (the
  output layer) has its own output quantized, else ONNX Runtime keeps it as a float Gemm;
* every `matmul` of two activations (the Transformer's attention: scores and weighted values):
  both inputs and the output per-tensor affine uint8, so ONNX Runtime runs it as QLinearMatMul;
* everything else (the float standardisation, the LSTM, layer norms, softmax) stays float.

Fake quantization uses `FakeQuantize` with moving-average min/max observers: the fused
`FusedMovingAvgObsFakeQuantize` of the default QAT configs does not export to ONNX.
"""
from __future__ import annotations

import torch
from torchao.quantization.pt2e.fake_quantize import FakeQuantize
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

ANNOTATED = (torch.ops.aten.linear.default, torch.ops.aten.conv1d.default)
MATMUL = (torch.ops.aten.matmul.default,)
RELU = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


WEIGHT_QMAX = {"reduced": 64, "full": 127}


def specs(qat: bool, weight_range: str = "reduced") -> tuple[QuantizationSpec, QuantizationSpec]:
    wq = WEIGHT_QMAX[weight_range]
    if qat:
        act_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                         dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        w_ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-wq, quant_max=wq,
                                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    else:
        act_ctr, w_ctr = HistogramObserver, PerChannelMinMaxObserver
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=act_ctr)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-wq, quant_max=wq, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=w_ctr)
    return act, weight


class OrtQuantizer(Quantizer):
    def __init__(self, qat: bool = True, weight_range: str = "reduced"):
        super().__init__()
        self.act, self.weight = specs(qat, weight_range)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in MATMUL:
                a, b = node.args[0], node.args[1]
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: self.act, b: self.act}, output_qspec=self.act, _annotated=True)
                continue
            if node.op != "call_function" or node.target not in ANNOTATED:
                continue
            x, w = node.args[0], node.args[1]
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={x: self.act, w: self.weight}, _annotated=True)
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_function" and users[0].target in RELU:
                users[0].meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=self.act, _annotated=True)
            else:
                # No ReLU after it (the output layer): quantize its output too, or ONNX Runtime
                # leaves the layer as a float Gemm between DequantizeLinear nodes.
                node.meta["quantization_annotation"].output_qspec = self.act
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        pass


__all__ = ["OrtQuantizer", "WEIGHT_QMAX"]
