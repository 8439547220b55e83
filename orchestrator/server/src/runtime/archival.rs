//! Archival (`--archive-dir`, ADR 0026): a closed workflow's history is
//! appended to the archive, durably, before its deletion commits, and read
//! back from there once it is gone.

use std::sync::Arc;

use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};

use super::timers::now_ms;
use super::{Error, Result, Runtime};
use crate::archive::{self, Archive, ArchivedWorkflow};

/// Runs archive I/O off the async threads.
async fn blocking<T: Send + 'static>(
    archive: &Arc<Archive>,
    work: impl FnOnce(&Archive) -> Result<T, archive::Error> + Send + 'static,
) -> Result<T, archive::Error> {
    let archive = Arc::clone(archive);
    tokio::task::spawn_blocking(move || work(&archive)).await.map_err(|e| archive::Error::Task(e.to_string()))?
}

impl Runtime {
    /// Whether closed workflows are archived before they are deleted.
    pub fn archives(&self) -> bool {
        self.inner.archive.is_some()
    }

    /// Appends the closed workflow's whole history to the archive and
    /// returns once it is on disk; nothing without an archive. Called under
    /// the workflow's lock, so that nothing is appended meanwhile.
    pub(super) async fn archive_before_delete(&self, summary: &WorkflowSummary) -> Result<()> {
        let Some(archive) = &self.inner.archive else { return Ok(()) };
        let history = self.inner.store.history(&summary.workflow_id, 1, usize::MAX).await?;
        let record = ArchivedWorkflow::new(summary, &history, now_ms());
        let path = blocking(archive, move |archive| archive.append(&record)).await?;
        crate::metrics::record_archived(&summary.workflow_type);
        tracing::debug!(workflow_id = %summary.workflow_id, path = %path.display(), "workflow archived");
        Ok(())
    }

    /// The archived record of a deleted workflow and its history: the most
    /// recently archived one of that id. FAILED_PRECONDITION on a server
    /// that does not archive, NOT_FOUND when the archive has no such id.
    pub async fn archived_history(&self, workflow_id: &str) -> Result<(ArchivedWorkflow, Vec<HistoryEvent>)> {
        let Some(archive) = &self.inner.archive else {
            return Err(Error::FailedPrecondition(
                "this server archives nothing (it runs without --archive-dir), so there is no archived history \
                 to read; read the live history without --archived"
                    .into(),
            ));
        };
        let id = workflow_id.to_owned();
        let found = blocking(archive, move |archive| archive.find(&id)).await?;
        for damage in &found.damage {
            tracing::warn!(%damage, "skipped an unreadable part of the archive");
        }
        let Some(record) = found.record else {
            // Worded as the API words another client's workflow, so that
            // the answer tells a client nothing about who else archived what.
            return Err(Error::NotFound(format!("workflow {workflow_id} is not in the archive")));
        };
        let history = record.history()?;
        Ok((record, history))
    }
}
