"""Training data: feature rows from `quantd features` (the engine's own code), labels, windows and
time splits.

* Features come only from the `quantd` binary, on the recorded tick files, on the bar files
  replayed as ticks (`bars.py`), or on a live server's journal (`ticks-*.arrows`: exactly the
  ticks quantd received and served), so a model is trained on exactly what the server computes.
* Label: the forward mid log-return over a time horizon, in bps: for the row at exchange time t,
  log(mid at the first row at or after t + horizon / mid at t) * 1e4, per symbol. Rows without a
  full horizon ahead, and the first `warmup` rows of a symbol (the server answers those
  `warming_up`), are not used.
* Splits are by time, per instrument, never shuffled across time: the first `train` fraction of
  each symbol's usable rows, then `val`, then the rest as the held-out test period.
* Windows: the model input for a windowed model at row i is the symbol's last T feature rows up to
  and including i (the engine keeps the same per-symbol ring), so row i is usable only once the
  symbol has T rows.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import bars

TICK_FILES = {
    "BTCUSDT": ["binance_usdm_btcusdt_20240808_quotes.csv.gz", "binance_usdm_btcusdt_20240808_trades.csv.gz"],
    "ETHUSDT": ["binance_usdm_ethusdt_20240808_quotes.csv.gz", "binance_usdm_ethusdt_20240808_trades.csv.gz"],
}


@dataclass
class Dataset:
    """Rows of every symbol in time order per symbol, with labels and the split."""
    name: str
    horizon_ns: int
    seq: np.ndarray               # the tick's seq in its tick file(s) (quantd features' `seq`)
    symbol: np.ndarray            # per row
    ts: np.ndarray                # exchange_ts_ns
    mid: np.ndarray
    x: np.ndarray                 # [rows, F] float32
    y: np.ndarray                 # label, bps (NaN where unusable)
    feature_names: list[str]
    split: dict[str, np.ndarray] = field(default_factory=dict)   # row indices per part

    def windows(self, idx: np.ndarray, t: int) -> np.ndarray:
        """[len(idx), t, F]: each row's symbol's last t rows (the rows are contiguous per symbol)."""
        if t == 1:
            return self.x[idx]
        offsets = np.arange(-t + 1, 1)
        return self.x[idx[:, None] + offsets[None, :]]


def quantd_features(quantd: str, tick_files: list[Path], out: Path) -> np.ndarray:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([quantd, "features", "--ticks", *map(str, tick_files), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return np.load(out)


def journal_tick_files(journal: Path) -> list[Path]:
    """A journal directory's tick files, closed and left open by a crash (quantd orders them)."""
    files = sorted(journal.glob("ticks-*.arrows")) + sorted(journal.glob("ticks-*.arrows.partial"))
    if not files:
        raise FileNotFoundError(f"{journal}: no ticks-*.arrows journal files")
    return files


def load(name: str, quantd: str, shared: Path, cache: Path, horizon_ns: int, warmup: int, window: int,
         symbols: list[str] | None = None, max_rows_per_symbol: int | None = None,
         fractions=(0.6, 0.2), journal: Path | None = None) -> Dataset:
    """`name` is "ticks" (the Binance captures), "bars" (bar files replayed as ticks) or
    "journal" (the ticks a live quantd journaled in `journal`)."""
    parts = []
    if name == "ticks":
        for sym in symbols or list(TICK_FILES):
            parts.append(quantd_features(quantd, [shared / "ticks" / f for f in TICK_FILES[sym]],
                                         cache / f"features-{sym}.npy"))
    elif name == "bars":
        for sym in symbols or list(bars.SOURCES):
            ticks = cache / f"bars-{sym}.csv"
            if not ticks.exists():
                bars.write_ticks(sym, shared / "bars", ticks)
            parts.append(quantd_features(quantd, [ticks], cache / f"features-bars-{sym}.npy"))
    elif name == "journal":
        if journal is None:
            raise ValueError("the journal dataset needs a journal directory")
        parts.append(quantd_features(quantd, journal_tick_files(journal), cache / "features-journal.npy"))
    else:
        raise ValueError(f"unknown dataset {name!r}")
    rows = np.concatenate(parts)
    names = [n for n in rows.dtype.names if n not in ("seq", "symbol", "exchange_ts_ns", "mid")]
    # Contiguous per symbol, time-ordered within (quantd features writes merged time order).
    order = np.lexsort((rows["exchange_ts_ns"], rows["symbol"]))
    rows = rows[order]
    if max_rows_per_symbol:
        keep = np.concatenate([np.flatnonzero(rows["symbol"] == s)[:max_rows_per_symbol]
                               for s in np.unique(rows["symbol"])])
        rows = rows[np.sort(keep)]
    ds = Dataset(name, horizon_ns, rows["seq"].astype(np.int64), rows["symbol"].astype(str), rows["exchange_ts_ns"].astype(np.int64),
                 rows["mid"].astype(np.float64), np.stack([rows[n] for n in names], 1).astype(np.float32),
                 np.full(len(rows), np.nan), names)
    usable = np.zeros(len(rows), bool)
    for sym in np.unique(ds.symbol):
        idx = np.flatnonzero(ds.symbol == sym)
        ts, mid = ds.ts[idx], ds.mid[idx]
        j = np.searchsorted(ts, ts + horizon_ns, side="left")
        ok = j < len(idx)
        ds.y[idx[ok]] = np.log(mid[j[ok]] / mid[ok]) * 1e4
        pos = np.arange(len(idx))
        usable[idx] = ok & (pos >= max(warmup, window - 1)) & np.isfinite(ds.y[idx])
    split = {"train": [], "val": [], "test": []}
    for sym in np.unique(ds.symbol):
        idx = np.flatnonzero((ds.symbol == sym) & usable)
        a, b = int(len(idx) * fractions[0]), int(len(idx) * sum(fractions))
        split["train"].append(idx[:a])
        split["val"].append(idx[a:b])
        split["test"].append(idx[b:])
    ds.split = {k: np.concatenate(v) for k, v in split.items()}
    return ds
