#!/usr/bin/env python3
"""`make bench`: the whole benchmark suite, written into BENCHMARKS.md.

1. criterion hot-path benches (`cargo bench --bench hot_path`);
2. three servers with the same contract, one at a time on this machine: quantd (release, default
   model), quantd-echo (the floor: answers at once, no model) and the Python grpcio+onnxruntime
   peer (loadtest/baselines/python_server.py), each driven by quantd-load (open loop, one stream,
   recorded Binance BTCUSDT quotes and trades) at fixed rates, REPEATS times, interleaved so that
   noise on this shared machine hits every server alike;
3. the highest rate each sustains with p99 < 2 ms (every reply, in order), stepping up a ladder;
4. batches and transports: quantd and quantd-echo over TCP and over a Unix socket, with 1, 16
   and 64 ticks per message (`quantd-load --batch N`), side by side at fixed rates, and the
   highest rate each sustains;
5. an off-the-shelf peer over the Open Inference Protocol (KServe V2 gRPC): Seldon MLServer
   serving the same default model (loadtest/baselines/mlserver, in .venv-peer from
   scripts/peer-setup.sh), driven with one ModelInfer per tick carrying that tick's feature row,
   beside quantd's own ModelInfer, unary Predict and stream, at 1k and 10k ticks/s and at the
   highest rate each sustains;
6. BENCHMARKS.md: the parts between the `make bench` markers (and the `make bench batches` and
   `make bench peers` markers) are replaced with tables of medians over the repeats, ratios to the echo floor and to
   the Python peer, the goals met or missed, the machine and the commands; plots go to docs/bench/.

Usage: scripts/bench.py [--repeats 3] [--duration 5] [--rates 1000,10000,50000] [--quick]
       scripts/bench.py --only batches   (step 4 alone)
       scripts/bench.py --only peers     (step 5 alone)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "target" / "release"
TICKS = Path(os.environ.get("TICKS", REPO.parent / "shared" / "data" / "ticks"))
TICK_FILES = [TICKS / "binance_usdm_btcusdt_20240808_quotes.csv.gz", TICKS / "binance_usdm_btcusdt_20240808_trades.csv.gz"]
OUT = REPO / "target" / "bench"
PLOTS = REPO / "docs" / "bench"
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
BATCH_BEGIN, BATCH_END = "<!-- make bench batches: begin -->", "<!-- make bench batches: end -->"
PEER_BEGIN, PEER_END = "<!-- make bench peers: begin -->", "<!-- make bench peers: end -->"
PEER_PY = REPO / ".venv-peer" / "bin" / "python"
PEER_RATES = [1_000, 10_000]
BATCHES = [1, 16, 64]
# Fixed rates of the batch table: single ticks where a single-tick stream can keep up, batches
# where the message rate of single ticks could not.
BATCH_RATES = {1: [10_000], 16: [10_000, 200_000], 64: [10_000, 200_000, 500_000]}
LADDER = [1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 70_000, 100_000, 150_000, 200_000, 300_000,
          500_000, 700_000, 1_000_000]
P99_LIMIT_US = 2_000.0
# quantd's start-up log line (--log-json): its TCP address and its metrics address, other fields between.
QUANTD_SERVING = r'"message":"serving","addr":"([^"]+)".*?"metrics_addr":"(?P<metrics>[^"]+)"'
TRITON = "Triton quick-start, trivial model over gRPC: p50 569 µs, p99 1,105 µs (triton-inference-server/server#7203)"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Server:
    """A server child process; `addr` is read from its start-up output."""

    def __init__(self, name: str, cmd: list[str], pattern: str):
        self.name, self.cmd, self.pattern = name, cmd, pattern
        self.start()

    def start(self) -> None:
        name, cmd, pattern = self.name, self.cmd, self.pattern
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addr = None
        self.metrics = None
        self.admin = None
        found = threading.Event()
        lines: list[str] = []

        def pump(pipe):
            for line in pipe:
                lines.append(line)
                m = re.search(pattern, line)
                if m and not found.is_set():
                    self.addr = m.group(1)
                    self.metrics = m.groupdict().get("metrics")
                    self.admin = m.groupdict().get("admin")
                    found.set()

        for pipe in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=pump, args=(pipe,), daemon=True).start()
        if not found.wait(timeout=60) or self.proc.poll() is not None:
            self.stop()
            raise SystemExit(f"{name} did not start:\n{''.join(lines[-20:])}")

    def restart(self) -> None:
        """After a run it could not keep up with: a server still working through the backlog of
        a closed stream would slow the next run down."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def default_model_dir() -> str:
    """models/<DEFAULT>/<highest release>: the model quantd serves, so the Python peer runs the same."""
    name = (Path("models") / "DEFAULT").read_text().strip()
    releases = [d for d in (Path("models") / name).iterdir() if d.name.isdigit()]
    return str(max(releases, key=lambda d: int(d.name)))


def start_quantd(unix: Path | None = None) -> Server:
    """A release quantd on the default model, on free loopback ports (and on the Unix socket
    `unix`, when given, beside the TCP port)."""
    listen = ["--listen", "127.0.0.1:0"] + (["--listen", f"unix:{unix}"] if unix else [])
    return Server("quantd", [str(RELEASE / "quantd"), "serve", *listen, "--admin-listen", "127.0.0.1:0",
                             "--metrics-listen", "127.0.0.1:0", "--models", "models", "--log-json", "true"],
                  QUANTD_SERVING)


def start_servers(stubs: Path) -> dict[str, Server]:
    quantd = start_quantd()
    echo = Server("echo", [str(RELEASE / "quantd-echo"), "127.0.0.1:0"], r"listening on (\S+)")
    python = Server("python", [sys.executable, "loadtest/baselines/python_server.py", "--listen", "127.0.0.1:0",
                               "--model", default_model_dir(), "--stubs", str(stubs)], r"listening on (\S+)")
    return {"quantd": quantd, "echo": echo, "python": python}


def load(server: Server, rate: float, duration: float, warmup: float, out: Path, batch: int = 1,
         target: str | None = None, protocol: str = "stream") -> dict:
    cmd = [str(RELEASE / "quantd-load"), "--target", target or server.addr, "--label", server.name, "--rate", str(rate),
           "--duration", str(duration), "--warmup", str(warmup), "--quiet", "--json", str(out), "--batch", str(batch),
           "--protocol", protocol, "--ticks", *map(str, TICK_FILES)]
    if server.metrics and protocol == "stream":
        cmd += ["--metrics", server.metrics]
    out.unlink(missing_ok=True)
    subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not out.exists():
        raise SystemExit(f"quantd-load wrote no report: {' '.join(cmd)}")
    r = json.loads(out.read_text())
    if not kept_up([r]):
        server.restart()
    return r


def sustained(r: dict) -> bool:
    return not r["errors"] and r["end_to_end"]["p99_us"] < P99_LIMIT_US and r["received"] == r["sent"]


def kept_up(runs: list[dict]) -> bool:
    """Every run answered every tick and the server kept pace (no queue building up for seconds)."""
    return all(not r["errors"] and r["end_to_end"]["p50_us"] < 100_000 for r in runs)


def criterion() -> list[tuple[str, float]]:
    log("criterion: cargo bench --bench hot_path")
    subprocess.run(["cargo", "bench", "--locked", "--bench", "hot_path"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    rows = []
    for est in sorted((REPO / "target" / "criterion").glob("**/new/estimates.json")):
        name = str(est.parent.parent.relative_to(REPO / "target" / "criterion"))
        if name.startswith("report"):
            continue
        rows.append((name, json.loads(est.read_text())["median"]["point_estimate"]))
    return rows


def fmt_ns(ns: float) -> str:
    return f"{ns:.0f} ns" if ns < 1_000 else f"{ns / 1_000:.1f} µs"


def fmt_us(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def median_run(runs: list[dict]) -> dict:
    """The run whose end-to-end p50 is the median (for plots)."""
    return sorted(runs, key=lambda r: r["end_to_end"]["p50_us"])[len(runs) // 2]


def med(runs: list[dict], *path: str) -> float:
    vals = []
    for r in runs:
        v = r
        for p in path:
            v = v[p]
        vals.append(v)
    return statistics.median(vals)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB, Linux {platform.release()}; commit {commit.strip()}; "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_markdown(args, crit, results, ladders, elapsed_s: float) -> str:
    names = ["quantd", "echo", "python"]
    lines = [BEGIN, "", f"Generated by `make bench` (`scripts/bench.py --repeats {args.repeats} --duration "
             f"{args.duration}`) in {elapsed_s / 60:.1f} min. Machine: {machine()}. The load generator runs on the "
             "same cores as the server under test, one server at a time.", ""]
    if crit:
        lines += ["### Hot paths (criterion medians, `cargo bench --bench hot_path`)", "", "| bench | median |",
                  "|---|---|"]
        lines += [f"| `{n}` | {fmt_ns(v)} |" for n, v in crit]
        lines.append("")
    lines += ["### End-to-end latency by rate", "",
              f"`quantd-load --target ADDR --rate R --duration {args.duration} --warmup {args.warmup} --ticks "
              "binance_usdm_btcusdt_20240808_{quotes,trades}.csv.gz` against each server, one gRPC stream, open loop "
              "(latency from each tick's scheduled send time). Medians over "
              f"{args.repeats} runs per cell, µs. \"lost\": runs with missing or late replies.", "",
              "| rate | server | e2e p50 | p90 | p99 | p99.9 | max | server-internal p50 | p99 | client send lag p99 | achieved/s | lost |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rate in args.rates:
        for n in names:
            runs = results[n][rate]
            lost = sum(1 for r in runs if r["errors"])
            if not kept_up(runs):
                lines.append(f"| {rate:,} | {n} | falls behind: {'replies lost or late' if lost else 'p50 > 100 ms, a queue builds'} "
                             f"| | | | | | | | {med(runs, 'achieved_rate'):,.0f} | {lost}/{len(runs)} |")
                continue
            lines.append(
                f"| {rate:,} | {n} | {fmt_us(med(runs, 'end_to_end', 'p50_us'))} | {fmt_us(med(runs, 'end_to_end', 'p90_us'))} "
                f"| {fmt_us(med(runs, 'end_to_end', 'p99_us'))} | {fmt_us(med(runs, 'end_to_end', 'p999_us'))} "
                f"| {fmt_us(med(runs, 'end_to_end', 'max_us'))} | {fmt_us(med(runs, 'server_internal', 'p50_us'))} "
                f"| {fmt_us(med(runs, 'server_internal', 'p99_us'))} | {fmt_us(med(runs, 'send_lag', 'p99_us'))} "
                f"| {med(runs, 'achieved_rate'):,.0f} | {lost}/{len(runs)} |")
    lines += ["", "Ratios of medians (same runs):", "", "| rate | quantd / echo p50 | quantd / echo p99 | python / quantd p50 |",
              "|---|---|---|---|"]
    ratios = {}
    for rate in args.rates:
        q, e, p = (results[n][rate] for n in names)
        r = (med(q, "end_to_end", "p50_us") / med(e, "end_to_end", "p50_us"),
             med(q, "end_to_end", "p99_us") / med(e, "end_to_end", "p99_us"),
             med(p, "end_to_end", "p50_us") / med(q, "end_to_end", "p50_us") if kept_up(p) else None)
        ratios[rate] = r
        py = f"{r[2]:.1f}×" if r[2] is not None else "python falls behind"
        lines.append(f"| {rate:,} | {r[0]:.2f}× | {r[1]:.2f}× | {py} |")
    lines += ["", f"### Highest sustained rate (every reply in order, end-to-end p99 < {P99_LIMIT_US:,.0f} µs)", "",
              f"Rates stepped up {', '.join(f'{x // 1000}k' for x in LADDER)} ticks/s, {args.probe} s each "
              "after a 1 s warm-up, until one fails.", "", "| server | sustained | first failing rate | its p99 | its errors |",
              "|---|---|---|---|---|"]
    for n in names:
        best, fail = ladders[n]
        fail_txt = (f"{fail['target_rate']:,.0f} | {fmt_us(fail['end_to_end']['p99_us'])} µs | {len(fail['errors'])}"
                    if fail else "— | — | —")
        lines.append(f"| {n} | {best:,.0f} ticks/s | {fail_txt} |")
    lines += ["", "### Plots", ""]
    lines += [f"- {rate:,} ticks/s: [docs/bench/latency-{rate}.svg](docs/bench/latency-{rate}.svg)" for rate in args.rates]
    r10 = ratios.get(10_000)
    q_best, p_best = ladders["quantd"][0], ladders["python"][0]
    lines += ["", "### Goals (load generator issue)", "", "| goal | measured | |", "|---|---|---|"]
    if r10:
        lines.append(f"| 10k ticks/s: quantd p50 ≤ 1.15× echo | {r10[0]:.2f}× | {verdict(r10[0] <= 1.15)} |")
        lines.append(f"| 10k ticks/s: quantd p99 ≤ 1.3× echo | {r10[1]:.2f}× | {verdict(r10[1] <= 1.3)} |")
    for rate in args.rates:
        py = ratios[rate][2]
        if py is None:
            lines.append(f"| ≥ 5× lower p50 than the Python peer ({rate // 1000}k) | python falls behind at this rate | {verdict(True)} |")
        else:
            lines.append(f"| ≥ 5× lower p50 than the Python peer ({rate // 1000}k) | {py:.1f}× | {verdict(py >= 5)} |")
    lines.append(f"| sustained ≥ 500k ticks/s, p99 < 2 ms | {q_best:,.0f} ticks/s | {verdict(q_best >= 500_000)} |")
    ratio = q_best / p_best if p_best else float("inf")
    lines.append(f"| ≥ 20× the Python peer's sustained rate | {ratio:.1f}× | {verdict(ratio >= 20)} |")
    lines += ["", f"For context only, not measured here: {TRITON}.", "", END]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--probe", type=float, default=3.0, help="seconds per rate of the sustained-rate ladder")
    ap.add_argument("--rates", default="1000,10000,50000")
    ap.add_argument("--no-criterion", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2 s runs, no criterion (a smoke test)")
    ap.add_argument("--only", choices=["batches", "peers"], help="run only this part of the suite")
    args = ap.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.quick:
        args.repeats, args.duration, args.probe, args.no_criterion = 1, 2.0, 1.0, True
    t0 = time.monotonic()
    for f in TICK_FILES:
        if not f.exists():
            raise SystemExit(f"{f} missing (set TICKS=dir)")
    if args.only == "batches":
        OUT.mkdir(parents=True, exist_ok=True)
        replace_section(BATCH_BEGIN, BATCH_END, batches(args), "## Batches and transports (`make bench`)")
        return 0
    if args.only == "peers":
        OUT.mkdir(parents=True, exist_ok=True)
        replace_section(PEER_BEGIN, PEER_END, peers(args), PEER_HEADING)
        return 0
    crit = [] if args.no_criterion else criterion()
    OUT.mkdir(parents=True, exist_ok=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    from grpc_tools import protoc

    stubs = Path(tempfile.mkdtemp(prefix="quantd-stubs-"))
    if protoc.main(["protoc", f"-I{REPO / 'proto'}", f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                    str(REPO / "proto/quantd/v1/quantd.proto")]) != 0:
        raise SystemExit("protoc failed")
    servers = start_servers(stubs)
    try:
        results = {n: {r: [] for r in args.rates} for n in servers}
        for rep in range(args.repeats):
            for rate in args.rates:
                for n, s in servers.items():
                    out = OUT / f"{n}-{rate}-{rep}.json"
                    r = load(s, rate, args.duration, args.warmup, out)
                    results[n][rate].append(r)
                    log(f"{n:<6} {rate:>7,}/s run {rep + 1}: e2e p50 {r['end_to_end']['p50_us']:.1f} µs, "
                        f"p99 {r['end_to_end']['p99_us']:.1f} µs, errors {len(r['errors'])}")
        for rate in args.rates:
            picks = []
            for n in servers:
                src = OUT / f"{n}-{rate}-{results[n][rate].index(median_run(results[n][rate]))}.json"
                picks.append(str(src))
            subprocess.run([str(RELEASE / "quantd-load"), "--compare", *picks, "--plot", str(PLOTS / f"latency-{rate}.svg"),
                            "--label", f"end-to-end latency at {rate:,} ticks/s (median run of {args.repeats})"],
                           cwd=REPO, check=True)
        ladders = {n: ladder(s, None, 1, args.probe, n, first=LADDER[0]) for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(stubs, ignore_errors=True)
    replace_section(BEGIN, END, write_markdown(args, crit, results, ladders, time.monotonic() - t0),
                    "## The suite (`make bench`)")
    replace_section(BATCH_BEGIN, BATCH_END, batches(args), "## Batches and transports (`make bench`)")
    replace_section(PEER_BEGIN, PEER_END, peers(args), PEER_HEADING)
    log(f"BENCHMARKS.md written ({(time.monotonic() - t0) / 60:.1f} min)")
    return 0


def replace_section(begin: str, end: str, section: str, heading: str) -> None:
    """Puts `section` (which starts with `begin` and ends with `end`) into BENCHMARKS.md, in place
    of the last one, or at the end under `heading`."""
    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# quantd benchmarks\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + section + "\n"
    path.write_text(text)


def ladder(server: Server, target: str | None, batch: int, probe: float, tag: str, protocol: str = "stream",
           first: int | None = None) -> tuple[int, dict | None]:
    """The highest rate of LADDER that `server` sustains at `target` (None: its TCP address) with
    `batch` ticks per message (or one `protocol` call per tick), and the first run that failed
    (None: none did). The ladder starts at `first`, by default where a batch fills within 1 ms (from
    5k ticks/s): below that, the wait for a batch to fill alone, up to (N−1)/rate, would break the
    2 ms p99 whatever the server."""
    best, fail = 0, None
    for rate in (r for r in LADDER if r >= (ladder_start(batch) if first is None else first)):
        r = load(server, rate, probe, 1.0, OUT / f"{tag}-ladder-{rate}.json", batch, target or server.addr, protocol)
        log(f"{tag:<16} ladder {rate:>9,}/s: p99 {r['end_to_end']['p99_us']:.1f} µs, errors {len(r['errors'])}")
        if not sustained(r):
            return best, r
        best = rate
    return best, fail


def ladder_start(batch: int) -> int:
    return max(5_000, 1_000 * (batch - 1))


def batches(args) -> str:
    """Step 4: quantd and the echo floor, over TCP and a Unix socket, batch 1/16/64."""
    sock_dir = Path(tempfile.mkdtemp(prefix="quantd-bench-"))
    q_sock, e_sock = sock_dir / "quantd.sock", sock_dir / "echo.sock"
    quantd = start_quantd(q_sock)
    echo_tcp = Server("echo", [str(RELEASE / "quantd-echo"), "127.0.0.1:0"], r"listening on (\S+)")
    echo_uds = Server("echo", [str(RELEASE / "quantd-echo"), f"unix:{e_sock}"], r"listening on (\S+)")
    # A server that fell behind is restarted on a new TCP port: its target is read at each run.
    configs = [("quantd", "tcp", quantd, None), ("quantd", "uds", quantd, f"unix:{q_sock}"),
               ("echo", "tcp", echo_tcp, None), ("echo", "uds", echo_uds, f"unix:{e_sock}")]
    runs: dict[tuple, list[dict]] = {}
    ladders: dict[tuple, tuple[int, dict | None]] = {}
    try:
        for rep in range(args.repeats):
            for batch in BATCHES:
                for rate in BATCH_RATES[batch]:
                    for name, transport, server, target in configs:
                        tag = f"{name}-{transport}-b{batch}"
                        r = load(server, rate, args.duration, args.warmup, OUT / f"{tag}-{rate}-{rep}.json", batch,
                                 target or server.addr)
                        runs.setdefault((name, transport, batch, rate), []).append(r)
                        log(f"{tag:<16} {rate:>7,}/s run {rep + 1}: e2e p50 {r['end_to_end']['p50_us']:.1f} µs, "
                            f"p99 {r['end_to_end']['p99_us']:.1f} µs, errors {len(r['errors'])}")
        for batch in BATCHES:
            for name, transport, server, target in configs:
                ladders[(name, transport, batch)] = ladder(server, target, batch, args.probe, f"{name}-{transport}-b{batch}")
    finally:
        for s in (quantd, echo_tcp, echo_uds):
            s.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    return batch_markdown(args, runs, ladders)


PEER_HEADING = "## An off-the-shelf peer over the Open Inference Protocol (`make bench`)"
# (label, server, quantd-load --protocol): quantd's three ways in, and MLServer's one.
PEER_CALLS = [("quantd stream", "quantd", "stream"), ("quantd Predict", "quantd", "predict"),
              ("quantd ModelInfer", "quantd", "kserve"), ("MLServer ModelInfer", "mlserver", "kserve")]


def peers(args) -> str:
    """Step 5: quantd's stream, unary Predict and ModelInfer, and MLServer's ModelInfer on the same
    model, one tick per call (each ModelInfer carries that tick's feature row)."""
    if not PEER_PY.exists():
        raise SystemExit(".venv-peer missing: run scripts/peer-setup.sh (make bench-peers does)")
    model = default_model_dir()
    servers = {"quantd": start_quantd(),
               "mlserver": Server("mlserver", [str(PEER_PY), "loadtest/baselines/mlserver/serve.py", "--model", model],
                                  r"listening on (\S+)")}
    runs: dict[tuple, list[dict]] = {}
    ladders: dict[str, tuple[int, dict | None]] = {}
    try:
        for rep in range(args.repeats):
            for rate in PEER_RATES:
                for label, name, protocol in PEER_CALLS:
                    tag = label.lower().replace(" ", "-")
                    r = load(servers[name], rate, args.duration, args.warmup, OUT / f"peer-{tag}-{rate}-{rep}.json",
                             protocol=protocol)
                    runs.setdefault((label, rate), []).append(r)
                    log(f"{label:<20} {rate:>7,}/s run {rep + 1}: e2e p50 {r['end_to_end']['p50_us']:.1f} µs, "
                        f"p99 {r['end_to_end']['p99_us']:.1f} µs, errors {len(r['errors'])}")
        for label, name, protocol in PEER_CALLS:
            tag = "peer-" + label.lower().replace(" ", "-")
            ladders[label] = ladder(servers[name], None, 1, args.probe, tag, protocol, first=LADDER[0])
    finally:
        for s in servers.values():
            s.stop()
    lines = [PEER_BEGIN, "", f"Generated by `make bench` (`scripts/bench.py --only peers --repeats {args.repeats} "
             f"--duration {args.duration}`). Machine: {machine()}. One client stream or connection, open loop "
             "(`quantd-load --protocol stream|predict|kserve`: a unary call per tick is sent at its due time whatever "
             "is in flight), recorded BTCUSDT quotes and trades. Every ModelInfer carries that tick's feature row as "
             "quantd computes it (`quantd::dataset::FeatureEngine`, precomputed by the load generator), so the "
             "ModelInfer rows measure the model server alone, while quantd's stream and Predict also compute the "
             "features, the policy and the risk gate. The peer is Seldon MLServer "
             f"{peer_version()} with a custom ONNX Runtime runtime (1 intra-op thread, all graph optimisations, "
             "`parallel_workers = 0`: inference in the server process), the same model file. Medians over "
             f"{args.repeats} runs, µs.", "",
             "| rate | call | e2e p50 | p90 | p99 | errors | / MLServer p50 | / MLServer p99 |", "|---|---|---|---|---|---|---|---|"]
    for rate in PEER_RATES:
        peer = runs[("MLServer ModelInfer", rate)]
        for label, _, _ in PEER_CALLS:
            rr = runs[(label, rate)]
            if not kept_up(rr):
                lines.append(f"| {rate:,} | {label} | falls behind | | | {sum(len(r['errors']) for r in rr)} | | |")
                continue
            p50, p90, p99 = (med(rr, "end_to_end", k) for k in ("p50_us", "p90_us", "p99_us"))
            ratio = (f"{p50 / med(peer, 'end_to_end', 'p50_us'):.2f}× | {p99 / med(peer, 'end_to_end', 'p99_us'):.2f}×"
                     if kept_up(peer) else "| ")
            lines.append(f"| {rate:,} | {label} | {fmt_us(p50)} | {fmt_us(p90)} | {fmt_us(p99)} | "
                         f"{sum(len(r['errors']) for r in rr)} | {ratio} |")
    lines += ["", f"Highest sustained rate (every reply in order, p99 < {P99_LIMIT_US:,.0f} µs; ladder "
              f"{', '.join(f'{x // 1000}k' for x in LADDER)} ticks/s, {args.probe} s per rung):", "",
              "| call | sustained | its first failing rate: p99, errors |", "|---|---|---|"]
    for label, _, _ in PEER_CALLS:
        best, fail = ladders[label]
        fail_txt = (f"{fail['target_rate']:,.0f}: {fmt_us(fail['end_to_end']['p99_us'])} µs, {len(fail['errors'])}"
                    if fail else "—")
        lines.append(f"| {label} | {best:,.0f} | {fail_txt} |")
    lines += ["", f"Context only, not measured here: {TRITON}.", "", PEER_END]
    return "\n".join(lines)


def peer_version() -> str:
    r = subprocess.run([str(PEER_PY), "-c", "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True)
    return r.stdout.strip() or "(unknown version)"


def batch_markdown(args, runs: dict, ladders: dict) -> str:
    lines = [BATCH_BEGIN, "", f"Generated by `make bench` (`scripts/bench.py --only batches --repeats {args.repeats} "
             f"--duration {args.duration}`). Machine: {machine()}. `quantd-load --target ADDR|unix:PATH --batch N "
             "--rate R` against quantd (default model; one process serving TCP and the Unix socket) and quantd-echo "
             "(one process per transport), one stream, recorded BTCUSDT quotes and trades. A batch goes out when its "
             "last tick is due; each tick's latency is taken from its own due time, so it includes the wait for its "
             "batch to fill, (N−1)/(2·rate) on average. Medians over "
             f"{args.repeats} runs, µs.", "",
             "| batch | rate | transport | quantd e2e p50 | p99 | echo e2e p50 | p99 | quantd/echo p50 | p99 | quantd server-internal p50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for batch in BATCHES:
        for rate in BATCH_RATES[batch]:
            for transport in ("tcp", "uds"):
                q, e = runs[("quantd", transport, batch, rate)], runs[("echo", transport, batch, rate)]
                if not (kept_up(q) and kept_up(e)):
                    behind = " / ".join(n for n, rr in (("quantd", q), ("echo", e)) if not kept_up(rr))
                    lines.append(f"| {batch} | {rate:,} | {transport} | {behind} falls behind | | | | | | |")
                    continue
                qp50, qp99 = med(q, "end_to_end", "p50_us"), med(q, "end_to_end", "p99_us")
                ep50, ep99 = med(e, "end_to_end", "p50_us"), med(e, "end_to_end", "p99_us")
                lines.append(f"| {batch} | {rate:,} | {transport} | {fmt_us(qp50)} | {fmt_us(qp99)} | {fmt_us(ep50)} "
                             f"| {fmt_us(ep99)} | {qp50 / ep50:.2f}× | {qp99 / ep99:.2f}× "
                             f"| {fmt_us(med(q, 'server_internal', 'p50_us'))} |")
    lines += ["", f"### Highest sustained rate by batch and transport (every reply in order, p99 < {P99_LIMIT_US:,.0f} µs)",
              "", f"The ladder {', '.join(f'{x // 1000}k' for x in LADDER if x >= 5_000)} ticks/s, {args.probe} s "
              "per rung after 1 s of warm-up, until one fails. With batches it starts where a batch fills within "
              "1 ms (the first rung ≥ 1,000·(N−1) ticks/s): below that the fill wait alone breaks the 2 ms p99. "
              "0: the first rung failed.", "",
              "| batch | transport | first rung | quantd sustained | its first failing rate: p99, errors | echo sustained |",
              "|---|---|---|---|---|---|"]
    for batch in BATCHES:
        first = next(r for r in LADDER if r >= ladder_start(batch))
        for transport in ("tcp", "uds"):
            best, fail = ladders[("quantd", transport, batch)]
            ebest, _ = ladders[("echo", transport, batch)]
            fail_txt = (f"{fail['target_rate']:,.0f}: {fmt_us(fail['end_to_end']['p99_us'])} µs, {len(fail['errors'])}"
                        if fail else "—")
            lines.append(f"| {batch} | {transport} | {first:,} | {best:,.0f} | {fail_txt} | {ebest:,.0f} |")
    q64 = ladders[("quantd", "tcp", 64)][0]
    u64 = ladders[("quantd", "uds", 64)][0]
    lines += ["", "| goal | measured | |", "|---|---|---|",
              f"| ≥ 500k ticks/s, batches of 64, one stream, TCP, p99 < 2 ms | {q64:,.0f} ticks/s | {verdict(q64 >= 500_000)} |",
              f"| stretch: ≥ 1M ticks/s over the Unix socket | {u64:,.0f} ticks/s | {verdict(u64 >= 1_000_000)} |"]
    for transport in ("tcp", "uds"):
        q, e = runs[("quantd", transport, 1, 10_000)], runs[("echo", transport, 1, 10_000)]
        if kept_up(q) and kept_up(e):
            r50 = med(q, "end_to_end", "p50_us") / med(e, "end_to_end", "p50_us")
            r99 = med(q, "end_to_end", "p99_us") / med(e, "end_to_end", "p99_us")
            lines.append(f"| single ticks at 10k/s over {transport}: p50 ≤ 1.15× echo | {r50:.2f}× | {verdict(r50 <= 1.15)} |")
            lines.append(f"| single ticks at 10k/s over {transport}: p99 ≤ 1.3× echo | {r99:.2f}× | {verdict(r99 <= 1.3)} |")
    lines += ["", BATCH_END]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
