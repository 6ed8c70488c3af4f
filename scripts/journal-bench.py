#!/usr/bin/env python3
"""The journal's cost: quantd with the journal off and on, side by side in one run, in ABBA order
(off, on, on, off) so that neither gains from going first. Each run is scripts/stream-bench.sh (a
fresh release quantd, quantd-load streaming the recorded BTCUSDT quotes and trades open loop) at
each rate. Prints the medians of the server-internal p50/p99, end-to-end p50/p99 and achieved
rate, and the on/off ratios. Usage: scripts/journal-bench.py [--rates 10000,50000] [--secs 10]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(rate: int, secs: int, journal: Path | None, out: Path) -> dict:
    env = {**os.environ, "QUANTD_ARGS": f"--journal {journal}" if journal else ""}
    subprocess.run([str(REPO / "scripts/stream-bench.sh"), str(rate), str(secs), "--json", str(out), "--quiet"],
                   env=env, check=True, capture_output=True, text=True, timeout=secs + 120)
    r = json.loads(out.read_text())
    return {"rate": r["achieved_rate"], "lost": r["sent"] - r["received"],
            "server_p50": r["server_internal"]["p50_us"], "server_p99": r["server_internal"]["p99_us"],
            "e2e_p50": r["end_to_end"]["p50_us"], "e2e_p99": r["end_to_end"]["p99_us"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="10000,50000")
    ap.add_argument("--secs", type=int, default=10)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quantd-journal-bench-"))
    try:
        for rate in map(int, a.rates.split(",")):
            runs: dict[str, list[dict]] = {"off": [], "on": []}
            for i, side in enumerate(("off", "on", "on", "off")):
                journal = tmp / f"journal-{rate}-{i}" if side == "on" else None
                runs[side].append(run(rate, a.secs, journal, tmp / f"{rate}-{i}.json"))
                if journal:
                    size = sum(f.stat().st_size for f in journal.iterdir())
                    runs[side][-1]["journal_mb"] = round(size / 1e6, 1)
                    shutil.rmtree(journal)
            print(f"{rate} ticks/s, {a.secs} s per run, ABBA; median of 2 runs each (µs; rate in ticks/s):")
            for k in ("rate", "server_p50", "server_p99", "e2e_p50", "e2e_p99", "lost"):
                off = statistics.median(r[k] for r in runs["off"])
                on = statistics.median(r[k] for r in runs["on"])
                ratio = f"{on / off:.2f}x" if off else "-"
                print(f"  {k:<11} off {off:>10.1f}  on {on:>10.1f}  {ratio:>7}   "
                      f"(runs off {[r[k] for r in runs['off']]}, on {[r[k] for r in runs['on']]})")
            print(f"  journal written per run: {[r['journal_mb'] for r in runs['on']]} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
