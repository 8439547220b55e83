//! The settings a worker's run loop reads, apart from the worker that builds
//! them, so that the run loop does not depend on the builder.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Settings the run loop reads; fixed once built.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The orchestrator's nodes, never empty; connection attempts go round them.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Used instead of dialing an endpoint when set (see [`WorkerBuilder::channel`]).
    pub(crate) channel: Option<Channel>,
    /// `Bearer TOKEN`, sent on every session; `None` when the server runs without auth.
    pub(crate) token: Option<MetadataValue<Ascii>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) worker_id: String,
    pub(crate) max_concurrency: u32,
    pub(crate) drain_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

impl Config {
    /// The endpoint of the `attempt`-th connection attempt.
    pub(crate) fn endpoint(&self, attempt: usize) -> &Endpoint {
        &self.endpoints[attempt % self.endpoints.len()]
    }
}
