#!/usr/bin/env python3
"""CPU per tick, by quantd thread, under an open-loop load (`make bench-cpu`).

Starts a release quantd on the default model, drives it with quantd-load at a fixed rate (recorded
BTCUSDT quotes and trades; `--batch N` ticks per message; TCP or `--uds`), and reads every quantd
thread's utime+stime from /proc/<pid>/task/*/stat at the start and the end of the measured window
(after the warm-up). CPU per tick = the thread group's CPU time over the window / the ticks due in
it (the load is open loop at a fixed rate; the run is refused if any reply was lost). The kernel
counts CPU time in clock ticks (1/100 s here): run long enough that a group's time is many ticks.

With `--perf SVG` the window is also sampled with `perf record` (cpu-clock, DWARF call graphs) on
the quantd process, and folded into a flamegraph with inferno (`cargo install inferno`).

Usage: scripts/cpu-per-tick.py [--rate 10000] [--batch 1] [--secs 10] [--uds] [--perf docs/bench/x.svg]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RELEASE, REPO, TICK_FILES, start_quantd  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread name, summed over threads of one name."""
    out: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        # comm is in parentheses and may hold spaces; the fields after it are space-separated.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[comm] += (int(fields[11]) + int(fields[12])) / HZ  # utime, stime (fields 14, 15)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--uds", action="store_true", help="over quantd's Unix socket instead of TCP")
    ap.add_argument("--perf", type=Path, help="also record the window with perf and write a flamegraph SVG here")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quantd-cpu-"))
    sock = tmp / "quantd.sock"
    quantd = start_quantd(sock)
    target = f"unix:{sock}" if a.uds else quantd.addr
    report = tmp / "load.json"
    try:
        load = subprocess.Popen(
            [str(RELEASE / "quantd-load"), "--target", target, "--rate", str(a.rate), "--batch", str(a.batch),
             "--duration", str(a.secs), "--warmup", str(a.warmup), "--quiet", "--json", str(report),
             "--ticks", *map(str, TICK_FILES)], cwd=REPO, stdout=subprocess.DEVNULL)
        # quantd-load starts its schedule 0.1 s after connecting; measure inside the window, with
        # a margin at both ends.
        time.sleep(a.warmup + 0.6)
        perf = None
        if a.perf:
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "--call-graph", "dwarf,16384",
                                     "-p", str(quantd.proc.pid), "-o", str(tmp / "perf.data"), "--", "sleep",
                                     str(max(1.0, a.secs - 1.5))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t1, c1 = time.monotonic(), thread_cpu(quantd.proc.pid)
        time.sleep(max(1.0, a.secs - 1.0))
        t2, c2 = time.monotonic(), thread_cpu(quantd.proc.pid)
        if load.wait(timeout=a.secs + 60) != 0:
            raise SystemExit("quantd-load failed (lost or late replies): the figures would not be per answered tick")
        if perf:
            perf.wait(timeout=60)
    finally:
        quantd.stop()
    r = json.loads(report.read_text())
    ticks = a.rate * (t2 - t1)
    groups: dict[str, float] = defaultdict(float)
    for name, secs in c2.items():
        group = "quantd-io (tokio)" if name.startswith("quantd-io") else name
        groups[group] += secs - c1.get(name, 0.0)
    total = sum(groups.values())
    transport = "uds" if a.uds else "tcp"
    print(f"quantd at {a.rate:,.0f} ticks/s, {a.batch} tick(s) per message, {transport}, window {t2 - t1:.1f} s "
          f"({ticks:,.0f} ticks); end-to-end p50 {r['end_to_end']['p50_us']:.1f} µs, p99 {r['end_to_end']['p99_us']:.1f} µs")
    print(f"  {'thread':<24} {'CPU s':>7} {'µs/tick':>8}")
    for name, secs in sorted(groups.items(), key=lambda kv: -kv[1]):
        if secs > 0:
            print(f"  {name:<24} {secs:>7.2f} {secs / ticks * 1e6:>8.2f}")
    print(f"  {'all threads':<24} {total:>7.2f} {total / ticks * 1e6:>8.2f}")
    if a.json:
        a.json.write_text(json.dumps({"rate": a.rate, "batch": a.batch, "transport": transport, "ticks": ticks,
                                      "cpu_us_per_tick": {k: v / ticks * 1e6 for k, v in groups.items()},
                                      "end_to_end": r["end_to_end"]}, indent=2))
    if a.perf:
        flamegraph(tmp / "perf.data", a.perf, f"quantd, {a.rate:,.0f} ticks/s, batch {a.batch}, {transport}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def flamegraph(data: Path, svg: Path, title: str) -> None:
    """perf script | inferno-collapse-perf | inferno-flamegraph > svg."""
    collapse, graph = shutil.which("inferno-collapse-perf"), shutil.which("inferno-flamegraph")
    if not (collapse and graph):
        raise SystemExit("inferno is not installed: cargo install inferno (the perf data was recorded)")
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True).stdout
    folded = subprocess.run([collapse], input=script, capture_output=True, check=True).stdout
    keep = REPO / "target" / "bench" / (svg.stem + ".folded")  # the folded stacks, for a closer look
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(folded)
    svg.parent.mkdir(parents=True, exist_ok=True)
    with svg.open("wb") as f:
        subprocess.run([graph, "--title", title], input=folded, stdout=f, check=True)
    print(f"  flamegraph: {svg}")


if __name__ == "__main__":
    sys.exit(main())
