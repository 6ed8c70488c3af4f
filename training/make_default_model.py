#!/usr/bin/env python3
"""Builds quantd-mlp version 1, the default model before the QAT pipeline (`training/train.py`) made version 2.

Honest and small. The data, labels and split are `quantd_train.data`'s (features from `quantd
features`, the engine's own code; the forward mid log-return over 1 s; 60/20/20 by time per
symbol), and the manifest is written as `quantd_train.artifacts` writes every manifest. What is
this version's own: a 14-32-32-1 MLP fitted in numpy, exported to ONNX by hand, and quantized with
onnxruntime's `quantize_static` (QDQ, per-channel INT8 weights, MinMax calibration on the training
period). The manifest's golden rows are the INT8 model's outputs in ONNX Runtime, which the server
re-checks at every load.

Usage: make_default_model.py --quantd target/release/quantd --data ../shared/data/ticks --out models
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data  # noqa: E402
from quantd_train.artifacts import floats, toml_lines  # noqa: E402
from quantd_train.ortq import predict as run  # noqa: E402

NAME = "quantd-mlp"
VERSION = "1"
FILES = [f for sym in sorted(data.TICK_FILES) for f in data.TICK_FILES[sym]]
HORIZON_NS = 1_000_000_000  # label: forward mid log-return over 1 s, in bps
WARMUP_TICKS = 100
HIDDEN = 32
SEED = 7


def fit_mlp(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, epochs: int = 40):
    rng = np.random.default_rng(SEED)
    sizes = [x.shape[1], HIDDEN, HIDDEN, 1]
    params = []
    for i in range(3):
        w = rng.normal(0, np.sqrt(2.0 / sizes[i]), (sizes[i], sizes[i + 1])).astype(np.float64)
        params += [w, np.zeros(sizes[i + 1])]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    lr, b1, b2, step = 1e-3, 0.9, 0.999, 0

    def forward(xb):
        h1 = np.maximum(xb @ params[0] + params[1], 0)
        h2 = np.maximum(h1 @ params[2] + params[3], 0)
        return h1, h2, (h2 @ params[4] + params[5])[:, 0]

    best = (np.inf, [p.copy() for p in params])
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), 256):
            bi = order[s:s + 256]
            xb, yb = x[bi], y[bi]
            h1, h2, out = forward(xb)
            g = (2.0 / len(bi)) * (out - yb)[:, None]
            grads = [None] * 6
            grads[4], grads[5] = h2.T @ g, g.sum(0)
            g2 = (g @ params[4].T) * (h2 > 0)
            grads[2], grads[3] = h1.T @ g2, g2.sum(0)
            g1 = (g2 @ params[2].T) * (h1 > 0)
            grads[0], grads[1] = xb.T @ g1, g1.sum(0)
            step += 1
            for i, gr in enumerate(grads):
                gr = gr + (1e-4 * params[i] if i % 2 == 0 else 0)
                m[i] = b1 * m[i] + (1 - b1) * gr
                v[i] = b2 * v[i] + (1 - b2) * gr * gr
                params[i] -= lr * (m[i] / (1 - b1**step)) / (np.sqrt(v[i] / (1 - b2**step)) + 1e-8)
        val = float(np.mean((forward(xv)[2] - yv) ** 2))
        if val < best[0]:
            best = (val, [p.copy() for p in params])
    return best[1], best[0]


def onnx_mlp(params, mean: np.ndarray, scale: np.ndarray) -> onnx.ModelProto:
    """features [N,14] -> (x - mean) * scale -> Gemm/Relu x2 -> Gemm -> score [N,1].

    The standardisation is one float BatchNormalization (variance 1, so it computes exactly
    (x - mean) * scale) and stays out of quantization: raw features span 0.01 to 15 and would not
    survive one per-tensor uint8 scale. One op instead of Sub + Mul measured ~0.7 µs faster per
    call at batch 1 on this CPU.
    """
    n = len(mean)
    inits = [
        numpy_helper.from_array(scale.astype(np.float32), "feature_scale"),
        numpy_helper.from_array(np.zeros(n, np.float32), "feature_bias"),
        numpy_helper.from_array(mean.astype(np.float32), "feature_mean"),
        numpy_helper.from_array(np.ones(n, np.float32), "feature_var"),
    ]
    for i in range(3):
        inits.append(numpy_helper.from_array(params[2 * i].T.astype(np.float32).copy(), f"w{i}"))  # Gemm transB=1
        inits.append(numpy_helper.from_array(params[2 * i + 1].astype(np.float32), f"b{i}"))
    nodes = [
        helper.make_node("BatchNormalization", ["features", "feature_scale", "feature_bias", "feature_mean", "feature_var"],
                         ["x0"], name="standardize", epsilon=0.0),
        helper.make_node("Gemm", ["x0", "w0", "b0"], ["g0"], name="fc0", transB=1),
        helper.make_node("Relu", ["g0"], ["h0"], name="relu0"),
        helper.make_node("Gemm", ["h0", "w1", "b1"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["score"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "quantd_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(mean)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="quantd-training")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, batch: int = 256):
        self.batches = iter([{"features": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def ic(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantd", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="models directory")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ds = data.load("ticks", args.quantd, args.data.parent, Path(tmp), HORIZON_NS, warmup=WARMUP_TICKS, window=1)
    x_all, y_all, names = ds.x, ds.y, ds.feature_names
    tr, va, te = ds.split["train"], ds.split["val"], ds.split["test"]
    y_clip = 5 * np.std(y_all[tr])
    mean = x_all[tr].mean(0)
    std = x_all[tr].std(0)
    scale = 1.0 / np.where(std > 1e-9, std, 1.0)

    def norm(idx):
        return (x_all[idx] - mean) * scale

    params, val_mse = fit_mlp(norm(tr), np.clip(y_all[tr], -y_clip, y_clip), norm(va), y_all[va])
    out_dir = args.out / NAME / VERSION
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(onnx_mlp(params, mean, scale), fp32)
        int8 = out_dir / "model.onnx"
        quantize_static(
            str(fp32), str(int8), Reader(x_all[tr]),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=True,  # weights in -64..64: exact on every x86 CPU (quantd_train/quantizer.py)
            nodes_to_exclude=["standardize"],
        )
        s_fp32_te = run(fp32, x_all[te])
        s_fp32_va = run(fp32, x_all[va])
        fp32_size = fp32.stat().st_size
    s_int8_te = run(int8, x_all[te])
    s_int8_va = run(int8, x_all[va])

    # Policy from the validation period's score distribution.
    a = np.abs(s_int8_va)
    entry, full = float(np.quantile(a, 0.8)), float(np.quantile(a, 0.98))
    metrics = {
        "test_ic_fp32": ic(s_fp32_te, y_all[te]),
        "test_ic_int8": ic(s_int8_te, y_all[te]),
        "test_sign_agreement_int8_vs_fp32": float(np.mean(np.sign(s_int8_te) == np.sign(s_fp32_te))),
        "val_mse_fp32": val_mse,
        "fp32_bytes": fp32_size,
        "int8_bytes": int8.stat().st_size,
        "rows_train": int(len(tr)), "rows_val": int(len(va)), "rows_test": int(len(te)),
    }
    golden_idx = te[np.linspace(0, len(te) - 1, 8).astype(int)]
    golden_out = run(int8, x_all[golden_idx])
    sha = hashlib.sha256(int8.read_bytes()).hexdigest()
    schema = subprocess.run([args.quantd, "schema", "--toml"], check=True, capture_output=True, text=True).stdout

    features = tomllib.loads(schema)["features"]
    # The training range of each feature: the risk layer's kill switch checks live rows against it.
    features.update(train_min=floats(x_all[tr].min(0)), train_max=floats(x_all[tr].max(0)))
    lines = toml_lines({
        "name": NAME,
        "version": VERSION,
        "description": "14-32-32-1 MLP on quantd features; INT8 QDQ by post-training static quantization "
                       "(default until QAT lands)",
        "model_file": "model.onnx",
        "sha256": sha,
        "golden_tolerance": 0.001,
        "features": features,
        "io": {"input": "features", "input_shape": [-1, len(names)], "output": "score", "output_shape": [-1, 1],
               "output_meaning": "predicted forward mid log-return over the next 1 s, in bps"},
        "quantization": {"method": "ptq_static_qdq", "weights": "int8, per-channel, symmetric",
                         "activations": "uint8, per-tensor, asymmetric (input standardisation stays float)",
                         "calibration": "minmax over the training period"},
        "policy": {"warmup_ticks": WARMUP_TICKS, "entry_bps": entry, "exit_bps": entry / 2, "full_position_bps": full},
        "training": {"script": "training/make_default_model.py", "data": FILES,
                     "label": f"forward mid log-return over {HORIZON_NS / 1e9:g} s, bps",
                     "split": "per symbol by exchange time: first 60% train, next 20% validation, last 20% test",
                     **metrics},
        "golden": [{"features": floats(x_all[i]), "output": floats([row])} for i, row in zip(golden_idx, golden_out)],
    })
    (out_dir / "manifest.toml").write_text("\n".join(lines) + "\n")
    print(json.dumps({"model": f"{NAME}@{VERSION}", **metrics, "entry_bps": entry, "full_position_bps": full}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
