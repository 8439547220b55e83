//! The gRPC face: validation of what clients send, and the mapping of
//! runtime errors to statuses.

mod decode_errors;
mod definition;
mod events;
mod node;
mod relay;
mod worker;
mod workflow;

pub use decode_errors::decode_errors_are_invalid_arguments;
pub use definition::DefinitionApi;
pub use events::{EventsApi, FLOOR_HEADER, OLDEST_HEADER};
pub use node::{NodeApi, NodeClient};
pub use relay::Peers;
pub use worker::WorkerApi;
pub use workflow::WorkflowApi;

use sagaflow_proto::trace_context::{CORRELATION_ID_HEADER, TRACEPARENT_HEADER, TraceParent};
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
            Error::Internal(_) => Code::Internal,
            Error::NotServed { .. } | Error::Unreachable(_) => Code::Unavailable,
            Error::Store(crate::store::Error::IdTooLong { .. }) => Code::InvalidArgument,
            // Another writer got there first and the store settled the race:
            // the call may be retried, and a retried start finds its workflow.
            Error::Store(crate::store::Error::RequestIdTaken { .. } | crate::store::Error::SequenceConflict { .. }) => {
                Code::Aborted
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Code::Unavailable
            }
            Error::Archive(e) => {
                tracing::error!(error = %e, "archive failure");
                Code::Unavailable
            }
        };
        Status::new(code, error.to_string())
    }
}

/// A field that breaks a limit, as the status a caller sees.
pub fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.0)
}

/// Who makes a call and under which correlation and trace, read from its
/// metadata before the body is taken.
pub struct Origin {
    pub correlation_id: String,
    pub traceparent: String,
    pub caller: crate::auth::Principal,
}

impl Origin {
    /// `request_id` is the correlation id's fallback (see [`correlation_id`]).
    pub fn of<T>(request: &tonic::Request<T>, request_id: &str) -> Self {
        Self {
            correlation_id: correlation_id(request, request_id),
            traceparent: traceparent(request),
            caller: crate::auth::principal(request),
        }
    }
}

/// The caller's correlation id: `x-correlation-id`, else the fallback
/// (the request id), else a new one.
pub(crate) fn correlation_id<T>(request: &tonic::Request<T>, fallback: &str) -> String {
    request
        .metadata()
        .get(CORRELATION_ID_HEADER)
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
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| TraceParent::parse(v).is_some())
        .map(str::to_owned)
        .unwrap_or_default()
}
