#!/usr/bin/env python3
"""The warm restart with many symbols (issue 16): a release quantd journals quantd-load's synthetic
ticks for SYMBOLS symbols (TICKS each), is stopped, and is restarted on a copy of that journal, with
`engine.warm_start = "journal"` and cold, alternating (warm, cold, warm, cold). For each restart:
the time from exec to the `serving` log line, the journal read and rebuild times the server logs,
and, after one more second of ticks for every symbol, how many signals were `warming_up`
(`quantd_ticks_total{outcome}` from /metrics). Then `quantd audit` over the first restart's journal.
Usage: scripts/warm-start-bench.py [--symbols 10000] [--ticks 200] [--rate 50000] [--streams 2]"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUANTD = REPO / "target/release/quantd"
LOAD = REPO / "target/release/quantd-load"


class Server:
    def __init__(self, journal: Path, warm: bool):
        env = {**os.environ, "QUANTD_ENGINE__WARM_START": "journal" if warm else "off"}
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(QUANTD), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-listen",
             "127.0.0.1:0", "--models", str(REPO / "models"), "--journal", str(journal), "--log-json", "true"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.fields: dict[str, dict] = {}
        for line in self.proc.stderr:
            try:
                f = json.loads(line).get("fields", {})
            except ValueError:
                continue
            self.fields[f.get("message", "")] = f
            if f.get("message") == "serving":
                self.serving_s = time.monotonic() - self.t0
                self.addr, self.metrics = f["addr"], f["metrics_addr"]
                break
        else:
            raise RuntimeError("quantd did not start")

    def load(self, symbols: int, rate: int, secs: float, streams: int) -> None:
        subprocess.run([str(LOAD), "--target", self.addr, "--synthetic", "--symbols", str(symbols), "--rate", str(rate),
                        "--streams", str(streams), "--duration", str(secs), "--warmup", "0", "--quiet"], check=True,
                       capture_output=True, timeout=secs + 120)

    def outcomes(self) -> dict[str, float]:
        time.sleep(1.2)  # a metrics publication
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r'quantd_ticks_total\{outcome="(\w+)"\} (\S+)', text)}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=200, help="ticks per symbol journaled before the restart")
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--streams", type=int, default=2, help="stream.max_symbols_per_stream is 5000")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quantd-warm-bench-"))
    try:
        first = Server(tmp / "journal", warm=False)
        first.load(a.symbols, a.rate, a.symbols * a.ticks / a.rate, a.streams)
        first.stop()
        size = sum(f.stat().st_size for f in (tmp / "journal").iterdir())
        print(f"journaled {a.symbols} symbols x {a.ticks} ticks ({size / 1e6:.0f} MB); restarts:")
        rows = {"warm": [], "cold": []}
        for i, mode in enumerate(["warm", "cold", "warm", "cold"]):
            journal = tmp / f"restart-{i}"
            shutil.copytree(tmp / "journal", journal)
            s = Server(journal, warm=mode == "warm")
            s.load(a.symbols, a.rate, 1.0, a.streams)
            out = s.outcomes()
            s.stop()
            read = s.fields.get("warm start: journal tail read", {})
            rebuilt = s.fields.get("warm start: symbol state rebuilt from the journal", {})
            rows[mode].append({"serving_s": s.serving_s, "read_ms": read.get("read_ms", 0.0),
                               "rebuild_ms": rebuilt.get("ms", 0.0), "rebuilt_ticks": rebuilt.get("ticks", 0),
                               "symbols": rebuilt.get("symbols", 0), "warming_up": out.get("warming_up", 0.0),
                               "scored": out.get("scored", 0.0)})
            print(f"  {mode}: {json.dumps(rows[mode][-1])}")
        print("median of 2 each:")
        for k in ("serving_s", "read_ms", "rebuild_ms", "rebuilt_ticks", "symbols", "warming_up", "scored"):
            w, c = (statistics.median(r[k] for r in rows[m]) for m in ("warm", "cold"))
            print(f"  {k:14} warm {w:12.3f}  cold {c:12.3f}")
        t = time.monotonic()
        r = subprocess.run([str(QUANTD), "audit", "--journal", str(tmp / "restart-0"), "--models", str(REPO / "models")],
                           capture_output=True, text=True)
        print(f"audit of the first warm restart's journal ({time.monotonic() - t:.1f} s):\n{r.stdout}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
