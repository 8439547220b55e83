//! The gRPC face: validation of what clients send, and the mapping of
//! runtime errors to statuses.

mod checkout;
mod events;
mod worker;
mod workflow;

pub use checkout::{CheckoutApi, CheckoutView};
pub use events::EventsApi;
pub use worker::WorkerApi;
pub use workflow::WorkflowApi;

use tonic::{Code, Status};

use crate::limits::Invalid;
use crate::runtime::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Code::Unavailable
            }
        };
        Status::new(code, error.to_string())
    }
}

pub(crate) fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.0)
}

/// The caller's correlation id: `x-correlation-id`, else the fallback
/// (the request id), else a new one.
pub(crate) fn correlation_id<T>(request: &tonic::Request<T>, fallback: &str) -> String {
    request
        .metadata()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 255)
        .map(str::to_owned)
        .or_else(|| (!fallback.is_empty()).then(|| fallback.to_owned()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A W3C `traceparent`, kept only when well formed.
pub(crate) fn traceparent<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v))
        .map(str::to_owned)
        .unwrap_or_default()
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl From<crate::store::Error> for Status {
    fn from(error: crate::store::Error) -> Self {
        Error::Store(error).into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_shape_is_checked() {
        assert!(super::is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!super::is_traceparent("00-xyz-00f067aa0ba902b7-01"));
        assert!(!super::is_traceparent(""));
    }
}
