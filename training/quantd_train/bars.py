"""Intraday OHLC bars replayed as ticks, written in quantd's canonical tick CSV so that
`quantd features` computes their feature rows with the engine's own code.

How a bar becomes ticks (the rule the report cites):

* A bar opening at t and lasting D is walked as four price points at t, t + D/4, t + D/2 and
  t + 3D/4: open, the extreme nearer the open, the other extreme, close. The nearer extreme is
  the low when the bar closed at or above its open (O-L-H-C), else the high (O-H-L-C): the usual
  path assumption, since a bar does not record the order of its high and low.
* Bid and ask bars of the same instrument (FXCM GBP/USD): each point is one quote tick, bid from
  the bid bar and ask from the ask bar at the same path position (the order chosen from the mid
  bar). FXCM publishes no sizes: both sides get size 1, so the imbalance feature is 0.
* Trade bars with volume (FTX BTC-PERP, volume in USD notional): each point is a quote tick one
  price increment wide around the point (bid = p - tick/2, ask = p + tick/2, sizes 1) followed
  1 ms later by a trade tick at p with a quarter of the bar's volume (qty = volume / 4 / p);
  the aggressor is buy when p rose from the previous point, sell when it fell, unknown if flat.
"""
from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

CANONICAL_HEADER = "seq,exchange_ts_ns,symbol,kind,bid_px,bid_qty,ask_px,ask_qty,trade_px,trade_qty,aggressor"


@dataclass(frozen=True)
class BarSource:
    """One instrument's bar files and how to read them."""
    symbol: str
    files: tuple[str, ...]      # (bid, ask) for quote bars, (trades,) for trade bars
    kind: str                   # "quote" or "trade"
    bar_ns: int
    tick_size: float = 0.0      # trade bars: quote width


SOURCES = {
    "GBPUSD": BarSource("GBPUSD", ("fxcm_gbpusd_m1_bid_2012.csv.gz", "fxcm_gbpusd_m1_ask_2012.csv.gz"), "quote", 60 * 10**9),
    "BTC-PERP": BarSource("BTC-PERP", ("ftx_btc_perp_1m_20211231_20220201.csv.gz",), "trade", 60 * 10**9, tick_size=1.0),
}


def _ts_ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def _read(path: Path) -> list[tuple[int, float, float, float, float, float]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = []
        for r in csv.DictReader(f):
            rows.append((_ts_ns(r["timestamp"]), float(r["open"]), float(r["high"]), float(r["low"]),
                         float(r["close"]), float(r.get("volume") or 0.0)))
    return rows


def path(o: float, h: float, l: float, c: float, up: bool) -> tuple[float, float, float, float]:
    """The four points of a bar: O-L-H-C when it closed up (or flat), else O-H-L-C."""
    return (o, l, h, c) if up else (o, h, l, c)


def bar_ticks(src: BarSource, data: Path) -> list[tuple]:
    """(exchange_ts_ns, kind, bid_px, bid_qty, ask_px, ask_qty, trade_px, trade_qty, aggressor)."""
    out = []
    step = src.bar_ns // 4
    if src.kind == "quote":
        bid, ask = (_read(data / f) for f in src.files)
        asks = {r[0]: r for r in ask}
        for b in bid:
            a = asks.get(b[0])
            if a is None:
                continue
            up = (a[4] + b[4]) >= (a[1] + b[1])
            for i, (bp, ap) in enumerate(zip(path(*b[1:5], up), path(*a[1:5], up))):
                if 0 < bp < ap:
                    out.append((b[0] + i * step, "quote", bp, 1.0, ap, 1.0, "", "", ""))
    else:
        prev = None
        for t, o, h, l, c, v in _read(data / src.files[0]):
            for i, p in enumerate(path(o, h, l, c, c >= o)):
                ts = t + i * step
                half = src.tick_size / 2
                out.append((ts, "quote", p - half, 1.0, p + half, 1.0, "", "", ""))
                side = "unknown" if prev is None or p == prev else ("buy" if p > prev else "sell")
                out.append((ts + 1_000_000, "trade", "", "", "", "", p, v / 4 / p if v > 0 else 1e-9, side))
                prev = p
    return out


def write_ticks(symbol: str, data: Path, out: Path) -> int:
    """Writes `symbol`'s bars as canonical ticks to `out`; returns the tick count."""
    rows = bar_ticks(SOURCES[symbol], data)
    with open(out, "w", newline="") as f:
        f.write(CANONICAL_HEADER + "\n")
        w = csv.writer(f)
        for seq, r in enumerate(rows, 1):
            w.writerow((seq, r[0], symbol, *r[1:]))
    return len(rows)
