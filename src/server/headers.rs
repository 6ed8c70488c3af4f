//! The request-header budget of the gRPC listeners (service and admin): a call whose headers
//! exceed `stream.max_header_bytes` is answered RESOURCE_EXHAUSTED with the size and the limit,
//! and counted, instead of failing in the transport.
//!
//! Runs in the tonic service stack of each listener, on the runtime that serves it (the data
//! plane's, or the admin thread's), once per call before the call is routed.
//!
//! Why two limits: HTTP/2 itself refuses a header block over its SETTINGS_MAX_HEADER_LIST_SIZE
//! with a bare HTTP 431 (grpc clients report UNKNOWN), and closes the connection (GOAWAY) over
//! four times that. So the transport is set to [`TRANSPORT_FACTOR`] times the budget and the
//! budget is enforced here, where a gRPC status can say what happened:
//! - up to `max_header_bytes`: served;
//! - up to [`TRANSPORT_FACTOR`] times it: RESOURCE_EXHAUSTED, counted `refused_headers`;
//! - beyond: h2's 431, and beyond 4 times that its GOAWAY for the connection (abuse).

use std::sync::Arc;

use tonic::service::{Interceptor, InterceptorLayer};
use tonic::{Request, Status};

use super::status::EdgeError;
use crate::telemetry::{StreamEvent, Telemetry};

/// The transport's header-list limit, as a multiple of the budget.
pub const TRANSPORT_FACTOR: u32 = 4;

/// HTTP/2's accounting of one header field (RFC 7541 §4.1): name, value and 32 bytes.
const FIELD_OVERHEAD: usize = 32;

/// The interceptor (cheap to clone: one per connection).
#[derive(Clone)]
pub struct HeaderBudget {
    max_bytes: usize,
    telemetry: Arc<Telemetry>,
}

impl HeaderBudget {
    /// The layer for a listener's `Server::builder().layer(...)`; pair it with
    /// `http2_max_header_list_size(transport_limit(max_bytes))`.
    pub fn layer(max_bytes: usize, telemetry: Arc<Telemetry>) -> InterceptorLayer<Self> {
        InterceptorLayer::new(Self { max_bytes, telemetry })
    }
}

/// The header-list size HTTP/2 is told to accept for a budget of `max_bytes`.
pub fn transport_limit(max_bytes: usize) -> u32 {
    u32::try_from(max_bytes).unwrap_or(u32::MAX).saturating_mul(TRANSPORT_FACTOR)
}

/// The size of a call's headers as HTTP/2 counts them (the pseudo-headers aside).
pub fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + FIELD_OVERHEAD).sum()
}

impl Interceptor for HeaderBudget {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let size = header_list_size(req.metadata().as_ref());
        if size <= self.max_bytes {
            return Ok(req);
        }
        self.telemetry.counters.streams.add(StreamEvent::RefusedHeaders, 1);
        Err(EdgeError::HeadersTooLarge { size, limit: self.max_bytes }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_over_the_budget_are_refused_with_their_size_and_counted() {
        let t = Telemetry::new();
        let mut budget = HeaderBudget { max_bytes: 100, telemetry: t.clone() };
        let mut req = Request::new(());
        req.metadata_mut().insert("x-a", "b".repeat(60).parse().unwrap());
        assert_eq!(header_list_size(req.metadata().as_ref()), 3 + 60 + 32);
        let req = budget.call(req).expect("95 bytes fit in 100");
        let mut req = req;
        req.metadata_mut().insert("x-b", "c".parse().unwrap());
        let err = budget.call(req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("131 bytes") && err.message().contains("100"), "{err}");
        assert_eq!(t.counters.streams.total(StreamEvent::RefusedHeaders), 1);
        assert_eq!(transport_limit(16_384), 65_536);
        assert_eq!(transport_limit(usize::MAX), u32::MAX);
    }
}
