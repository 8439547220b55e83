//! `sagaflow events tail`: read the outbox's domain events.

use clap::Subcommand;
use sagaflow_proto::v1::StreamEventsRequest;
use sagaflow_proto::v1::event_service_client::EventServiceClient;
use serde_json::json;

use super::Output;
use super::render::{json_text, timestamp};
use super::workflow::{connect_channel, status_error};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print domain events in outbox order (CheckoutStarted, PaymentCaptured, …).
    Tail {
        /// Resume after this outbox sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep printing new events as they are committed.
        #[arg(long)]
        follow: bool,
    },
}

pub async fn run(command: EventsCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let EventsCommand::Tail { after, follow } = command;
    let mut client = EventServiceClient::new(connect_channel(server).await?);
    let mut stream = client
        .stream_events(StreamEventsRequest { after_seq: after, follow })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        match output {
            Output::Json => outln!(
                "{}",
                json!({
                    "seq": event.seq, "event_id": event.event_id, "type": event.event_type,
                    "workflow_id": event.workflow_id, "workflow_seq": event.workflow_seq,
                    "correlation_id": event.correlation_id, "time": timestamp(event.time_ms),
                    "payload": json_text(&event.payload),
                })
            ),
            Output::Text => outln!(
                "#{:<6} {}  {:<20} {}  {}",
                event.seq,
                timestamp(event.time_ms),
                event.event_type,
                event.workflow_id,
                json_text(&event.payload)["data"]
            ),
        }
    }
    Ok(())
}
