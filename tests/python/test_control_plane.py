"""The control plane from a Python grpcio client: the admin services on their own listener, and
SIGTERM turning health NOT_SERVING while an open stream is still answered."""
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


def test_sigterm_turns_health_not_serving_while_an_open_stream_is_answered(pb, quantd):
    pb2, pb2_grpc = pb
    server = quantd()
    ticks = list(recorded_ticks(pb2, 2))
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (t := outbox.get()) is not None:
            yield t

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
        assert server.proc.poll() is None, "still draining: the open stream holds it"
        # A tick on the open stream is still answered during the drain, with the reason.
        outbox.put(ticks[1])
        answer = next(replies)
        assert answer.seq == ticks[1].seq and answer.reject_reason.startswith("shutting_down"), answer
        outbox.put(None)
        assert list(replies) == [], "the stream ends cleanly"
    assert server.wait_exit() == 0
