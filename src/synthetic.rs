//! The synthetic quote stream that the load generator (`quantd-load` without tick files) and the
//! soak test send: deterministic, over any number of symbols (`SYN00000`, `SYN00001`, ...), each
//! symbol's quotes in time order with a price that drifts by a tick per round. Runs on the
//! caller's thread; nothing in the server uses it.

use crate::proto::{Tick, TickKind};

/// Exchange time of quote 0 (ns since the epoch, November 2023); quote `i` is `i` µs later.
pub const EPOCH_NS: i64 = 1_700_000_000_000_000_000;

/// The name of synthetic symbol `s`.
pub fn symbol(s: usize) -> String {
    format!("SYN{s:05}")
}

/// Quote `i` of a stream that cycles through `symbols` symbols from `first` on: symbol
/// `first + i % symbols`, in round `i / symbols`. Its price is the symbol's level (100 to 116)
/// plus a cent per round, for 40 rounds, then again; sizes cycle too.
pub fn quote(first: usize, symbols: usize, i: usize) -> Tick {
    let symbols = symbols.max(1);
    let s = first + i % symbols;
    let px = 100.0 + (s % 17) as f64 + ((i / symbols) % 40) as f64 * 0.01;
    Tick {
        symbol: symbol(s),
        exchange_ts_ns: EPOCH_NS + i as i64 * 1_000,
        kind: TickKind::Quote as i32,
        bid_px: px,
        bid_qty: 1.0 + (i % 5) as f64,
        ask_px: px + 0.01,
        ask_qty: 1.0 + (i % 3) as f64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_cycle_through_the_symbols_in_time_order_and_pass_the_edge_checks() {
        let q: Vec<Tick> = (0..30).map(|i| quote(5, 10, i)).collect();
        assert_eq!(q[0].symbol, "SYN00005");
        assert_eq!(q[9].symbol, "SYN00014");
        assert_eq!(q[10].symbol, "SYN00005");
        assert!(q.windows(2).all(|w| w[0].exchange_ts_ns < w[1].exchange_ts_ns));
        assert!((q[10].bid_px - q[0].bid_px - 0.01).abs() < 1e-9, "a cent per round");
        assert!(q.iter().all(|t| crate::tick::Tick::from_proto(t).is_ok()));
    }
}
