//! What the engine thread does when its queue is empty.
//!
//! On a machine with cores to spare, busy-spinning gives the lowest latency. On a small shared
//! machine a spinning thread steals the core the network threads need, and a parked thread costs
//! tens of microseconds to wake, so the default spins briefly, then yields the core while staying
//! runnable, and parks only after a longer quiet spell.

use std::time::{Duration, Instant};

use crossbeam_utils::sync::Parker;
use serde::{Deserialize, Serialize};

/// What the engine thread does while its queue is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleStrategy {
    /// Never sleep; burn the core.
    BusySpin,
    /// Spin for `spin_us`, then `sched_yield` in a loop.
    SpinYield,
    /// Spin for `spin_us`, yield until `yield_us`, then park (woken by the next submit).
    SpinPark,
}

/// Runs the idle strategy: spin, then yield, then park, reset by work.
pub struct Idler {
    strategy: IdleStrategy,
    spin: Duration,
    yield_for: Duration,
    idle_since: Option<Instant>,
}

impl Idler {
    /// An idler with the given strategy and spin and yield budgets.
    pub fn new(strategy: IdleStrategy, spin: Duration, yield_for: Duration) -> Self {
        Self { strategy, spin, yield_for, idle_since: None }
    }

    /// Work arrived.
    #[inline]
    pub fn reset(&mut self) {
        self.idle_since = None;
    }

    /// One idle step. `park` is called (with the parker) when the strategy decides to sleep;
    /// it must re-check for work after announcing it sleeps.
    #[inline]
    pub fn idle(&mut self, parker: &Parker, park: impl FnOnce(&Parker)) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        match self.strategy {
            IdleStrategy::BusySpin => std::hint::spin_loop(),
            IdleStrategy::SpinYield => {
                if since.elapsed() < self.spin {
                    std::hint::spin_loop()
                } else {
                    std::thread::yield_now()
                }
            }
            IdleStrategy::SpinPark => {
                let e = since.elapsed();
                if e < self.spin {
                    std::hint::spin_loop()
                } else if e < self.spin + self.yield_for {
                    std::thread::yield_now()
                } else {
                    park(parker)
                }
            }
        }
    }
}
