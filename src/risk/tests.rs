use std::sync::Arc;

use super::*;

const MS: i64 = 1_000_000;

fn gate(config: RiskConfig) -> RiskGate {
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    RiskGate::new(config, Arc::new(RiskBoard::new(8)))
}

fn tick(slot: usize, ts_ms: i64, mid: f64) -> RiskInput<'static> {
    RiskInput {
        slot,
        exchange_ts_ns: ts_ms * MS,
        prev_ts_ns: i64::MIN,
        mid,
        recv_ns: 0,
        features: None,
        ranges: None,
        model_failed: false,
        external: None,
    }
}

fn codes(f: RiskFlags) -> Vec<&'static str> {
    f.codes().collect()
}

#[test]
fn nothing_binds_under_default_limits() {
    let mut g = gate(RiskConfig::default());
    let mut s = SymbolRisk::default();
    for (i, target) in [0.3, -1.0, 0.0, 0.7].into_iter().enumerate() {
        let (pos, flags) = g.apply(&mut s, &tick(0, i as i64, 100.0), target);
        assert_eq!((pos, flags), (target, RiskFlags::default()));
    }
}

#[test]
fn position_limit_clamps_both_sides() {
    let mut g = gate(RiskConfig { max_position: 0.5, ..RiskConfig::default() });
    let mut s = SymbolRisk::default();
    assert_eq!(g.apply(&mut s, &tick(0, 1, 100.0), 0.8), (0.5, RiskFlags::POSITION_LIMIT));
    assert_eq!(g.apply(&mut s, &tick(0, 2, 100.0), -0.9).0, -0.5);
    assert_eq!(g.apply(&mut s, &tick(0, 3, 100.0), 0.2), (0.2, RiskFlags::default()));
}

#[test]
fn gross_notional_is_shared_across_symbols() {
    // unit 2 × mid 100 = 200 notional per unit position; limit 300.
    let mut g = gate(RiskConfig { unit_qty: 2.0, max_gross_notional: 300.0, ..RiskConfig::default() });
    let (mut a, mut b) = (SymbolRisk::default(), SymbolRisk::default());
    assert_eq!(g.apply(&mut a, &tick(0, 1, 100.0), 1.0).0, 1.0, "200 of 300 used");
    let (pos, flags) = g.apply(&mut b, &tick(1, 2, 100.0), -1.0);
    assert_eq!((pos, codes(flags)), (-0.5, vec!["gross_notional"]), "only 100 left");
    assert!((g.gross() - 300.0).abs() < 1e-9);
    // A flattens: room for B's full size on its next tick.
    g.apply(&mut a, &tick(0, 3, 100.0), 0.0);
    assert_eq!(g.apply(&mut b, &tick(1, 4, 100.0), -1.0), (-1.0, RiskFlags::default()));
}

#[test]
fn change_rate_holds_the_position_but_never_blocks_a_reduction() {
    let mut g = gate(RiskConfig { max_changes: 2, change_window_ms: 1_000, ..RiskConfig::default() });
    let mut s = SymbolRisk::default();
    assert_eq!(g.apply(&mut s, &tick(0, 0, 100.0), 0.5).0, 0.5);
    assert_eq!(g.apply(&mut s, &tick(0, 100, 100.0), 0.8).0, 0.8);
    let (pos, flags) = g.apply(&mut s, &tick(0, 200, 100.0), 1.0);
    assert_eq!((pos, codes(flags)), (0.8, vec!["change_rate"]), "third increase within 1 s is held");
    assert_eq!(g.apply(&mut s, &tick(0, 300, 100.0), 0.1).0, 0.1, "a reduction passes");
    let (pos, flags) = g.apply(&mut s, &tick(0, 400, 100.0), -0.5);
    assert_eq!((pos, codes(flags)), (0.1, vec!["change_rate"]), "a flip is not a reduction");
    assert_eq!(g.apply(&mut s, &tick(0, 1_500, 100.0), -0.5).0, -0.5, "the window has moved on");
}

#[test]
fn kill_switch_triggers_flatten_with_a_reason() {
    let mut g = gate(RiskConfig {
        stale_after_ms: 500,
        max_feed_delay_ms: 50,
        feature_range_slack: 1.0,
        ..RiskConfig::default()
    });
    let ranges = g.widen(Some(&[(0.0, 1.0), (-1.0, 1.0)]));
    assert!(gate(RiskConfig::default()).widen(Some(&[(0.0, 1.0)])).is_none(), "a negative slack checks no range");
    let mut s = SymbolRisk::default();
    assert_eq!(g.apply(&mut s, &tick(0, 0, 100.0), 0.5).0, 0.5);
    // Stale: 600 ms since the symbol's previous tick.
    let (pos, flags) = g.apply(&mut s, &RiskInput { prev_ts_ns: 0, ..tick(0, 600, 100.0) }, 0.5);
    assert_eq!((pos, codes(flags)), (0.0, vec!["kill_stale"]));
    assert!(flags.kill_detail().unwrap().contains("stale"));
    assert_eq!(g.apply(&mut s, &RiskInput { prev_ts_ns: 600 * MS, ..tick(0, 700, 100.0) }, 0.5).0, 0.5, "fresh again");
    // Feed delay (live only: the server clock is 60 ms past the exchange time).
    let late = RiskInput { recv_ns: (760 * MS) as u64, ..tick(0, 700, 100.0) };
    assert_eq!(codes(g.apply(&mut s, &late, 0.5).1), vec!["kill_feed_delay"]);
    // Features: range [0, 1] widened by 1.0 × range → [-1, 2]; NaN always kills.
    for (row, killed) in [([1.9f32, 0.0], false), ([2.1, 0.0], true), ([0.5, f32::NAN], true)] {
        let t = RiskInput { features: Some(&row), ranges: ranges.as_deref(), ..tick(0, 800, 100.0) };
        assert_eq!(g.apply(&mut s, &t, 0.5).1.contains(RiskFlags::KILL_FEATURES), killed, "{row:?}");
    }
    // Model failure.
    let failed = RiskInput { model_failed: true, ..tick(0, 900, 100.0) };
    assert_eq!(g.apply(&mut s, &failed, 0.5), (0.0, RiskFlags::KILL_MODEL));
    // Admin: one symbol, then all.
    s.admin_killed = true;
    assert_eq!(codes(g.apply(&mut s, &tick(0, 1_000, 100.0), 0.5).1), vec!["kill_admin"]);
    g.set_global_kill(true);
    let mut other = SymbolRisk::default();
    assert_eq!(g.apply(&mut other, &tick(1, 1_000, 100.0), 0.5).0, 0.0);
    assert!(g.board().global_kill());
    g.set_global_kill(false);
    assert_eq!(g.apply(&mut other, &tick(1, 1_001, 100.0), 0.5).0, 0.5);
}

#[test]
fn the_var_scale_from_the_board_cuts_the_target() {
    let mut g = gate(RiskConfig::default());
    let mut s = SymbolRisk::default();
    g.board().publish(0, 4.0, 0.25);
    let (pos, flags) = g.apply(&mut s, &tick(0, 1, 100.0), -0.8);
    assert!((pos + 0.2).abs() < 1e-12 && codes(flags) == ["var_scale"], "{pos} {flags:?}");
    assert_eq!(g.apply(&mut s, &tick(0, 2, 100.0), 0.0), (0.0, RiskFlags::default()), "flat needs no cut");
    assert_eq!(g.board().mid(0), 100.0, "the gate keeps the board's mid current");
}

#[test]
fn recorded_external_inputs_replace_the_board_and_the_symbol_state() {
    let mut g = gate(RiskConfig::default());
    let mut s = SymbolRisk::default();
    g.board().publish(0, 4.0, 0.25);
    let recorded =
        |var_scale, admin_kill| RiskInput { external: Some(External { var_scale, admin_kill }), ..tick(0, 1, 100.0) };
    assert_eq!(
        g.apply(&mut s, &recorded(0.5, false), 0.8),
        (0.4, RiskFlags::VAR_SCALE),
        "the recorded scale, not the board's"
    );
    assert_eq!(g.apply(&mut s, &recorded(1.0, true), 0.8), (0.0, RiskFlags::KILL_ADMIN));
    assert_eq!(g.external(&s, 0), External { var_scale: 0.25, admin_kill: false });
}

#[test]
fn contradictory_settings_are_all_listed() {
    let bad = RiskConfig {
        unit_qty: 0.0,
        max_position: 1.5,
        max_changes: 3,
        change_window_ms: 0,
        var: VarConfig { confidence: 2.0, ..VarConfig::default() },
        ..RiskConfig::default()
    };
    use crate::problem::Kind::*;
    let p = bad.problems();
    for (field, kind) in [
        ("risk.unit_qty", OutOfRange),
        ("risk.max_position", OutOfRange),
        ("risk.change_window_ms", Conflict),
        ("risk.var.confidence", OutOfRange),
    ] {
        assert!(p.has(field, kind), "{field} {kind} missing from {p:?}");
    }
}
