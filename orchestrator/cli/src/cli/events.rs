//! `sagaflow events tail`: read the outbox's domain events.

use clap::Subcommand;
use sagaflow_proto::v1::StreamEventsRequest;
use sagaflow_proto::v1::event_service_client::EventServiceClient;
use serde_json::json;

use super::Output;
use super::render::{json_text, timestamp};
use super::workflow::{connect_channel, status_error};
use sagaflow_server::api::{FLOOR_HEADER, OLDEST_HEADER};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print domain events in outbox order (CheckoutStarted, PaymentCaptured, …).
    Tail {
        /// Resume after this outbox sequence number (0: from the start). Without a broker the
        /// server deletes events past its --outbox-retention; a cursor below what it deleted
        /// fails (OUT_OF_RANGE) and names the seq to restart after.
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
        .map_err(|status| tail_error(status, follow))?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(|status| tail_error(status, follow))? {
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

/// A status as the CLI reports it; OUT_OF_RANGE (events deleted before this
/// reader saw them) says which command restarts from the floor.
fn tail_error(status: tonic::Status, follow: bool) -> anyhow::Error {
    if status.code() != tonic::Code::OutOfRange {
        return status_error(status);
    }
    let header = |name| status.metadata().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(floor) = header(FLOOR_HEADER) else { return status_error(status) };
    let kept =
        header(OLDEST_HEADER).map_or_else(|| "none is kept yet".to_owned(), |seq| format!("the oldest kept is #{seq}"));
    let follow = if follow { " --follow" } else { "" };
    super::Failure::Status {
        code: "OUT_OF_RANGE".into(),
        message: format!(
            "events up to #{floor} were deleted by the server (older than its --outbox-retention, no broker) \
             before this reader saw them; {kept}. Restart from the floor: sagaflow events tail --after {floor}{follow} \
             (and reconcile what was missed)"
        ),
    }
    .into()
}
