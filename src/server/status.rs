//! The gRPC edge's errors and their mapping to `tonic::Status`, in one place.
//!
//! Bad ticks are not errors here: they are answered in-band with `Signal.reject_reason`, and
//! the stream stays up. Only failures of the call itself become a status.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the engine stopped before answering this tick")]
    EngineStopped,
}

impl From<EdgeError> for Status {
    fn from(e: EdgeError) -> Self {
        match e {
            EdgeError::EngineStopped => Status::unavailable(e.to_string()),
        }
    }
}
