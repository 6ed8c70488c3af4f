"""The control plane from a Python grpcio client: the admin services on their own listener, and
SIGTERM turning health NOT_SERVING at once while the drain is still under way."""
from __future__ import annotations

import queue
import signal
import threading
import time

import grpc

from test_grpc_interop import recorded_ticks

SERVICE = b"quantd.v1.SignalService"


def health_check(ch: grpc.Channel, service: bytes = SERVICE) -> int:
    """grpc.health.v1.Health/Check with hand-encoded protobuf (field 1: the service name; the
    answer's field 1: 1 SERVING, 2 NOT_SERVING)."""
    check = ch.unary_unary("/grpc.health.v1.Health/Check")
    reply = check(b"\n" + bytes([len(service)]) + service, timeout=5)
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


def test_admin_calls_go_to_the_admin_listener(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    assert server.admin_addr and server.admin_addr != server.addr, "".join(server.log)
    with grpc.insecure_channel(server.admin_addr) as admin, grpc.insecure_channel(server.addr) as data:
        risk = pb2_grpc.RiskAdminStub(admin)
        assert risk.SetKillSwitch(pb2.KillSwitchRequest(engaged=True, reason="python"), timeout=5).applied
        assert risk.GetRisk(pb2.GetRiskRequest(), timeout=5).global_kill
        assert risk.SetKillSwitch(pb2.KillSwitchRequest(engaged=False), timeout=5).applied
        assert len(pb2_grpc.ModelAdminStub(admin).ListModels(pb2.ListModelsRequest(), timeout=5).models) > 0
        try:
            pb2_grpc.RiskAdminStub(data).GetRisk(pb2.GetRiskRequest(), timeout=5)
            raise AssertionError("RiskAdmin answered on the service port")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
        assert health_check(data) == health_check(admin) == 1
    assert server.stop() == 0


def test_sigterm_turns_health_not_serving_while_the_drain_is_under_way(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    ticks = list(recorded_ticks(pb2, 2))
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (t := outbox.get()) is not None:
            yield t

    # A client that stopped reading (its window shut: BDP probing off, see
    # test_hostile_clients.py) keeps the drain open until the grace period ends.
    stuck = grpc.insecure_channel(server.addr, options=[("grpc.http2.bdp_probe", 0)])
    flood = (pb2.Tick(symbol="STUCK", seq=i + 1, exchange_ts_ns=time.time_ns(), kind=pb2.TICK_KIND_QUOTE, bid_px=1.0,
                      bid_qty=1.0, ask_px=1.01, ask_qty=1.0) for i in range(200_000))
    unread = pb2_grpc.SignalServiceStub(stuck).StreamTicks(flood, timeout=30)
    next(unread)
    time.sleep(1)  # it sends until flow control stops it; nothing more is read
    with grpc.insecure_channel(server.addr) as data, grpc.insecure_channel(server.admin_addr) as admin:
        replies = pb2_grpc.SignalServiceStub(data).StreamTicks(requests(), timeout=30)
        outbox.put(ticks[0])
        assert next(replies).seq == ticks[0].seq
        assert health_check(admin) == 1
        flipped: list[float] = []

        def watch():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if health_check(admin) == 2:
                    flipped.append(time.monotonic())
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        watcher.join()
        assert flipped, "health never turned NOT_SERVING after SIGTERM"
        print(f"NOT_SERVING seen {1e3 * (flipped[0] - sent):.1f} ms after SIGTERM (polling)")
        assert server.proc.poll() is None, "still draining: the stuck stream holds it"
        # The reading stream ended with a status naming the last tick answered.
        try:
            next(replies)
            raise AssertionError("the stream should have ended")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.details(), e
            assert dict(e.trailing_metadata())["x-quantd-last-seq"] == str(ticks[0].seq)
        outbox.put(None)
    assert server.wait_exit() == 0
    stuck.close()


def test_sigterm_right_after_serving_is_a_clean_shutdown(quantd):
    """The handlers are registered before the server logs `serving`: a SIGTERM sent the moment it
    does is a graceful stop (exit 0), never the default action that kills the process."""
    for _ in range(5):
        server = quantd()
        assert server.addr, "".join(server.log)
        assert server.stop() == 0, "".join(server.log)
