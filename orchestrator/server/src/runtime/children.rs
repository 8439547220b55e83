//! Child sagas (ADR 0023). A parent's child step is a task that the
//! orchestrator runs itself, never a worker: it starts the child (the step's
//! idempotency key is the child's request id, so a retry or a restart finds
//! the same child) and reports to the parent when the child is held (its
//! steps done) or ended without completing. A held child waits for its
//! parent: released when the parent passes its pivot or closes, compensated
//! when the parent compensates the step. Every wait reads durable state and
//! is restarted by recovery, so a crash at any point resumes it.

use std::time::Duration;

use sagaflow_proto::v1::WorkflowStatus;
use sagaflow_workflows::{Action, CHILD_ACTIVITY, CHILD_COMPENSATION, PARENT_LABEL};

use super::timers::now_ms;
use super::{Error, Result, Runtime, StartRequest};
use crate::engine::{Input, Outcome, WorkflowState};
use crate::store::TaskRecord;

/// How long one wait for a workflow's progress lasts before it looks again.
const LOOK_AGAIN: Duration = Duration::from_secs(30);
/// The first wait before a child step tries again a node that could not
/// take it; doubled up to [`LOOK_AGAIN`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The worker id the history (and `describe`) names for a child step's task.
pub(super) const REPORTER: &str = "sagaflow.child";
/// The error type a parent's child step fails with when its child ended
/// without completing: it already undid itself, so the failure is definite.
const CHILD_FAILED: &str = "ChildFailed";

pub(super) fn is_child_task(task: &TaskRecord) -> bool {
    task.task.as_ref().is_some_and(|t| is_child_activity(&t.activity_type))
}

pub(super) fn is_child_activity(activity_type: &str) -> bool {
    activity_type == CHILD_ACTIVITY || activity_type == CHILD_COMPENSATION
}

/// A child's workflow id: its parent's, then the step's name.
pub fn child_id(parent: &str, step: &str) -> String {
    format!("{parent}.{step}")
}

impl Runtime {
    /// Runs a child step's task (or its compensation) in the background.
    pub(super) fn run_child_task(&self, record: &TaskRecord) {
        let Some(task) = record.task.clone() else { return };
        let runtime = self.clone();
        tokio::spawn(async move {
            let (parent, task_id) = (task.workflow_id.clone(), task.task_id.clone());
            let mut backoff = RETRY_FIRST;
            let outcome = loop {
                let outcome = if task.compensation {
                    runtime.compensate_child(&parent, &task.step).await
                } else {
                    runtime.run_child(&parent, &task).await
                };
                match outcome {
                    Ok(outcome) => break outcome,
                    // The child's shard changing hands: its next node answers
                    // shortly. Given up here once the parent's shard moved too,
                    // whose next node runs the step again.
                    Err(e) if e.is_transient() && runtime.inner.served.check(&parent).is_ok() => {
                        tracing::warn!(workflow_id = %parent, task_id, error = %e, "child step waits for the child's node");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(LOOK_AGAIN);
                    }
                    Err(e) => {
                        // Left pending: recovery runs it again, and the stuck
                        // detector flags the parent if it stays silent.
                        tracing::error!(workflow_id = %parent, task_id, error = %e, "child step could not be run");
                        return;
                    }
                }
            };
            let input = Input::ActivityOutcome {
                task_id: task_id.clone(),
                worker_id: REPORTER.into(),
                started_ms: now_ms(),
                outcome,
            };
            if let Err(e) = runtime.decide(&parent, input).await {
                tracing::error!(workflow_id = %parent, task_id, error = %e, "child step's outcome could not be recorded");
            }
        });
    }

    /// Starts the child (or finds it) and waits until it is held or ended.
    async fn run_child(&self, parent: &str, task: &sagaflow_proto::v1::ActivityTask) -> Result<Outcome> {
        let (parent_state, definition) = self.state(parent).await?;
        let step = definition.steps.iter().find(|s| s.name == task.step);
        let Some(Action::Child { workflow_type, version }) = step.map(|s| &s.action) else {
            return Err(Error::FailedPrecondition(format!("step {} of {parent} is not a child step", task.step)));
        };
        let refused = |why: String| Outcome::Failed { error_type: CHILD_FAILED.into(), message: why, retryable: false };
        // A child is undone with its parent, so it must be undoable as a whole.
        let pivot = self.registry().to_start(workflow_type, *version).map(|e| e.definition.pivot_index().is_some());
        match pivot {
            Ok(false) => {}
            Ok(true) => {
                return Ok(refused(format!(
                    "child saga {workflow_type} has a pivot: a child runs before its parent's pivot and must be undoable"
                )));
            }
            Err(e) => return Ok(refused(format!("child saga {workflow_type}: {e}"))),
        }
        let child = child_id(parent, &task.step);
        let request = StartRequest {
            workflow_type: workflow_type.clone(),
            request_id: task.idempotency_key.clone(),
            input: task.input.clone(),
            workflow_id: Some(child.clone()),
            labels: [(PARENT_LABEL.to_owned(), parent.to_owned())].into(),
            correlation_id: parent_state.correlation_id.clone(),
            traceparent: task.traceparent.clone(),
            parent_workflow_id: parent.to_owned(),
            redrive: None,
        };
        match self.start_workflow_version(request, *version).await {
            Ok(_) => {}
            Err(e @ (Error::InvalidArgument(_) | Error::NotFound(_) | Error::FailedPrecondition(_))) => {
                return Ok(refused(format!("child saga {workflow_type} could not start: {e}")));
            }
            Err(e) => return Err(e),
        }
        loop {
            let (state, _) = self.state(&child).await?;
            if state.held {
                return Ok(Outcome::Completed(state.result));
            }
            if state.is_terminal() {
                let status = sagaflow_proto::status_name(state.status);
                return Ok(refused(format!("child {child} ended {status}: {}", state.reason)));
            }
            self.wait_for_change(&child, state.last_seq, LOOK_AGAIN).await?;
        }
    }

    /// Has a held child undo its steps, and waits until it has.
    async fn compensate_child(&self, parent: &str, step: &str) -> Result<Outcome> {
        let child = child_id(parent, step);
        loop {
            let state = match self.state(&child).await {
                Ok((state, _)) => state,
                // Refused before it started: nothing to undo.
                Err(Error::NotFound(_)) => return Ok(Outcome::Completed("{}".into())),
                Err(e) => return Err(e),
            };
            if state.is_terminal() {
                // COMPENSATED (undone), or ended without completing (it undid
                // itself), or TERMINATED (an operator settles it by hand).
                let status = sagaflow_proto::status_name(state.status);
                return Ok(Outcome::Completed(serde_json::json!({ "child": child, "status": status }).to_string()));
            }
            // A paused child is compensated once an operator resumes it.
            if state.held && state.paused.is_none() {
                let reason = format!("parent {parent} is compensating");
                let decided = match self.elsewhere(&child) {
                    Some((shard, nodes)) => nodes.compensate_child(shard, &child, &reason).await,
                    None => self.decide(&child, Input::CompensateChild { reason }).await.map(drop),
                };
                match decided {
                    // Paused meanwhile: look again.
                    Ok(()) | Err(Error::FailedPrecondition(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            self.wait_for_change(&child, state.last_seq, LOOK_AGAIN).await?;
        }
    }

    /// Waits, in the background, until a held child's parent can no longer
    /// undo it (then releases it) or compensates it.
    pub(super) fn hold_for_parent(&self, child: &str) {
        let runtime = self.clone();
        let child = child.to_owned();
        tokio::spawn(async move {
            if let Err(e) = runtime.release_when_due(&child).await {
                // Recovery waits again after a restart.
                tracing::error!(workflow_id = %child, error = %e, "held child could not be released");
            }
        });
    }

    async fn release_when_due(&self, child: &str) -> Result<()> {
        let (state, definition) = self.state(child).await?;
        // After a restart the detector knows the child from its summary
        // alone: tell it that the child's silence is a wait for its parent.
        self.inner.stuck.observe(&state, &definition);
        loop {
            let (state, _) = self.state(child).await?;
            let Some(parent) = state.parent.clone().filter(|_| state.held) else { return Ok(()) };
            let parent_state = match self.state(&parent).await {
                Ok((parent_state, _)) => Some(parent_state),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            if parent_state.as_ref().is_none_or(past_undoing) {
                if state.paused.is_some() {
                    // Released once an operator resumes it.
                    self.wait_for_change(child, state.last_seq, LOOK_AGAIN).await?;
                    continue;
                }
                match self.decide(child, Input::Release).await {
                    Ok(_) => return Ok(()),
                    // Paused meanwhile: look again.
                    Err(Error::FailedPrecondition(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            let seen = parent_state.map_or(0, |p| p.last_seq);
            self.wait_for_change(&parent, seen, LOOK_AGAIN).await?;
        }
    }
}

/// A parent that passed its pivot, or closed without compensating, can no
/// longer undo its children. A parent that compensates undoes them itself.
fn past_undoing(parent: &WorkflowState) -> bool {
    parent.pivot_passed
        || matches!(parent.status, WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Terminated)
}
