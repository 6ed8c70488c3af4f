"""Fixtures for the Python interop tests: gRPC stubs generated from proto/ at test time, and the
real `quantd` binary serving the committed default model on ephemeral ports."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = REPO / "target" / "release" / "quantd"
SHARED_TICKS = REPO.parent / "shared" / "data" / "ticks"


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Compiles proto/quantd/v1/quantd.proto with grpcio-tools and imports the stubs."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(REPO / "proto/quantd/v1/quantd.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from quantd.v1 import quantd_pb2, quantd_pb2_grpc  # noqa: E402

    return quantd_pb2, quantd_pb2_grpc


class Quantd:
    """A `quantd serve` child process; `addr`/`admin_addr`/`metrics_addr` come from its JSON start-up log."""

    def __init__(self, *extra: str, models: Path | None = None, nofile: int | None = None, env: dict | None = None):
        assert BINARY.is_file(), f"{BINARY} missing: run `make setup`"
        cmd = [str(BINARY), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
               "--models", str(models or REPO / "models"), "--log-json", "true", *extra]
        def limits():
            if nofile:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=limits)
        self.log: list[str] = []
        self.addr = self.admin_addr = self.metrics_addr = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("message") == "serving":
                    self.addr, self.metrics_addr = fields["addr"], fields["metrics_addr"]
                    self.admin_addr = fields["admin_addr"]
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(timeout=60)

    def io_cpu_seconds(self) -> float:
        """CPU time (user + system) of the `quantd-io` threads so far, from /proc."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name.startswith("quantd-io"):
                fields = stat[stat.rindex(")") + 2:].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, sig=signal.SIGTERM, timeout=15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def wait_exit(self, timeout=30) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def quantd():
    servers = []

    def start(*extra, models=None, nofile=None, env=None):
        s = Quantd(*extra, models=models, nofile=nofile, env=env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def pytest_report_header(config):
    return f"quantd binary: {BINARY.relative_to(REPO)}; ticks: {os.path.relpath(SHARED_TICKS, REPO)}"
