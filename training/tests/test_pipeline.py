"""The training pipeline, small but real: a smoke run on a slice of the recorded ticks (a few
epochs, every architecture and quantization method), then the checks the models must pass to be
served; the training features against `quantd features`; and the committed default model against
its manifest and report."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import reevaluate  # noqa: E402
import train  # noqa: E402
from quantd_train import data, ortq  # noqa: E402

QUANTD = REPO / "target" / "release" / "quantd"
SHARED = REPO.parent / "shared" / "data"
BTC = data.TICK_FILES["BTCUSDT"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    cache = tmp_path_factory.mktemp("cache")
    figures = out / "figures.json"
    rc = train.main(["--quantd", str(QUANTD), "--shared", str(SHARED), "--out", str(out), "--cache", str(cache),
                     "--max-rows", "4000", "--epochs", "2", "--qat-epochs", "1", "--window", "8", "--hidden", "32",
                     "--seq-hidden", "16", "--bench-calls", "300", "--json", str(figures)])
    assert rc == 0
    return out, cache, json.loads(figures.read_text())


def test_features_read_by_training_equal_quantd_features_byte_for_byte(tmp_path):
    files = [SHARED / "ticks" / f for f in BTC]
    rows = data.quantd_features(str(QUANTD), files, tmp_path / "f.npy")
    subprocess.run([str(QUANTD), "features", "--ticks", *map(str, files), "--out", str(tmp_path / "f.csv")], check=True,
                   capture_output=True)
    with open(tmp_path / "f.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) > 10_000
    for name in rows.dtype.names:
        if name == "symbol":
            assert [r["symbol"] for r in table] == list(rows["symbol"].astype(str))
            continue
        text = np.array([r[name] for r in table]).astype(rows[name].dtype)
        assert text.tobytes() == rows[name].tobytes(), name
    ds = data.load("ticks", str(QUANTD), SHARED, tmp_path, 10**9, warmup=100, window=1, symbols=["BTCUSDT"])
    names = [n for n in rows.dtype.names if n not in ("seq", "symbol", "exchange_ts_ns", "mid")]
    assert ds.feature_names == names
    assert ds.x.tobytes() == np.stack([rows[n] for n in names], 1).astype(np.float32).tobytes()


def test_every_model_is_built_and_every_int8_one_runs_integer_kernels(smoke):
    _, _, doc = smoke
    built = {(r["arch"], r["variant"]) for r in doc["rows"]}
    assert built == {(a, v) for a, vs in train.VARIANTS.items() for v in vs}
    for r in doc["rows"]:
        if r["variant"] != "fp32":
            assert r["integer_kernels"], (r["arch"], r["variant"], r["optimized_ops"])
        assert np.isfinite(r["ic"]) and r["model_bytes"] > 0 and r["p50_us_b1"] > 0, r


def test_the_integer_kernel_check_catches_a_qdq_model_that_runs_in_float(smoke, tmp_path):
    """Activation Q/DQ pairs removed from a PTQ model: DequantizeLinear -> Gemm stays float in
    ONNX Runtime (the onnxruntime #20052 trap), and the check must say so."""
    out, _, _ = smoke
    m = onnx.load(str(out / "quantd-mlp" / "2-ptq-minmax" / "model.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    outputs = {o.name for o in m.graph.output}
    drop, rewire = set(), {}
    for n in m.graph.node:
        if (n.op_type == "DequantizeLinear" and n.output[0] not in outputs and n.input[0] in producers
                and producers[n.input[0]].op_type == "QuantizeLinear"):
            q = producers[n.input[0]]
            rewire[n.output[0]] = q.input[0]
            drop |= {id(n), id(q)}
    assert rewire, "the PTQ model has activation Q/DQ pairs"
    keep = [n for n in m.graph.node if id(n) not in drop]
    for n in keep:
        n.input[:] = [rewire.get(i, i) for i in n.input]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, str(tmp_path / "float.onnx"))
    integer, ops = ortq.integer_kernel_report(tmp_path / "float.onnx")
    assert not integer, ops
    assert ortq.integer_kernel_report(out / "quantd-mlp" / "2-ptq-minmax" / "model.onnx")[0]


def test_qat_onnx_matches_the_pytorch_fake_quant_model_within_one_step(smoke):
    """ONNX Runtime's integer kernels against the converted PyTorch fake-quant graph, on 4,096
    validation inputs, in steps of the output quantization. Almost every row is within one step;
    a hidden layer's requantization can round the other way (exact int32 sums in ONNX Runtime
    against float sums in PyTorch), which moves the output by a step or two more (seen: at most
    2 steps for the MLP, 3 for the two-conv TCN)."""
    _, _, doc = smoke
    for r in doc["rows"]:
        if r["variant"] == "qat":
            assert r["output_step"] > 0
            assert r["frac_within_one_step"] >= 0.99, r
            assert r["max_diff_vs_torch"] <= 4 * r["output_step"] * 1.001, r


def test_manifests_validate_and_quantd_serves_the_models(smoke):
    out, _, doc = smoke
    for r in doc["rows"]:
        v = subprocess.run([str(QUANTD), "verify-model", r["dir"]], capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.startswith("ok:"), v.stdout + v.stderr
    # The windowed QAT model, served: golden rows pass at load and the health service says SERVING.
    p = subprocess.Popen([str(QUANTD), "serve", "--models", str(out), "--model", "quantd-tcn@2", "--listen",
                          "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-json", "true"],
                         stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in p.stderr:
            m = re.search(r'"message":"serving","addr":"([^"]+)"', line)
            if m:
                addr = m.group(1)
                break
        assert addr, "quantd did not start on the windowed model"
        h = subprocess.run([str(QUANTD), "health", "--target", f"http://{addr}"], capture_output=True, text=True)
        assert "SERVING" in h.stdout, h.stdout + h.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)


@pytest.mark.parametrize("arch", ["tcn", "transformer"])
@pytest.mark.parametrize("variant", ["fp32", "qat"])
def test_the_engine_feeds_windowed_models_what_training_fed_them(smoke, tmp_path, variant, arch):
    """`quantd replay` (the serving engine, its per-symbol ring of feature rows, batches of 64)
    scores every tick as ONNX Runtime scores the training pipeline's windows: the TCN and the
    Transformer, FP32 and QAT."""
    out, cache, doc = smoke
    version = "2" if variant == "qat" else "2-fp32"
    model = out / f"quantd-{arch}" / version
    window = 8
    subprocess.run([str(QUANTD), "replay", "--ticks", *[str(SHARED / "ticks" / f) for f in BTC], "--model", str(model),
                    "--batch", "64", "--out", str(tmp_path / "replay")], check=True, capture_output=True)
    served = {}
    with open(next((tmp_path / "replay").glob("signals-*.csv"))) as f:
        for r in csv.DictReader(f):
            served[int(r["seq"])] = float(r["score"])
    ds = data.load("ticks", str(QUANTD), SHARED, cache, 10**9, warmup=100, window=window, symbols=["BTCUSDT"],
                   max_rows_per_symbol=4000)
    idx = np.arange(window - 1, len(ds.seq))
    expected = ortq.predict(model / "model.onnx", ds.windows(idx, window))
    got = np.array([served[s] for s in ds.seq[idx]])
    step = ortq.output_scale(model / "model.onnx") or 0.0
    tol = max(step * 1.001, 1e-4 * max(1.0, float(np.max(np.abs(expected)))))
    assert np.max(np.abs(got - expected)) <= tol, (np.max(np.abs(got - expected)), tol)


def test_the_committed_default_model_reproduces_its_report(tmp_path):
    """sha256 as the manifest says, and the test-period figures in its manifest and REPORT.md
    re-computed from the committed ONNX files (evaluation only, no training)."""
    default = REPO / "models" / (REPO / "models" / "DEFAULT").read_text().strip()
    release = max((d for d in default.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    got = reevaluate.reevaluate(release, str(QUANTD), SHARED, tmp_path)
    assert got["sha256_ok"]
    manifest = got["manifest_figures"]
    for key in ("ic", "rank_ic", "directional_accuracy", "side_agreement_vs_fp32", "pnl_net_bps"):
        assert got[key] == pytest.approx(manifest[f"test_{key}"], rel=1e-6, abs=1e-9), key
    report = (release / "REPORT.md").read_text()
    assert f"{got['ic']:+.3f}" in report and f"{got['pnl_net_bps']:+.0f}" in report


def test_the_pipeline_trains_on_a_live_servers_journal(tmp_path):
    """Retraining on what quantd saw and served: a real server journals the recorded BTC ticks that
    quantd-load streams into it, and the pipeline takes that journal as its dataset."""
    journal = tmp_path / "journal"
    server = subprocess.Popen([str(QUANTD), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                               "--metrics-listen", "127.0.0.1:0", "--models", str(REPO / "models"),
                               "--journal", str(journal), "--log-json", "true"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        addr = None
        for line in server.stderr:
            if m := re.search(r'"message":"serving","addr":"([^"]+)"', line):
                addr = m.group(1)
                break
        assert addr, "the server did not start"
        subprocess.run([str(REPO / "target" / "release" / "quantd-load"), "--target", addr,
                        "--ticks", *[str(SHARED / "ticks" / f) for f in BTC], "--rate", "4000", "--duration", "3",
                        "--warmup", "0", "--quiet"], check=True, capture_output=True, timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    files = data.journal_tick_files(journal)
    ds = data.load("journal", str(QUANTD), SHARED, tmp_path / "cache", 10**9, warmup=100, window=1, journal=journal)
    assert set(ds.symbol) == {"BTCUSDT"} and len(ds.ts) >= 10_000, len(ds.ts)
    assert ds.x.tobytes() == data.load("journal", str(QUANTD), SHARED, tmp_path / "again", 10**9, warmup=100,
                                       window=1, journal=journal).x.tobytes()
    out = tmp_path / "models"
    rc = train.main(["--quantd", str(QUANTD), "--shared", str(SHARED), "--out", str(out), "--cache", str(tmp_path / "c"),
                     "--dataset", "journal", "--journal", str(journal), "--archs", "mlp", "--epochs", "1",
                     "--qat-epochs", "1", "--hidden", "16", "--no-bench"])
    assert rc == 0 and files
    manifest = (out / "quantd-mlp" / "2" / "manifest.toml").read_text()
    assert 'dataset = "journal"' in manifest and "on quantd features (journal)" in manifest
