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

/// Metadata of an OUT_OF_RANGE answer, for clients that resume on their own:
/// the pruned floor (resume after it) and the oldest event still kept.
pub const FLOOR_HEADER: &str = "sagaflow-outbox-floor";
pub const OLDEST_HEADER: &str = "sagaflow-outbox-oldest";

/// `Some(OUT_OF_RANGE)` when records after `cursor` were pruned (no broker,
/// past `--outbox-retention`) before this reader saw them: skipping them in
/// silence would hand it a gap it cannot see.
async fn behind_floor(runtime: &Runtime, cursor: u64) -> Result<Option<Status>, Status> {
    let floor = runtime.outbox_floor().await.map_err(|e| Status::unavailable(e.to_string()))?;
    if cursor >= floor {
        return Ok(None);
    }
    let oldest = runtime.outbox_floor_record(floor).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let kept =
        oldest.map_or_else(|| "no event is kept yet".to_owned(), |seq| format!("the oldest event kept is seq {seq}"));
    let mut status = Status::out_of_range(format!(
        "the events after seq {cursor} up to seq {floor} were deleted (older than the server's \
         --outbox-retention, with no broker to relay them) before this reader saw them; {kept}. Resume after \
         the floor, with after_seq {floor}, and reconcile what was missed"
    ));
    status.metadata_mut().insert(FLOOR_HEADER, floor.into());
    if let Some(seq) = oldest {
        status.metadata_mut().insert(OLDEST_HEADER, seq.into());
    }
    Ok(Some(status))
}

#[tonic::async_trait]
impl EventService for EventsApi {
    type StreamEventsStream = EventStream;

    async fn stream_events(&self, request: Request<StreamEventsRequest>) -> Result<Response<EventStream>, Status> {
        let StreamEventsRequest { after_seq, follow } = request.into_inner();
        let runtime = self.runtime.clone();
        // Refused before the stream opens, so that a client sees the status at once.
        if let Some(status) = behind_floor(&runtime, after_seq).await? {
            return Err(status);
        }
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
                // After the read: pruning deletes records and raises the floor
                // in one batch, so a page that missed a pruned record sees
                // the floor above its cursor here.
                match behind_floor(&runtime, cursor).await {
                    Ok(None) => {}
                    Ok(Some(status)) | Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
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
