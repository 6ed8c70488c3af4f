"""Evaluation on the held-out test period: signal quality, agreement with the FP32 model, a
cost-aware PnL of quantd's policy, and latency measured from Rust.

* IC: Pearson correlation of score and realised forward return; rank IC: Spearman.
* Directional accuracy: sign(score) == sign(label) over rows whose label is not 0.
* Side agreement: the fraction of test ticks where this model's policy side (long/flat/short)
  equals the FP32 model's.
* PnL (bps of one unit of notional, summed over symbols): quantd's policy (src/policy.rs, the
  same hysteresis rule, thresholds from the validation period) holds position p_i after tick i
  and earns p_i * (mid_{i+1} / mid_i - 1) * 1e4; every change pays half the quoted spread on the
  traded amount, |p_i - p_{i-1}| * spread_bps_i / 2.
* Latency: `quantd bench-model`, the scorer the server runs (the backend `auto` picks on this CPU:
  the native INT8 kernel or an ONNX Runtime session), at batch 1 and 64.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def policy_positions(scores: np.ndarray, entry: float, exit_: float, full: float) -> np.ndarray:
    pos = np.zeros(len(scores))
    p = 0.0
    for i, s in enumerate(scores):
        side = np.sign(p)
        size = min(max(s / full, -1.0), 1.0)
        agrees = side != 0 and np.sign(s) == side
        hold = agrees and abs(s) >= exit_
        p = size if np.isfinite(s) and (hold or abs(s) >= entry) else 0.0
        pos[i] = p
    return pos


def thresholds(val_scores: np.ndarray) -> tuple[float, float, float]:
    """entry at the 80th percentile of |score| on the validation period, exit at half of it,
    full size at the 98th (as the default model's manifest)."""
    a = np.abs(val_scores)
    entry = float(np.quantile(a, 0.8))
    return entry, entry / 2, max(float(np.quantile(a, 0.98)), entry * 1.01)


def rank(a: np.ndarray) -> np.ndarray:
    r = np.empty(len(a))
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r


def signal_metrics(score: np.ndarray, y: np.ndarray) -> dict:
    nz = y != 0
    return {
        "ic": float(np.corrcoef(score, y)[0, 1]),
        "rank_ic": float(np.corrcoef(rank(score), rank(y))[0, 1]),
        "directional_accuracy": float(np.mean(np.sign(score[nz]) == np.sign(y[nz]))),
    }


def policy_pnl(ds, idx: np.ndarray, score: np.ndarray, th: tuple[float, float, float]):
    """The policy on the rows `idx`, per symbol in time order from flat; per row (aligned with
    `idx`): the position, its gross PnL to the next row of its symbol, the cost of the change into
    it (half the quoted spread) and the size of that change."""
    spread_col = ds.feature_names.index("spread_bps")
    positions, gross, cost, change = (np.zeros(len(idx)) for _ in range(4))
    for sym in np.unique(ds.symbol[idx]):
        m = np.flatnonzero(ds.symbol[idx] == sym)     # idx is time-ordered within a symbol
        rows = idx[m]
        pos = policy_positions(score[m], *th)
        positions[m] = pos
        mid = ds.mid[rows]
        ret = np.zeros(len(rows))
        ret[:-1] = (mid[1:] / mid[:-1] - 1) * 1e4
        gross[m] = pos * ret
        change[m] = np.abs(np.diff(np.concatenate([[0.0], pos])))
        cost[m] = change[m] * ds.x[rows, spread_col] / 2
    return positions, gross, cost, change


def pnl(ds, idx: np.ndarray, score: np.ndarray, th: tuple[float, float, float]) -> tuple[dict, np.ndarray]:
    """Policy PnL over the test rows, per symbol in time order; returns (figures, positions)."""
    positions, gross_rows, cost_rows, change = policy_pnl(ds, idx, score, th)
    per_symbol = [np.flatnonzero(ds.symbol[idx] == sym) for sym in np.unique(ds.symbol[idx])]
    gross = sum(float(np.sum(gross_rows[m])) for m in per_symbol)
    cost = sum(float(np.sum(cost_rows[m])) for m in per_symbol)
    changes = int(np.count_nonzero(change))
    return {"pnl_gross_bps": gross, "pnl_net_bps": gross - cost, "cost_bps": cost, "position_changes": changes}, positions


def evaluate_model(ds, path: Path, window: int, fp32_positions: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """Every test-period figure of one ONNX model (ONNX Runtime, CPU); returns (figures, the
    policy's positions on the test rows). Policy thresholds come from its validation scores."""
    from . import ortq
    va, te = ds.split["val"], ds.split["test"]
    s_val = ortq.predict(path, ds.windows(va, window))
    s_te = ortq.predict(path, ds.windows(te, window))
    th = thresholds(s_val)
    money, pos = pnl(ds, te, s_te, th)
    ref = pos if fp32_positions is None else fp32_positions
    figures = {**signal_metrics(s_te, ds.y[te]), **money,
               "side_agreement_vs_fp32": float(np.mean(np.sign(pos) == np.sign(ref))),
               "policy": th, "scores_test": s_te}
    return figures, pos


def bench_models(quantd: str, model_dirs: list[Path], calls: int = 20_000) -> list[dict]:
    """Per model: the backend `auto` serves it on (and its ISA level), p50/p99 µs per call at
    batch 1 and 64 from `quantd bench-model`, the engine's own scorer, all models timed side by
    side in interleaved rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run([quantd, "bench-model", *map(str, model_dirs), "--batch", "1,64", "--calls", str(calls),
                        "--warmup", str(calls // 10), "--rounds", "10", "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        doc = json.loads(out.read_text())
    return [{"backend": m["backend"], "isa": m["isa"]} |
            {f"p50_us_b{c['batch']}": c["p50_us"] for c in m["calls"]} |
            {f"p99_us_b{c['batch']}": c["p99_us"] for c in m["calls"]} for m in doc["models"]]


AVX2_CPU = "EPYC-Rome"  # qemu's model of an AMD EPYC with AVX2 and no AVX-512/VNNI


def ort_on_avx2(quantd: str, model_dir: str) -> dict:
    """Whether ONNX Runtime serves a model exactly on an AVX2-only CPU: `quantd verify-model
    --backend ort` run under qemu-user's EPYC-Rome model (`qemu-x86_64 -cpu EPYC-Rome`), which
    checks it against the reference semantics on the verification set. Empty where qemu-user is
    not installed (it is not part of the set-up)."""
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        return {}
    r = subprocess.run([qemu, "-cpu", AVX2_CPU, quantd, "verify-model", "--backend", "ort", model_dir],
                       capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})
    if r.returncode == 0:
        return {"ort_avx2_rows_off": 0, "ort_avx2_max_steps": 0}
    m = re.search(r"differs from the model's integer semantics on (\d+) of (\d+) verification rows, by up to (\d+)",
                  r.stderr)
    if not m:
        raise RuntimeError(f"verify-model under qemu failed for {model_dir}: {r.stderr[-2000:]}")
    return {"ort_avx2_rows_off": int(m.group(1)), "ort_avx2_max_steps": int(m.group(3))}
