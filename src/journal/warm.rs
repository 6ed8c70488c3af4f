//! Warm start from the journal: each symbol's newest ticks, read back at start-up so the engine
//! can rebuild its feature state before the server accepts a tick (`engine.warm_start =
//! "journal"`). Runs on the main thread during start-up, before the journal thread writes this
//! run's files.
//!
//! The ticks taken are journaled again at the head of the new run under [`WARM_STREAM`], so
//! the journal of every run holds everything its engine state came from: `quantd audit` rebuilds
//! the same state from them, and a later warm start skips them (they are copies).

use std::collections::HashMap;
use std::path::Path;

use super::TickRecord;
use super::read::{self, JournalReadError};
use crate::tick::{Symbol, Tick};

/// The journal stream id of the ticks a warm start rebuilt from (no client stream has it).
pub const WARM_STREAM: u64 = u64::MAX;

/// The last `max_ticks` ticks of each symbol received at or after `since_ns` (CLOCK_REALTIME
/// ns), over every earlier run in `dir`, in the order they were received. Reads the newest files
/// first and stops at the first file with nothing that recent.
pub fn tail(dir: &Path, since_ns: u64, max_ticks: usize) -> Result<Vec<TickRecord>, JournalReadError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut counts: HashMap<Symbol, usize> = HashMap::new();
    let mut newest_first: Vec<Vec<TickRecord>> = Vec::new();
    for path in read::files(dir, "ticks")?.iter().rev() {
        let records = read::ticks(std::slice::from_ref(path))?.records;
        let mut taken = Vec::new();
        let mut recent = false;
        for r in records.iter().rev().filter(|r| r.stream != WARM_STREAM && r.recv_ns >= since_ns) {
            recent = true;
            let n = counts.entry(r.symbol).or_insert(0);
            if *n < max_ticks {
                *n += 1;
                taken.push(*r);
            }
        }
        if !recent {
            break;
        }
        taken.reverse();
        newest_first.push(taken);
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// The ticks a rebuild feeds the engine, with their server receive times, in order: the
/// server's start-up and `quantd audit` both rebuild from exactly these (a tick the edge refused
/// as malformed never reached the engine, and is left out).
pub fn rebuild_ticks<'a>(records: impl IntoIterator<Item = &'a TickRecord>) -> Vec<(Tick, u64)> {
    records.into_iter().filter_map(|r| r.tick().ok().map(|t| (t, r.recv_ns))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::writer::Files;
    use crate::journal::{JournalConfig, Record};

    fn tick(symbol: &str, arrival: u64, recv_ns: u64, stream: u64) -> TickRecord {
        TickRecord {
            arrival,
            stream,
            index: arrival,
            recv_ns,
            symbol: Symbol::new(symbol).unwrap(),
            seq: arrival + 1,
            exchange_ts_ns: recv_ns as i64,
            kind: 0,
            aggressor: 0,
            bid_px: 100.0,
            bid_qty: 1.0,
            ask_px: 100.5,
            ask_qty: 1.0,
            trade_px: 0.0,
            trade_qty: 0.0,
            conflate: false,
        }
    }

    #[test]
    fn the_newest_ticks_per_symbol_within_the_age_in_arrival_order_without_earlier_warm_copies() {
        let d = tempfile::tempdir().unwrap();
        let config = JournalConfig { enabled: true, dir: d.path().to_owned(), ..JournalConfig::default() };
        // Two runs: the second begins with a warm start's copies, then live ticks.
        for run in 0..2u64 {
            let mut f = Files::new(&config);
            if run == 1 {
                f.push(Record::Tick(tick("A", 0, 50, WARM_STREAM)));
            }
            for i in 0..10u64 {
                let t = run * 100 + i * 10;
                f.push(Record::Tick(tick(if i % 2 == 0 { "A" } else { "B" }, i + 1, t, 0)));
            }
            f.write_pending();
            f.close();
            std::thread::sleep(std::time::Duration::from_millis(2)); // a later start time in the name
        }
        let got: Vec<(String, u64)> =
            tail(d.path(), 30, 3).unwrap().iter().map(|r| (r.symbol.to_string(), r.recv_ns)).collect();
        let expect: Vec<(String, u64)> = [("A", 140), ("B", 150), ("A", 160), ("B", 170), ("A", 180), ("B", 190)]
            .iter()
            .map(|(s, t)| (s.to_string(), *t))
            .collect();
        assert_eq!(got, expect);
        // Old enough to need the first run: its ticks come first, in their order.
        let got = tail(d.path(), 0, 8).unwrap();
        assert_eq!(got.len(), 16);
        assert!(got.windows(2).all(|w| w[0].recv_ns < w[1].recv_ns), "received order");
        assert!(got.iter().all(|r| r.stream != WARM_STREAM));
        assert!(tail(&d.path().join("none"), 0, 8).unwrap().is_empty(), "no journal yet: a cold start");
    }
}
