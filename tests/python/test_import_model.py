"""Bring your own model: `quantd import-model` on models made outside quantd's training pipeline
(a scikit-learn Ridge exported with skl2onnx; a PyTorch MLP exported with plain
`torch.onnx.export` and quantized with ONNX Runtime's `quantize_static`; a hand-built probability
model and a windowed model), each served over gRPC on real recorded ticks and scored exactly as
ONNX Runtime in Python scores `quantd features` of the same ticks. Models that do not fit the
engine's contract are refused with what to change."""
from __future__ import annotations

import csv
import gzip
import subprocess
import tomllib
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import BINARY, REPO, SHARED_TICKS

ETH_QUOTES = SHARED_TICKS / "binance_spot_ethusdt_20240808_quotes.csv.gz"
TRAIN_QUOTES = SHARED_TICKS / "binance_usdm_btcusdt_20240808_quotes.csv.gz"
IMPORT_TICKS = SHARED_TICKS / "binance_usdm_ethusdt_20240808_quotes.csv.gz"
TRAINING_PY = REPO / "training" / ".venv" / "bin" / "python"
NAMES = ["ret_bps", "ret_decay_100ms", "ret_decay_1s", "ret_decay_10s", "vol_1s", "vol_30s", "spread_bps", "imbalance",
         "microprice_bps", "trade_flow_1s", "trade_intensity_1s", "log_dt_tick_ms", "log_dt_trade_ms", "mid_zscore_30s"]
N_TICKS = 3000


def cli(*args):
    return subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=300)


def import_model(onnx_path, models, name, version="1", *extra):
    r = cli("import-model", "--onnx", onnx_path, "--name", name, "--version", version, "--ticks", IMPORT_TICKS,
            "--out", models, *extra)
    return r


def features_table(ticks, tmp_path, name="features.npy"):
    out = tmp_path / name
    r = cli("features", "--ticks", ticks, "--out", out)
    assert r.returncode == 0, r.stderr
    return np.load(out)


def matrix(table):
    return np.ascontiguousarray(np.stack([table[n] for n in NAMES], axis=1).astype(np.float32))


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """3000 real ETH spot quotes as a canonical tick file, the same ticks as wire ticks, and the
    feature rows `quantd features` computes for them (by seq)."""
    tmp = tmp_path_factory.mktemp("ticks")
    canon = tmp / "eth.csv"
    rows = []
    with gzip.open(ETH_QUOTES, "rt") as f, open(canon, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow("seq,exchange_ts_ns,symbol,kind,bid_px,bid_qty,ask_px,ask_qty,trade_px,trade_qty,aggressor".split(","))
        for i, r in zip(range(N_TICKS), csv.DictReader(f)):
            w.writerow([i + 1, r["local_ts_ns"], r["symbol"], "quote", r["bid_px"], r["bid_qty"], r["ask_px"],
                        r["ask_qty"], "", "", ""])
            rows.append(r)
    table = features_table(canon, tmp)
    return rows, dict(zip(table["seq"].tolist(), matrix(table)))


def serve_and_stream(pb, quantd, models, model, stream, windows=None):
    """Serves `model` from `models`, streams the ticks, returns (signals, ORT-in-Python scores of
    the same inputs) for every warm signal."""
    pb2, pb2_grpc = pb
    rows, feats = stream
    server = quantd("--model", model, models=models)
    assert server.addr, "".join(server.log)
    ticks = [pb2.Tick(symbol=r["symbol"], seq=i + 1, exchange_ts_ns=int(r["local_ts_ns"]), kind=pb2.TICK_KIND_QUOTE,
                      bid_px=float(r["bid_px"]), bid_qty=float(r["bid_qty"]), ask_px=float(r["ask_px"]),
                      ask_qty=float(r["ask_qty"])) for i, r in enumerate(rows)]
    with grpc.insecure_channel(server.addr) as ch:
        signals = list(pb2_grpc.SignalServiceStub(ch).StreamTicks(iter(ticks), timeout=120))
    assert server.stop() == 0
    assert len(signals) == len(ticks)
    assert all(s.reject_reason == "" for s in signals), {s.reject_reason for s in signals}
    warm = [s for s in signals if not s.warming_up]
    assert len(warm) > 2000
    name, version = model.split("@")
    manifest = tomllib.loads((models / name / version / "manifest.toml").read_text())
    session = ort.InferenceSession(str(models / name / version / "model.onnx"), providers=["CPUExecutionProvider"])
    window = manifest["features"]["window"]
    if window == 1:
        x = np.stack([feats[s.seq] for s in warm])
    else:
        x = np.stack([np.stack([feats[s.seq - window + 1 + j] for j in range(window)]) for s in warm])
    want = session.run([manifest["io"]["output"]], {manifest["io"]["input"]: x})[0].reshape(-1)
    return warm, want, manifest


def assert_same_scores(warm, want, atol):
    got = np.array([s.score for s in warm])
    diff = np.max(np.abs(got - want))
    print(f"max |served - ORT in Python| = {diff:.3g} over {len(warm)} warm signals")
    assert diff <= atol, diff
    assert np.unique(got).size > 100, "real ticks give varied scores"


def test_a_scikit_learn_model_is_imported_and_served(pb, quantd, stream, tmp_path):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import Ridge

    train = features_table(TRAIN_QUOTES, tmp_path, "train.npy")
    x, mid = matrix(train), train["mid"]
    y = np.zeros(len(x))
    y[:-50] = (np.log(mid[50:]) - np.log(mid[:-50])) * 1e4
    model = convert_sklearn(Ridge(alpha=1.0).fit(x, y), initial_types=[("features", FloatTensorType([None, 14]))],
                            target_opset=17)
    path = tmp_path / "ridge.onnx"
    path.write_bytes(model.SerializeToString())
    models = tmp_path / "models"
    r = import_model(path, models, "ridge")
    assert r.returncode == 0, r.stderr
    assert "quantization fp32, served here on ort" in r.stdout, r.stdout
    manifest = tomllib.loads((models / "ridge" / "1" / "manifest.toml").read_text())
    assert manifest["io"]["input"] == "features" and manifest["io"]["output"] == "variable"
    assert manifest["features"]["window"] == 1 and manifest["verify"]["file"] == "verify.npy"
    assert np.load(models / "ridge" / "1" / "verify.npy").shape == (2048, 14)
    assert len(manifest["golden"]) == 32
    policy = manifest["policy"]
    assert 0 < policy["exit_bps"] <= policy["entry_bps"] <= policy["full_position_bps"]
    # The model is verified exactly as the server would verify it.
    assert cli("verify-model", models / "ridge" / "1").returncode == 0

    warm, want, _ = serve_and_stream(pb, quantd, models, "ridge@1", stream)
    assert_same_scores(warm, want, atol=1e-4 * max(1.0, float(np.max(np.abs(want)))))
    assert any(s.target_position != 0 for s in warm), "the thresholds from the ticks open positions"


def test_a_pytorch_model_quantized_by_onnx_runtime_is_imported_with_its_fp32_sibling(pb, quantd, stream, tmp_path):
    assert TRAINING_PY.is_file(), "training/.venv missing: run `make train-setup`"
    train = tmp_path / "train.npy"
    assert cli("features", "--ticks", TRAIN_QUOTES, "--out", train).returncode == 0
    r = subprocess.run([str(TRAINING_PY), str(Path(__file__).parent / "clients" / "torch_model.py"), str(train),
                        str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    models = tmp_path / "models"
    r = import_model(tmp_path / "int8.onnx", models, "torch-mlp", "1", "--fp32", tmp_path / "fp32.onnx")
    assert r.returncode == 0, r.stderr
    assert "quantization qdq" in r.stdout, r.stdout
    manifest = tomllib.loads((models / "torch-mlp" / "1" / "manifest.toml").read_text())
    assert manifest["fp32_sibling"] == "1-fp32" and manifest["quantization"]["method"] == "qdq"
    assert tomllib.loads((models / "torch-mlp" / "1-fp32" / "manifest.toml").read_text())["quantization"]["method"] == "fp32"

    warm, want, _ = serve_and_stream(pb, quantd, models, "torch-mlp@1", stream)
    # Reduced-range weights make the integer arithmetic exact under ONNX Runtime on every x86
    # CPU, and quantd serves only a backend that reproduces it: the same scores.
    assert_same_scores(warm, want, atol=1e-5)


def test_a_probability_model_trades_around_one_half(pb, quantd, stream, tmp_path):
    """Gemm -> Sigmoid: an up-move probability. Positions are signed by p - 0.5, and the
    thresholds are quantiles of |p - 0.5| over the import ticks."""
    w = np.zeros((14, 1), np.float32)
    w[0, 0] = 0.8  # ret_bps: momentum
    w[7, 0] = 0.5  # imbalance: book pressure
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["p_up"])],
        "p_up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 14])],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(1, np.float32), "b")])
    path = tmp_path / "p_up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    models = tmp_path / "models"
    r = import_model(path, models, "p-up", "1", "--output-kind", "p-up")
    assert r.returncode == 0, r.stderr
    manifest = tomllib.loads((models / "p-up" / "1" / "manifest.toml").read_text())
    assert manifest["io"]["output_kind"] == "p_up"
    assert manifest["policy"]["full_position_bps"] < 0.5, "thresholds in probability units, around 0.5"

    warm, want, _ = serve_and_stream(pb, quantd, models, "p-up@1", stream)
    assert_same_scores(warm, want, atol=1e-6)
    held = [s for s in warm if s.target_position != 0]
    assert held, "positions open"
    assert all((s.target_position > 0) == (s.score > 0.5) for s in held), "long only above 0.5, short only below"
    assert any(s.target_position < 0 for s in held) and any(s.target_position > 0 for s in held)


def test_a_windowed_model_gets_its_window_from_the_input_shape(pb, quantd, stream, tmp_path):
    """[batch, 8, 14] -> mean over time -> Gemm: the window (8) is read from the graph."""
    w = (np.arange(14, dtype=np.float32)[:, None] - 7) / 50
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0), helper.make_node("Gemm", ["m", "w", "b"], ["y"])],
        "windowed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.zeros(1, np.float32), "b")])
    path = tmp_path / "windowed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    models = tmp_path / "models"
    r = import_model(path, models, "windowed", "1", "--output-kind", "score")
    assert r.returncode == 0, r.stderr
    manifest = tomllib.loads((models / "windowed" / "1" / "manifest.toml").read_text())
    assert manifest["features"]["window"] == 8 and manifest["io"]["input_shape"] == [-1, 8, 14]
    warm, want, _ = serve_and_stream(pb, quantd, models, "windowed@1", stream)
    assert_same_scores(warm, want, atol=1e-5)


def gemm_model(path, in_type=TensorProto.FLOAT, width=14, batch="batch", outputs=1):
    w = np.ones((width, 1), np.float32) / width
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Gemm", ["xf", "w"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["y"], ["y2"]))
        outs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, [batch, width])], outs,
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("case,kwargs,needle", [
    ("width", {"width": 7}, "quantd feeds [batch, 14] (14 features: ret_bps"),
    ("double", {"in_type": TensorProto.DOUBLE}, "quantd feeds float32 feature rows (cast inside the model"),
    ("fixed batch", {"batch": 1}, "has a fixed batch of 1; the engine batches ticks"),
    ("two outputs", {"outputs": 2}, "it has 2 outputs"),
])
def test_a_model_that_does_not_fit_is_refused_with_what_to_change(tmp_path, case, kwargs, needle):
    models = tmp_path / "models"
    r = import_model(gemm_model(tmp_path / "m.onnx", **kwargs), models, "bad")
    assert r.returncode == 2, (case, r.stdout, r.stderr)
    assert "does not fit quantd's contract" in r.stderr and needle in r.stderr, (case, r.stderr)
    assert not (models / "bad" / "1").exists(), "nothing is left behind"


def test_an_imported_model_is_signed_and_never_overwritten(tmp_path):
    path = gemm_model(tmp_path / "m.onnx")
    assert cli("keygen", "--out", tmp_path / "k").returncode == 0
    assert cli("keygen", "--out", tmp_path / "other").returncode == 0
    models = tmp_path / "models"
    r = import_model(path, models, "signed", "1", "--sign", tmp_path / "k.key")
    assert r.returncode == 0, r.stderr
    assert (models / "signed" / "1" / "manifest.toml.sig").is_file()
    assert cli("verify-model", models / "signed" / "1", "--public-key", tmp_path / "k.pub").returncode == 0
    wrong = cli("verify-model", models / "signed" / "1", "--public-key", tmp_path / "other.pub")
    assert wrong.returncode != 0 and "signature" in wrong.stderr.lower(), wrong.stderr
    again = import_model(path, models, "signed", "1")
    assert again.returncode == 2 and "is never overwritten" in again.stderr, again.stderr
