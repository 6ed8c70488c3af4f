//! Feature values checked against numbers computed by hand (see the formulas in each test).
use super::*;
use crate::tick::{Aggressor, Tick};

fn close(a: f32, b: f64, what: &str) {
    let tol = 1e-4 * b.abs().max(1.0);
    assert!((a as f64 - b).abs() <= tol, "{what}: got {a}, want {b}");
}

const SEC: i64 = 1_000_000_000;

#[test]
fn quote_only_feed_matches_hand_computed_values() {
    let mut s = SymbolFeatures::new();
    let mut f = [0f32; NUM_FEATURES];
    // bid 100 x 3, ask 100.2 x 1: mid 100.1
    s.update(&Tick::quote("X", 1, 0, 100.0, 3.0, 100.2, 1.0).unwrap(), &mut f);
    close(f[0], 0.0, "ret");
    close(f[6], 0.2 / 100.1 * 1e4, "spread"); // 19.98002
    close(f[7], 0.5, "imbalance"); // (3-1)/(3+1)
    close(f[8], (100.15 - 100.1) / 100.1 * 1e4, "microprice"); // micro = (100*1+100.2*3)/4
    close(f[9], 0.0, "flow");
    close(f[10], 0.0, "intensity");
    close(f[11], 15.096444681204078, "dt_tick (cap on first tick) = ln(1+3.6e6)");
    close(f[12], 15.096444681204078, "dt_trade (no trade yet) = cap");
    close(f[13], 0.0, "z");

    // one second later: bid 100.2 x 1, ask 100.4 x 1: mid 100.3
    s.update(&Tick::quote("X", 2, SEC, 100.2, 1.0, 100.4, 1.0).unwrap(), &mut f);
    let r = 19.960086467148784; // ln(100.3/100.1) * 1e4
    close(f[0], r, "ret");
    close(f[1], r, "ret_decay_100ms (previous sum was 0)");
    close(f[2], r, "ret_decay_1s");
    close(f[3], r, "ret_decay_10s");
    close(f[4], r, "vol_1s = sqrt(r^2)");
    close(f[5], r, "vol_30s");
    close(f[6], 0.2 / 100.3 * 1e4, "spread");
    close(f[7], 0.0, "imbalance");
    close(f[8], 0.0, "microprice");
    close(f[11], 6.90875477931522, "ln(1 + 1000 ms)");
    close(f[12], 15.096444681204078, "still no trade");
    // alpha = 1 - e^(-1/30); dev = (100.3-100.1)/100.1 bps; mean' = 100.1 + alpha*0.2;
    // var' = (1-alpha) * alpha * dev^2; z = (100.3-mean')/mean' bps / sqrt(var')
    close(f[13], 5.4312901880355176, "z");
    assert_eq!(s.ticks(), 2);

    // a third quote in the same nanosecond: no decay, sums simply add
    s.update(&Tick::quote("X", 3, SEC, 100.1, 1.0, 100.3, 1.0).unwrap(), &mut f);
    let r3 = (100.2f64 / 100.3).ln() * 1e4;
    close(f[0], r3, "ret");
    close(f[2], r + r3, "ret_decay_1s with dt = 0");
    close(f[4], (r * r + r3 * r3).sqrt(), "vol_1s with dt = 0");
    close(f[11], 0.0, "ln(1 + 0 ms)");
}

#[test]
fn trade_only_feed_uses_trade_price_as_mid() {
    let mut s = SymbolFeatures::new();
    let mut f = [0f32; NUM_FEATURES];
    s.update(&Tick::trade("X", 1, 0, 100.0, 2.0, Aggressor::Buy).unwrap(), &mut f);
    close(f[9], 1.0, "flow: all buying");
    close(f[10], 2f64.ln(), "intensity ln(1 + 1)");
    close(f[12], 15.096444681204078, "no previous trade: cap");
    s.update(&Tick::trade("X", 2, SEC, 101.0, 1.0, Aggressor::Sell).unwrap(), &mut f);
    close(f[0], 99.50330853168091, "ret ln(1.01) bps");
    close(f[6], 0.0, "no book: spread 0");
    close(f[7], 0.0, "no book: imbalance 0");
    close(f[8], 0.0, "no book: microprice 0");
    // signed = 2e^-1 - 1, total = 2e^-1 + 1
    close(f[9], -0.1522337695316582, "flow");
    // count = e^-1 + 1, intensity = ln(1 + count)
    close(f[10], 0.8619948040582511, "intensity");
    close(f[11], 6.90875477931522, "ln(1 + 1000 ms)");
    close(f[12], 6.90875477931522, "ln(1 + 1000 ms) since the previous trade");
}

#[test]
fn trades_do_not_move_the_mid_once_a_book_exists() {
    let mut s = SymbolFeatures::new();
    let mut f = [0f32; NUM_FEATURES];
    s.update(&Tick::quote("X", 1, 0, 100.0, 1.0, 100.2, 1.0).unwrap(), &mut f);
    s.update(&Tick::trade("X", 2, SEC / 2, 100.2, 5.0, Aggressor::Buy).unwrap(), &mut f);
    close(f[0], 0.0, "trade leaves mid alone");
    assert_eq!(s.mid(), 100.1);
    close(f[9], 1.0, "flow");
    close(f[12], 15.096444681204078, "dt_trade: no trade before this one");
    close(f[11], (501f64).ln(), "dt_tick 500 ms");
}

#[test]
fn schema_hash_is_stable_and_lists_every_feature() {
    let text = schema_text();
    assert_eq!(text.lines().count(), NUM_FEATURES + 1);
    assert_eq!(schema_hash(), schema_hash());
    assert_eq!(schema_hash().len(), 64);
    let mut n: Vec<_> = names().collect();
    n.dedup();
    assert_eq!(n.len(), NUM_FEATURES);
}

#[test]
fn the_schema_hash_follows_the_constants_and_matches_the_committed_models() {
    // The parameters are the arithmetic's own constants: a changed horizon is a changed hash.
    let mut changed = SCHEMA;
    changed[1].params = &[("tau_s", 0.2)];
    assert_ne!(super::hash_of(&changed), schema_hash());
    assert_eq!(SCHEMA[1].params, [("tau_s", super::TAU_100MS)]);
    assert_eq!(SCHEMA[13].params_text(), "tau_s=30,clamp=10");
    // The derived text is the one every committed model was trained on.
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/quantd-mlp/2/manifest.toml"));
    let hash = manifest
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("schema_hash = ").map(|h| h.trim_matches('"').to_owned()));
    assert_eq!(hash.as_deref(), Some(schema_hash().as_str()));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of valid ticks gives finite features in their documented ranges.
        #[test]
        fn features_stay_finite_and_bounded(
            steps in prop::collection::vec(
                (0i64..5_000_000_000, 1.0f64..1e6, 0.0001f64..0.05, 1e-6f64..1e4, 1e-6f64..1e4, any::<bool>(), 0u8..3),
                1..200)
        ) {
            let mut s = SymbolFeatures::new();
            let mut f = [0f32; NUM_FEATURES];
            let mut ts = 0i64;
            for (dt, px, spread, q1, q2, is_trade, side) in steps {
                ts += dt;
                let t = if is_trade {
                    let a = [Aggressor::Unknown, Aggressor::Buy, Aggressor::Sell][side as usize];
                    Tick::trade("P", 0, ts, px, q1, a).unwrap()
                } else {
                    Tick::quote("P", 0, ts, px, q1, px * (1.0 + spread), q2).unwrap()
                };
                s.update(&t, &mut f);
                prop_assert!(f.iter().all(|v| v.is_finite()), "{:?}", f);
                prop_assert!((-1.0..=1.0).contains(&f[7]));
                prop_assert!((-1.0..=1.0).contains(&f[9]));
                prop_assert!((-10.0..=10.0).contains(&f[13]));
                prop_assert!(f[6] >= 0.0 && f[4] >= 0.0 && f[5] >= 0.0);
            }
        }
    }
}
