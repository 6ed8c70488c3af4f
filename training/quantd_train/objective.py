"""The trading side of training and evaluation: a differentiable utility of the strategy's
returns (the seed's "joint training with the investment goal"), policy thresholds set so that a
model trades a target turnover on the validation period (fair comparisons: every variant trades
about as often), and moving-block bootstrap intervals over the test period.

* Utility. A smoothed position p_i = tanh(score_i / T) held over tick i earns p_i * r_i, with r_i
  the next tick's mid return in bps, and pays half the quoted spread on every change,
  |p_i - p_{i-1}| * spread_i / 2. Over a block of consecutive ticks of one symbol the loss is
  minus the mean-variance utility mean(pnl) - lambda * var(pnl), or minus the Sharpe ratio
  mean(pnl) / std(pnl).
* Turnover: sum |position change| per 1,000 ticks of quantd's policy (src/policy.rs).
* Bootstrap: blocks of consecutive test ticks drawn with replacement (the rows are serially
  dependent: overlapping forward returns, persistent positions), the statistic recomputed on each
  resample; a paired difference uses the same draws for both variants.
"""
from __future__ import annotations

import numpy as np

from .evaluate import policy_positions

TURNOVER_PER = 1_000


def utility_loss(score, ret_bps, half_spread_bps, temperature: float, form: str = "mean_variance",
                 risk_aversion: float = 0.1):
    """Minus the utility of one block of consecutive ticks (torch tensors of shape [n]): positions
    tanh(score / temperature), the next-tick return `ret_bps`, half the spread paid on each
    position change (the block starts flat)."""
    import torch

    p = torch.tanh(score / temperature)
    change = torch.abs(torch.diff(p, prepend=torch.zeros(1, dtype=p.dtype)))
    pnl = p * ret_bps - change * half_spread_bps
    if form == "sharpe":
        return -pnl.mean() / (pnl.std(unbiased=False) + 1e-6)
    if form == "mean_variance":
        return -(pnl.mean() - risk_aversion * pnl.var(unbiased=False))
    raise ValueError(f"unknown utility form {form!r}")


def turnover(positions: np.ndarray) -> float:
    """Sum of |position change| per 1,000 ticks (from flat)."""
    if len(positions) == 0:
        return 0.0
    d = np.abs(np.diff(np.concatenate([[0.0], positions])))
    return float(d.sum() / len(positions) * TURNOVER_PER)


def policy_for(scores: np.ndarray, entry_q: float) -> tuple[float, float, float]:
    """Thresholds with the entry at quantile `entry_q` of |score|, exit at half of it, full size at
    the 98th percentile (at least just above the entry): the pipeline's rule, one knob moved."""
    a = np.abs(scores)
    entry = float(np.quantile(a, entry_q))
    return entry, entry / 2, max(float(np.quantile(a, 0.98)), entry * 1.01)


def segments_turnover(segments: list[np.ndarray], th) -> float:
    """Turnover of the policy over several symbols' score series, each from flat."""
    pos = [policy_positions(s, *th) for s in segments]
    n = sum(len(p) for p in pos)
    changes = sum(float(np.abs(np.diff(np.concatenate([[0.0], p]))).sum()) for p in pos)
    return changes / max(n, 1) * TURNOVER_PER


def target_thresholds(segments: list[np.ndarray], target: float, iters: int = 30) -> tuple[tuple, float]:
    """Thresholds whose validation turnover is closest to `target` (per 1,000 ticks), by bisection
    on the entry quantile (a higher entry trades less). Returns (thresholds, turnover reached); a
    model whose scores take few values cannot hit every target exactly."""
    scores = np.concatenate(segments)
    lo, hi = 0.5, 0.99999
    best = None
    for _ in range(iters):
        q = (lo + hi) / 2
        th = policy_for(scores, q)
        t = segments_turnover(segments, th)
        if best is None or abs(t - target) < abs(best[1] - target):
            best = (th, t)
        if t > target:
            lo = q
        else:
            hi = q
    return best


def block_indices(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """One moving-block resample of range(n): ceil(n / block) blocks of `block` consecutive
    indices with uniformly drawn starts, cut to n."""
    block = max(1, min(block, n))
    starts = rng.integers(0, n - block + 1, size=-(-n // block))
    return (starts[:, None] + np.arange(block)[None, :]).reshape(-1)[:n]


def bootstrap(stat, n: int, block: int = 500, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile interval of `stat(indices)` over moving-block resamples of range(n)."""
    rng = np.random.default_rng(seed)
    values = np.array([stat(block_indices(n, block, rng)) for _ in range(resamples)])
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def ic_of(score: np.ndarray, y: np.ndarray):
    """The IC (Pearson) of a resample: a function of the drawn indices."""
    return lambda idx: float(np.corrcoef(score[idx], y[idx])[0, 1])


def within_noise(interval: tuple[float, float]) -> bool:
    """Whether a difference's interval holds zero."""
    return interval[0] <= 0.0 <= interval[1]
