//! The crate's error type.

use std::time::Duration;

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when building or running a [`Worker`](crate::Worker).
///
/// Connection failures are not here: the worker retries them with backoff for
/// as long as it runs, because an orchestrator that is down is expected to
/// come back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The orchestrator address is not a valid URI.
    #[error("invalid orchestrator endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token holds characters that cannot go in a gRPC header.
    #[error("the token must be printable ASCII")]
    InvalidToken,
    /// The builder was given no activity, so the worker would never get a task.
    #[error("a worker must register at least one activity type")]
    NoActivities,
    /// The same activity type was registered twice.
    #[error("activity type {0:?} is registered twice")]
    DuplicateActivity(String),
    /// An identifier (worker id or activity type) is empty or longer than
    /// [`MAX_ID_BYTES`](crate::MAX_ID_BYTES).
    #[error("invalid {what} {value:?}: it must be 1 to 255 UTF-8 bytes")]
    InvalidId {
        /// Which identifier: `worker id` or `activity type`.
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// `max_concurrency` was zero (the worker could never take a task) or above
    /// [`MAX_CONCURRENCY`](crate::MAX_CONCURRENCY).
    #[error("max_concurrency must be between 1 and {max}, got {0}", max = crate::MAX_CONCURRENCY)]
    InvalidConcurrency(u32),
    /// The runtime shut down while the worker ran.
    #[error("the runtime shut down under the running worker")]
    RuntimeShutdown,
    /// A drain did not finish in time. The tasks still running were stopped and
    /// the unacknowledged outcomes are lost to this worker; the orchestrator
    /// will time those attempts out and retry them (activities are idempotent).
    #[error(
        "shutdown drain timed out after {timeout:?}: {running} task(s) still running, \
         {unacked} outcome(s) not acknowledged"
    )]
    DrainTimedOut {
        /// The drain budget that ran out.
        timeout: Duration,
        /// Tasks whose handler had not finished.
        running: usize,
        /// Outcomes sent (or waiting to be sent) without an acknowledgement.
        unacked: usize,
    },
}
