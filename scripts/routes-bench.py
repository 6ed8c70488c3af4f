#!/usr/bin/env python3
"""`make bench-routes`: several models live at once (issue 15's goals), on real recorded ticks.

quantd-load streams the recorded Binance BTCUSDT and ETHUSDT quotes and trades over 4 streams at
RATE ticks/s in all; each stream's symbols carry its own suffix (`BTCUSDT.1`, ...), so config
routes can send each stream to its own model. Three scenarios, each on a freshly started release
quantd, interleaved REPEATS times so that noise on this shared machine hits each alike:

- single:  no routes, every tick on the default model (quantd-mlp); and `alone-<model>`: every
           tick on one of the other three, to compare each model routed beside the others with
           itself alone;
- four:   `*.1` to quantd-tcn, `*.2` to quantd-lstm, `*.3` to quantd-transformer (config routes),
          the rest (`*.0`) on the default quantd-mlp: four models routed at once;
- swap:   as `four`, with quantd-tcn swapped between two versions every SWAP_EVERY seconds
          through ModelAdmin.ActivateModel;
- swap-nice0: as `swap`, with the registry thread (where a swap's load and warm-up run) at the
          engine's priority (`registry.nice = 0`; the default is 10).

Reported per run: the server-internal latency of every tick (the signals' own server stamps)
overall and per model, sent/received (a lost tick is a missing reply), and the swaps done. The
goals: four models' server-internal p50 <= 1.5x the single model's; no tick lost; with swaps, the
other models' p99 within 1.1x of the `four` run's.

Usage: scripts/routes-bench.py [--rate 10000] [--duration 20] [--repeats 3] [--only four,swap,...] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the suite's server and machine helpers)

TICKS = bench.TICKS
TICK_FILES = [TICKS / f"binance_usdm_{s}_20240808_{k}.csv.gz" for s in ("btcusdt", "ethusdt") for k in ("quotes", "trades")]
ROUTES = """
[[routes]]
name = "tcn"
symbols = ["*.1"]
model = "quantd-tcn"

[[routes]]
name = "lstm"
symbols = ["*.2"]
model = "quantd-lstm"

[[routes]]
name = "transformer"
symbols = ["*.3"]
model = "quantd-transformer"
"""
SWAP_VERSIONS = "quantd-tcn@2-fp32,quantd-tcn@2"


SERVING = r'"message":"serving","addr":"([^"]+)".*?"metrics_addr":"(?P<metrics>[^"]+)","admin_addr":"(?P<admin>[^"]+)"'


def start(config: Path, release: Path) -> bench.Server:
    return bench.Server("quantd", [str(release / "quantd"), "serve", "--config", str(config), "--listen",
                                   "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                                   "--models", "models", "--log-json", "true"], SERVING)


ALONE = ["quantd-tcn", "quantd-lstm", "quantd-transformer"]


def run(scenario: str, args, work: Path, i: int) -> dict:
    config = work / f"{scenario}.toml"
    alone = scenario.removeprefix("alone-") if scenario.startswith("alone-") else None
    config.write_text(f'model = "{alone}"\n' if alone else "" if scenario == "single" else ROUTES)
    if scenario == "swap-nice0":
        config.write_text(config.read_text() + "\n[registry]\nnice = 0\n")
    # `four-compare`: the `four` scenario on another build's quantd (--compare), same load.
    server = start(config, args.compare if scenario == "four-compare" else bench.RELEASE)
    out = work / f"{scenario}-{i}.json"
    cmd = [str(bench.RELEASE / "quantd-load"), "--target", server.addr, "--rate", str(args.rate), "--duration",
           str(args.duration), "--warmup", "3", "--streams", "4", "--quiet", "--json", str(out), "--ticks",
           *map(str, TICK_FILES)]
    if scenario.startswith("swap"):
        cmd += ["--admin", server.admin, "--swap-every", str(args.swap_every), "--swap-versions", SWAP_VERSIONS]
    try:
        subprocess.run(cmd, cwd=bench.REPO, check=True, stdout=subprocess.DEVNULL)
    finally:
        server.stop()
    r = json.loads(out.read_text())
    bench.log(f"{scenario} #{i + 1}: sent {r['sent']} received {r['received']} rejected {r['rejected']} "
              f"errors {len(r['errors'])}; server internal p50 {r['server_internal']['p50_us']:.1f} µs "
              f"p99 {r['server_internal']['p99_us']:.1f} µs; per model p50/p99 "
              + ", ".join(f"{m} {p['p50_us']:.1f}/{p['p99_us']:.1f}" for m, p in r["server_internal_by_model"].items()))
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--swap-every", type=float, default=3.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--compare", type=Path, help="another build's release directory: adds `four` on its quantd")
    ap.add_argument("--only", help="comma-separated scenarios (default: all)")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "--workspace", "--bins"], cwd=bench.REPO,
                   check=True)
    bench.log(f"{bench.machine()}; {args.rate} ticks/s over 4 streams, {args.duration} s measured, "
              f"{args.repeats} interleaved repeats")
    results: dict[str, list[dict]] = {"single": [], **{f"alone-{m}": [] for m in ALONE}, "four": [], "swap": [],
                                      "swap-nice0": []}
    if args.compare:
        results["four-compare"] = []
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(results)
        if unknown:
            ap.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(results)}")
        results = {s: [] for s in wanted}
    with tempfile.TemporaryDirectory() as work:
        for i in range(args.repeats):
            for scenario in results:
                results[scenario].append(run(scenario, args, Path(work), i))
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


def summarize(results: dict[str, list[dict]]) -> dict:
    med = statistics.median

    def p(runs, q, model=None):
        if model is None:
            return med(r["server_internal"][q] for r in runs)
        return med(r["server_internal_by_model"][model][q] for r in runs if model in r["server_internal_by_model"])

    lost = {s: sum(r["sent"] - r["received"] for r in runs) for s, runs in results.items()}
    errors = {s: sum(len(r["errors"]) for r in runs) for s, runs in results.items()}
    out = {
        "median server internal p50/p99 µs": {s: [p(runs, "p50_us"), p(runs, "p99_us")] for s, runs in results.items()},
        "ticks lost": lost,
        "errors": errors,
    }
    for s, runs in results.items():
        out[f"per model p50/p99 µs ({s})"] = {m: [p(runs, "p50_us", m), p(runs, "p99_us", m)]
                                              for m in sorted(runs[0]["server_internal_by_model"])}
    for s in ("swap", "swap-nice0"):
        if s in results:
            out[f"swaps ({s})"] = [r["swaps"]["swaps"] if r.get("swaps") else 0 for r in results[s]]
    if "four" not in results:
        return out
    models = sorted(results["four"][0]["server_internal_by_model"])
    others = [m for m in models if not m.startswith("quantd-tcn@")]
    if "single" in results:
        ratio = p(results["four"], "p50_us") / p(results["single"], "p50_us")
        out["goal: four/single p50 <= 1.5 (all ticks against the MLP alone)"] = round(ratio, 2)
    if "single" in results and all(f"alone-{m}" in results for m in ALONE):
        alone = {"quantd-mlp": results["single"], **{m: results[f"alone-{m}"] for m in ALONE}}
        out["each model routed beside the others / alone, p50 and p99"] = {
            m: [round(p(results["four"], q, m) / p(alone[m.split("@")[0]], q, m), 2) for q in ("p50_us", "p99_us")]
            for m in models}
    for s in ("swap", "swap-nice0"):
        if s in results:
            out[f"goal: {s}/steady p99 of the other models <= 1.1"] = {
                m: round(p(results[s], "p99_us", m) / p(results["four"], "p99_us", m), 2) for m in others}
    return out


if __name__ == "__main__":
    sys.exit(main())
