#!/usr/bin/env python3
"""The control plane under a saturated data plane (issue 17's goals), against release builds:

1. quantd-load streams recorded BTCUSDT ticks at RATE while it engages and releases the
   all-symbols kill switch PAIRS times on the admin listener and scrapes /metrics SCRAPES times:
   the call latency, the delay to the first `kill_admin` signal, the scrape latency.
2. DRAINS times: a fresh server under the same load gets SIGTERM; a grpc.health.v1 Watch on the
   admin listener times the NOT_SERVING push from the signal.

Usage: scripts/control-bench.py [--rate 20000] [--secs 20] [--pairs 100] [--scrapes 100]
       [--drains 10] [--json out.json] [--admin-on-service-port] [--admin-nice N]
(`--admin-on-service-port`: the admin calls go to the service port instead, as before the admin
thread existed, for the side-by-side figure; `--admin-nice -10`: the admin thread's `[admin] nice`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
TICKS = Path(os.environ.get("TICKS", REPO.parent / "shared/data/ticks"))
FILES = [TICKS / "binance_usdm_btcusdt_20240808_quotes.csv.gz", TICKS / "binance_usdm_btcusdt_20240808_trades.csv.gz"]
RELEASE = REPO / "target/release"


def start_quantd(extra: list[str]) -> tuple[subprocess.Popen, dict]:
    cmd = [str(RELEASE / "quantd"), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
           "--metrics-listen", "127.0.0.1:0", "--models", "models", "--log-json", "true", *extra]
    p = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        if '"message":"serving"' in line:
            fields = json.loads(line)["fields"]
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()  # keep draining
            return p, fields
    raise SystemExit("quantd did not start")


def load(addrs: dict, rate: int, secs: float, extra: list[str], out: Path | None = None,
         cpus: str | None = None) -> subprocess.Popen:
    cmd = [*(["taskset", "-c", cpus] if cpus else []), str(RELEASE / "quantd-load"), "--target", addrs["addr"], "--rate", str(rate), "--duration", str(secs),
           "--warmup", "2", "--quiet", "--ticks", *map(str, FILES), *extra]
    if out:
        cmd += ["--json", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def watch_not_serving(admin: str, ready: threading.Event, seen: list[float]) -> None:
    """grpc.health.v1.Health/Watch (hand-encoded request) until NOT_SERVING (2) arrives."""
    with grpc.insecure_channel(admin) as ch:
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch")
        service = b"quantd.v1.SignalService"
        try:
            for reply in watch(b"\n" + bytes([len(service)]) + service, timeout=60):
                ready.set()
                if len(reply) >= 2 and reply[1] == 2:
                    seen.append(time.monotonic())
                    return
        except grpc.RpcError:
            return


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=100)
    ap.add_argument("--drains", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--admin-on-service-port", action="store_true")
    ap.add_argument("--admin-nice", type=int, default=0, help="[admin] nice of the server (needs CAP_SYS_NICE below 0)")
    ap.add_argument("--admin-rt", type=int, default=0, help="chrt the server's quantd-admin thread to SCHED_FIFO N (experiment)")
    ap.add_argument("--isolate", action="store_true",
                    help="the engine busy-spins pinned to the last core; every other server thread and the load "
                         "generator run on the others (experiment: an exclusive engine core on this machine)")
    a = ap.parse_args()
    last = os.cpu_count() - 1
    flags = ["--config", str(write_config(a.admin_on_service_port, a.admin_nice, last if a.isolate else None))]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(f"{os.cpu_count()} cores, {cpu.group(1) if cpu else '?'}; {a.rate} ticks/s of recorded BTCUSDT")

    server, addrs = start_quantd(flags)
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        if a.admin_rt and name == "quantd-admin":
            subprocess.run(["chrt", "-f", "-p", str(a.admin_rt), task.name], check=True)
        if a.isolate and name != "quantd-engine":
            subprocess.run(["taskset", "-p", "-c", f"0-{last - 1}", task.name], check=True, stdout=subprocess.DEVNULL)
    admin = addrs["addr"] if a.admin_on_service_port else addrs["admin_addr"]
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "load.json"
        p = load(addrs, a.rate, a.secs, ["--admin", admin, "--metrics", addrs["metrics_addr"],
                                         "--kill-switch-pairs", str(a.pairs), "--scrapes", str(a.scrapes)], out,
                 cpus=f"0-{last - 1}" if a.isolate else None)
        text, _ = p.communicate()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if not out.exists():
            print(text)
            return 1
        report = json.loads(out.read_text())
    probes = report["probes"]
    row = lambda name, p: print(f"  {name:<34} p50 {p['p50_us']:>8.1f}  p99 {p['p99_us']:>8.1f}  max {p['max_us']:>8.1f} µs  (n={p['count']})")
    print(f"achieved {report['achieved_rate']:.0f} ticks/s, end-to-end p99 {report['end_to_end']['p99_us']:.0f} µs, "
          f"{len(report['errors'])} errors; admin on {'the service port' if a.admin_on_service_port else 'the admin listener'}")
    row("SetKillSwitch call returns", probes["kill_call"])
    row("first kill_admin signal (from send)", probes["first_flat"])
    row("first kill_admin (from return)", probes["first_flat_after_return"])
    row("GET /metrics", probes["scrape"])
    if probes["kill_unseen"] or probes["failures"]:
        print(f"  unseen engages {probes['kill_unseen']}; failures {probes['failures']}")

    drains = []
    for _ in range(a.drains):
        server, addrs = start_quantd(flags)
        p = load(addrs, a.rate, 6, [])
        time.sleep(3)  # warm-up (2 s) done, the load is on
        ready, seen = threading.Event(), []
        w = threading.Thread(target=watch_not_serving, args=(addrs["admin_addr"], ready, seen))
        w.start()
        ready.wait(5)
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        w.join(15)
        rc = server.wait(timeout=30)
        p.kill()
        p.wait()
        if seen:
            drains.append((seen[0] - sent) * 1e3)
        print(f"  drain: NOT_SERVING {f'{drains[-1]:.2f} ms' if seen else 'never seen'} after SIGTERM; exit {rc}")
    if drains:
        print(f"  SIGTERM -> NOT_SERVING over {len(drains)} drains: median {statistics.median(drains):.2f} ms, "
              f"max {max(drains):.2f} ms")
    if a.json:
        a.json.write_text(json.dumps({"rate": a.rate, "probes": probes, "drain_ms": drains,
                                      "achieved_rate": report["achieved_rate"],
                                      "end_to_end": report["end_to_end"]}, indent=2))
    return 0


def write_config(on_service_port: bool, nice: int, engine_core: int | None) -> Path:
    """A config that only differs from the defaults in where the admin services are served, the
    admin thread's priority and, with an engine core, a busy-spinning engine pinned to it."""
    f = Path(tempfile.mkstemp(suffix=".toml")[1])
    engine = f"[engine]\ncore = {engine_core}\nidle = \"busy-spin\"\n" if engine_core is not None else ""
    f.write_text(f"[admin]\non_service_port = {str(on_service_port).lower()}\nnice = {nice}\n{engine}")
    return f


if __name__ == "__main__":
    sys.exit(main())
