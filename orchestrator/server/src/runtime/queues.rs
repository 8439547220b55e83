//! Pausing a whole activity queue, for a downstream that is broken: its tasks
//! stay queued, handed to no worker and failed by no queue-side deadline,
//! until an operator resumes it. The pause is a store record, durable before
//! the call answers, so a restart restores it before any task is queued.

use super::timers::now_ms;
use super::{Result, Runtime};
use crate::store::{Commit, QueuePauseRecord};

impl Runtime {
    /// Pauses `queue`; false when it was already paused (the record keeps
    /// its first reason).
    pub async fn pause_queue(&self, queue: &str, reason: &str, identity: &str) -> Result<bool> {
        let _serialised = self.inner.pausing.lock().await;
        if self.inner.dispatch.is_paused(queue) {
            return Ok(false);
        }
        let record = QueuePauseRecord {
            queue: queue.to_owned(),
            reason: reason.to_owned(),
            identity: identity.to_owned(),
            paused_ms: now_ms(),
        };
        self.inner.store.commit(Commit::queue_pause(Some(record.clone()), None)).await?.wait().await?;
        tracing::warn!(queue, reason, identity, "activity queue paused");
        self.inner.dispatch.pause(record);
        crate::metrics::record_paused_queues(&self.inner.dispatch.paused_queues());
        Ok(true)
    }

    /// Resumes `queue`; false when it was not paused.
    pub async fn resume_queue(&self, queue: &str, identity: &str) -> Result<bool> {
        let _serialised = self.inner.pausing.lock().await;
        if !self.inner.dispatch.is_paused(queue) {
            return Ok(false);
        }
        self.inner.store.commit(Commit::queue_pause(None, Some(queue.to_owned()))).await?.wait().await?;
        tracing::info!(queue, identity, "activity queue resumed");
        self.inner.dispatch.resume(queue, now_ms());
        crate::metrics::record_paused_queues(&self.inner.dispatch.paused_queues());
        Ok(true)
    }

    /// At start, before any task is queued: the pauses in force.
    pub(super) async fn restore_queue_pauses(&self) -> Result<()> {
        for record in self.inner.store.queue_pauses().await? {
            self.inner.dispatch.pause(record);
        }
        crate::metrics::record_paused_queues(&self.inner.dispatch.paused_queues());
        Ok(())
    }
}
