//! Backtest metrics from a replay's signals and the recorded quotes (offline, the replay's
//! thread).
//!
//! Execution model: each change of a symbol's target position becomes an order at the signal's
//! exchange time plus a latency (zero, or the engine's measured time for that tick plus the
//! configured feed and order latencies). The order fills at the first recorded quote at or after
//! that moment: buys at the ask, sells at the bid (crossing the spread), plus `fee_bps` of the
//! traded notional. Positions are in units of the risk layer's `unit_qty` per 1.0 of target.
//!
//! Conventions: equity is marked to the mid; Sharpe and Sortino are annualized from 1-minute
//! equity changes with 525,600 minutes a year (crypto trades around the clock) and no risk-free
//! rate; Calmar is the annualized PnL over the maximum drawdown; a round trip runs from leaving
//! flat to returning to flat (or flipping side), and the hit rate is the share of round trips with
//! positive PnL after costs; IC and rank IC are the Pearson and Spearman correlations of each
//! scored tick's score with the forward mid log-return over `ic_horizon_ms` (mid as of the
//! signal to mid as of the horizon).

use serde::Serialize;

/// Minutes in a (365-day) year, for annualising.
pub const MINUTES_PER_YEAR: f64 = 525_600.0;
const MINUTE_NS: i64 = 60_000_000_000;

/// A quote of one symbol: the prices fills and marks use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quote {
    /// Exchange time, ns.
    pub ts_ns: i64,
    /// Best bid.
    pub bid: f64,
    /// Best ask.
    pub ask: f64,
}

impl Quote {
    /// The mid price.
    pub fn mid(&self) -> f64 {
        0.5 * (self.bid + self.ask)
    }
}

/// One signal of the replay, as the backtest needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignalPoint {
    /// Exchange time of the signal's tick, ns.
    pub ts_ns: i64,
    /// Target position after the risk layer.
    pub position: f64,
    /// The model's score, when the tick was scored (for the IC).
    pub score: Option<f64>,
    /// The engine's own processing time for this tick, ns.
    pub engine_ns: u64,
}

/// What trading costs: the spread crossed on each change, and fees.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostModel {
    /// Quantity per 1.0 of target position.
    pub unit_qty: f64,
    /// Fee on traded notional, bps.
    pub fee_bps: f64,
    /// Added to each tick's engine time when latency is on: market data to the server, ns.
    pub feed_latency_ns: u64,
    /// Signal to the exchange, ns.
    pub order_latency_ns: u64,
    /// Horizon of the forward return for IC, ms.
    pub ic_horizon_ms: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self { unit_qty: 1.0, fee_bps: 0.0, feed_latency_ns: 0, order_latency_ns: 0, ic_horizon_ms: 1_000 }
    }
}

/// A point of the equity curve (summed over symbols), for plots.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EquityPoint {
    /// Exchange time, ns.
    pub ts_ns: i64,
    /// Equity at that time, quote currency.
    pub equity: f64,
}

/// A back-test's figures over one symbol's quotes and signals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Net PnL after spread and fees, quote currency.
    pub pnl: f64,
    /// PnL had every fill been at the mid with no fee.
    pub pnl_before_costs: f64,
    /// Spread paid, quote currency.
    pub spread_cost: f64,
    /// Fees paid, quote currency.
    pub fees: f64,
    /// Annualised Sharpe ratio of the per-minute returns.
    pub sharpe: f64,
    /// Annualised Sortino ratio of the per-minute returns.
    pub sortino: f64,
    /// Largest peak-to-trough loss of the equity curve, quote currency.
    pub max_drawdown: f64,
    /// Annualised return over the maximum drawdown.
    pub calmar: f64,
    /// Traded notional, quote currency, and per day of data.
    pub turnover: f64,
    /// Position traded per day, in units of the full position.
    pub turnover_per_day: f64,
    /// How many times the position changed.
    pub position_changes: u64,
    /// Round trips: flat, in a position, flat again.
    pub round_trips: u64,
    /// Share of round trips that made money.
    pub hit_rate: f64,
    /// Mean time a position was held, seconds.
    pub avg_holding_s: f64,
    /// Pearson correlation of the score with the forward return.
    pub ic: f64,
    /// Spearman (rank) correlation of the score with the forward return.
    pub rank_ic: f64,
    /// Score/return pairs the correlations are taken over.
    pub ic_samples: u64,
    /// Seconds between the first and the last quote.
    pub duration_s: f64,
    /// The equity curve.
    #[serde(skip)]
    pub equity: Vec<EquityPoint>,
}

/// Per symbol: its quotes (by time) and its signals (by time).
pub struct SymbolSeries<'a> {
    /// The symbol's quotes, in time order.
    pub quotes: &'a [Quote],
    /// The symbol's signals, in time order.
    pub signals: &'a [SignalPoint],
}

struct Fill {
    ts_ns: i64,
    delta: f64,
    px: f64,
    mid: f64,
}

/// Last quote at or before `ts` (index): the market as of that moment.
fn quote_asof(quotes: &[Quote], ts: i64) -> Option<usize> {
    quotes.partition_point(|q| q.ts_ns <= ts).checked_sub(1)
}

/// First quote at or after `ts` (index), by binary search.
fn quote_at(quotes: &[Quote], ts: i64) -> Option<usize> {
    let i = quotes.partition_point(|q| q.ts_ns < ts);
    (i < quotes.len()).then_some(i)
}

/// The fills of one symbol's position changes.
fn fills(s: &SymbolSeries, cost: &CostModel, with_latency: bool) -> Vec<Fill> {
    let mut out = Vec::new();
    let mut held = 0.0;
    let mut last_exec = i64::MIN;
    for sig in s.signals {
        if sig.position == held {
            continue;
        }
        let delay = if with_latency { sig.engine_ns + cost.feed_latency_ns + cost.order_latency_ns } else { 0 };
        // Orders execute in the order they were sent.
        let exec = (sig.ts_ns + delay as i64).max(last_exec);
        let Some(q) = quote_at(s.quotes, exec).map(|i| s.quotes[i]) else { break };
        last_exec = exec;
        let delta = (sig.position - held) * cost.unit_qty;
        out.push(Fill { ts_ns: q.ts_ns, delta, px: if delta > 0.0 { q.ask } else { q.bid }, mid: q.mid() });
        held = sig.position;
    }
    out
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks with ties averaged.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation of `x` and `y` (ties get their mean rank).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// (mean / sd, mean / downside deviation) of `xs`, each times `sqrt(periods)`.
pub fn sharpe_sortino(xs: &[f64], periods_per_year: f64) -> (f64, f64) {
    if xs.len() < 2 {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let down = (xs.iter().map(|x| x.min(0.0).powi(2)).sum::<f64>() / n).sqrt();
    let k = periods_per_year.sqrt();
    (mean / sd * k, mean / down * k)
}

/// Largest fall of `equity` from a running peak (>= 0).
pub fn max_drawdown(equity: impl IntoIterator<Item = f64>) -> f64 {
    let mut peak = f64::NEG_INFINITY;
    let mut dd: f64 = 0.0;
    for e in equity {
        peak = peak.max(e);
        dd = dd.max(peak - e);
    }
    dd
}

/// Backtests every symbol and sums them up. `with_latency`: orders wait for the engine time plus
/// the feed and order latencies; otherwise they fill at the signal's own time.
pub fn evaluate(series: &[SymbolSeries], cost: &CostModel, with_latency: bool) -> Metrics {
    let mut m = Metrics::default();
    // Equity changes of all symbols, as (ts, change), to sum into one curve.
    let mut deltas: Vec<(i64, f64)> = Vec::new();
    let (mut scores, mut fwd) = (Vec::new(), Vec::new());
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let (mut wins, mut holding_ns) = (0u64, 0i128);
    for s in series {
        let (Some(q0), Some(qn)) = (s.quotes.first(), s.quotes.last()) else { continue };
        first = first.min(q0.ts_ns);
        last = last.max(qn.ts_ns);
        let fills = fills(s, cost, with_latency);
        m.position_changes += fills.len() as u64;
        // Walk the quotes, applying fills as they come; equity = cash + qty · mid.
        let (mut cash, mut qty, mut prev_equity) = (0.0, 0.0, 0.0);
        let mut trip: Option<(i64, f64)> = None; // (opened at, equity at open)
        let mut f = fills.iter().peekable();
        for q in s.quotes {
            while let Some(fill) = f.next_if(|fl| fl.ts_ns <= q.ts_ns) {
                let notional = fill.delta.abs() * fill.px;
                let fee = notional * cost.fee_bps * 1e-4;
                cash -= fill.delta * fill.px + fee;
                m.fees += fee;
                m.spread_cost += fill.delta.abs() * (fill.px - fill.mid).abs();
                m.turnover += notional;
                let before = qty;
                qty += fill.delta;
                let equity_now = cash + qty * fill.mid;
                let closes = before != 0.0 && (qty == 0.0 || qty.signum() != before.signum());
                if closes && let Some((at, e0)) = trip.take() {
                    m.round_trips += 1;
                    wins += (equity_now > e0) as u64;
                    holding_ns += (fill.ts_ns - at) as i128;
                }
                if qty != 0.0 && trip.is_none() {
                    trip = Some((fill.ts_ns, equity_now));
                }
            }
            let equity = cash + qty * q.mid();
            if equity != prev_equity {
                deltas.push((q.ts_ns, equity - prev_equity));
                prev_equity = equity;
            }
        }
        // IC: each scored signal against the forward mid return, mid as of the signal to mid as
        // of the horizon (the training label's definition).
        let h = cost.ic_horizon_ms as i64 * 1_000_000;
        let end = s.quotes.last().map_or(i64::MIN, |q| q.ts_ns);
        for sig in s.signals {
            let Some(score) = sig.score else { continue };
            if sig.ts_ns + h > end {
                continue;
            }
            let (Some(i0), Some(i1)) = (quote_asof(s.quotes, sig.ts_ns), quote_asof(s.quotes, sig.ts_ns + h)) else {
                continue;
            };
            scores.push(score);
            fwd.push((s.quotes[i1].mid() / s.quotes[i0].mid()).ln() * 1e4);
        }
    }
    if first > last {
        return m;
    }
    deltas.sort_by_key(|d| d.0);
    // Equity curve and 1-minute changes.
    let mut equity = 0.0;
    let mut minute_end = first + MINUTE_NS;
    let mut minute_start_equity = 0.0;
    let mut per_minute = Vec::new();
    for &(ts, d) in &deltas {
        while ts >= minute_end {
            per_minute.push(equity - minute_start_equity);
            minute_start_equity = equity;
            minute_end += MINUTE_NS;
        }
        equity += d;
        m.equity.push(EquityPoint { ts_ns: ts, equity });
    }
    while minute_end <= last + MINUTE_NS {
        per_minute.push(equity - minute_start_equity);
        minute_start_equity = equity;
        minute_end += MINUTE_NS;
    }
    m.pnl = equity;
    m.pnl_before_costs = m.pnl + m.spread_cost + m.fees;
    m.duration_s = (last - first) as f64 / 1e9;
    (m.sharpe, m.sortino) = sharpe_sortino(&per_minute, MINUTES_PER_YEAR);
    m.max_drawdown = max_drawdown(std::iter::once(0.0).chain(m.equity.iter().map(|p| p.equity)));
    let years = m.duration_s / (MINUTES_PER_YEAR * 60.0);
    m.calmar = if m.max_drawdown > 0.0 && years > 0.0 { m.pnl / years / m.max_drawdown } else { f64::NAN };
    m.turnover_per_day = if m.duration_s > 0.0 { m.turnover / (m.duration_s / 86_400.0) } else { f64::NAN };
    m.hit_rate = if m.round_trips > 0 { wins as f64 / m.round_trips as f64 } else { f64::NAN };
    m.avg_holding_s = if m.round_trips > 0 { holding_ns as f64 / m.round_trips as f64 / 1e9 } else { f64::NAN };
    m.ic = pearson(&scores, &fwd);
    m.rank_ic = spearman(&scores, &fwd);
    m.ic_samples = scores.len() as u64;
    m
}

/// Share of ticks on which two position series (same ticks, same order) are on the same side
/// (long, short or flat).
pub fn side_agreement(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let side = |x: f64| {
        if x > 0.0 {
            1
        } else if x < 0.0 {
            -1
        } else {
            0
        }
    };
    a.iter().zip(b).filter(|(x, y)| side(**x) == side(**y)).count() as f64 / n as f64
}

#[cfg(test)]
mod tests;
