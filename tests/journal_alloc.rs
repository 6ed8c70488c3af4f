//! The journal costs the I/O threads no heap allocation per tick: recording a tick as received
//! (`Journal::record_tick`) and its signal as sent (`SignalRecord::new`, `Journal::signal`) with
//! a real journal thread running, after warm-up. A counting global allocator counts per thread,
//! so the journal thread's own work (Arrow batches, file writes) is not charged to the caller;
//! what is counted is exactly the hand-off an I/O thread does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use quantd::engine::Reply;
use quantd::journal::{JournalConfig, JournalThread, SignalRecord};
use quantd::telemetry::Telemetry;
use quantd::tick::Symbol;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct PerThread;

// SAFETY: forwards to the system allocator; the counter is a plain thread-local Cell (no
// destructor, no allocation of its own).
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PerThread = PerThread;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_io_threads_journal_hand_off_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig { enabled: true, dir: dir.path().to_owned(), flush_ms: 5, ..JournalConfig::default() };
    let telemetry = Telemetry::new();
    let journal = JournalThread::start(&config, telemetry.clone()).unwrap();
    let j = journal.handle();
    let tick = quantd::proto::Tick {
        symbol: "BTCUSDT".into(),
        seq: 1,
        exchange_ts_ns: 1_723_161_256_313_000_000,
        kind: quantd::proto::TickKind::Quote as i32,
        bid_px: 61_800.2,
        bid_qty: 2.5,
        ask_px: 61_800.3,
        ask_qty: 2.51,
        ..Default::default()
    };
    let now = Instant::now();
    let reply = Reply {
        model: Some(Arc::from("quantd-mlp@2")),
        score: 0.25,
        batch: 7,
        features: Some([0.5; quantd::features::NUM_FEATURES]),
        ..Reply::blank(Symbol::new("BTCUSDT").unwrap(), 1, tick.exchange_ts_ns, now, 1, now)
    };
    let stream = j.open_stream();
    let hand_off = |range: std::ops::Range<u64>| {
        for i in range {
            assert!(j.record_tick(&tick, stream, i, 1_000 + i, false));
            j.signal(SignalRecord::new(&reply, None, stream, i, 2_000 + i));
            if i % 1_000 == 999 {
                std::thread::sleep(std::time::Duration::from_millis(2)); // let the journal keep up
            }
        }
    };
    hand_off(0..1_000);
    let before = allocations();
    hand_off(1_000..21_000);
    let made = allocations() - before;
    assert_eq!(made, 0, "heap allocations on the I/O thread for 20,000 ticks and signals journaled");
    journal.shutdown();
    let written: u64 = std::fs::read_dir(dir.path()).unwrap().count() as u64;
    assert!(written >= 2, "the journal thread wrote its files");
}
