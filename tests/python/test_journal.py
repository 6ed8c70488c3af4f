"""The journal read back with pyarrow, as a user's tools would: one tick record and one signal record
per tick after a SIGTERM; after kill -9, every complete batch readable and the one open file
recognisable; a full disk (a tiny tmpfs) under each `journal.on_full` policy."""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from conftest import BINARY, REPO
from test_grpc_interop import metric, recorded_ticks


def read_kind(d: Path, kind: str) -> tuple[pa.Table, list[Path]]:
    """Every `<kind>-*.arrows[.partial]` file in `d`, batches up to the last complete one;
    returns the rows and the files that ended without an end-of-stream marker."""
    batches, unterminated = [], []
    for f in sorted(d.glob(f"{kind}-*.arrows*")):
        reader = ipc.open_stream(pa.OSFile(str(f)))
        try:
            for b in reader:
                batches.append(b)
        except (pa.ArrowInvalid, OSError):
            unterminated.append(f)
        if f.suffix == ".partial":
            unterminated.append(f)
    schema = batches[0].schema if batches else None
    return (pa.Table.from_batches(batches, schema) if batches else None), sorted(set(unterminated))


def journal_metric(addr: str, name: str, key: str, value: str) -> float | None:
    """One labelled series of the server's `/metrics` (test_grpc_interop's parser)."""
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return metric(text, f'{name}{{{key}="{value}"}} ')


def malformed(pb2, symbol: str, ts: int):
    """A quote the server refuses at its edge (`non_finite`), journaled as received all the same."""
    return pb2.Tick(symbol=symbol, seq=99_999, exchange_ts_ns=ts, kind=pb2.TICK_KIND_QUOTE, bid_px=float("nan"),
                    bid_qty=1.0, ask_px=2.0, ask_qty=1.0)


def test_every_tick_and_signal_is_journaled_and_reads_back_with_pyarrow(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    server = quantd("--journal", str(journal))
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 3000))
    bad = malformed(pb2, "BAD", ticks[-1].exchange_ts_ns)
    sent = ticks + [bad]
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        signals = list(stub.StreamTicks(iter(sent), timeout=60))
        one = stub.Predict(ticks[0], timeout=10)
    assert len(signals) == len(sent)
    assert server.stop() == 0
    t, open_t = read_kind(journal, "ticks")
    s, open_s = read_kind(journal, "signals")
    assert not open_t and not open_s, "after SIGTERM every file is closed with its end-of-stream marker"
    assert t.num_rows == s.num_rows == len(sent) + 1, (t.num_rows, s.num_rows)
    t, s = t.to_pydict(), s.to_pydict()
    streamed = [i for i, st in enumerate(s["stream"]) if st == s["stream"][0]]
    assert len(streamed) == len(sent)
    assert t["arrival"] == sorted(t["arrival"]) and len(set(t["arrival"])) == len(t["arrival"])
    for i, (tick, sig) in enumerate(zip(sent, signals)):
        assert t["seq"][i] == tick.seq and t["symbol"][i] == tick.symbol and t["index"][i] == i
        assert t["server_recv_ns"][i] == sig.server_recv_ns
        assert (t["bid_px"][i] == tick.bid_px) or (math.isnan(t["bid_px"][i]) and math.isnan(tick.bid_px))
        assert s["seq"][i] == sig.seq and s["index"][i] == i and s["server_send_ns"][i] == sig.server_send_ns
        assert s["score"][i] == sig.score and s["target_position"][i] == sig.target_position
        assert s["policy_position"][i] == sig.policy_position and s["warming_up"][i] == sig.warming_up
        assert (s["model"][i] or "") == sig.model and s["risk"][i] == "|".join(sig.risk)
        assert (s["reject"][i] or "") == sig.reject_reason.split(":")[0]
    assert s["reject"][len(sent) - 1] == "non_finite" and s["symbol"][len(sent) - 1] == "BAD"
    assert s["model"][0].startswith("quantd-mlp@")
    # The unary call is a stream of one.
    assert s["stream"][-1] != s["stream"][0] and s["score"][-1] == one.score and t["seq"][-1] == ticks[0].seq
    # Every model a signal names is in models-*.arrows with its file's sha256 and feature schema.
    models, open_m = read_kind(journal, "models")
    assert not open_m and models.num_rows >= 1
    m = models.to_pylist()[0]
    name, _, version = s["model"][0].partition("@")
    manifest = tomllib.loads((REPO / "models" / name / version / "manifest.toml").read_text())
    assert m["model"] == s["model"][0] and m["sha256"] == manifest["sha256"]
    assert m["schema_hash"] == manifest["features"]["schema_hash"] and m["backend"].split()[0] in ("native", "ort")


def test_after_kill_9_every_flushed_record_reads_back_and_the_open_files_are_recognised(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    server = quantd("--journal", str(journal), env={"QUANTD_JOURNAL__FLUSH_MS": "50"})
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 4000))
    got = []

    def paced():
        for tick in ticks:
            yield tick
            time.sleep(0.0002)

    with grpc.insecure_channel(server.addr) as ch:
        replies = pb2_grpc.SignalServiceStub(ch).StreamTicks(paced(), timeout=60)
        for sig in replies:
            got.append(sig)
            if len(got) == 2000:
                break
        time.sleep(0.5)  # several flush intervals: what was answered by now is on disk
        answered = len(got)
        server.proc.kill()
        server.proc.wait()
    t, open_t = read_kind(journal, "ticks")
    s, open_s = read_kind(journal, "signals")
    assert open_t and open_s, "a killed server leaves its open files as .partial"
    assert all(f.suffix == ".partial" for f in open_t + open_s)
    assert s.num_rows >= answered and t.num_rows >= s.num_rows, (t.num_rows, s.num_rows, answered)
    s = s.to_pydict()
    # What was recovered is a prefix of what was sent and matches what the client received.
    assert s["index"][:answered] == list(range(answered))
    assert s["score"][:answered] == [g.score for g in got[:answered]]
    # The next server reports the partial files and journals into new ones.
    again = quantd("--journal", str(journal))
    assert any("partly written" in line for line in again.log), "".join(again.log)
    assert again.stop() == 0
    # The audit proves what the crash left: every batch journaled whole, bit for bit.
    r = quantd_cli("audit", "--journal", str(journal), "--models", str(REPO / "models"))
    assert r.returncode == 0 and "audit PASS" in r.stdout and "ends early" in r.stdout, r.stdout + r.stderr
    reproduced = int(re.search(r"PASS: (\d+) of", r.stdout).group(1))
    assert reproduced + 64 >= answered, (reproduced, answered)  # at most the batch the crash cut (max_batch)


@pytest.fixture
def tiny_disk(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(d)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk tests need a real small filesystem")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("policy", ["drop_and_count", "refuse_ticks"])
def test_a_full_disk_is_a_counted_outcome_under_each_policy(pb, quantd, tiny_disk, policy):
    pb2, pb2_grpc = pb
    server = quantd("--journal", str(tiny_disk), env={"QUANTD_JOURNAL__ON_FULL": policy, "QUANTD_JOURNAL__FLUSH_MS": "20"})
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 6000))
    signals = []
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        for chunk in range(0, len(ticks), 500):
            signals += list(stub.StreamTicks(iter(ticks[chunk:chunk + 500]), timeout=60))
            time.sleep(0.05)
    assert len(signals) == len(ticks), "the stream stays up and every tick is answered"
    time.sleep(1.2)  # a metrics publication
    errors = journal_metric(server.metrics_addr, "quantd_journal_events_total", "event", "write_error")
    assert errors > 0, "128 KiB cannot hold 6000 ticks and signals"
    refused = [s for s in signals if s.reject_reason.startswith("journal_unavailable")]
    if policy == "drop_and_count":
        assert not refused
        assert journal_metric(server.metrics_addr, "quantd_journal_events_total", "event", "tick_dropped") > 0
    else:
        assert refused, "refuse_ticks refuses ticks while the disk refuses writes"
        assert journal_metric(server.metrics_addr, "quantd_journal_events_total", "event", "tick_refused") == len(refused)
        assert journal_metric(server.metrics_addr, "quantd_rejects_total", "reason", "journal_unavailable") == len(refused)
    assert server.stop() == 0


def quantd_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The `quantd` binary's tool commands (audit, features, replay), as a user runs them."""
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=timeout)


def test_audit_reproduces_every_signal_across_a_hot_swap_and_a_kill_switch_and_finds_a_tampered_one(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    server = quantd("--journal", str(journal))
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 6000))
    with grpc.insecure_channel(server.addr) as ch, grpc.insecure_channel(server.admin_addr) as admin:
        stub, models, risk = (pb2_grpc.SignalServiceStub(ch), pb2_grpc.ModelAdminStub(admin),
                              pb2_grpc.RiskAdminStub(admin))
        signals = list(stub.StreamTicks(iter(ticks[:2500]), timeout=60))
        before = models.GetActive(pb2.GetActiveRequest(), timeout=10).active
        # A hot swap to another version, and an admin kill switch on the symbol, mid-session.
        models.ActivateModel(pb2.ModelRef(name="quantd-mlp", version="1"), timeout=60)
        assert risk.SetKillSwitch(pb2.KillSwitchRequest(symbol="ETHUSDT", engaged=True, reason="audit"), timeout=5).applied
        signals += list(stub.StreamTicks(iter(ticks[2500:3500]), timeout=60))
        assert risk.SetKillSwitch(pb2.KillSwitchRequest(symbol="ETHUSDT", engaged=False), timeout=5).applied
        # An admin reset: the symbol forgets its state and warms up again.
        assert risk.ResetSymbol(pb2.ResetSymbolRequest(symbol="ETHUSDT", reason="audit"), timeout=5).applied
        signals += list(stub.StreamTicks(iter(ticks[3500:]), timeout=60))
    assert len(signals) == len(ticks)
    assert server.stop() == 0
    served = {s.model for s in signals}
    assert served == {f"{before.name}@{before.version}", "quantd-mlp@1"}, served
    assert any("kill_admin" in s.risk for s in signals)
    assert signals[3500].warming_up and not signals[3499].warming_up, "the reset took effect"
    controls, _ = read_kind(journal, "controls")
    assert [c["kind"] for c in controls.to_pylist()] == ["kill", "release", "reset"]
    assert all(c["route"] is None for c in controls.to_pylist()), "only a route change carries a route"

    report = tmp_path / "audit.json"
    ok = quantd_cli("audit", "--journal", str(journal), "--models", str(REPO / "models"), "--json", str(report))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit PASS: 6000 of 6000 engine signals reproduced bit for bit" in ok.stdout, ok.stdout
    assert "admin calls (kill switch, reset, route change) re-applied between the same batches: 3" in ok.stdout, ok.stdout
    audit = json.loads(report.read_text())
    assert audit["mismatched"] == 0 and audit["missing_ticks"] == 0
    assert set(audit["by_model"]) == served and sum(m["reproduced"] for m in audit["by_model"].values()) == 6000

    # One record changed by one bit of its score: the audit finds it and says where.
    files = sorted(journal.glob("signals-*.arrows"))
    table = pa.ipc.open_stream(pa.OSFile(str(files[0]))).read_all()
    rows = table.to_pydict()
    k = next(i for i, (w, r) in enumerate(zip(rows["warming_up"], rows["reject"])) if not w and r is None and i > 500)
    rows["score"][k] = math.nextafter(rows["score"][k], math.inf)
    with ipc.new_stream(str(files[0]), table.schema) as w:
        w.write_table(pa.Table.from_pydict(rows, table.schema))
    bad = quantd_cli("audit", "--journal", str(journal), "--models", str(REPO / "models"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "audit FAIL" in bad.stdout and "1 mismatched" in bad.stdout, bad.stdout
    assert f"stream {rows['stream'][k]} index {rows['index'][k]}" in bad.stdout and "score:" in bad.stdout, bad.stdout


def test_journal_files_feed_features_and_replay_with_the_rows_of_the_original_capture(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    server = quantd("--journal", str(journal), env={"QUANTD_JOURNAL__ROTATE_BYTES": "65536",
                                                    "QUANTD_JOURNAL__FEATURE_ROWS": "row"})
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 3000))
    bad = malformed(pb2, "ETHUSDT", ticks[-1].exchange_ts_ns)
    with grpc.insecure_channel(server.addr) as ch:
        signals = list(pb2_grpc.SignalServiceStub(ch).StreamTicks(iter(ticks + [bad]), timeout=60))
    assert len(signals) == len(ticks) + 1
    assert server.stop() == 0
    journaled = sorted(journal.glob("ticks-*.arrows"))
    assert len(journaled) > 1, "the small rotation size splits the ticks over several files"
    # The same ticks as a capture file (quantd's canonical CSV).
    capture = tmp_path / "capture.csv"
    capture.write_text("seq,exchange_ts_ns,symbol,kind,bid_px,bid_qty,ask_px,ask_qty,trade_px,trade_qty,aggressor\n" + "".join(
        f"{t.seq},{t.exchange_ts_ns},{t.symbol},quote,{t.bid_px!r},{t.bid_qty!r},{t.ask_px!r},{t.ask_qty!r},0,0,\n" for t in ticks))
    a, b = tmp_path / "from_capture.csv", tmp_path / "from_journal.csv"
    r = quantd_cli("features", "--ticks", str(capture), "--out", str(a))
    assert r.returncode == 0, r.stderr
    # Given newest first: the reader puts journal files back in the order they were written.
    r = quantd_cli("features", "--ticks", *map(str, reversed(journaled)), "--out", str(b))
    assert r.returncode == 0, r.stderr
    assert a.read_text() == b.read_text() and len(a.read_text().splitlines()) == len(ticks) + 1
    r = quantd_cli("replay", "--ticks", *map(str, journaled), "--model", str(REPO / "models/quantd-mlp/2"))
    assert r.returncode == 0 and "quantd-mlp@2" in r.stdout, r.stdout + r.stderr
    # With journal.feature_rows = "row", each signal keeps the row it was scored on: the rows
    # `quantd features` (training's input) computes, bit for bit.
    npy = tmp_path / "from_capture.npy"
    assert quantd_cli("features", "--ticks", str(capture), "--out", str(npy)).returncode == 0
    trained = np.load(npy)
    names = [n for n in trained.dtype.names if n not in ("seq", "symbol", "exchange_ts_ns", "mid")]
    served, _ = read_kind(journal, "signals")
    rows = [r for r in served.column("features").to_pylist() if r is not None]
    assert len(rows) == len(ticks) and len(names) == len(rows[0])
    assert np.array(rows, np.float32).tobytes() == np.stack([trained[n] for n in names], 1).astype(np.float32).tobytes()
    mixed = quantd_cli("features", "--ticks", str(journaled[0]), str(capture), "--out", str(tmp_path / "x.csv"))
    assert mixed.returncode != 0 and "cannot be read together" in mixed.stderr, mixed.stderr


def test_a_warm_restart_serves_without_warm_up_and_the_audit_proves_both_runs(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    ticks = list(recorded_ticks(pb2, 3000))
    warm = {"QUANTD_ENGINE__WARM_START": "journal"}

    def stream(server, part):
        with grpc.insecure_channel(server.addr) as ch:
            return list(pb2_grpc.SignalServiceStub(ch).StreamTicks(iter(part), timeout=60))

    first = quantd("--journal", str(journal), env=warm)
    assert first.addr, "".join(first.log)
    assert any("warm start: journal tail read" in line and '"ticks":0' in line for line in first.log), "nothing to rebuild yet"
    before = stream(first, ticks[:2000])
    warming = sum(s.warming_up for s in before)
    assert warming >= 50, "a cold start warms up for the manifest's warmup_ticks"
    assert first.stop() == 0
    # Restart: the symbol's state comes back from the journal, not from 100 more ticks.
    second = quantd("--journal", str(journal), env=warm)
    assert second.addr, "".join(second.log)
    rebuilt = [line for line in second.log if "warm start: symbol state rebuilt" in line]
    assert rebuilt and '"ticks":128' in rebuilt[0] and '"symbols":1' in rebuilt[0], "".join(second.log)
    after = stream(second, ticks[2000:])
    assert not any(s.warming_up for s in after), "no warm-up after a warm restart"
    assert second.stop() == 0
    # The same restart cold, for contrast.
    cold = quantd("--journal", str(tmp_path / "cold"))
    assert sum(s.warming_up for s in stream(cold, ticks[2000:])) == warming
    assert cold.stop() == 0

    r = quantd_cli("audit", "--journal", str(journal), "--models", str(REPO / "models"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3000 of 3000 engine signals reproduced bit for bit" in r.stdout and "in 2 run(s)" in r.stdout, r.stdout
    assert "warm starts rebuilt from 128 journaled ticks" in r.stdout, r.stdout
    # The journal as tick input holds each received tick once: the warm start's copies are left out.
    feats = tmp_path / "f.csv"
    r = quantd_cli("features", "--ticks", *map(str, journal.glob("ticks-*.arrows")), "--out", str(feats))
    assert r.returncode == 0 and len(feats.read_text().splitlines()) == 3000 + 1, r.stderr
