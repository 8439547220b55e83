//! `sagaflow.v1.EventService`: the outbox as a resumable stream.

use std::pin::Pin;
use std::time::Duration;

use sagaflow_proto::v1::event_service_server::EventService;
use sagaflow_proto::v1::{DomainEvent, StreamEventsRequest};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runtime::Runtime;
use crate::store::OutboxRecord;

const PAGE: usize = 256;
/// A follower re-reads at least this often, even if no change was signalled.
const POLL: Duration = Duration::from_secs(1);

pub struct EventsApi {
    runtime: Runtime,
}

impl EventsApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

fn to_event(record: OutboxRecord) -> DomainEvent {
    DomainEvent {
        seq: record.seq,
        event_id: record.event_id,
        event_type: record.event_type,
        workflow_id: record.workflow_id,
        workflow_seq: record.workflow_seq,
        correlation_id: record.correlation_id,
        payload: record.payload,
        time_ms: record.time_ms,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<DomainEvent, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventsApi {
    type StreamEventsStream = EventStream;

    async fn stream_events(&self, request: Request<StreamEventsRequest>) -> Result<Response<EventStream>, Status> {
        let StreamEventsRequest { after_seq, follow } = request.into_inner();
        let runtime = self.runtime.clone();
        // Bounded: a slow reader slows its own stream, nothing else.
        let (tx, rx) = mpsc::channel(PAGE);
        tokio::spawn(async move {
            let mut changes = runtime.outbox_changes();
            let mut cursor = after_seq;
            loop {
                changes.mark_unchanged();
                // Only durable records are shown.
                let page = match runtime.outbox_page(cursor, PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                };
                let full = page.len() == PAGE;
                for record in page {
                    cursor = record.seq;
                    if tx.send(Ok(to_event(record))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
