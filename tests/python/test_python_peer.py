"""The Python peer (loadtest/baselines/python_server.py) is a faithful baseline: its features
equal `quantd features` on real ticks, and served over grpcio it gives quantd's scores."""
from __future__ import annotations

import csv
import gzip
import subprocess
import sys
import threading

import grpc
import numpy as np

from conftest import BINARY, REPO, SHARED_TICKS

sys.path.insert(0, str(REPO / "loadtest" / "baselines"))
import python_server  # noqa: E402

QUOTES = SHARED_TICKS / "binance_spot_ethusdt_20240808_quotes.csv.gz"
N = 3000


def rows(n=N):
    with gzip.open(QUOTES, "rt") as f:
        for _, r in zip(range(n), csv.DictReader(f)):
            yield r


def test_peer_features_equal_quantd_features(tmp_path):
    out = tmp_path / "f.csv"
    subprocess.run([str(BINARY), "features", "--ticks", str(QUOTES), "--out", str(out)], check=True, capture_output=True)
    ours = np.loadtxt(out, delimiter=",", skiprows=1, usecols=range(4, 18), max_rows=N, dtype=np.float64)
    f = python_server.Features()
    peer = np.stack([
        f.update("quote", int(r["local_ts_ns"]), float(r["bid_px"]), float(r["bid_qty"]), float(r["ask_px"]), float(r["ask_qty"]))
        for r in rows()
    ]).astype(np.float64)
    assert peer.shape == ours.shape == (N, 14)
    np.testing.assert_allclose(peer, ours, rtol=1e-5, atol=1e-5)


def test_peer_serves_quantd_scores_over_grpc(pb, quantd):
    pb2, pb2_grpc = pb
    stubs = sys.modules["quantd.v1.quantd_pb2"].__file__.rsplit("/quantd/", 1)[0]
    proc = subprocess.Popen([sys.executable, str(REPO / "loadtest/baselines/python_server.py"), "--listen", "127.0.0.1:0",
                             "--model", str(REPO / "models/quantd-mlp/1"), "--stubs", stubs],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        peer_addr = line.split()[-1]
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        ticks = [pb2.Tick(symbol=r["symbol"], seq=i, exchange_ts_ns=int(r["local_ts_ns"]), kind=pb2.TICK_KIND_QUOTE,
                          bid_px=float(r["bid_px"]), bid_qty=float(r["bid_qty"]), ask_px=float(r["ask_px"]),
                          ask_qty=float(r["ask_qty"])) for i, r in enumerate(rows(400))]
        server = quantd("--model", "quantd-mlp@1")  # the model the peer runs
        got = {}
        for name, addr in (("peer", peer_addr), ("quantd", server.addr)):
            with grpc.insecure_channel(addr) as ch:
                got[name] = list(pb2_grpc.SignalServiceStub(ch).StreamTicks(iter(ticks), timeout=60))
        assert [s.seq for s in got["peer"]] == [t.seq for t in ticks]
        assert all(s.reject_reason == "" for s in got["peer"])
        np.testing.assert_allclose([s.score for s in got["peer"]], [s.score for s in got["quantd"]], atol=1e-3)
        assert [s.warming_up for s in got["peer"]] == [s.warming_up for s in got["quantd"]]
        # The peer answers batches too (so the suite can drive it with them): one SignalBatch per
        # TickBatch with the single-tick answers (the same ticks on other symbols).
        renamed = []
        for t in ticks:
            b = pb2.Tick()
            b.CopyFrom(t)
            b.symbol += ".b"
            renamed.append(b)
        batches = [pb2.TickBatch(ticks=renamed[i:i + 64]) for i in range(0, len(renamed), 64)]
        with grpc.insecure_channel(peer_addr) as ch:
            answers = list(pb2_grpc.SignalServiceStub(ch).StreamTickBatches(iter(batches), timeout=60))
        assert [len(a.signals) for a in answers] == [len(b.ticks) for b in batches]
        assert [s.score for a in answers for s in a.signals] == [s.score for s in got["peer"]]
        assert server.stop() == 0
    finally:
        proc.kill()
        proc.wait()
