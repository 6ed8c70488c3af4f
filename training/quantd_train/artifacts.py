"""Model version directories as quantd serves them: `model.onnx`, `manifest.toml` (feature schema
from `quantd schema --toml`, window T, quantization method and calibration, policy thresholds,
training ranges, golden rows computed by ONNX Runtime, metrics, sha256) and, for models of one
feature row, `verify.npy`: the verification set quantd holds every backend to at load, and the
`[saturation]` baseline: the native kernel's clamped share per stage on the validation period."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import tomli_w

from . import ortq


def floats(values) -> list[float]:
    """Python floats of an array, flattened: TOML writes each as its shortest exact repr."""
    return [float(v) for v in np.asarray(values).ravel()]


def plain(v):
    """`v` with numpy scalars and tuples made the Python values tomli_w writes; a None in a
    table leaves its key out."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items() if x is not None}  # TOML has no null: unset
    return v


def toml_lines(doc: dict) -> list[str]:
    """`doc` as manifest lines (tomli_w: every string escaped, every float exact)."""
    return tomli_w.dumps(plain(doc)).rstrip("\n").split("\n")


WEIGHTS = {"reduced": "int8, per-channel, symmetric, reduced range -64..64 (exact on every x86 CPU)",
           "full": "int8, per-channel, symmetric (-127..127)"}
QUANT_TEXT = {
    # variant: (method, weights (None: see WEIGHTS), activations, calibration)
    "fp32": ("fp32", "float32", "float32", "none"),
    "qat": ("qat_qdq", None, "uint8, per-tensor, asymmetric",
            "fake quantization during fine-tuning (moving-average min/max observers), PT2E + OrtQuantizer"),
    "ptq-minmax": ("ptq_static_qdq", None, "uint8, per-tensor, asymmetric", "minmax over the training period"),
    "ptq-percentile": ("ptq_static_qdq", None, "uint8, per-tensor, asymmetric",
                       "percentile 99.99 over the training period"),
    "ptq-entropy": ("ptq_static_qdq", None, "uint8, per-tensor, asymmetric", "entropy (KL) over the training period"),
    "dynamic": ("dynamic", "int8, per-channel, reduced range -64..64", "uint8, per call (dynamic)",
                "none (ranges computed per call)"),
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
    return toml_lines({"verify": {"file": "verify.npy", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                  "ort_max_steps": int(ort_max_steps)}})


def saturation_section(quantd: str, version_dir: Path, x: np.ndarray) -> list[str]:
    """The manifest's `[saturation]` lines: the native kernel's clamped share per stage on `x` (the
    validation period), from `quantd score`; none where the native kernel does not serve the model
    (it alone counts)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.npy"
        np.save(rows, np.ascontiguousarray(x, dtype=np.float32))
        r = subprocess.run([quantd, "score", str(version_dir), "--rows", str(rows)], check=True,
                           capture_output=True, text=True)
    doc = json.loads(r.stdout)
    if not doc["saturation"]:
        return []
    # The share of values the native kernel clamped at an integer limit on the validation period:
    # the baseline quantd_quant_saturation_ratio is compared with (quantization-collapse alert).
    return toml_lines({"saturation": {"rows": int(doc["rows"]), "baseline": dict(doc["saturation"])}})


def append_section(manifest: Path, lines: list[str]) -> None:
    if lines:
        manifest.write_text(manifest.read_text().rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


def write_version(quantd: str, dest: Path, *, name: str, version: str, description: str, onnx_path: Path,
                  variant: str, window: int, feature_dim: int, policy: tuple[float, float, float],
                  train_x: np.ndarray, golden_x: np.ndarray, output_meaning: str, training: dict,
                  verify_x: np.ndarray | None = None, val_x: np.ndarray | None = None,
                  weight_range: str = "reduced", fp32_sibling: str | None = None,
                  golden_tolerance: float = 0.001) -> Path:
    """Writes dest/<name>/<version>/ atomically (staged, then renamed) and returns it; with `val_x`
    (the validation period's inputs) its saturation baseline too. `fp32_sibling`: the version of
    the FP32 model this one was quantized from, which `backend = auto` may time and serve instead
    where the server allows it (`backend.allow_fp32_sibling`)."""
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
    weights = weights or WEIGHTS[weight_range]
    entry, exit_, full = policy
    features = tomllib.loads(schema)["features"]
    # The training range of each feature: the risk layer's kill switch checks live rows against it.
    features.update(window=window, train_min=floats(flat.min(0)), train_max=floats(flat.max(0)))
    doc = {
        "name": name,
        "version": version,
        "description": description,
        "model_file": "model.onnx",
        **({"fp32_sibling": fp32_sibling} if fp32_sibling else {}),
        "sha256": hashlib.sha256((stage / "model.onnx").read_bytes()).hexdigest(),
        # Golden rows: ONNX Runtime's own output, re-checked by quantd at every load.
        "golden_tolerance": golden_tolerance,
        "features": features,
        "io": {"input": "features", "input_shape": [-1, feature_dim] if window == 1 else [-1, window, feature_dim],
               "output": "score", "output_shape": [-1, 1], "output_meaning": output_meaning},
        "quantization": {"method": method, "weights": weights, "activations": acts, "calibration": calib},
        "policy": {"warmup_ticks": 100, "entry_bps": entry, "exit_bps": exit_, "full_position_bps": full},
        "training": training,
    }
    lines = toml_lines(doc)
    if verify_x is not None and window == 1:
        lines += ["", *write_verify_set(stage, verify_x)]
    lines += ["", *toml_lines({"golden": [{"features": floats(x), "output": floats([out])}
                                          for x, out in zip(golden_x, golden_out)]})]
    (stage / "manifest.toml").write_text("\n".join(lines) + "\n")
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    if val_x is not None and variant != "fp32":
        append_section(final / "manifest.toml", saturation_section(quantd, final, val_x))
    return final
