//! `replay-failed-events`: re-drives dead letters to their original subjects.
//!
//! A replayed event keeps its event id (`Sagaflow-Event-Id`), so every
//! consumer that already processed it skips it, and only the one that
//! failed it projects it now. It gets a fresh `Nats-Msg-Id`
//! (`<event id>/replay/<dead-letter seq>`): with the original one, JetStream
//! would drop it as a duplicate for as long as the duplicate window lasts.
//! The job reads the dead-letter stream through its own durable consumer
//! (`replay`), so each dead letter is re-driven once and stays in the stream
//! for the record; if the event fails again it comes back as a new dead letter.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Message};
use tokio_stream::StreamExt;

use super::broker::{self, headers};
use super::{EVENTS_SUBJECT_PREFIX, Error, Result};

/// The durable consumer on the dead-letter stream that remembers what was replayed.
const REPLAY_CONSUMER: &str = "replay";
const BATCH: usize = 256;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Re-driven events per consumer that had failed them.
    pub replayed: BTreeMap<String, u64>,
    /// Dead letters without a usable original subject, acknowledged and left alone.
    pub skipped: u64,
}

impl ReplayReport {
    pub fn total(&self) -> u64 {
        self.replayed.values().sum()
    }
}

/// Re-drives every dead letter not replayed yet. It fails fast when the
/// broker is away, since an operator is waiting for the answer.
pub async fn replay_failed_events(url: &str) -> Result<ReplayReport> {
    let client = async_nats::ConnectOptions::new()
        .name("sagaflow-replay-failed-events")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Error::broker("connect", e))?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(5)).build(client);
    let dlq = broker::ensure_stream(&js, broker::dlq_stream()).await?;
    let config = pull::Config {
        durable_name: Some(REPLAY_CONSUMER.into()),
        description: Some("Sagaflow replay-failed-events: dead letters already re-driven".into()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let consumer =
        dlq.get_or_create_consumer(REPLAY_CONSUMER, config).await.map_err(|e| Error::broker("create consumer", e))?;
    let mut report = ReplayReport::default();
    loop {
        let mut batch = consumer.fetch().max_messages(BATCH).messages().await.map_err(|e| Error::broker("fetch", e))?;
        let mut seen = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| Error::broker("fetch", e))?;
            seen += 1;
            redrive(&js, message, &mut report).await?;
        }
        if seen == 0 {
            return Ok(report);
        }
    }
}

async fn redrive(js: &jetstream::Context, message: Message, report: &mut ReplayReport) -> Result<()> {
    let dead = message.headers.clone().unwrap_or_default();
    let text = |name: &str| dead.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
    let subject = text(headers::ORIGINAL_SUBJECT);
    let event_id = text(headers::EVENT_ID);
    if !subject.starts_with(EVENTS_SUBJECT_PREFIX) || event_id.is_empty() {
        tracing::warn!(subject = %message.subject, "dead letter without its origin; left in place");
        report.skipped += 1;
        return message.ack_with(AckKind::Term).await.map_err(|e| Error::broker("ack", e));
    }
    let dead_seq = message.info().map_or(0, |info| info.stream_sequence);
    let mut map = HeaderMap::new();
    for (name, values) in dead.iter() {
        let name = name.as_ref();
        let dead_letter_only = [headers::ORIGINAL_SUBJECT, headers::CONSUMER, headers::FAILURE, headers::DELIVERIES];
        if dead_letter_only.contains(&name) || name == headers::MSG_ID {
            continue;
        }
        for value in values {
            map.append(name, value.as_str());
        }
    }
    map.insert(headers::MSG_ID, format!("{event_id}/replay/{dead_seq}"));
    map.insert(headers::REPLAYED, "true");
    let publish = PublishMessage::build().payload(message.payload.clone()).headers(map);
    let ack = js.send_publish(subject, publish).await.map_err(|e| Error::broker("publish", e))?;
    ack.await.map_err(|e| Error::broker("publish ack", e))?;
    // Only now is it done; a crash before this ack re-drives it with the
    // same Nats-Msg-Id, which JetStream drops.
    message.double_ack().await.map_err(|e| Error::broker("ack", e))?;
    *report.replayed.entry(text(headers::CONSUMER)).or_default() += 1;
    Ok(())
}
