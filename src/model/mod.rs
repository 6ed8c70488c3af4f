//! Models: finding ONNX Runtime, reading and verifying manifests, building sessions.
//!
//! Loading and verification run on the control path (start-up or a loader thread); only
//! [`Scorer::score`] runs on the engine thread, which owns the `Scorer` it was handed.

pub mod manifest;
pub mod runtime;
pub mod scorer;

pub use manifest::{LoadedModel, Manifest, ModelError};
pub use scorer::Scorer;
