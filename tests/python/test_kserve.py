"""The Open Inference Protocol (KServe V2 / Triton gRPC) from NVIDIA's tritonclient, a client
nobody here wrote: metadata, readiness, and ModelInfer on real feature rows (`quantd features`
of a recorded capture), whose scores must equal ONNX Runtime's in Python on the same rows."""
import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib

from conftest import BINARY, REPO, SHARED_TICKS

TRITON_PY = REPO / ".venv-triton" / "bin" / "python"
CLIENT = Path(__file__).parent / "clients" / "triton_client.py"
MODEL = REPO / "models" / "quantd-mlp" / "2"


def feature_rows(tmp_path, n):
    """The first `n` warm feature rows quantd computes for a recorded ETH capture."""
    out = tmp_path / "features.npy"
    subprocess.run([str(BINARY), "features", "--ticks", str(SHARED_TICKS / "binance_spot_ethusdt_20240808_quotes.csv.gz"),
                    "--out", str(out)], check=True, capture_output=True)
    table = np.load(out)
    names = tomllib.loads((MODEL / "manifest.toml").read_text())["features"]["names"]
    rows = np.stack([table[name] for name in names], axis=1).astype(np.float32)
    return np.ascontiguousarray(rows[200:200 + n])


def test_tritonclient_runs_quantd_models_unchanged(quantd, tmp_path):
    assert TRITON_PY.is_file(), ".venv-triton missing: run `make setup`"
    rows = feature_rows(tmp_path, 1000)
    np.save(tmp_path / "rows.npy", rows)
    server = quantd()
    r = subprocess.run([str(TRITON_PY), str(CLIENT), server.addr, "quantd-mlp", str(tmp_path / "rows.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["live"] and got["ready"] and got["model_ready"]
    meta = got["metadata"]
    assert meta["name"] == "quantd-mlp" and meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "14"]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": ["-1", "1"]}]

    manifest = tomllib.loads((MODEL / "manifest.toml").read_text())
    session = ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    want = session.run([manifest["io"]["output"]], {manifest["io"]["input"]: rows})[0].reshape(-1)
    for key in ("scores_batched", "scores_whole"):
        served = np.array(got[key], dtype=np.float32)
        assert served.shape == want.shape
        # The default model's integer arithmetic is exact under ONNX Runtime on every x86 CPU
        # (reduced-range weights; manifest `ort_max_steps = 0`), and quantd serves only a backend
        # that reproduces it: the same scores, up to float rounding in the dequantization.
        print(f"{key}: max |quantd - ORT| = {np.max(np.abs(served - want))} over {served.size} rows")
        assert np.max(np.abs(served - want)) <= 1e-4, f"{key}: max |quantd - ORT| = {np.max(np.abs(served - want))}"
        assert np.unique(served).size > 10, "real rows give varied scores"

    assert got["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "not served here; served: quantd-mlp@2 (active)" in got["unknown_model"]["message"]
    assert got["wrong_width"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "the model takes input 'features' FP32 [n, 14]" in got["wrong_width"]["message"]
    assert got["wrong_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "datatype FP64 is not taken" in got["wrong_datatype"]["message"]
