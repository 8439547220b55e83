//! Domain events leave through NATS JetStream, and consumers (the shop's read
//! models, say) take them in from there.
//!
//! - [`Relay`] (the orchestrator side) drains the transactional outbox into
//!   the `SAGAFLOW_EVENTS` stream: one subject per event type, `Nats-Msg-Id`
//!   = the event id, and an outbox record is deleted only after its PubAck.
//! - [`run_consumer`] (a separate process per consumer) reads that stream
//!   through its own durable JetStream consumer into its own
//!   [`Projector`], idempotent by event id, and dead-letters what keeps
//!   failing to `sagaflow.dlq.<consumer>`.
//! - [`replay_failed_events`] re-drives the dead letters.
//!
//! Why each piece is shaped as it is: `docs/adr/0008-outbox-relay.md`.

mod broker;
mod consumer;
mod publisher;
mod replay;

use std::time::Duration;

pub use broker::{Event, connect, headers};
pub use consumer::{ConsumerOptions, Outcome, Projector, run as run_consumer};
pub use publisher::Relay;
pub use replay::{ReplayReport, replay_failed_events};

/// The stream every domain event is published to.
pub const EVENTS_STREAM: &str = "SAGAFLOW_EVENTS";
/// Events are published to `sagaflow.events.<event_type>`.
pub const EVENTS_SUBJECT_PREFIX: &str = "sagaflow.events.";
/// The stream that holds dead letters, on `sagaflow.dlq.<consumer>`.
pub const DLQ_STREAM: &str = "SAGAFLOW_DLQ";
pub const DLQ_SUBJECT_PREFIX: &str = "sagaflow.dlq.";

/// Failures of the relay, the consumers and the replay job. Callers branch on
/// the variant: [`Error::Broker`] is worth retrying, the others are not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker is away, refused a request or did not answer in time.
    #[error("NATS {action}: {reason}")]
    Broker { action: &'static str, reason: String },
    /// The orchestrator's store failed under the relay.
    #[error("outbox: {0}")]
    Store(#[from] sagaflow_store::Error),
    /// A consumer's own store failed; it stops rather than ack what it did not keep.
    #[error("read model in {dir}: {reason}")]
    ReadModel { dir: String, reason: String },
    #[error("invalid NATS url {url:?}: {reason}")]
    Url { url: String, reason: String },
}

impl Error {
    pub(crate) fn broker(action: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Broker { action, reason: reason.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks a broker address (`nats://HOST:PORT`) up front, for command-line
/// flags: the relay and the consumers connect in the background and would
/// otherwise only log a typo.
pub fn parse_url(url: &str) -> Result<String, String> {
    url.parse::<async_nats::ServerAddr>().map(|_| url.to_owned()).map_err(|e| e.to_string())
}

/// Relay settings; the relay runs only when a broker is configured.
///
/// The numbers bound the relay's *redelivery horizon*: how long after an
/// event was first stored the relay may still publish it again (a lost
/// PubAck is waited for `ack_timeout`, then retried after at most
/// `backoff_max`). The stream's `duplicate_window` must stay well above it,
/// or a re-publish would be stored twice. See ADR 0008 for the arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOptions {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
    /// Most events in flight at once (never two of one workflow).
    pub window: usize,
    /// How long a publish waits for its PubAck before it counts as failed.
    pub ack_timeout: Duration,
    /// First retry delay while the broker is away; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// JetStream drops a message whose `Nats-Msg-Id` it stored this recently.
    pub duplicate_window: Duration,
    /// Stream replicas: 1 for a single server, 3 for a production cluster.
    pub replicas: usize,
}

impl RelayOptions {
    /// The defaults for a broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: EVENTS_STREAM.into(),
            window: 256,
            ack_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(10 * 60),
            replicas: 1,
        }
    }
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self::new("nats://127.0.0.1:4222")
    }
}

pub(crate) use sagaflow_worker::Backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_checked_up_front() {
        assert_eq!(parse_url("nats://127.0.0.1:4222").as_deref(), Ok("nats://127.0.0.1:4222"));
        assert!(parse_url("nats://127.0.0.1:port").is_err());
    }

    #[test]
    fn the_duplicate_window_outlasts_the_redelivery_horizon() {
        let options = RelayOptions::default();
        // One failed round: wait for the lost ack, then the longest backoff.
        let round = options.ack_timeout + options.backoff_max;
        assert!(options.duplicate_window >= round * 60, "the window must cover many failed rounds");
    }
}
