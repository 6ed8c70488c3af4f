//! The telemetry thread: every interval it collects the writers' histograms and the counters
//! and publishes them into a Prometheus recorder owned by this server; and the HTTP endpoint
//! (`GET /metrics`) that renders it.
//!
//! Runs on its own named thread (`quantd-telemetry`), never on the engine thread. The recorder
//! is local to the server (no global `metrics` recorder), so several servers can live in one
//! process, as the integration tests do.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::Telemetry;
use super::counters::{Event, EventCounts};
use super::latency::{HistogramSet, Series};
use crate::control_thread::ControlThread;
use crate::risk_flags::RiskFlags;
use crate::tick::Reject;

/// Histogram: receive to send, per tick, seconds.
pub const TICK_TO_SIGNAL: &str = "quantd_tick_to_signal_seconds";
/// Histogram: per-stage time, seconds (`stage` label).
pub const STAGE: &str = "quantd_stage_seconds";
/// Histogram: ticks per model call.
pub const BATCH_SIZE: &str = "quantd_inference_batch_size";
/// Histogram family: per live model name, its model calls (`stage="inference"`) and its ticks'
/// tick decoded → engine reply (`stage="engine"`), seconds.
pub const MODEL_STAGE: &str = "quantd_model_stage_seconds";
/// Histogram: per live model name, ticks per model call.
pub const MODEL_BATCH_SIZE: &str = "quantd_model_inference_batch_size";
/// Counter family: per live model name, the ticks it answered by outcome.
pub const MODEL_TICKS: &str = "quantd_model_ticks_total";
/// Counter: ticks by outcome.
pub const TICKS: &str = "quantd_ticks_total";
/// Counter: refused ticks by reason.
pub const REJECTS: &str = "quantd_rejects_total";
/// Counter: symbol state resets by reason.
pub const SYMBOL_RESETS: &str = "quantd_symbol_resets_total";
/// Counter: stream events.
pub const STREAM_EVENTS: &str = "quantd_stream_events_total";
/// Counter: journal records and file events.
pub const JOURNAL_EVENTS: &str = "quantd_journal_events_total";
/// Counter: inference-protocol `ModelInfer` calls by outcome.
pub const INFER_REQUESTS: &str = "quantd_infer_requests_total";
/// Gauge: open tick streams.
pub const STREAMS_OPEN: &str = "quantd_streams_open";
/// Counter: connection events at the listeners.
pub const CONNECTIONS: &str = "quantd_connections_total";
/// Gauge: open connections.
pub const CONNECTIONS_OPEN: &str = "quantd_connections_open";
/// Gauge: ticks waiting in the engine queue.
pub const QUEUE_DEPTH: &str = "quantd_engine_queue_depth";
/// Gauge: the engine queue's capacity.
pub const QUEUE_CAPACITY: &str = "quantd_engine_queue_capacity";
/// Gauge: 1 per known model version (`name`, `version`, `state`, `provider`).
pub const MODEL_INFO: &str = "quantd_model_info";
/// Gauge: 1 per loaded version with its backend and ISA level.
pub const MODEL_BACKEND: &str = "quantd_model_backend_info";
/// Gauge: the native kernel's clamped share per stage.
pub const SATURATION: &str = "quantd_quant_saturation_ratio";
/// Gauge: the manifest's baseline of that share.
pub const SATURATION_BASELINE: &str = "quantd_quant_saturation_baseline";
/// Counter: model swaps.
pub const MODEL_SWAPS: &str = "quantd_model_swaps_total";
/// Counter: rollbacks.
pub const MODEL_ROLLBACKS: &str = "quantd_model_rollbacks_total";
/// Counter: refused loads by reason.
pub const MODEL_FAILURES: &str = "quantd_model_failures_total";
/// Gauge: verify, load and warm time of the last load, seconds.
pub const MODEL_LOAD: &str = "quantd_model_load_seconds";
/// Gauge: the shadow model's side agreement.
pub const SHADOW_AGREEMENT: &str = "quantd_shadow_agreement_ratio";
/// Gauge: ticks the shadow was compared on.
pub const SHADOW_COMPARED: &str = "quantd_shadow_compared_ticks";
/// Counter: signals a risk limit bound, by limit.
pub const RISK: &str = "quantd_risk_total";
/// Gauge: VaR per unit position, per symbol.
pub const VAR: &str = "quantd_var_per_unit";
/// Gauge: VaR position scale, per symbol.
pub const VAR_SCALE: &str = "quantd_var_scale";
/// Gauge: VaR back-test horizons checked, per symbol.
pub const VAR_CHECKS: &str = "quantd_var_backtest_checks";
/// Gauge: VaR back-test exceedances, per symbol.
pub const VAR_EXCEEDANCES: &str = "quantd_var_backtest_exceedances";
/// Gauge: 1 while the all-symbols kill switch is engaged.
pub const KILL_SWITCH: &str = "quantd_kill_switch_engaged";
/// Gauge: 1 while the server is ready.
pub const READY: &str = "quantd_ready";
/// Counter: times readiness was lost, by reason.
pub const NOT_READY: &str = "quantd_not_ready_total";

/// Latency buckets, seconds: every microsecond up to 30 µs, then progressively coarser to 1 s.
pub fn latency_buckets() -> Vec<f64> {
    let mut us: Vec<f64> = (1..=30).map(f64::from).collect();
    us.extend([35., 40., 45., 50., 60., 70., 80., 90., 100., 125., 150., 200., 250., 300., 400., 500., 750.]);
    us.extend([1e3, 1.5e3, 2e3, 3e3, 5e3, 7.5e3, 1e4, 2e4, 5e4, 1e5, 2.5e5, 5e5, 1e6]);
    us.into_iter().map(|u| u * 1e-6).collect()
}

const BATCH_BUCKETS: [f64; 17] = [1., 2., 3., 4., 6., 8., 12., 16., 24., 32., 48., 64., 96., 128., 256., 512., 1024.];

/// A gauge series not set for this long leaves `/metrics`. The telemetry thread sets every gauge
/// it still means at each publication, so what expires is what went away: an evicted symbol's
/// VaR, a model version no longer known. Without it a stream of new symbols (junk included)
/// would grow the exposition without bound.
pub fn gauge_idle(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(300))
}

fn build_recorder(gauge_idle: Duration) -> PrometheusRecorder {
    let builder = PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(gauge_idle))
        .set_buckets_for_metric(Matcher::Full(TICK_TO_SIGNAL.into()), &latency_buckets())
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STAGE.into()), &latency_buckets()))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_STAGE.into()), &latency_buckets()))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MODEL_BATCH_SIZE.into()), &BATCH_BUCKETS))
        .expect("bucket lists are non-empty constants");
    builder.build_recorder()
}

fn describe() {
    metrics::describe_histogram!(
        TICK_TO_SIGNAL,
        metrics::Unit::Seconds,
        "Server-internal latency: tick decoded -> signal handed to the transport"
    );
    metrics::describe_histogram!(
        STAGE,
        metrics::Unit::Seconds,
        "Latency of each pipeline stage (queue_wait, features, inference per batch, policy, egress, total)"
    );
    metrics::describe_histogram!(BATCH_SIZE, metrics::Unit::Count, "Ticks scored per model call");
    metrics::describe_histogram!(
        MODEL_STAGE,
        metrics::Unit::Seconds,
        "Per live model name: its model calls (stage inference) and its ticks from decode to the engine's reply (stage engine)"
    );
    metrics::describe_histogram!(MODEL_BATCH_SIZE, metrics::Unit::Count, "Per live model name: ticks per model call");
    metrics::describe_counter!(
        MODEL_TICKS,
        "Per live model name: the ticks it answered by outcome (scored, warming_up, rejected)"
    );
    metrics::describe_counter!(TICKS, "Ticks by final outcome (scored, warming_up, rejected, dropped)");
    metrics::describe_counter!(REJECTS, "Rejected ticks by reason");
    metrics::describe_counter!(
        STREAM_EVENTS,
        "Tick streams refused (server or per-peer cap, bad option), calls refused for oversize headers, or tick streams ended by the server (slow consumer, idle, shutdown)"
    );
    metrics::describe_gauge!(STREAMS_OPEN, "Tick streams open now");
    metrics::describe_counter!(
        JOURNAL_EVENTS,
        "Journal records written, dropped (ring full or write failed) or refused (on_full = refuse_ticks), write errors and file rotations"
    );
    metrics::describe_counter!(
        INFER_REQUESTS,
        "Open Inference Protocol ModelInfer calls by outcome (answered, unknown_model, invalid, busy, failed)"
    );
    metrics::describe_counter!(
        CONNECTIONS,
        "gRPC connections accepted, refused at the cap, closed for no handshake, and failed accepts (no descriptors, other)"
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "gRPC connections open now (service and admin listeners)");
    metrics::describe_counter!(
        SYMBOL_RESETS,
        "Symbols whose state was dropped: evicted when idle, a new price level, non-finite state, or an admin reset"
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Ticks waiting in the engine queue");
    metrics::describe_gauge!(QUEUE_CAPACITY, "Engine queue capacity (a full queue answers queue_full)");
    metrics::describe_gauge!(
        MODEL_INFO,
        "Every known model version (value 1), labelled with name, version, state (active, previous, shadow, loaded, failed, ...) and the execution provider running it (cpu, cuda, tensorrt; none if never loaded)"
    );
    metrics::describe_counter!(MODEL_SWAPS, "Model activations (hot swaps)");
    metrics::describe_counter!(MODEL_ROLLBACKS, "Rollbacks to the previous model (automatic or by admin call)");
    metrics::describe_counter!(MODEL_FAILURES, "Refused model loads by reason");
    metrics::describe_gauge!(MODEL_LOAD, "Seconds the last model load spent per phase (verify, load, warm)");
    metrics::describe_gauge!(
        SHADOW_AGREEMENT,
        "Fraction of ticks where the shadow model's side agrees with the active model's"
    );
    metrics::describe_gauge!(SHADOW_COMPARED, "Ticks compared by the current shadow model");
    metrics::describe_counter!(RISK, "Signals a risk limit or kill-switch trigger bound, by reason");
    metrics::describe_gauge!(VAR, "Monte Carlo VaR of a unit position over the horizon, quote currency, by symbol");
    metrics::describe_gauge!(
        VAR_SCALE,
        "Scale factor the engine applies to the symbol's target (1: VaR under the limit)"
    );
    metrics::describe_gauge!(VAR_CHECKS, "Non-overlapping horizons the VaR was back-tested on, by symbol");
    metrics::describe_gauge!(VAR_EXCEEDANCES, "Back-tested horizons that lost more than the VaR, by symbol");
    metrics::describe_gauge!(
        MODEL_BACKEND,
        "Backend serving each loaded model version (value 1): native (quantd's INT8 kernel), ort or fp32-sibling, with its ISA level"
    );
    metrics::describe_gauge!(
        SATURATION,
        "Share of a native INT8 model's values clamped at a saturating integer bound over the last interval, by stage (input, layer0, ...)"
    );
    metrics::describe_gauge!(
        SATURATION_BASELINE,
        "The same share on the model's validation period, from its manifest's [saturation]: the quantization-collapse baseline"
    );
    metrics::describe_gauge!(KILL_SWITCH, "1 while the all-symbols kill switch is engaged");
    metrics::describe_gauge!(READY, "1 while gRPC health reports SERVING (model warm, not draining, engine passing)");
    metrics::describe_counter!(
        NOT_READY,
        "Times the server went not ready, by cause (draining: a graceful shutdown began; engine_stuck: the watchdog saw work waiting with no completed engine pass)"
    );
}

fn publish_histogram(h: &Histogram<u64>, f: impl Fn(f64, usize)) {
    for v in h.iter_recorded() {
        f(h.median_equivalent(v.value_iterated_to()) as f64, v.count_at_value() as usize);
    }
}

type Versions = Vec<(String, String, &'static str, &'static str)>;

/// One model's saturation counters as last exported: the snapshot at the last interval that had
/// rows (rows, clamped values per stage), and that interval's ratios.
type Saturation = ((u64, Vec<u64>), Option<Vec<f64>>);

/// What the last publication of the models exported, to clear series that went away and to rate
/// the saturation counters over each interval.
#[derive(Default)]
struct Published {
    versions: Versions,
    backends: Vec<(String, &'static str, &'static str)>,
    saturation: std::collections::HashMap<String, Saturation>,
}

fn publish_backends(view: &crate::telemetry::ModelsView, last: &mut Published) {
    let info = |(model, backend, isa): &(String, &'static str, &'static str)| metrics::gauge!(MODEL_BACKEND, "model" => model.clone(), "backend" => *backend, "isa" => *isa);
    if view.backends != last.backends {
        // Gone ones read 0 until they expire.
        for b in last.backends.drain(..) {
            info(&b).set(0.0);
        }
        last.backends = view.backends.clone();
    }
    for b in &view.backends {
        info(b).set(1.0);
    }
    for (model, handle) in &view.saturation {
        for (stage, ratio) in &handle.baseline {
            metrics::gauge!(SATURATION_BASELINE, "model" => model.clone(), "layer" => stage.clone()).set(*ratio);
        }
        let now = handle.counters.snapshot();
        let seen = last.saturation.entry(model.clone()).or_insert_with(|| ((0, vec![0; now.1.len()]), None));
        // An interval with no rows keeps the last ratios (re-set, so they do not expire).
        if let Some(ratios) = handle.counters.ratios(&seen.0, &now) {
            *seen = (now, Some(ratios));
        }
        for (stage, ratio) in handle.counters.stages.iter().zip(seen.1.iter().flatten()) {
            metrics::gauge!(SATURATION, "model" => model.clone(), "layer" => stage.clone()).set(*ratio);
        }
    }
}

fn publish_models(t: &Telemetry, published: &mut Published) {
    let view = t.models();
    publish_backends(&view, published);
    let last = &mut published.versions;
    let info = |(name, version, state, provider): &(String, String, &'static str, &'static str)| {
        let labels = [("name", name.clone()), ("version", version.clone()), ("state", state.to_string())];
        let provider = ("provider", if provider.is_empty() { "none" } else { provider }.to_string());
        metrics::gauge!(MODEL_INFO, &labels.into_iter().chain([provider]).collect::<Vec<_>>())
    };
    if view.versions != *last {
        // Gone ones (a version's old state included) read 0 until they expire.
        for v in last.drain(..) {
            info(&v).set(0.0);
        }
        *last = view.versions.clone();
    }
    for v in &view.versions {
        info(v).set(1.0);
    }
    metrics::counter!(MODEL_SWAPS).absolute(view.swaps);
    metrics::counter!(MODEL_ROLLBACKS).absolute(view.rollbacks);
    for (model, reason, n) in &view.failures {
        metrics::counter!(MODEL_FAILURES, "model" => model.clone(), "reason" => *reason).absolute(*n);
    }
    if let Some([verify, load, warm]) = view.last_load {
        metrics::gauge!(MODEL_LOAD, "phase" => "verify").set(verify);
        metrics::gauge!(MODEL_LOAD, "phase" => "load").set(load);
        metrics::gauge!(MODEL_LOAD, "phase" => "warm").set(warm);
    }
    for (model, compared, agreement) in &view.shadow_agreement {
        metrics::gauge!(SHADOW_COMPARED, "model" => model.clone()).set(*compared as f64);
        metrics::gauge!(SHADOW_AGREEMENT, "model" => model.clone()).set(*agreement);
    }
}

/// One counter family: `name{key="<label>"}` per variant.
fn publish_counts<E: Event, const N: usize>(name: &'static str, key: &'static str, counts: &EventCounts<E, N>) {
    for (e, n) in counts.totals() {
        metrics::counter!(name, key => e.label()).absolute(n);
    }
}

/// The per-model families: each live model name's stages (inference per call; engine per
/// tick), batch sizes and tick outcomes, labelled `model` (bounded by the live names).
fn publish_per_model(t: &Telemetry, by_model: &std::collections::BTreeMap<String, HistogramSet>) {
    for (model, set) in by_model {
        for s in [Series::Inference, Series::Engine] {
            if let Some(h) = set.get(s) {
                let stage = metrics::histogram!(MODEL_STAGE, "model" => model.clone(), "stage" => s.stage());
                publish_histogram(h, |v, n| stage.record_many(v * 1e-9, n));
            }
        }
        if let Some(h) = set.get(Series::BatchSize) {
            let batch = metrics::histogram!(MODEL_BATCH_SIZE, "model" => model.clone());
            publish_histogram(h, |v, n| batch.record_many(v, n));
        }
    }
    for (model, slot) in t.model_slots() {
        for (e, n) in slot.outcomes.totals() {
            metrics::counter!(MODEL_TICKS, "model" => model.to_string(), "outcome" => e.label()).absolute(n);
        }
    }
}

/// One publication. Every gauge that still holds is set each time (see [`gauge_idle`]).
fn publish(
    t: &Telemetry,
    delta: &HistogramSet,
    (queue_depth, queue_capacity): (usize, usize),
    last_models: &mut Published,
) {
    for &s in Series::ALL {
        let Some(h) = delta.get(s) else { continue };
        match s {
            Series::BatchSize => publish_histogram(h, |v, n| metrics::histogram!(BATCH_SIZE).record_many(v, n)),
            Series::Engine => {} // per model only (publish_per_model)
            _ => {
                let stage = metrics::histogram!(STAGE, "stage" => s.stage());
                publish_histogram(h, |v, n| stage.record_many(v * 1e-9, n));
                if s == Series::Total {
                    publish_histogram(h, |v, n| metrics::histogram!(TICK_TO_SIGNAL).record_many(v * 1e-9, n));
                }
            }
        }
    }
    let c = &t.counters;
    publish_counts(TICKS, "outcome", &c.outcomes);
    for &r in Reject::ALL {
        metrics::counter!(REJECTS, "reason" => r.code()).absolute(c.reject_total(r));
    }
    publish_counts(STREAM_EVENTS, "event", &c.streams);
    publish_counts(JOURNAL_EVENTS, "event", &c.journal);
    publish_counts(INFER_REQUESTS, "outcome", &c.infer);
    metrics::gauge!(STREAMS_OPEN).set(c.streams_open() as f64);
    publish_counts(CONNECTIONS, "event", &c.conns);
    metrics::gauge!(CONNECTIONS_OPEN).set(c.connections_open() as f64);
    publish_counts(SYMBOL_RESETS, "reason", &c.symbols);
    for (i, (_, code)) in RiskFlags::ALL.iter().enumerate() {
        metrics::counter!(RISK, "reason" => *code).absolute(t.counters.risk_total(i));
    }
    metrics::gauge!(QUEUE_DEPTH).set(queue_depth as f64);
    metrics::gauge!(QUEUE_CAPACITY).set(queue_capacity as f64);
    let (vars, global_kill) = t.risk();
    // Only symbols with an estimate or a back-test: one not yet sized (fewer returns than
    // `min_history`, junk included) would be four NaN series, and its scale is 1 anyway.
    for v in vars.into_iter().filter(|v| v.var_per_unit.is_finite() || v.checks > 0) {
        metrics::gauge!(VAR, "symbol" => v.symbol.clone()).set(v.var_per_unit);
        metrics::gauge!(VAR_SCALE, "symbol" => v.symbol.clone()).set(v.scale);
        metrics::gauge!(VAR_CHECKS, "symbol" => v.symbol.clone()).set(v.checks as f64);
        metrics::gauge!(VAR_EXCEEDANCES, "symbol" => v.symbol).set(v.exceedances as f64);
    }
    metrics::gauge!(KILL_SWITCH).set(f64::from(u8::from(global_kill)));
    metrics::gauge!(READY).set(f64::from(u8::from(t.readiness.is_ready())));
    for cause in crate::readiness::Cause::ALL {
        metrics::counter!(NOT_READY, "reason" => cause.label()).absolute(t.readiness.raised(cause));
    }
    publish_models(t, last_models);
}

/// The running telemetry thread.
pub struct Exporter {
    handle: PrometheusHandle,
    totals: Arc<Mutex<HistogramSet>>,
    thread: ControlThread,
}

impl Exporter {
    /// Starts the telemetry thread, publishing every `interval`.
    pub fn start(
        telemetry: Arc<Telemetry>,
        queue_depth: Box<dyn Fn() -> usize + Send>,
        queue_capacity: usize,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let recorder = build_recorder(gauge_idle(interval));
        let handle = recorder.handle();
        let totals = Arc::new(Mutex::new(telemetry.latency.new_set()));
        let (t, tot) = (telemetry, totals.clone());
        let upkeep = handle.clone();
        let thread = ControlThread::spawn("quantd-telemetry", move |s| {
            let mut delta = t.latency.new_set();
            let mut by_model = std::collections::BTreeMap::new();
            let mut last_models = Published::default();
            metrics::with_local_recorder(&recorder, describe);
            loop {
                let stopping = s.load(Ordering::Acquire);
                t.latency.collect(&mut delta, &mut by_model);
                let queue = (queue_depth(), queue_capacity);
                metrics::with_local_recorder(&recorder, || {
                    publish(&t, &delta, queue, &mut last_models);
                    publish_per_model(&t, &by_model);
                });
                tot.lock().unwrap_or_else(|e| e.into_inner()).add(&delta);
                delta.reset();
                by_model.values_mut().for_each(HistogramSet::reset);
                upkeep.run_upkeep();
                if stopping {
                    break;
                }
                std::thread::park_timeout(interval);
            }
        })?;
        Ok(Self { handle, totals, thread })
    }

    /// Renders the Prometheus text exposition.
    pub fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }

    /// Everything collected since start, merged (for in-process reports and tests).
    pub fn totals(&self) -> Arc<Mutex<HistogramSet>> {
        self.totals.clone()
    }

    /// Publishes one last time and stops the thread.
    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin (rate-limited log).
                    tracing::debug!(error = %e, "metrics listener accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let body = handle.render();
                async move {
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts are valid"),
                    )
                }
            });
            // A client that sends half a request is closed after 5 s, not kept forever.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_no_longer_set_leaves_the_exposition_and_counters_stay() {
        let recorder = build_recorder(Duration::from_millis(50));
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::gauge!(VAR, "symbol" => "EVICTED").set(1.5);
            metrics::gauge!(VAR, "symbol" => "LIVE").set(2.5);
            metrics::counter!(TICKS, "outcome" => "scored").absolute(7);
        });
        assert!(handle.render().contains("EVICTED"));
        std::thread::sleep(Duration::from_millis(120));
        metrics::with_local_recorder(&recorder, || metrics::gauge!(VAR, "symbol" => "LIVE").set(2.5));
        handle.run_upkeep();
        let text = handle.render();
        assert!(!text.contains("EVICTED"), "{text}");
        assert!(text.contains("LIVE") && text.contains("outcome=\"scored\"} 7"), "{text}");
        assert_eq!(gauge_idle(Duration::from_secs(1)), Duration::from_secs(300));
    }

    #[test]
    fn only_symbols_with_a_var_estimate_are_exported() {
        let t = Telemetry::new();
        let report = |symbol: &str, var_per_unit: f64| crate::telemetry::SymbolVarReport {
            symbol: symbol.into(),
            var_per_unit,
            scale: 1.0,
            checks: 0,
            exceedances: 0,
            expected_rate: 0.01,
            kupiec_lr: f64::NAN,
            kupiec_p: f64::NAN,
        };
        t.set_risk(vec![report("SIZED", 12.5), report("WARMING", f64::NAN)], false);
        let recorder = build_recorder(Duration::from_secs(300));
        let delta = t.latency.new_set();
        metrics::with_local_recorder(&recorder, || publish(&t, &delta, (0, 1), &mut Published::default()));
        let text = recorder.handle().render();
        assert!(text.contains("quantd_var_per_unit{symbol=\"SIZED\"} 12.5"), "{text}");
        assert!(!text.contains("WARMING"), "{text}");
    }
}
