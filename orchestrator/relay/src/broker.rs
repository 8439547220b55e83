//! What the relay, the consumers and the replay job agree on: how to reach
//! the broker, the two streams, and the event's headers.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, stream};
use serde_json::Value;

use super::{DLQ_STREAM, DLQ_SUBJECT_PREFIX, EVENTS_SUBJECT_PREFIX, Error, RelayOptions, Result};
use sagaflow_store::OutboxRecord;

/// Header names. `Nats-Msg-Id` is JetStream's dedupe key; everything a
/// consumer needs is in the `Sagaflow-*` headers, so that a replay can carry
/// a fresh `Nats-Msg-Id` (JetStream would drop it as a duplicate otherwise)
/// while the event keeps its id.
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EVENT_ID: &str = "Sagaflow-Event-Id";
    pub const EVENT_TYPE: &str = "Sagaflow-Event-Type";
    pub const WORKFLOW_ID: &str = "Sagaflow-Workflow-Id";
    pub const WORKFLOW_SEQ: &str = "Sagaflow-Workflow-Seq";
    pub const CORRELATION_ID: &str = "Sagaflow-Correlation-Id";
    pub const EVENT_TIME_MS: &str = "Sagaflow-Event-Time-Ms";
    /// Set by `replay-failed-events` on what it re-drives.
    pub const REPLAYED: &str = "Sagaflow-Replayed";
    /// Dead letters only: where the event came from, who failed it, and why.
    pub const ORIGINAL_SUBJECT: &str = "Sagaflow-Original-Subject";
    pub const CONSUMER: &str = "Sagaflow-Consumer";
    pub const FAILURE: &str = "Sagaflow-Failure";
    pub const DELIVERIES: &str = "Sagaflow-Deliveries";
}

/// Dead letters are kept this long after they were written, replayed or not,
/// so that an operator can still see what failed.
const DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Events are kept a week: a consumer that is away longer must be rebuilt
/// from the orchestrator's histories rather than catch up.
const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A client that keeps (re)connecting in the background with a capped
/// backoff; it returns at once, even while the broker is away, so that a
/// caller can tell "not connected yet" from "broken".
pub async fn connect(url: &str, name: &str, backoff_max: Duration) -> Result<async_nats::Client> {
    let cap = backoff_max.max(Duration::from_millis(10));
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(move |attempts| {
            let exponent = u32::try_from(attempts.min(16)).unwrap_or(16);
            (Duration::from_millis(25) * 2u32.saturating_pow(exponent)).min(cap)
        })
        .connect(url)
        .await
        .map_err(|e| Error::Url { url: url.to_owned(), reason: e.to_string() })
}

pub(crate) fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The events stream as the relay configures it. Only the relay creates *or
/// updates* it (it owns the settings); consumers create it only if missing.
pub(crate) fn events_stream(options: &RelayOptions) -> stream::Config {
    stream::Config {
        name: options.stream.clone(),
        description: Some("Sagaflow domain events, relayed from the orchestrator's outbox".into()),
        subjects: vec![format!("{EVENTS_SUBJECT_PREFIX}>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: EVENTS_MAX_AGE,
        duplicate_window: options.duplicate_window,
        num_replicas: options.replicas.max(1),
        ..Default::default()
    }
}

pub(crate) fn dlq_stream() -> stream::Config {
    stream::Config {
        name: DLQ_STREAM.into(),
        description: Some("Sagaflow events that a consumer kept failing".into()),
        subjects: vec![format!("{DLQ_SUBJECT_PREFIX}>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: DLQ_MAX_AGE,
        duplicate_window: RelayOptions::default().duplicate_window,
        ..Default::default()
    }
}

/// Creates the events stream, or brings an existing one to what the relay
/// relies on: its subjects, and a duplicate window at least as long as ours.
/// Everything else (replicas, retention, limits) stays as an operator set it,
/// so that a production stream made with `--replicas 3` keeps them.
pub(crate) async fn ensure_events_stream(js: &jetstream::Context, options: &RelayOptions) -> Result<()> {
    let wanted = events_stream(options);
    let mut stream = match js.get_stream(&wanted.name).await {
        Ok(stream) => stream,
        Err(e) if stream_missing(&e) => {
            js.create_stream(wanted).await.map_err(|e| Error::broker("create stream", e))?;
            return Ok(());
        }
        Err(e) => return Err(Error::broker("look up stream", e)),
    };
    let mut config = stream.info().await.map_err(|e| Error::broker("read stream", e))?.config.clone();
    if config.subjects == wanted.subjects && config.duplicate_window >= wanted.duplicate_window {
        return Ok(());
    }
    tracing::info!(stream = %config.name, "updating the events stream's subjects and duplicate window");
    config.subjects = wanted.subjects;
    config.duplicate_window = config.duplicate_window.max(wanted.duplicate_window);
    js.update_stream(config).await.map_err(|e| Error::broker("update stream", e))?;
    Ok(())
}

fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Creates the stream unless it exists; never changes an existing one.
pub(crate) async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream> {
    js.get_or_create_stream(config).await.map_err(|e| Error::broker("create stream", e))
}

/// A subject token from an event type: NATS tokens cannot hold `.`, `*`,
/// `>` or whitespace, and definitions may name events freely.
pub(crate) fn subject_for(event_type: &str) -> String {
    let token: String =
        event_type.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    format!("{EVENTS_SUBJECT_PREFIX}{}", if token.is_empty() { "_" } else { &token })
}

/// Header values cannot hold line breaks; a failure text is also kept short.
pub(crate) fn header_text(text: &str, max_chars: usize) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(max_chars).collect()
}

/// One domain event as it travels through JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub workflow_id: String,
    /// The position of the causing history event; increases per workflow.
    pub workflow_seq: u64,
    pub correlation_id: String,
    pub time_ms: i64,
    /// JSON text: `{workflow_id, workflow_type, step, data}`.
    pub payload: String,
    /// Re-driven from the dead-letter stream by `replay-failed-events`.
    pub replayed: bool,
}

impl Event {
    pub fn from_outbox(record: &OutboxRecord) -> Self {
        Self {
            event_id: record.event_id.clone(),
            event_type: record.event_type.clone(),
            workflow_id: record.workflow_id.clone(),
            workflow_seq: record.workflow_seq,
            correlation_id: record.correlation_id.clone(),
            time_ms: record.time_ms,
            payload: record.payload.clone(),
            replayed: false,
        }
    }

    pub fn subject(&self) -> String {
        subject_for(&self.event_type)
    }

    /// The `Sagaflow-*` headers (not `Nats-Msg-Id`, which the sender picks).
    pub fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(headers::EVENT_ID, header_text(&self.event_id, 1024).as_str());
        map.insert(headers::EVENT_TYPE, header_text(&self.event_type, 1024).as_str());
        map.insert(headers::WORKFLOW_ID, header_text(&self.workflow_id, 1024).as_str());
        map.insert(headers::WORKFLOW_SEQ, self.workflow_seq.to_string().as_str());
        map.insert(headers::CORRELATION_ID, header_text(&self.correlation_id, 1024).as_str());
        map.insert(headers::EVENT_TIME_MS, self.time_ms.to_string().as_str());
        if self.replayed {
            map.insert(headers::REPLAYED, "true");
        }
        map
    }

    /// Reads an event back from a message's headers and payload.
    pub fn from_message(map: Option<&HeaderMap>, payload: &[u8]) -> Result<Self, String> {
        let map = map.ok_or("the message has no headers")?;
        let text = |name: &str| map.get(name).map(|v| v.as_str().to_owned());
        let required = |name: &str| text(name).filter(|v| !v.is_empty()).ok_or(format!("header {name} is missing"));
        let number = |name: &str| required(name)?.parse::<i64>().map_err(|_| format!("header {name} is not a number"));
        let payload = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_owned())?;
        Ok(Self {
            event_id: required(headers::EVENT_ID)?,
            event_type: required(headers::EVENT_TYPE)?,
            workflow_id: required(headers::WORKFLOW_ID)?,
            workflow_seq: u64::try_from(number(headers::WORKFLOW_SEQ)?)
                .map_err(|_| format!("header {} is negative", headers::WORKFLOW_SEQ))?,
            correlation_id: text(headers::CORRELATION_ID).unwrap_or_default(),
            time_ms: number(headers::EVENT_TIME_MS).unwrap_or(0),
            payload: payload.to_owned(),
            replayed: text(headers::REPLAYED).is_some_and(|v| v == "true"),
        })
    }

    /// The payload's `data`, or why there is none.
    pub fn data(&self) -> Result<Value, String> {
        let mut payload: Value =
            serde_json::from_str(&self.payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
        match payload.get_mut("data") {
            Some(data) => Ok(data.take()),
            None => Err("the payload has no data".into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            event_id: "chk-1/3".into(),
            event_type: "InventoryReserved".into(),
            workflow_id: "chk-1".into(),
            workflow_seq: 3,
            correlation_id: "req-1".into(),
            time_ms: 42,
            payload: r#"{"workflow_id":"chk-1","data":{"reservation_id":"r"}}"#.into(),
            replayed: false,
        }
    }

    #[test]
    fn an_event_survives_its_headers() {
        let original = event();
        let map = original.headers();
        assert!(map.get(headers::MSG_ID).is_none(), "the sender picks the msg id");
        assert_eq!(Event::from_message(Some(&map), original.payload.as_bytes()), Ok(original.clone()));
        let replayed = Event { replayed: true, ..original };
        assert!(Event::from_message(Some(&replayed.headers()), b"{}").is_ok_and(|e| e.replayed));
    }

    #[test]
    fn a_message_without_its_headers_is_rejected() {
        assert!(Event::from_message(None, b"{}").is_err());
        let mut map = event().headers();
        map.insert(headers::WORKFLOW_SEQ, "x");
        assert!(Event::from_message(Some(&map), b"{}").unwrap_err().contains("not a number"));
    }

    #[test]
    fn subjects_are_one_token_per_type() {
        assert_eq!(subject_for("CheckoutStarted"), "sagaflow.events.CheckoutStarted");
        assert_eq!(subject_for("a.b *>"), "sagaflow.events.a_b___");
        assert_eq!(subject_for(""), "sagaflow.events._");
    }

    #[test]
    fn header_text_has_no_line_breaks() {
        assert_eq!(header_text("a\r\nb", 10), "a  b");
        assert_eq!(header_text("abcdef", 3), "abc");
    }
}
