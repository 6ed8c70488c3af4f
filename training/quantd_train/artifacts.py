"""Model version directories as quantd serves them: `model.onnx`, `manifest.toml` (feature schema
from `quantd schema --toml`, window T, quantization method and calibration, policy thresholds,
training ranges, golden rows computed by ONNX Runtime, metrics, sha256) and, for models of one
feature row, `verify.npy`: the verification set quantd holds every backend to at load."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

from . import ortq


def toml_list(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in np.asarray(values).ravel()) + "]"


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


QUANT_TEXT = {
    "fp32": ("fp32", "float32", "float32", "none"),
    "qat": ("qat_qdq", "int8, per-channel, symmetric (-127..127)", "uint8, per-tensor, asymmetric",
            "fake quantization during fine-tuning (moving-average min/max observers), PT2E + OrtQuantizer"),
    "ptq-minmax": ("ptq_static_qdq", "int8, per-channel, symmetric", "uint8, per-tensor, asymmetric",
                   "minmax over the training period"),
    "ptq-percentile": ("ptq_static_qdq", "int8, per-channel, symmetric", "uint8, per-tensor, asymmetric",
                       "percentile 99.99 over the training period"),
    "ptq-entropy": ("ptq_static_qdq", "int8, per-channel, symmetric", "uint8, per-tensor, asymmetric",
                    "entropy (KL) over the training period"),
    "dynamic": ("dynamic", "int8, per-channel", "int8, per call (dynamic)", "none (ranges computed per call)"),
}


VERIFY_ROWS = 2048


def verify_rows(x: np.ndarray, rows: int = VERIFY_ROWS) -> np.ndarray:
    """`rows` real feature rows spread evenly over `x` (the test period), as a [rows, F] float32 array."""
    idx = np.linspace(0, len(x) - 1, min(rows, len(x))).astype(int)
    return np.ascontiguousarray(x[idx].reshape(len(idx), -1), dtype=np.float32)


def write_verify_set(version_dir: Path, x: np.ndarray, ort_max_steps: int = 0) -> list[str]:
    """Writes `verify.npy` (the model inputs `x`, [rows, window * F] float32) and returns the
    manifest's `[verify]` lines. quantd refuses an INT8 model its native kernel covers without
    one, and compares every backend with the model's integer semantics on these rows at load."""
    path = version_dir / "verify.npy"
    np.save(path, np.ascontiguousarray(x, dtype=np.float32))
    return ["[verify]", 'file = "verify.npy"', f'sha256 = "{hashlib.sha256(path.read_bytes()).hexdigest()}"',
            f"ort_max_steps = {int(ort_max_steps)}"]


def write_version(quantd: str, dest: Path, *, name: str, version: str, description: str, onnx_path: Path,
                  variant: str, window: int, feature_dim: int, policy: tuple[float, float, float],
                  train_x: np.ndarray, golden_x: np.ndarray, output_meaning: str, training: dict,
                  verify_x: np.ndarray | None = None) -> Path:
    """Writes dest/<name>/<version>/ atomically (staged, then renamed) and returns it."""
    final = dest / name / version
    stage = dest / name / f".staging-{version}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy(onnx_path, stage / "model.onnx")
    # One row per call, as quantd checks them: a dynamically quantized model's output depends on
    # the other rows of its batch (the activation scale is computed per call).
    golden_out = ortq.predict(stage / "model.onnx", golden_x.astype(np.float32), batch=1)
    schema = subprocess.run([quantd, "schema", "--toml"], check=True, capture_output=True, text=True).stdout
    flat = train_x.reshape(-1, feature_dim)
    method, weights, acts, calib = QUANT_TEXT[variant]
    entry, exit_, full = policy
    lines = [
        f"name = {toml_value(name)}",
        f"version = {toml_value(version)}",
        f"description = {toml_value(description)}",
        'model_file = "model.onnx"',
        f'sha256 = "{hashlib.sha256((stage / "model.onnx").read_bytes()).hexdigest()}"',
        # Golden rows: ONNX Runtime's own output, re-checked by quantd at every load.
        "golden_tolerance = 0.001",
        "",
        schema.strip(),
        f"window = {window}",
        "# The training range of each feature: the risk layer's kill switch checks live rows against it.",
        f"train_min = {toml_list(flat.min(0))}",
        f"train_max = {toml_list(flat.max(0))}",
        "",
        "[io]",
        'input = "features"',
        f"input_shape = {[-1, feature_dim] if window == 1 else [-1, window, feature_dim]}",
        'output = "score"',
        "output_shape = [-1, 1]",
        f"output_meaning = {toml_value(output_meaning)}",
        "",
        "[quantization]",
        f"method = {toml_value(method)}",
        f"weights = {toml_value(weights)}",
        f"activations = {toml_value(acts)}",
        f"calibration = {toml_value(calib)}",
        "",
        "[policy]",
        "warmup_ticks = 100",
        f"entry_bps = {entry!r}",
        f"exit_bps = {exit_!r}",
        f"full_position_bps = {full!r}",
        "",
        *([*write_verify_set(stage, verify_x), ""] if verify_x is not None and window == 1 else []),
        "[training]",
        *[f"{k} = {toml_value(v)}" for k, v in training.items()],
    ]
    for x, out in zip(golden_x, golden_out):
        lines += ["", "[[golden]]", f"features = {toml_list(x)}", f"output = {toml_list([out])}"]
    (stage / "manifest.toml").write_text("\n".join(lines) + "\n")
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    return final
