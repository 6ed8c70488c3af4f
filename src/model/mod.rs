//! Models: finding ONNX Runtime, reading, signing and verifying manifests, building sessions on
//! an execution provider.
//!
//! Loading and verification run on the control path (start-up or a loader thread); only
//! [`Scorer::score`] runs on the engine thread, which owns the `Scorer` it was handed.

pub mod backend;
pub mod manifest;
pub mod provider;
pub mod runtime;
pub mod scorer;
pub mod signing;
pub mod timing;

pub use backend::{BackendChoice, BackendConfig, BackendReport};
pub use manifest::{LoadOptions, LoadedModel, Manifest, ModelError, ScoredRows, read_rows};
pub use provider::{ExecutionProvider, ProviderConfig, ProviderFallback};
pub use scorer::{OrtScorer, ScoreError, Scorer};
