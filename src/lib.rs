//! quantd: market ticks in over gRPC, one position signal out per tick, scored by an INT8 ONNX
//! model on a dedicated engine thread.
//!
//! # Threads and data flow
//!
//! ```text
//!  gateway ──gRPC──▶ quantd-io: tokio workers, the data plane (server::tick_stream)
//!                     │ decode, stateless checks, stamp recv
//!                     │ bounded ArrayQueue (engine::EngineHandle::submit)
//!                     ▼
//!                  quantd-engine (engine::worker), pinned when configured
//!                     │ per-symbol features (features), one batched model call
//!                     │ (model::Scorer), policy (policy), risk gate (risk)
//!                     ▼ per-stream bounded reply queue + waker (engine::reply)
//!                  quantd-io: Signal, stamp send ──gRPC──▶ gateway
//! ```
//!
//! | thread | owns | talks to the others by |
//! |---|---|---|
//! | `quantd-io` (tokio, `io_threads`) | the service port: `SignalService`, the Open Inference Protocol ([`server::kserve`]), reflection, health; each stream's window and reply queue | `EngineHandle::submit` (lock-free queue); reply queues + wakers back; `EngineHandle::infer` (a second bounded queue) and a oneshot back for `ModelInfer` |
//! | `quantd-engine` | per-symbol state (features once, a position per route), the live models' scorers (each name's active and shadow version), the route table, the risk gate | pops ticks and [`engine::Control`] messages between batches; scores `ModelInfer` rows one model call per pass and publishes the served models' cards ([`engine::infer`]); publishes histograms to telemetry; hands retired models back on a queue; `try_lock`s the recent-rows sample every 64 passes (skips it when busy) |
//! | `quantd-admin` (own current-thread runtime) | the admin listener (`ModelAdmin`, `RiskAdmin`, health), `/metrics`, the health statuses of both ports, the stuck-engine watchdog, SIGTERM/SIGINT | registry requests over a channel; kill switch as a control message; reads the engine's heartbeat and [`readiness::Readiness`] ([`server::admin`]) |
//! | `quantd-registry` | model discovery, load, verify, backend choice, the swap/shadow/rollback state machine per live model name, route changes (`SetRoute`) | control messages to the engine; answers admin requests on oneshot channels ([`registry`]) |
//! | `quantd-telemetry` | merging the histograms, the Prometheus recorder | reads counters and histograms the others write without locks ([`telemetry::exporter`]) |
//! | `quantd-risk` | the Monte Carlo VaR estimator | mids in, scales out through the lock-free [`risk::RiskBoard`] ([`risk::var`]) |
//! | `quantd-journal` (when `journal.enabled`) | the journal files: Arrow IPC streams of every tick and signal, flush, fsync, rotation, retention | the I/O tasks push records into one bounded lock-free ring and never wait; a full ring is counted or refuses ticks ([`journal`]) |
//!
//! `quantd audit` ([`audit`]) re-runs a journal's ticks through the same engine code in the live
//! engine's batches and proves every journaled signal bit for bit.
//!
//! `quantd replay` runs the same engine code synchronously on recorded ticks
//! ([`engine::SyncEngine`]), with the VaR estimator driven by exchange time, and scores the
//! signals with [`backtest`].
//!
//! The engine thread owns the per-symbol state and the scorer (the native INT8 kernel or an ONNX
//! Runtime session); nothing else touches them. It never waits on a lock and makes no heap
//! allocation after warm-up. Everything slow (loading models, metrics export, admin calls) runs
//! elsewhere. Bad input never takes a stream down: each refused tick gets a
//! signal with `reject_reason` and is counted by reason.

#![warn(missing_docs)]

pub mod audit;
pub mod backtest;
pub mod clock;
pub mod config;
pub mod control_thread;
pub mod dataset;
pub mod engine;
pub mod features;
pub mod files;
pub mod import;
pub mod int8;
pub mod journal;
pub mod model;
pub mod plausibility;
pub mod plotting;
pub mod policy;
pub mod problem;
pub mod readiness;
pub mod registry;
pub mod replay;
pub mod risk;
pub mod risk_flags;
pub mod routes;
pub mod server;
pub mod shard;
pub mod symbols;
pub mod synthetic;
pub mod telemetry;
pub mod text;
pub mod tick;
pub mod tickfile;

/// Generated gRPC types and services of `proto/quantd/v1/quantd.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("quantd.v1");
}

/// Generated gRPC types and services of `proto/inference/inference.proto`: the Open Inference
/// Protocol (KServe V2 / Triton gRPC), served by [`server::kserve`].
pub mod inference_proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}
