//! quantd: market ticks in over gRPC, one position signal out per tick, scored by an INT8 ONNX
//! model on a dedicated engine thread.
//!
//! # Threads and data flow
//!
//! ```text
//!  gateway ──gRPC──▶ tokio workers (server::tick_stream)          control path
//!                     │ decode, stateless checks, stamp recv        ─────────────
//!                     │ bounded ArrayQueue (engine::EngineHandle)   main: config, model
//!                     ▼                                             load + verify
//!                  quantd-engine thread (engine::worker)            (model::manifest)
//!                     │ per-symbol features (features), one         quantd-telemetry:
//!                     │ batched model call (model::Scorer),         merges histograms,
//!                     │ policy (policy), risk gate (risk)           publishes Prometheus
//!                     ▼ per-stream bounded reply queue + waker      (telemetry::exporter)
//!                  tokio worker: Signal, stamp send ──gRPC──▶ gateway
//!                                                                   quantd-risk: Monte Carlo
//!                                                                   VaR → scale per symbol
//!                                                                   (risk::var, via RiskBoard)
//!                                                                   quantd-registry: model
//!                                                                   discovery, load, verify,
//!                                                                   backend choice, swaps
//!                                                                   (registry)
//! ```
//!
//! `quantd replay` runs the same engine code synchronously on recorded ticks
//! ([`engine::SyncEngine`]), with the VaR estimator driven by exchange time, and scores the
//! signals with [`backtest`].
//!
//! The engine thread owns the per-symbol state and the scorer (the native INT8 kernel or an ONNX
//! Runtime session); nothing else touches them. It never waits on a lock (once every 64 passes it
//! `try_lock`s the recent-rows sample the risk layer reads, and skips it when busy) and makes no
//! heap allocation after warm-up. Everything slow (loading models,
//! metrics export) runs elsewhere. Bad input never takes a stream down: each refused tick gets a
//! signal with `reject_reason` and is counted by reason.

pub mod backtest;
pub mod config;
pub mod control_thread;
pub mod engine;
pub mod features;
pub mod int8;
pub mod model;
pub mod plotting;
pub mod policy;
pub mod registry;
pub mod replay;
pub mod risk;
pub mod server;
pub mod shard;
pub mod symbols;
pub mod telemetry;
pub mod tick;
pub mod tickfile;

/// Generated gRPC types and services of `proto/quantd/v1/quantd.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("quantd.v1");
}
