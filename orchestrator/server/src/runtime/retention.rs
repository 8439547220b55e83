//! Retention: closed workflows are deleted once their saga's retention (or
//! the server's default) has passed since they closed. A background pass
//! pages through the index and deletes each expired workflow in its own
//! commit ([`Runtime::delete_workflow`]), many at once so that they share
//! syncs, so a crash at any point leaves
//! every workflow either whole or gone, and the next pass goes on. Commits of
//! live workflows share the group commit with it and never wait for a pass.
//!
//! Without a broker the same pass also prunes the outbox: no relay deletes
//! its records, so those older than `outbox` go, oldest first, and the store
//! keeps the highest seq pruned (the floor) for readers that resume (ADR 0026).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::timers::now_ms;
use super::{Error, Result, Runtime};
use crate::store::{ListQuery, WorkflowFilter};

/// Index rows read per page of a pass.
const PAGE: usize = 500;
/// Index rows a page may scan past (open or young workflows) before it
/// yields, so that a pass never holds the store for long.
const SCAN_BUDGET: usize = 20_000;

/// Deletions of one pass in flight at once.
const DELETING_AT_ONCE: usize = 64;

/// Counts one finished deletion, and keeps the first failure.
fn tally(
    joined: std::result::Result<(String, Result<()>), tokio::task::JoinError>,
    deleted: &mut usize,
    failure: &mut Option<Error>,
) {
    match joined {
        Ok((workflow_type, Ok(()))) => {
            *deleted += 1;
            crate::metrics::record_expired(&workflow_type);
        }
        // Deleted meanwhile (by an operator, say).
        Ok((_, Err(Error::NotFound(_)))) => {}
        Ok((_, Err(e))) => {
            failure.get_or_insert(e);
        }
        // The runtime is shutting down; a deletion is one commit, whole or
        // not at all, and the next start's pass finds what is left.
        Err(e) if e.is_cancelled() => tracing::debug!("a deletion was cancelled by the shutdown"),
        Err(e) => tracing::error!(error = %e, "a deletion panicked; the next pass retries it"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// How long a closed workflow is kept when its saga sets no `retention_ms`.
    pub default: Duration,
    /// How often a pass runs.
    pub interval: Duration,
    /// How long an outbox record is kept when no broker takes it; `None`
    /// prunes nothing (the server relays to a broker, which deletes each
    /// record once acknowledged).
    #[serde(default)]
    pub outbox: Option<Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(60),
            outbox: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl Runtime {
    /// Runs a pass every `policy.interval`, for the life of the server.
    pub async fn expire_closed_workflows(self, policy: RetentionPolicy) {
        let mut ticker = tokio::time::interval(policy.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.expire_once(policy.default).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "closed workflows past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one goes on"),
            }
            // One pruner for the cluster: the node that serves shard 0.
            let Some(outbox) = policy.outbox.filter(|_| self.serves_shard(0)) else { continue };
            match self.prune_outbox_once(outbox).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "outbox records past --outbox-retention deleted"),
                Err(e) => tracing::warn!(error = %e, "outbox pruning failed; the next pass goes on"),
            }
        }
    }

    /// Deletes the outbox records older than `keep`, oldest first, and
    /// stops at the first younger one: what goes is always a prefix of the
    /// outbox, so the floor the store keeps (the highest seq pruned) tells a
    /// reader exactly which cursors missed records. Records are numbered in
    /// commit order and stamped at their decision, so a younger record
    /// before an older one only holds the older one back until the next pass.
    pub async fn prune_outbox_once(&self, keep: Duration) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let mut pruned = 0u64;
        loop {
            // Pruned records are gone, so the oldest kept comes first.
            let page = self.inner.store.outbox(0, PAGE).await?;
            let old: Vec<u64> = page.iter().take_while(|r| r.time_ms < cutoff).map(|r| r.seq).collect();
            if old.is_empty() {
                return Ok(pruned);
            }
            self.inner.store.prune_outbox(&old).await?.wait().await?;
            pruned += old.len() as u64;
            crate::metrics::record_outbox_pruned(old.len());
            if old.len() < page.len() || page.len() < PAGE {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Deletes a page of expired workflows, [`DELETING_AT_ONCE`] at a time:
    /// each deletion is its own commit, and commits in flight together share
    /// one sync. One at a time, a pass deleted about 450 workflows a second
    /// and fell behind a load that closed 600 (`bench --phase soak`).
    async fn delete_expired(&self, page: Vec<sagaflow_proto::v1::WorkflowSummary>) -> Result<usize> {
        let mut deletions = tokio::task::JoinSet::new();
        let mut deleted = 0;
        let mut failure = None;
        for summary in page {
            if deletions.len() >= DELETING_AT_ONCE
                && let Some(joined) = deletions.join_next().await
            {
                tally(joined, &mut deleted, &mut failure);
            }
            let runtime = self.clone();
            deletions.spawn(async move {
                let result = runtime.delete_workflow(&summary.workflow_id).await;
                (summary.workflow_type, result)
            });
        }
        while let Some(joined) = deletions.join_next().await {
            tally(joined, &mut deleted, &mut failure);
        }
        failure.map_or(Ok(deleted), Err)
    }

    /// One pass: deletes every closed workflow whose retention has passed,
    /// and returns how many.
    pub async fn expire_once(&self, default: Duration) -> Result<usize> {
        let default_ms = i64::try_from(default.as_millis()).unwrap_or(i64::MAX);
        let mut after: Option<String> = None;
        let mut deleted = 0;
        loop {
            let now = now_ms();
            // Only closed workflows reach Rust; each one's own retention decides there.
            let query = ListQuery {
                after: after.clone(),
                limit: PAGE,
                scan_budget: SCAN_BUDGET,
                filter: WorkflowFilter { closed_at_or_before_ms: Some(now), ..WorkflowFilter::default() },
                ..ListQuery::default()
            };
            let mut page = self.inner.store.list(&query).await?;
            {
                let registry = self.registry();
                page.workflows.retain(|summary| {
                    // Another node's shard is its own to expire.
                    if self.inner.served.check(&summary.workflow_id).is_err() {
                        return false;
                    }
                    let retention = registry
                        .get(&summary.workflow_type, summary.definition_version)
                        .and_then(|d| d.retention_ms)
                        .map_or(default_ms, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
                    summary.closed_ms.saturating_add(retention) <= now
                });
            }
            deleted += self.delete_expired(page.workflows).await?;
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(deleted),
            }
            tokio::task::yield_now().await;
        }
    }
}
