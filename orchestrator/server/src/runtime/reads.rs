//! What the API and extensions read, through the runtime; they never hold
//! the store. No reply may show what a crash could undo: scans wait for the
//! durability barrier here, and point reads follow a
//! [`describe`](Runtime::describe), which waited on it.

use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};

use super::{Result, Runtime, outbox};
use crate::store::{IndexPage, ListQuery, OutboxRecord};

impl Runtime {
    /// Events `from_seq..` of a workflow, at most `limit`. Read after
    /// [`describe`](Runtime::describe) (which waits on the barrier), so that
    /// a terminal summary means no event follows these.
    pub async fn history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>> {
        Ok(self.inner.store.history(workflow_id, from_seq, limit).await?)
    }

    /// A workflow's index row, if it exists; not behind the barrier, for
    /// jobs that read many (each reply of theirs waits on its own commit).
    pub async fn summary(&self, workflow_id: &str) -> Result<Option<WorkflowSummary>> {
        Ok(self.inner.store.summary(workflow_id).await?)
    }

    /// The workflow a start's request id created, if any.
    pub async fn workflow_for_request(&self, request_id: &str) -> Result<Option<String>> {
        Ok(self.inner.store.workflow_for_request(request_id).await?)
    }

    /// A page of the workflow index, after the barrier. See
    /// [`ListQuery`] for the bounds.
    pub async fn list(&self, query: &ListQuery) -> Result<IndexPage> {
        self.inner.store.barrier().wait().await?;
        Ok(self.inner.store.list(query).await?)
    }

    /// The highest outbox seq pruned unrelayed (no broker), 0 if none: a
    /// cursor below it has missed records.
    pub async fn outbox_floor(&self) -> Result<u64> {
        Ok(self.inner.store.outbox_floor().await?)
    }

    /// The seq of the oldest outbox record kept above `floor`, if any.
    pub async fn outbox_floor_record(&self, floor: u64) -> Result<Option<u64>> {
        Ok(self.inner.store.outbox(floor, 1).await?.first().map(|r| r.seq))
    }

    /// Outbox records after `after`, at most `limit`, only durable ones.
    pub async fn outbox_page(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>> {
        self.inner.store.barrier().wait().await?;
        Ok(self.inner.store.outbox(after, limit).await?)
    }

    /// The domain events a workflow's history publishes, in order, derived
    /// as its commits derived them for the outbox (the records' `seq` is 0:
    /// the outbox numbers them, and may have relayed and dropped them).
    pub async fn domain_events_of(&self, workflow_id: &str) -> Result<Vec<OutboxRecord>> {
        let (state, definition) = self.state(workflow_id).await?;
        let history = self.history(workflow_id, 1, usize::MAX).await?;
        Ok(outbox::domain_events(&state, &definition, &history))
    }
}
