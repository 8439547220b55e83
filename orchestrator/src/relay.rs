//! The outbox relay to NATS JetStream.

/// Relay settings; the relay runs only when a broker is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOptions {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
}
