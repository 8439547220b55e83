//! A consumer process's loop: its own durable JetStream pull consumer, its
//! own [`Projector`], ack after the update is durable, dead-letter what keeps
//! failing.
//!
//! The orchestrator never waits for a consumer: JetStream holds the events,
//! so a consumer that is away only falls behind, and catches up from its
//! durable consumer's position when it returns.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Message};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::broker::{self, Event, headers};
use super::{Backoff, DLQ_SUBJECT_PREFIX, EVENTS_SUBJECT_PREFIX, Error, RelayOptions, Result};

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// Deliveries after which a failing event is dead-lettered.
    pub max_deliveries: i64,
    /// A delivery not acked within this is delivered again (the consumer died mid-event).
    pub ack_wait: Duration,
    /// Redelivery delay after a failure: doubles per delivery up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long to wait between attempts to reach a broker that is away.
    pub backoff_max: Duration,
}

impl ConsumerOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_deliveries: 5,
            ack_wait: Duration::from_secs(30),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            backoff_max: Duration::from_secs(2),
        }
    }

    /// The pause before delivery `delivered + 1` of a failing event.
    fn retry_delay(&self, delivered: i64) -> Duration {
        let exponent = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
        (self.retry_initial * 2u32.pow(exponent)).min(self.retry_max)
    }
}

/// Consecutive stream errors after which the pull subscription is rebuilt.
const MAX_STREAM_ERRORS: u32 = 3;

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The projection changed, durably.
    Projected,
    /// Its id was processed before: nothing changed.
    Duplicate,
    /// Nothing in this projection depends on this event type.
    Ignored,
    /// This event cannot be projected (now); it is retried and, past the
    /// consumer's limit, dead-lettered.
    Rejected(String),
}

/// What a consumer keeps: a projection of the event stream in its own
/// store (the shop's read models are ones). `apply` applies an event at most
/// once per event id, durably before it returns: the ack follows it.
pub trait Projector: Send + Sync + 'static {
    /// The durable consumer's name: its JetStream consumer and metrics label.
    fn name(&self) -> &'static str;

    fn apply(&self, event: &Event) -> impl std::future::Future<Output = Result<Outcome>> + Send;
}

/// Runs until `stop` turns true. Broker trouble is retried forever; it
/// returns an error only when the read model itself fails, since acking
/// what was not kept would lose events.
pub async fn run<M: Projector>(options: ConsumerOptions, model: Arc<M>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let name = model.name();
    let client = broker::connect(&options.url, &format!("sagaflow-consumer-{name}"), options.backoff_max).await?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(5)).build(client);
    let mut backoff = Backoff::new(Duration::from_millis(50), options.backoff_max);
    tracing::info!(consumer = name, url = %options.url, "consumer started");
    while !*stop.borrow() {
        let mut messages = match subscribe(&js, &options, name).await {
            Ok(messages) => messages,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(consumer = name, error = %e, retry_in = ?delay, "cannot subscribe");
                tokio::select! {
                    // A dropped sender stops the consumer too, rather than spin.
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        let mut errors = 0;
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return stopped(name),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    errors = 0;
                    backoff.reset();
                    handle(&js, &options, model.as_ref(), message).await?;
                }
                Some(Err(e)) => {
                    // Missed heartbeats while the broker restarts, and the like;
                    // the subscription recovers by itself unless this persists.
                    errors += 1;
                    tracing::warn!(consumer = name, error = %e, "consumer stream error");
                    if errors >= MAX_STREAM_ERRORS {
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                }
                None => {
                    // The subscription ended; subscribe again, but never in a tight loop.
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            }
        }
    }
    stopped(name)
}

fn stopped(name: &str) -> Result<()> {
    tracing::info!(consumer = name, "consumer stopped");
    Ok(())
}

/// Binds (creating if needed) the streams and this consumer's durable pull consumer.
async fn subscribe(js: &jetstream::Context, options: &ConsumerOptions, name: &str) -> Result<pull::Stream> {
    // Create only if missing: the relay owns the events stream's settings.
    let stream = broker::ensure_stream(js, broker::events_stream(&RelayOptions::new(options.url.clone()))).await?;
    broker::ensure_stream(js, broker::dlq_stream()).await?;
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("Sagaflow read model: {name}")),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        // Unlimited on the server: this consumer counts deliveries itself and
        // dead-letters with the event's headers, which the server's own
        // max_deliver (a silent stop plus an advisory) would not.
        filter_subject: format!("{EVENTS_SUBJECT_PREFIX}>"),
        max_ack_pending: 1000,
        ..Default::default()
    };
    let consumer =
        stream.get_or_create_consumer(name, config).await.map_err(|e| Error::broker("create consumer", e))?;
    consumer.messages().await.map_err(|e| Error::broker("pull", e))
}

async fn handle<M: Projector>(
    js: &jetstream::Context,
    options: &ConsumerOptions,
    model: &M,
    message: Message,
) -> Result<()> {
    let name = model.name();
    let delivered = message.info().map_or(1, |info| info.delivered);
    let outcome = match Event::from_message(message.headers.as_ref(), &message.payload) {
        Ok(event) => model.apply(&event).await?,
        Err(reason) => Outcome::Rejected(reason),
    };
    let label = match &outcome {
        Outcome::Projected => "projected",
        Outcome::Duplicate => "duplicate",
        Outcome::Ignored => "ignored",
        Outcome::Rejected(_) => "rejected",
    };
    metrics::counter!("sagaflow_consumer_events_total", "consumer" => name, "outcome" => label).increment(1);
    let Outcome::Rejected(reason) = outcome else {
        // A lost ack only brings the event back, and its id makes that a no-op.
        if let Err(e) = message.ack().await {
            tracing::warn!(consumer = name, error = %e, "ack failed; the event will be redelivered");
        }
        return Ok(());
    };
    if delivered < options.max_deliveries {
        let delay = options.retry_delay(delivered);
        tracing::warn!(consumer = name, subject = %message.subject, delivered, %reason, retry_in = ?delay, "event failed");
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(consumer = name, error = %e, "nak failed; the event comes back after ack_wait");
        }
        return Ok(());
    }
    match dead_letter(js, name, &message, &reason, delivered).await {
        Ok(()) => {
            metrics::counter!("sagaflow_consumer_dead_lettered_total", "consumer" => name).increment(1);
            tracing::error!(consumer = name, subject = %message.subject, delivered, %reason, "event dead-lettered");
            // Term: never deliver it to this consumer again; the dead letter has it.
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(consumer = name, error = %e, "term failed; the event will be dead-lettered again");
            }
        }
        Err(e) => {
            // Without a dead letter the event must not be dropped: keep retrying.
            tracing::warn!(consumer = name, error = %e, "cannot dead-letter; retrying the event");
            let _ = message.ack_with(AckKind::Nak(Some(options.retry_max))).await;
        }
    }
    Ok(())
}

/// Publishes the failing event, with its original headers, to
/// `sagaflow.dlq.<consumer>` and waits for the PubAck.
async fn dead_letter(
    js: &jetstream::Context,
    name: &str,
    message: &Message,
    reason: &str,
    delivered: i64,
) -> Result<()> {
    let mut map = message.headers.clone().unwrap_or_default();
    let stream_seq = message.info().map_or(0, |info| info.stream_sequence);
    // One dead letter per stored copy: dead-lettering the same delivery
    // again (a crash before the term) is deduped, a replayed copy is not.
    map.insert(headers::MSG_ID, format!("dlq/{name}/{stream_seq}"));
    map.insert(headers::ORIGINAL_SUBJECT, message.subject.as_str());
    map.insert(headers::CONSUMER, name);
    map.insert(headers::FAILURE, broker::header_text(reason, 512));
    map.insert(headers::DELIVERIES, delivered.to_string());
    let publish = PublishMessage::build().payload(message.payload.clone()).headers(map);
    let ack = js
        .send_publish(format!("{DLQ_SUBJECT_PREFIX}{name}"), publish)
        .await
        .map_err(|e| Error::broker("dead-letter", e))?;
    ack.await.map_err(|e| Error::broker("dead-letter ack", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let options = ConsumerOptions::new("nats://x");
        let delays: Vec<u128> = (1..=6).map(|d| options.retry_delay(d).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000]);
    }
}
