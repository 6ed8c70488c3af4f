"""A gateway written in another ecosystem: Python grpcio streams real recorded Binance ticks at
the real `quantd` binary and checks the contract."""
from __future__ import annotations

import csv
import gzip
import math
import signal
import urllib.request

import grpc

from conftest import SHARED_TICKS

N_TICKS = 5000


def recorded_ticks(pb2, n=N_TICKS):
    """Binance spot ETHUSDT bookTicker capture (local timestamps; the spot feed has no exchange time)."""
    with gzip.open(SHARED_TICKS / "binance_spot_ethusdt_20240808_quotes.csv.gz", "rt") as f:
        rows = csv.DictReader(f)
        for i, r in zip(range(n), rows):
            yield pb2.Tick(symbol=r["symbol"], seq=i + 1, exchange_ts_ns=int(r["local_ts_ns"]),
                           kind=pb2.TICK_KIND_QUOTE, bid_px=float(r["bid_px"]), bid_qty=float(r["bid_qty"]),
                           ask_px=float(r["ask_px"]), ask_qty=float(r["ask_qty"]))


def metric(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_python_gateway_streams_real_ticks(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    assert server.addr, "".join(server.log)
    ticks = list(recorded_ticks(pb2))
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        signals = list(stub.StreamTicks(iter(ticks), timeout=60))
    assert len(signals) == len(ticks)
    for t, s in zip(ticks, signals):
        assert s.seq == t.seq and s.symbol == t.symbol and s.exchange_ts_ns == t.exchange_ts_ns
        assert s.reject_reason == "", s.reject_reason
        assert math.isfinite(s.score)
        assert -1.0 <= s.target_position <= 1.0
        assert s.model == "quantd-mlp@2"  # the default model (models/DEFAULT, highest release)
        assert s.server_send_ns >= s.server_recv_ns > 0
    assert sum(s.warming_up for s in signals) == 99
    assert any(s.target_position != 0 for s in signals)

    text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
    # The exporter publishes every second by default, histograms and then counters: poll until
    # both have caught up (a scrape can fall between the two).
    for _ in range(40):
        if ((metric(text, "quantd_tick_to_signal_seconds_count") or 0) >= N_TICKS
                and (metric(text, 'quantd_ticks_total{outcome="scored"}') or 0) >= N_TICKS - 99):
            break
        import time
        time.sleep(0.1)
        text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
    assert metric(text, "quantd_tick_to_signal_seconds_count") >= N_TICKS
    assert metric(text, 'quantd_ticks_total{outcome="scored"}') == N_TICKS - 99
    assert server.stop() == 0


def test_bad_tick_gets_a_reason_and_the_stream_continues(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    good = list(recorded_ticks(pb2, 3))
    bad = pb2.Tick(symbol="ETHUSDT", seq=99, exchange_ts_ns=good[-1].exchange_ts_ns, kind=pb2.TICK_KIND_QUOTE,
                   bid_px=float("nan"), bid_qty=1, ask_px=1, ask_qty=1)
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        out = list(stub.StreamTicks(iter(good[:2] + [bad] + good[2:]), timeout=30))
        one = stub.Predict(good[2], timeout=10)
    assert [s.seq for s in out] == [1, 2, 99, 3]
    assert out[2].reject_reason.startswith("non_finite: ")
    assert all(s.reject_reason == "" for s in out[:2] + out[3:])
    assert one.seq == 3 and one.reject_reason == ""
    assert server.stop() == 0


def test_sigterm_drains_and_exits_zero(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        assert len(list(stub.StreamTicks(recorded_ticks(pb2, 200), timeout=30))) == 200
    assert server.stop(signal.SIGTERM) == 0
    assert any('"shut down"' in line for line in server.log), "".join(server.log[-5:])


def test_reflection_answers_the_v1alpha_client_grpcio_ships(quantd):
    """grpcio-reflection's client (`ProtoReflectionDescriptorDatabase`) speaks only
    grpc.reflection.v1alpha: it lists quantd's services and resolves the SignalService schema."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool

    server = quantd()
    with grpc.insecure_channel(server.addr) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = db.get_services()
        assert "quantd.v1.SignalService" in services and "grpc.health.v1.Health" in services, services
        service = DescriptorPool(db).FindServiceByName("quantd.v1.SignalService")
        assert {m.name for m in service.methods} >= {"StreamTicks", "Predict"}, [m.name for m in service.methods]


def test_python_gateway_streams_over_the_unix_socket(pb, quantd, tmp_path):
    """grpcio dials `unix:PATH`: the same recorded ticks, the same contract, beside TCP. grpcio
    sends the socket path as `:authority`, which the server's HTTP/2 layer (h2) refuses as not an
    RFC 9113 authority (RST_STREAM PROTOCOL_ERROR, hyperium/h2#487); a client sets
    `grpc.default_authority` to `localhost`, as grpc-go and tonic clients do on their own."""
    pb2, pb2_grpc = pb
    sock = tmp_path / "quantd.sock"
    server = quantd("--listen", f"unix:{sock}")
    assert server.addr and sock.is_socket(), "".join(server.log)
    ticks = list(recorded_ticks(pb2, 1000))
    with grpc.insecure_channel(f"unix:{sock}", options=[("grpc.default_authority", "localhost")]) as ch:
        signals = list(pb2_grpc.SignalServiceStub(ch).StreamTicks(iter(ticks), timeout=30))
    assert [s.seq for s in signals] == [t.seq for t in ticks]
    assert all(not s.reject_reason and math.isfinite(s.score) for s in signals)
    assert sum(s.warming_up for s in signals) == 99


def test_python_gateway_streams_batches(pb, quantd):
    """grpcio streams TickBatch messages: one SignalBatch each, one Signal per Tick in order; an
    empty batch gets an empty answer; the answers equal single-tick streaming's."""
    pb2, pb2_grpc = pb
    server = quantd()
    ticks = list(recorded_ticks(pb2, 2000))
    sizes = [64, 0, 1, 300, 16] * 200
    batches, at = [], 0
    for n in sizes:
        if at >= len(ticks):
            break
        batches.append(pb2.TickBatch(ticks=ticks[at:at + n]))
        at += n
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        answers = list(stub.StreamTickBatches(iter(batches), timeout=60))
        single = list(stub.StreamTicks(iter(pb2.Tick(**{**{f.name: getattr(t, f.name) for f in t.DESCRIPTOR.fields},
                                                         "symbol": t.symbol + ".1"}) for t in ticks), timeout=60))
    assert [len(a.signals) for a in answers] == [len(b.ticks) for b in batches]
    signals = [s for a in answers for s in a.signals]
    assert [s.seq for s in signals] == [t.seq for t in ticks]
    assert all(not s.reject_reason for s in signals)
    assert [(s.score, s.target_position) for s in signals] == [(s.score, s.target_position) for s in single]
