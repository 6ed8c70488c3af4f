//! The `[engine]` config section, owned here: its serde shape, its defaults, its own checks, and
//! the [`EngineConfig`] the engine thread is started with. Read on the control path at start-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EngineConfig, IdleStrategy};
use crate::clock::millis;
use crate::plausibility::TickChecks;
use crate::problem::{Kind, Problems};
use crate::risk::RiskConfig;

/// `[engine]`: the queue, the batch, the symbol table, the thread's core and idle strategy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Engine queue capacity, ticks. A full queue answers `queue_full`.
    pub queue_capacity: usize,
    /// Most ticks scored in one model call.
    pub max_batch: usize,
    /// Distinct symbols the server tracks; more are rejected `too_many_symbols`.
    pub max_symbols: usize,
    /// Feature rows kept per symbol for windowed models (`features.window` in a manifest may not
    /// exceed it). Reserved up front: max_symbols x max_window x 14 floats, touched as used.
    pub max_window: usize,
    /// Core to pin the engine thread to (none: not pinned).
    pub core: Option<usize>,
    /// Pin the engine thread to the last core this process may run on (its cpuset: the
    /// exclusive cores a Kubernetes static CPU manager gives a Guaranteed pod, whatever their ids).
    pub pin_last_core: bool,
    /// What the thread does while its queue is empty.
    pub idle: IdleStrategy,
    /// How long an idle engine spins before it yields, µs.
    pub idle_spin_us: u64,
    /// How long it then yields before it parks, µs.
    pub idle_yield_us: u64,
    /// Health goes NOT_SERVING while ticks wait and the engine has not completed a pass for
    /// this long, ms (the stuck-engine watchdog; 0: off).
    pub watchdog_ms: u64,
    /// Evict a symbol not seen for this long (server receive time, ms; 0: never), so symbols
    /// that stopped ticking, or junk, free their slots for new ones. Symbols held by the admin
    /// kill switch stay. An evicted symbol warms up again when it returns.
    pub symbol_idle_ms: u64,
    /// `journal`: at start-up, rebuild each symbol's feature state from the tail of the journal
    /// (its last `warm_start_max_ticks` ticks received within `warm_start_max_age_ms`), so a
    /// restart does not send every symbol back to warm-up; `off`: start cold.
    pub warm_start: WarmStart,
    /// The oldest journaled tick a warm start reads, ms before now.
    pub warm_start_max_age_ms: u64,
    /// Most journaled ticks a warm start replays per symbol.
    pub warm_start_max_ticks: usize,
}

/// Where the engine's per-symbol state comes from at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmStart {
    /// Every symbol starts cold and warms up on its live ticks.
    #[default]
    Off,
    /// From the journal's newest ticks (`journal.dir`).
    Journal,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 64,
            max_symbols: 10_000,
            max_window: 32,
            core: None,
            pin_last_core: false,
            idle: IdleStrategy::SpinPark,
            idle_spin_us: 50,
            idle_yield_us: 2_000,
            watchdog_ms: 1_000,
            symbol_idle_ms: 900_000,
            warm_start: WarmStart::Off,
            warm_start_max_age_ms: 900_000,
            warm_start_max_ticks: 128,
        }
    }
}

impl EngineSection {
    /// The section's own problems (fields named `engine.*`).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let mut p = Problems::new();
        p.check(self.queue_capacity == 0, "engine.queue_capacity", OutOfRange, || {
            "engine.queue_capacity must be > 0".into()
        });
        p.check(self.max_batch == 0 || self.max_batch > 1024, "engine.max_batch", OutOfRange, || {
            format!("engine.max_batch {} must be in 1..=1024", self.max_batch)
        });
        p.check(self.core.is_some() && self.pin_last_core, "engine.pin_last_core", Conflict, || {
            "engine.core and engine.pin_last_core are both set; choose one".into()
        });
        let max_window = crate::model::manifest::MAX_WINDOW;
        p.check(!(1..=max_window).contains(&self.max_window), "engine.max_window", OutOfRange, || {
            format!("engine.max_window {} must be in 1..={max_window}", self.max_window)
        });
        p.check(self.max_symbols == 0, "engine.max_symbols", OutOfRange, || "engine.max_symbols must be > 0".into());
        p.check(
            self.warm_start == WarmStart::Journal && self.warm_start_max_ticks == 0,
            "engine.warm_start_max_ticks",
            OutOfRange,
            || "engine.warm_start_max_ticks must be > 0".into(),
        );
        p
    }

    /// The stuck-engine watchdog's limit (`None`: off).
    pub fn watchdog(&self) -> Option<Duration> {
        millis(self.watchdog_ms)
    }

    /// What the engine thread is started with: this section, plus the settings of other
    /// sections the engine applies (`stream.ttl_ms`, `[risk]`, `[ticks]`).
    pub fn engine_config(&self, ttl: Option<Duration>, risk: RiskConfig, ticks: TickChecks) -> EngineConfig {
        EngineConfig {
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            max_symbols: self.max_symbols,
            max_window: self.max_window,
            core: if self.pin_last_core {
                core_affinity::get_core_ids().and_then(|ids| ids.last().map(|c| c.id))
            } else {
                self.core
            },
            idle: self.idle,
            idle_spin: Duration::from_micros(self.idle_spin_us),
            idle_yield: Duration::from_micros(self.idle_yield_us),
            ttl,
            risk,
            ticks,
            symbol_idle: millis(self.symbol_idle_ms),
            routes: Vec::new(),
        }
    }
}
