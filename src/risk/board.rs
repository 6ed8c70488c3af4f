//! The risk board: per-symbol cells shared without locks between the engine (which writes each
//! symbol's latest mid and reads its VaR scale) and the VaR estimator (which samples the mids and
//! publishes scale and VaR). Slots are the engine's symbol-table slots; the engine announces a
//! new slot's symbol through a bounded queue, and retires the slot when it evicts the symbol.
//! Each cell carries a generation, bumped by both, so the estimator drops what it tracked for a
//! slot whose symbol changed or left even when it missed the queue. Plain relaxed atomics: each
//! value is independent, and a scale one interval old is as good as the newest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::tick::Symbol;

struct Cell {
    mid: AtomicU64,
    scale: AtomicU64,
    var: AtomicU64,
    /// Bumped when the slot gets a symbol and when it loses it.
    generation: AtomicU64,
}

/// The lock-free board between the engine and the VaR thread: per symbol slot, the mid (engine to estimator) and the VaR and scale (estimator to engine), plus the all-symbols kill switch.
pub struct RiskBoard {
    cells: Box<[Cell]>,
    announced: ArrayQueue<Announced>,
    global_kill: AtomicBool,
}

/// A slot that got a symbol, at the cell's generation then.
#[derive(Clone, Copy, Debug)]
pub struct Announced {
    pub slot: usize,
    pub symbol: Symbol,
    pub generation: u64,
}

fn bits(v: f64) -> AtomicU64 {
    AtomicU64::new(v.to_bits())
}

impl RiskBoard {
    /// A board for `slots` symbols (the engine's `max_symbols`).
    pub fn new(slots: usize) -> Self {
        let cells = (0..slots.max(1)).map(|_| Cell {
            mid: bits(f64::NAN),
            scale: bits(1.0),
            var: bits(f64::NAN),
            generation: AtomicU64::new(0),
        });
        Self { cells: cells.collect(), announced: ArrayQueue::new(slots.max(1)), global_kill: AtomicBool::new(false) }
    }

    /// Symbol slots on the board.
    pub fn slots(&self) -> usize {
        self.cells.len()
    }

    /// Clears a cell's figures and starts its next generation.
    fn renew(&self, slot: usize) -> Option<u64> {
        let c = self.cells.get(slot)?;
        c.mid.store(f64::NAN.to_bits(), Ordering::Relaxed);
        c.scale.store(1.0f64.to_bits(), Ordering::Relaxed);
        c.var.store(f64::NAN.to_bits(), Ordering::Relaxed);
        Some(c.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Engine side: `slot` now holds `symbol` (its mid, scale and VaR start afresh).
    pub fn announce(&self, slot: usize, symbol: Symbol) {
        if let Some(generation) = self.renew(slot) {
            // Full only if the estimator has stopped reading (or a flood of new symbols came
            // within one sample); the symbol is then simply not sized.
            let _ = self.announced.push(Announced { slot, symbol, generation });
        }
    }

    /// Engine side: `slot`'s symbol was evicted; the estimator forgets it at its next sample
    /// (it is no longer sized, listed by `GetRisk` or exported).
    pub fn retire(&self, slot: usize) {
        self.renew(slot);
    }

    /// The slot's generation now (see [`Announced`]).
    pub fn generation(&self, slot: usize) -> u64 {
        self.cells.get(slot).map_or(0, |c| c.generation.load(Ordering::Acquire))
    }

    /// Estimator side: the next newly announced slot.
    pub fn take_announced(&self) -> Option<Announced> {
        self.announced.pop()
    }

    /// Engine side: the symbol's latest mid.
    #[inline]
    pub fn set_mid(&self, slot: usize, mid: f64) {
        if let Some(c) = self.cells.get(slot) {
            c.mid.store(mid.to_bits(), Ordering::Relaxed);
        }
    }

    /// Estimator side: the symbol's latest mid (NaN before its first).
    pub fn mid(&self, slot: usize) -> f64 {
        self.cells.get(slot).map_or(f64::NAN, |c| f64::from_bits(c.mid.load(Ordering::Relaxed)))
    }

    /// The VaR scale factor the engine applies to the symbol's target (1: no cut).
    #[inline]
    pub fn scale(&self, slot: usize) -> f64 {
        self.cells.get(slot).map_or(1.0, |c| f64::from_bits(c.scale.load(Ordering::Relaxed)))
    }

    /// Estimator side: publishes a symbol's VaR per unit position and its scale factor.
    pub fn publish(&self, slot: usize, var_per_unit: f64, scale: f64) {
        if let Some(c) = self.cells.get(slot) {
            c.var.store(var_per_unit.to_bits(), Ordering::Relaxed);
            c.scale.store(scale.to_bits(), Ordering::Relaxed);
        }
    }

    /// The symbol's latest VaR per unit position (NaN before an estimate).
    pub fn var(&self, slot: usize) -> f64 {
        self.cells.get(slot).map_or(f64::NAN, |c| f64::from_bits(c.var.load(Ordering::Relaxed)))
    }

    /// Engages or releases the kill switch for every symbol.
    pub fn set_global_kill(&self, engaged: bool) {
        self.global_kill.store(engaged, Ordering::Relaxed);
    }

    /// Whether the kill switch for every symbol is engaged.
    pub fn global_kill(&self) -> bool {
        self.global_kill.load(Ordering::Relaxed)
    }
}
