//! Outcome and reject counters: plain relaxed atomics, written where a tick's fate is sealed
//! (the gRPC edge, when its signal is handed to the transport or its stream is gone), read by the
//! exporter. No locks, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::risk::RiskFlags;
use crate::tick::Reject;

/// What happened to a tick. Every tick ends in exactly one outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Outcome {
    /// Scored by the model; the signal carries a position.
    Scored,
    /// Accepted and folded into the features, but the symbol is still warming up (position 0).
    WarmingUp,
    /// Refused; see the reject counters for why.
    Rejected,
    /// Features updated, not scored: a newer tick of its symbol was (back-pressure `conflate`).
    Conflated,
    /// Its stream went away before the signal could be sent.
    Dropped,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: &'static [Outcome] = <Outcome as strum::VariantArray>::VARIANTS;

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

#[derive(Default)]
pub struct Counters {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    rejects: [AtomicU64; Reject::ALL.len()],
    risk: [AtomicU64; RiskFlags::ALL.len()],
}

impl Counters {
    pub fn outcome(&self, o: Outcome, n: u64) {
        self.outcomes[o as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a rejected tick under its reason (and under the `rejected` outcome).
    pub fn reject(&self, r: Reject) {
        self.rejects[r.index()].fetch_add(1, Ordering::Relaxed);
        self.outcome(Outcome::Rejected, 1);
    }

    /// Counts each risk limit (or kill trigger) that bound a signal.
    pub fn risk(&self, flags: RiskFlags) {
        for i in flags.indices() {
            self.risk[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Signals bound by the limit with this index in [`RiskFlags::ALL`].
    pub fn risk_total(&self, index: usize) -> u64 {
        self.risk[index].load(Ordering::Relaxed)
    }

    pub fn outcome_total(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }

    pub fn reject_total(&self, r: Reject) -> u64 {
        self.rejects[r.index()].load(Ordering::Relaxed)
    }
}
