//! The gRPC edge's errors, and the mapping of every library error that reaches the edge to a
//! `tonic::Status`, in one place.
//!
//! Bad ticks are not errors here: they are answered in-band with `Signal.reject_reason`, and
//! the stream stays up. Only failures of the call itself become a status.

use tonic::Status;

/// A tick stream refused, or cut, at the edge (mapped to a gRPC status).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The engine stopped before it answered.
    #[error("the engine stopped before answering this tick")]
    EngineStopped,
    /// The server's stream cap is reached.
    #[error("the server already has {0} open streams (stream.max_streams)")]
    TooManyStreams(usize),
    /// This client address's stream cap is reached.
    #[error("{0} streams are already open from this address (stream.max_streams_per_peer)")]
    TooManyStreamsFromPeer(usize),
    /// The back-pressure header names no mode.
    #[error("x-quantd-backpressure must be block, reject or conflate, not {0}")]
    BadBackpressure(String),
    /// The back-pressure header is given more than once.
    #[error("x-quantd-backpressure is given {0} times; give it once")]
    RepeatedBackpressure(usize),
    /// The model header is malformed or repeated.
    #[error("x-quantd-model must be given once, as \"name\" or \"name@version\", not {0}")]
    BadModelHeader(String),
    /// The model header names a model that is not served.
    #[error("x-quantd-model: {0}")]
    UnknownModel(String),
    /// The request headers exceed the budget.
    #[error("the request headers are {size} bytes, over the server's {limit} (stream.max_header_bytes)")]
    HeadersTooLarge {
        /// Their size, bytes.
        size: usize,
        /// The budget, bytes.
        limit: usize,
    },
}

impl From<EdgeError> for Status {
    fn from(e: EdgeError) -> Self {
        match e {
            EdgeError::EngineStopped => Status::unavailable(e.to_string()),
            EdgeError::TooManyStreams(_) | EdgeError::TooManyStreamsFromPeer(_) | EdgeError::HeadersTooLarge { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            EdgeError::BadBackpressure(_) | EdgeError::RepeatedBackpressure(_) | EdgeError::BadModelHeader(_) => {
                Status::invalid_argument(e.to_string())
            }
            EdgeError::UnknownModel(_) => Status::not_found(e.to_string()),
        }
    }
}

impl From<crate::registry::RegistryError> for Status {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::model::ModelError;
        use crate::registry::RegistryError as R;
        let msg = e.to_string();
        match e {
            R::NotFound(_) | R::Model(ModelError::NotFound(_) | ModelError::NoneFound(_)) => Status::not_found(msg),
            R::WrongName(..) | R::BadRoute(_) => Status::invalid_argument(msg),
            R::TooManyModels(_) => Status::resource_exhausted(msg),
            R::Model(_) | R::NoPrevious | R::AlreadyActive(_) | R::EngineRefused(..) => {
                Status::failed_precondition(msg)
            }
            R::Busy | R::Stopped => Status::unavailable(msg),
            R::NotConfirmed(..) => Status::deadline_exceeded(msg),
        }
    }
}
