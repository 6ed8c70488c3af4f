//! Per-stage latency histograms without locks or allocation on the recording side.
//!
//! Each writer (the engine thread, each gRPC stream task) owns a [`Recorder`]: a private set of
//! HdrHistograms plus a slot shared with the telemetry thread. To collect, the telemetry thread
//! raises the slot's request flag; the writer, at its next convenient point, swaps its full set
//! for the empty spare waiting in the slot and hands the full one over — two pointer moves through
//! bounded `crossbeam` queues. The telemetry thread merges it, clears it and returns it as the
//! next spare. Writers never wait; an idle writer is simply collected later, or when dropped.
//!
//! (`hdrhistogram`'s own `sync::Recorder` allocates a fresh histogram on every phase shift and
//! makes the reader wait for idle writers, which is why the hand-off is done here.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

/// What a histogram measures. Latencies are in nanoseconds; `BatchSize` in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Series {
    /// Edge decoded the tick → engine took it off the queue.
    QueueWait,
    /// Feature update (and stateful checks) for one tick.
    Features,
    /// One model call, recorded once per batch.
    Inference,
    /// Policy for one tick.
    Policy,
    /// Engine posted the reply → the stream handed the signal to the transport.
    Egress,
    /// Edge decoded the tick → signal handed to the transport (the server's tick→signal time).
    Total,
    /// Ticks per model call.
    BatchSize,
    /// Edge decoded the tick → the engine posted its reply (recorded per model: the
    /// server-internal time of the model's ticks less the egress every model shares).
    Engine,
}

impl Series {
    /// Every series, in declaration order (the histogram set's index).
    pub const ALL: &'static [Series] = <Series as strum::VariantArray>::VARIANTS;

    /// The `stage` label in `quantd_stage_seconds`.
    pub fn stage(self) -> &'static str {
        self.into()
    }
}

/// One histogram per series the writer records (the others stay `None`).
pub struct HistogramSet([Option<Histogram<u64>>; Series::ALL.len()]);

impl HistogramSet {
    /// Histograms for `series` only: 1 ns .. 100 s at 2 significant digits (1% resolution),
    /// about 30 KiB each.
    fn new(series: &[Series]) -> Self {
        Self(std::array::from_fn(|i| {
            series
                .contains(&Series::ALL[i])
                .then(|| Histogram::new_with_bounds(1, 100_000_000_000, 2).expect("static bounds are valid"))
        }))
    }

    /// The merged histogram of a series, if anything records it.
    pub fn get(&self, s: Series) -> Option<&Histogram<u64>> {
        self.0[s as usize].as_ref()
    }

    pub(crate) fn add(&mut self, other: &HistogramSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            if let (Some(a), Some(b)) = (a.as_mut(), b) {
                // Same bounds on both sides, so this cannot fail.
                let _ = a.add(b);
            }
        }
    }

    pub(crate) fn reset(&mut self) {
        self.0.iter_mut().flatten().for_each(Histogram::reset);
    }
}

struct Slot {
    /// The model slot whose values it records (None: the process-wide stages).
    model: Option<Arc<super::ModelTelemetry>>,
    request: AtomicBool,
    closed: AtomicBool,
    full: ArrayQueue<Box<HistogramSet>>,
    spare: ArrayQueue<Box<HistogramSet>>,
}

/// A writer's private histograms. Not `Clone`: one per writer.
pub struct Recorder {
    current: Box<HistogramSet>,
    slot: Arc<Slot>,
}

impl Recorder {
    /// Records a value (clamped into the histogram's range).
    #[inline]
    pub fn record(&mut self, s: Series, value: u64) {
        if let Some(h) = self.current.0[s as usize].as_mut() {
            h.saturating_record(value.max(1));
        }
    }

    /// Hands the recorded values over if the telemetry thread asked. Call at a quiet point
    /// (the engine: after each batch; a stream: after each signal).
    #[inline]
    pub fn publish_if_requested(&mut self) {
        if self.slot.request.load(Ordering::Acquire)
            && let Some(spare) = self.slot.spare.pop()
        {
            let full = std::mem::replace(&mut self.current, spare);
            let _ = self.slot.full.push(full);
            self.slot.request.store(false, Ordering::Release);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let last = std::mem::replace(&mut self.current, Box::new(HistogramSet::new(&[])));
        if let Err(last) = self.slot.full.push(last) {
            // The queue is full (the reader is behind): fold into a queued set instead.
            if let Some(mut queued) = self.slot.full.pop() {
                queued.add(&last);
                let _ = self.slot.full.push(queued);
            }
        }
        self.slot.closed.store(true, Ordering::Release);
    }
}

/// Hands out recorders and collects from them. Registration takes a mutex (control path, once
/// per stream); recording and hand-over never do.
pub struct LatencyHub {
    slots: Mutex<Vec<Arc<Slot>>>,
}

impl Default for LatencyHub {
    fn default() -> Self {
        Self { slots: Mutex::new(Vec::new()) }
    }
}

impl LatencyHub {
    /// A recorder for the given series (values for other series are ignored).
    pub fn recorder(&self, series: &[Series]) -> Recorder {
        self.recorder_for(series, None)
    }

    /// A recorder of one model slot's series: collected per model name, apart from the
    /// process-wide stages.
    pub fn recorder_for(&self, series: &[Series], model: Option<Arc<super::ModelTelemetry>>) -> Recorder {
        let slot = Arc::new(Slot {
            model,
            request: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            full: ArrayQueue::new(2),
            spare: ArrayQueue::new(1),
        });
        let _ = slot.spare.push(Box::new(HistogramSet::new(series)));
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).push(slot.clone());
        Recorder { current: Box::new(HistogramSet::new(series)), slot }
    }

    /// Adds everything handed over since the last call to `into` (a model slot's to its model
    /// name's set in `by_model`), asks every live writer for its next hand-over, and forgets
    /// writers that are gone and drained.
    pub fn collect(&self, into: &mut HistogramSet, by_model: &mut BTreeMap<String, HistogramSet>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|slot| {
            let closed = slot.closed.load(Ordering::Acquire);
            let name = slot.model.as_ref().and_then(|m| m.name());
            while let Some(mut full) = slot.full.pop() {
                match (&slot.model, &name) {
                    (None, _) => into.add(&full),
                    // Looked up before inserted: no allocation once a name has its set.
                    (Some(_), Some(name)) => match by_model.get_mut(name.as_str()) {
                        Some(set) => set.add(&full),
                        None => {
                            let mut set = self.new_set();
                            set.add(&full);
                            by_model.insert(name.to_string(), set);
                        }
                    },
                    (Some(_), None) => {} // a slot not live yet records nothing
                }
                full.reset();
                if !closed {
                    let _ = slot.spare.push(full);
                }
            }
            slot.request.store(true, Ordering::Release);
            !closed
        });
    }

    /// An empty set of every series, to collect into.
    pub fn new_set(&self) -> HistogramSet {
        HistogramSet::new(Series::ALL)
    }
}

#[cfg(test)]
mod tests {
    /// The stage labels are an API (`quantd_stage_seconds{stage}`, dashboards, alerts).
    #[test]
    fn stage_labels_are_pinned() {
        let labels: Vec<_> = super::Series::ALL.iter().map(|s| s.stage()).collect();
        assert_eq!(
            labels,
            ["queue_wait", "features", "inference", "policy", "egress", "total", "batch_size", "engine"]
        );
    }

    use super::*;

    #[test]
    fn hand_over_reaches_the_collector_without_losing_samples() {
        let hub = LatencyHub::default();
        let mut r = hub.recorder(Series::ALL);
        let mut total = hub.new_set();
        r.record(Series::Total, 1000);
        hub.collect(&mut total, &mut BTreeMap::new()); // raises the request
        assert_eq!(total.get(Series::Total).unwrap().len(), 0);
        r.record(Series::Total, 2000);
        r.publish_if_requested();
        r.record(Series::Total, 3000); // after the swap: goes into the next round
        hub.collect(&mut total, &mut BTreeMap::new());
        assert_eq!(total.get(Series::Total).unwrap().len(), 2);
        r.publish_if_requested();
        drop(r);
        hub.collect(&mut total, &mut BTreeMap::new());
        assert_eq!(total.get(Series::Total).unwrap().len(), 3);
        assert!(hub.slots.lock().unwrap().is_empty(), "dropped writer forgotten");
    }

    #[test]
    fn a_model_slot_is_collected_under_its_model_name_apart_from_the_process_wide_stages() {
        let hub = LatencyHub::default();
        let model = Arc::new(crate::telemetry::ModelTelemetry::default());
        let mut r = hub.recorder_for(&[Series::Inference], Some(model.clone()));
        let (mut total, mut by_model) = (hub.new_set(), BTreeMap::new());
        hub.collect(&mut total, &mut by_model);
        model.set_name("quantd-tcn");
        r.record(Series::Inference, 5_000);
        r.publish_if_requested();
        hub.collect(&mut total, &mut by_model);
        assert_eq!(total.get(Series::Inference).unwrap().len(), 0, "not in the process-wide set");
        assert_eq!(by_model["quantd-tcn"].get(Series::Inference).unwrap().len(), 1);
    }

    #[test]
    fn many_rounds_reuse_the_same_two_boxes() {
        let hub = LatencyHub::default();
        let mut r = hub.recorder(Series::ALL);
        let mut total = hub.new_set();
        for i in 0..100u64 {
            r.record(Series::Features, i + 1);
            r.publish_if_requested();
            hub.collect(&mut total, &mut BTreeMap::new());
        }
        drop(r);
        hub.collect(&mut total, &mut BTreeMap::new());
        assert_eq!(total.get(Series::Features).unwrap().len(), 100);
    }
}
