//! Start-up after a stop or a crash: tasks go back to their queues (or stay
//! with the worker whose lease is still valid), timers are re-armed, and the
//! stuck detector learns what is open. Derived records can also be rebuilt
//! from the histories alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sagaflow_proto::v1::history_event::Attributes;

use super::shards::Deferred;
use super::timers::{Alarm, now_ms};
use super::{Error, Result, Runtime, records};
use crate::engine;
use crate::registry::Registry;
use crate::store::{Commit, Store};

/// Records read per call while recovering, so that no read holds the
/// whole of a large store at once.
const RECOVERY_PAGE: usize = 10_000;

/// How long reconnecting workers have to claim the leases they still hold
/// before those tasks go back to their queues. Longer than the SDK's
/// longest reconnect backoff (5 s), shorter than a typical start-to-close.
const RECLAIM_GRACE_MS: i64 = 8_000;

/// What a rebuild did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub workflows: usize,
    pub open: usize,
    pub tasks: usize,
    pub timers: usize,
    /// Workflows whose definition is not registered: their histories are kept,
    /// but their index rows cannot be derived.
    pub skipped: Vec<String>,
}

impl Runtime {
    /// At start: the pauses in force, then every workflow of the shards served.
    pub(super) async fn recover(&self) -> Result<()> {
        // Before any task is queued, so that none of a paused queue is handed out.
        self.restore_queue_pauses().await?;
        let served = &self.inner.served;
        let deferred = self.recover_where(&|workflow_id: &str| served.check(workflow_id).is_ok()).await?;
        self.resume_deferred(deferred);
        Ok(())
    }

    /// Queues the tasks, arms the timers and watches the open workflows of
    /// the workflows `wanted` names, a page at a time. What would decide on
    /// its own (a child step, a held child's wait) is returned, to start
    /// once those workflows are served.
    pub(super) async fn recover_where(&self, wanted: &(dyn Fn(&str) -> bool + Sync)) -> Result<Deferred> {
        let started = Instant::now();
        let mut deferred = Deferred::default();
        let now = now_ms();
        let store = &self.inner.store;
        let mut leases: HashMap<(String, String), crate::store::Lease> = HashMap::new();
        let mut after = None;
        loop {
            let page = store.leases(after.as_ref(), RECOVERY_PAGE).await?;
            let last_page = page.len() < RECOVERY_PAGE;
            after = page.last().map(|(wf, task, _)| (wf.clone(), task.clone()));
            leases
                .extend(page.into_iter().filter(|(wf, _, _)| wanted(wf)).map(|(wf, task, lease)| ((wf, task), lease)));
            if last_page {
                break;
            }
        }
        let (mut tasks, mut after) = (0usize, None);
        loop {
            let page = store.tasks(after.as_ref(), RECOVERY_PAGE).await?;
            for task in page.iter().filter(|t| wanted(t.workflow_id())) {
                tasks += 1;
                let key = (task.workflow_id().to_owned(), task.task_id().to_owned());
                match leases.remove(&key) {
                    // A lease that expired while we were down fires at once.
                    Some(lease) if lease.expires_ms > 0 => {
                        self.inner.dispatch.restore_leased(task, &lease);
                        let (workflow_id, task_id) = key;
                        self.inner.timers.arm(now + RECLAIM_GRACE_MS, Alarm::Reclaim { workflow_id, task_id });
                    }
                    // The orchestrator's own tasks (a child step) run again here.
                    _ if super::children::is_child_task(task) => deferred.child_tasks.push(task.clone()),
                    _ => self.inner.dispatch.enqueue(task, now),
                }
            }
            if page.len() < RECOVERY_PAGE {
                break;
            }
            after = page.last().map(|t| (t.workflow_id().to_owned(), t.task_id().to_owned()));
        }
        let (mut timers, mut after) = (0usize, None);
        loop {
            let page = store.timers(after.as_ref(), RECOVERY_PAGE).await?;
            for timer in page.iter().filter(|t| wanted(&t.workflow_id)) {
                timers += 1;
                self.inner.timers.arm(
                    timer.fire_at_ms,
                    Alarm::Workflow { workflow_id: timer.workflow_id.clone(), timer_id: timer.timer_id.clone() },
                );
            }
            if page.len() < RECOVERY_PAGE {
                break;
            }
            after = page.last().cloned();
        }
        let (mut open, mut after) = (0usize, None::<String>);
        loop {
            let page = store.open_workflows(after.as_deref(), RECOVERY_PAGE).await?;
            for workflow_id in page.iter().filter(|wf| wanted(wf)) {
                open += 1;
                if let Some(summary) = store.summary(workflow_id).await? {
                    self.inner.stuck.observe_summary(&summary);
                    // A child may be held for its parent: wait for the parent again.
                    if summary.labels.contains_key(sagaflow_workflows::PARENT_LABEL) {
                        deferred.held_children.push(workflow_id.clone());
                    }
                }
            }
            if page.len() < RECOVERY_PAGE {
                break;
            }
            after = page.last().cloned();
        }
        tracing::info!(tasks, timers, open, elapsed_ms = started.elapsed().as_millis(), "recovered");
        Ok(deferred)
    }
}

/// Replays every history and rewrites the derived records from scratch.
/// Run it offline (no server on the same data directory). `registry` holds
/// the built-in definitions; the stored ones are added to it here.
pub async fn rebuild_derived(store: &Arc<dyn Store>, registry: &Registry) -> Result<RebuildReport> {
    let mut registry = registry.clone();
    super::load_stored(&**store, &mut registry).await.map_err(|e| Error::FailedPrecondition(e.to_string()))?;
    store.clear_derived().await?;
    let mut report = RebuildReport::default();
    let mut ids = Vec::new();
    loop {
        let page = store.all_workflows(ids.last().map(String::as_str), RECOVERY_PAGE).await?;
        let last_page = page.len() < RECOVERY_PAGE;
        ids.extend(page);
        if last_page {
            break;
        }
    }
    for workflow_id in ids {
        let history = store.history(&workflow_id, 1, usize::MAX).await?;
        let Some(Attributes::WorkflowStarted(started)) = history.first().and_then(|e| e.attributes.as_ref()) else {
            report.skipped.push(workflow_id);
            continue;
        };
        let Some(definition) = registry.get(&started.workflow_type, started.definition_version) else {
            report.skipped.push(workflow_id);
            continue;
        };
        let state = engine::replay(&workflow_id, &history, &definition);
        let delta = records::delta(&records::Derived::default(), &state, &definition);
        report.workflows += 1;
        report.open += usize::from(!state.is_terminal());
        report.tasks += delta.new_tasks.len();
        report.timers += delta.new_timers.len();
        let commit = Commit {
            workflow_id: workflow_id.clone(),
            summary: Some(records::summary(&state, &definition)),
            request_id: Some(started.request_id.clone()),
            put_tasks: delta.new_tasks,
            put_timers: delta.new_timers,
            ..Commit::default()
        };
        store.commit(commit).await.map_err(Error::Store)?.wait().await?;
    }
    Ok(report)
}
