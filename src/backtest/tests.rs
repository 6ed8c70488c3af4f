use super::*;

const S: i64 = 1_000_000_000;

fn quotes() -> Vec<Quote> {
    [(0, 99.0, 101.0), (1, 101.0, 103.0), (2, 103.0, 105.0), (3, 99.0, 101.0)]
        .into_iter()
        .map(|(t, bid, ask)| Quote { ts_ns: t * S, bid, ask })
        .collect()
}

fn signal(t: i64, position: f64) -> SignalPoint {
    SignalPoint { ts_ns: t * S, position, score: None, engine_ns: 0 }
}

#[test]
fn pnl_crosses_the_spread_on_each_change() {
    // Long 1 at t0 (buy at the ask, 101), flat at t2 (sell at the bid, 103).
    let (q, s) = (quotes(), [signal(0, 1.0), signal(1, 1.0), signal(2, 0.0)]);
    let m = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &CostModel::default(), false);
    assert_eq!(m.pnl, 2.0);
    assert_eq!(m.spread_cost, 2.0, "half a 2.0 spread on each of two fills");
    assert_eq!(m.pnl_before_costs, 4.0, "mid 100 -> 104");
    assert_eq!(m.position_changes, 2);
    assert_eq!(m.turnover, 101.0 + 103.0);
    // Equity: 0, -1 (t0, after paying the spread), +1 (t1), +2 (t2): drawdown 1.
    assert_eq!(m.max_drawdown, 1.0);
    assert_eq!((m.round_trips, m.hit_rate, m.avg_holding_s), (1, 1.0, 2.0));
    assert_eq!(m.equity.iter().map(|p| p.equity).collect::<Vec<_>>(), [-1.0, 1.0, 2.0]);
    // A 10 bps fee on both fills.
    let fee = CostModel { fee_bps: 10.0, ..CostModel::default() };
    let m = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &fee, false);
    assert!((m.fees - 0.204).abs() < 1e-12 && (m.pnl - 1.796).abs() < 1e-12, "{m:?}");
}

#[test]
fn latency_delays_fills_to_the_first_quote_after_it() {
    // 1.5 s of latency: the buy fills at t2's ask (105); the sell would be due at 3.5 s, after the
    // last quote, so the position is still open at the end and marked at mid 100.
    let (q, s) = (quotes(), [signal(0, 1.0), signal(2, 0.0)]);
    let slow = CostModel { feed_latency_ns: 500_000_000, order_latency_ns: 1_000_000_000, ..CostModel::default() };
    let m = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &slow, true);
    assert_eq!((m.pnl, m.position_changes), (-5.0, 1));
    let m0 = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &slow, false);
    assert_eq!(m0.pnl, 2.0, "the same signals with zero latency");
    // The engine's own time counts too.
    let s = [SignalPoint { engine_ns: 1_500_000_000, ..signal(0, 1.0) }];
    let m = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &CostModel::default(), true);
    assert_eq!(m.turnover, 105.0);
}

#[test]
fn sharpe_sortino_drawdown_and_correlations_match_hand_values() {
    // mean 0.5, sd √(5/3), downside deviation √(1/4).
    let (sh, so) = sharpe_sortino(&[1.0, -1.0, 2.0, 0.0], 4.0);
    assert!((sh - 0.5 / (5.0f64 / 3.0).sqrt() * 2.0).abs() < 1e-12, "{sh}");
    assert!((so - 0.5 / 0.5 * 2.0).abs() < 1e-12, "{so}");
    assert_eq!(max_drawdown([0.0, 3.0, 1.0, 4.0, -2.0, 0.0]), 6.0);
    assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]) - 0.993_399).abs() < 1e-6);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 10.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    assert_eq!(ranks(&[5.0, 1.0, 5.0]), [1.5, 0.0, 1.5], "ties share their average rank");
    assert_eq!(side_agreement(&[1.0, 0.0, -1.0, 0.5], &[0.3, 0.0, 1.0, 0.0]), 0.5);
}

#[test]
fn ic_pairs_each_score_with_the_forward_return() {
    let q: Vec<Quote> =
        (0..10).map(|i| Quote { ts_ns: i * S, bid: 100.0 + (i * i) as f64, ask: 100.0 + (i * i) as f64 }).collect();
    // Scores rise with the forward 1 s return (which grows with i): rank IC 1.
    let s: Vec<SignalPoint> = (0..9).map(|i| SignalPoint { score: Some(i as f64), ..signal(i, 0.0) }).collect();
    let m = evaluate(&[SymbolSeries { quotes: &q, signals: &s }], &CostModel::default(), false);
    assert_eq!(m.ic_samples, 9);
    assert!((m.rank_ic - 1.0).abs() < 1e-12 && m.ic > 0.9, "{m:?}");
}
