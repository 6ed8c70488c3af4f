"""Careless clients in another ecosystem (Python grpcio) against the real `quantd` binary with its
default settings (issue 20): a reader that pauses, and a shutdown with streams in full flow."""
from __future__ import annotations

import queue
import signal
import threading
import time
import urllib.request

import grpc

from test_grpc_interop import metric


def ticks(pb2, symbol: str, rate: float, stop: threading.Event, sent: list):
    """Quotes of `symbol` stamped with the current time, paced to `rate` per second until `stop`."""
    seq, t0 = 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        while seq < due:
            seq += 1
            px = 100.0 + (seq % 13) * 0.01
            sent.append(seq)
            yield pb2.Tick(symbol=symbol, seq=seq, exchange_ts_ns=time.time_ns() - 1_000_000, kind=pb2.TICK_KIND_QUOTE,
                           bid_px=px, bid_qty=1.0, ask_px=px + 0.01, ask_qty=2.0)
        time.sleep(0.002)


def outcomes(server) -> float:
    text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
    names = ["scored", "warming_up", "rejected", "conflated", "dropped"]
    return {n: metric(text, f'quantd_ticks_total{{outcome="{n}"}}') or 0.0 for n in names}


def test_a_paused_reader_is_cut_with_a_count_and_its_neighbour_keeps_every_signal(pb, quantd):
    """grpcio's transport reads ahead as far as BDP probing grows its windows (measured: 53,000
    signals of a 20 s pause in one run, all 80,000 in another, with no stall the server could see
    meanwhile; the next test plays that client); with
    `grpc.http2.bdp_probe` off it reads ahead 64 KB, as the HTTP/2 clients of Go, Java and tonic do
    by default, and a paused application really stops the transport. That is the client this
    test plays: the server sees the stall and cuts the stream."""
    pb2, pb2_grpc = pb
    server = quantd()
    stop = threading.Event()
    with grpc.insecure_channel(server.addr, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        sent_a, sent_b, got_a, got_b = [], [], [], []
        calm = stub.StreamTicks(ticks(pb2, "ETHUSDT", 100, stop, sent_b), timeout=120)
        calm_done = threading.Thread(target=lambda: got_b.extend(s.seq for s in calm))
        calm_done.start()
        paused = stub.StreamTicks(ticks(pb2, "BTCUSDT", 4000, stop, sent_a), timeout=120)
        t0 = time.monotonic()
        code = details = None
        trailers = {}
        try:
            for s in paused:
                got_a.append(s.seq)
                if len(got_a) == 4000:
                    time.sleep(20)  # the gateway's GC pause: nothing is read for 20 s
                if time.monotonic() - t0 > 60:
                    break
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            trailers = dict(e.trailing_metadata() or ())
        stop.set()
        calm_done.join(timeout=30)
        calm_code = calm.code()

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details, len(got_a))
    assert "slow consumer" in details and "not delivered" in details, details
    undelivered = int(trailers["x-quantd-undelivered"])
    last = int(trailers["x-quantd-last-seq"])
    # Every signal handed out arrived, in order, up to the last one the trailer names.
    assert got_a == list(range(1, last + 1)), (got_a[-3:], last)
    # The ticks after `last` were never read by the server (flow control held them in the
    # client): the ones it did read but could not deliver are `undelivered`, often 0.
    assert last < len(sent_a) - 1000, (last, len(sent_a))
    # The neighbour on the same connection kept every signal and ended normally.
    assert calm_code == grpc.StatusCode.OK, calm_code
    assert got_b == sent_b[: len(got_b)] and len(got_b) == len(sent_b), (len(got_b), len(sent_b))
    # Nothing lost without a count: every tick the server read is a signal received or dropped.
    for _ in range(30):
        o = outcomes(server)
        if sum(o.values()) >= len(got_a) + len(got_b) + undelivered:
            break
        time.sleep(0.1)
    assert o["dropped"] == undelivered, o
    assert sum(o.values()) == len(got_a) + len(got_b) + undelivered, (o, len(got_a), len(got_b), undelivered)
    assert sum("slow consumer" in line for line in server.log) == 1, "logged once"
    print(f"paused reader: {len(got_a)} delivered up to seq {last}, {undelivered} undelivered; neighbour {len(got_b)}/{len(sent_b)}")
    assert server.stop() == 0


def test_a_paused_default_grpcio_reader_loses_no_signal_without_a_count(pb, quantd):
    """The same 20 s pause at 4,000 ticks/s with grpcio's default transport, which reads ahead
    into its own buffer while the application sleeps (how far depends on its BDP estimate). While
    that buffer has room the server sees a client that reads, and nothing is cut; once it is full
    the server sees the stall and cuts the stream as above. Either way no signal is lost without
    a count: the stream ends OK with every tick answered in order, or RESOURCE_EXHAUSTED with
    every signal up to `x-quantd-last-seq` delivered and the rest counted `dropped`."""
    pb2, pb2_grpc = pb
    server = quantd()
    stop = threading.Event()
    sent, got = [], []
    code, trailers = grpc.StatusCode.OK, {}
    with grpc.insecure_channel(server.addr) as ch:
        stream = pb2_grpc.SignalServiceStub(ch).StreamTicks(ticks(pb2, "BTCUSDT", 4000, stop, sent), timeout=120)
        try:
            for s in stream:
                got.append(s.seq)
                if len(got) == 4000:
                    time.sleep(20)
                    stop.set()  # the gateway stops sending when it resumes, and reads the rest
        except grpc.RpcError as e:
            code, trailers = e.code(), dict(e.trailing_metadata() or ())
        stop.set()
    undelivered = int(trailers.get("x-quantd-undelivered", 0))
    if code == grpc.StatusCode.OK:
        assert got == sent, (len(got), len(sent), got[-3:], sent[-3:])
    else:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
        assert got == list(range(1, int(trailers["x-quantd-last-seq"]) + 1)), (got[-3:], trailers)
    for _ in range(30):
        o = outcomes(server)
        if sum(o.values()) >= len(got) + undelivered:
            break
        time.sleep(0.1)
    assert o["dropped"] == undelivered and sum(o.values()) == len(got) + undelivered, (o, len(got), undelivered)
    print(f"paused default grpcio reader: {code.name}, {len(got)} of {len(sent)} sent delivered, {undelivered} undelivered")
    assert server.stop() == 0


def test_oversize_headers_get_a_grpc_status_and_the_connection_stays_up(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    tick = pb2.Tick(symbol="BTCUSDT", seq=1, exchange_ts_ns=time.time_ns() - 1_000_000, kind=pb2.TICK_KIND_QUOTE,
                    bid_px=100.0, bid_qty=1.0, ask_px=100.01, ask_qty=2.0)
    with grpc.insecure_channel(server.addr) as ch, grpc.insecure_channel(server.admin_addr) as admin:
        stub = pb2_grpc.SignalServiceStub(ch)
        assert stub.Predict(tick, metadata=[("x-big", "a" * 15_000)], timeout=10).seq == 1, "within 16 KiB"
        calls = [lambda md: stub.Predict(tick, metadata=md, timeout=10),
                 lambda md: list(stub.StreamTicks(iter([tick]), metadata=md, timeout=10)),
                 lambda md: pb2_grpc.ModelAdminStub(admin).GetActive(pb2.GetActiveRequest(), metadata=md, timeout=10)]
        for call in calls:
            for size in (17_000, 60_000):
                try:
                    call([("x-big", "a" * size)])
                    raise AssertionError(f"{size} bytes of headers were served")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, e.code(), e.details())
                    assert f"{size + 354} bytes" in e.details() or "bytes, over the server's 16384" in e.details(), e.details()
        # The connections survived: a normal call on each is served.
        assert stub.Predict(tick, timeout=10).seq == 1
        for _ in range(30):  # the exporter publishes on its own period
            text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
            if metric(text, 'quantd_stream_events_total{event="refused_headers"}') == 6:
                break
            time.sleep(0.1)
        assert metric(text, 'quantd_stream_events_total{event="refused_headers"}') == 6
    assert server.stop() == 0


def test_sigterm_answers_every_tick_read_and_ends_every_stream_with_a_status(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    stop = threading.Event()
    results: queue.Queue = queue.Queue()

    def gateway(i: int):
        sent, got = [], []
        try:
            with grpc.insecure_channel(server.addr) as ch:
                call = pb2_grpc.SignalServiceStub(ch).StreamTicks(ticks(pb2, f"SYM{i}", 2000, stop, sent), timeout=60)
                try:
                    for s in call:
                        got.append(s.seq)
                    results.put((i, "OK", "", {}, sent, got))
                except grpc.RpcError as e:
                    results.put((i, e.code().name, e.details(), dict(e.trailing_metadata() or ()), sent, got))
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            results.put((i, "EXC", repr(e), {}, sent, got))

    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = server.wait_exit(timeout=15)
    exited = time.monotonic() - t_term
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert rc == 0, "".join(server.log[-10:])
    print(f"SIGTERM with 4 streams at 2k ticks/s: exit 0 after {exited:.3f} s")
    assert exited < 5.0, f"exit took {exited:.2f} s (grace is 5 s)"
    assert results.qsize() == 4
    while not results.empty():
        i, code, details, trailers, sent, got = results.get()
        assert code == "UNAVAILABLE", (i, code, details)
        assert "shutting down" in details, details
        last = int(trailers["x-quantd-last-seq"])
        # Every tick read was answered, in order; the trailer names the last one.
        assert got == list(range(1, last + 1)), (i, got[-3:], last)
        assert len(got) > 1000, (i, len(got))


def test_model_files_that_block_or_never_end_leave_the_control_plane_answering(pb, quantd, tmp_path):
    """A FIFO as model.onnx, a symlink to /dev/zero, a symlinked version directory and an oversized
    manifest are each refused with a reason; ListModels keeps answering; SIGTERM still exits."""
    import os
    import shutil

    from conftest import REPO

    pb2, pb2_grpc = pb
    models = tmp_path / "models"
    v1 = models / "quantd-mlp" / "1"
    shutil.copytree(REPO / "models" / "quantd-mlp" / "1", v1)

    def version(v: str):
        d = models / "quantd-mlp" / v
        d.mkdir()
        manifest = (v1 / "manifest.toml").read_text().replace('version = "1"', f'version = "{v}"', 1)
        return d, manifest

    d, manifest = version("2")  # model.onnx is a FIFO nobody writes
    os.mkfifo(d / "model.onnx")
    (d / "manifest.toml").write_text(manifest)
    d, manifest = version("3")  # model.onnx is endless
    os.symlink("/dev/zero", d / "model.onnx")
    (d / "manifest.toml").write_text(manifest)
    d, manifest = version("4")  # a 2 MB manifest (over registry.max_manifest_bytes)
    shutil.copy(v1 / "model.onnx", d / "model.onnx")
    (d / "manifest.toml").write_text(manifest + "\n# padding\n" + ("#" * 1000 + "\n") * 2000)
    os.symlink(v1, models / "quantd-mlp" / "5")  # a symlinked version directory

    server = quantd(models=models)
    assert server.addr, "".join(server.log)
    want = {"2": "FIFO", "3": "symlink", "4": "over the limit", "5": "symlink"}
    with grpc.insecure_channel(server.admin_addr) as admin:
        stub = pb2_grpc.ModelAdminStub(admin)
        deadline = time.monotonic() + 20
        while True:
            t0 = time.monotonic()
            listed = stub.ListModels(pb2.ListModelsRequest(), timeout=5).models
            took = time.monotonic() - t0
            assert took < 1.0, f"ListModels took {took:.2f} s"
            errors = {m.version: m.error for m in listed if m.state == "failed"}
            if all(v in errors for v in want) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for v, needle in want.items():
            assert v in errors and needle in errors[v], (v, errors.get(v), [(m.version, m.state) for m in listed])
        active = [m for m in listed if m.state == "active"]
        assert [m.version for m in active] == ["1"], [(m.version, m.state, m.error) for m in listed]
    t0 = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - t0 < 5.0


def test_half_open_connections_at_the_descriptor_limit_do_not_lock_out_a_real_client(pb, quantd):
    """1,100 connections that never start HTTP/2, at a 1,024 descriptor limit: accept backs off
    instead of spinning, the half-open ones are closed at the handshake deadline, and a real client
    is then served."""
    import resource
    import socket

    pb2, pb2_grpc = pb
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    server = quantd(nofile=1024, env={"QUANTD_STREAM__HANDSHAKE_TIMEOUT_MS": "2000"})
    assert server.addr, "".join(server.log)
    host, port = server.addr.rsplit(":", 1)
    socks = []
    for i in range(1100):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        socks.append(s)
        if i % 100 == 99:
            time.sleep(0.05)  # let the server accept them (and run out of descriptors), not the SYN queue
    t_flood = time.monotonic()
    time.sleep(0.5)
    cpu0 = server.io_cpu_seconds()
    time.sleep(1.0)
    io_share = (server.io_cpu_seconds() - cpu0) / 1.0
    with grpc.insecure_channel(server.addr) as ch:
        stub = pb2_grpc.SignalServiceStub(ch)
        tick = pb2.Tick(symbol="ETHUSDT", seq=1, exchange_ts_ns=time.time_ns(), kind=pb2.TICK_KIND_QUOTE, bid_px=3000.0,
                        bid_qty=1.0, ask_px=3000.5, ask_qty=1.0)
        answer = stub.Predict(tick, timeout=15, wait_for_ready=True)
    served_after = time.monotonic() - t_flood
    for s in socks:
        s.close()
    assert answer.seq == 1 and answer.reject_reason == "", answer
    # The half-open connections close 2 s after they were accepted; the client waiting behind
    # them in the backlog is accepted within the accept back-off (at most 1 s) after that.
    assert served_after < 2.0 + 1.0, f"served {served_after:.2f} s after the flood"
    assert io_share < 0.20, f"the I/O thread used {100 * io_share:.0f} % of a core while out of descriptors"
    print(f"served {served_after:.2f} s after the flood; I/O threads {100 * io_share:.1f} % of a core")
    for _ in range(40):  # the exporter publishes every second
        text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
        if (metric(text, 'quantd_connections_total{event="handshake_timeout"}') or 0) > 0:
            break
        time.sleep(0.1)
    assert metric(text, 'quantd_connections_total{event="handshake_timeout"}') > 0
    assert metric(text, 'quantd_connections_total{event="accept_no_descriptors"}') > 0, "the limit was reached"
    assert server.stop() == 0
