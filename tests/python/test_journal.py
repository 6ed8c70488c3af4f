"""The journal read back with pyarrow, as a user's tools would: one tick record and one signal record
per tick after a SIGTERM; after kill -9, every complete batch readable and the one open file
recognisable; a full disk (a tiny tmpfs) under each `journal.on_full` policy."""
from __future__ import annotations

import math
import signal
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from conftest import REPO
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


def test_every_tick_and_signal_is_journaled_and_reads_back_with_pyarrow(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    journal = tmp_path / "journal"
    server = quantd("--journal", str(journal))
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2, 3000))
    bad = pb2.Tick(symbol="BAD", seq=99_999, exchange_ts_ns=ticks[-1].exchange_ts_ns, kind=pb2.TICK_KIND_QUOTE,
                   bid_px=float("nan"), bid_qty=1.0, ask_px=2.0, ask_qty=1.0)
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
