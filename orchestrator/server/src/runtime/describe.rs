//! What `DescribeWorkflow` shows beyond the index row: pending activities
//! (with the worker that holds each), backoffs, step results and the reason.
//! Built here from the runtime's own state, so that the API never reaches
//! into dispatch.

use sagaflow_proto::v1::{DescribeWorkflowResponse, PendingActivity};

use super::dispatch::TaskState;
use super::{Result, Runtime};
use crate::engine::StepStatus;

impl Runtime {
    /// Everything of `DescribeWorkflow` but the summary, which the caller
    /// reads first (it decides who may see the workflow).
    pub async fn description(&self, workflow_id: &str) -> Result<DescribeWorkflowResponse> {
        let (state, definition) = self.state(workflow_id).await?;
        let step_name = |i: usize| definition.steps.get(i).map(|s| s.name.clone()).unwrap_or_default();
        let mut pending: Vec<PendingActivity> = state
            .tasks
            .values()
            .map(|task| {
                let view = self.dispatch().view(workflow_id, &task.task_id);
                let (task_state, worker_id) = match view.map(|v| v.state) {
                    Some(TaskState::Leased { worker_id, .. }) => ("LEASED", worker_id),
                    // A child step's task is held by the orchestrator itself.
                    None if super::children::is_child_activity(&task.activity_type) => {
                        ("LEASED", super::children::REPORTER.to_owned())
                    }
                    _ => ("QUEUED", String::new()),
                };
                PendingActivity {
                    task_id: task.task_id.clone(),
                    step: step_name(task.step_index),
                    activity_type: task.activity_type.clone(),
                    attempt: task.attempt,
                    compensation: task.compensation,
                    state: task_state.into(),
                    worker_id,
                    scheduled_ms: task.scheduled_ms,
                    next_attempt_ms: 0,
                    last_failure: state
                        .track(task.step_index, task.compensation)
                        .map(|t| t.last_failure.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        for (index, step) in state.steps.iter().enumerate() {
            for (track, compensation) in [(&step.forward, false), (&step.undo, true)] {
                if let Some(at) = track.retry_at {
                    pending.push(PendingActivity {
                        task_id: crate::engine::task_id(index, compensation, track.attempt + 1),
                        step: step_name(index),
                        activity_type: definition
                            .steps
                            .get(index)
                            .and_then(|s| s.activity_type())
                            .unwrap_or_default()
                            .into(),
                        attempt: track.attempt + 1,
                        compensation,
                        state: "BACKOFF".into(),
                        next_attempt_ms: at,
                        last_failure: track.last_failure.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        let step_results = definition
            .steps
            .iter()
            .zip(&state.steps)
            .filter(|(_, s)| s.status == StepStatus::Completed || s.status == StepStatus::Compensated)
            .filter_map(|(d, _)| {
                state.context.0.pointer(&format!("/steps/{}", d.name)).map(|v| (d.name.clone(), v.to_string()))
            })
            .collect();
        Ok(DescribeWorkflowResponse {
            summary: None,
            pending_activities: pending,
            result: state.result.clone(),
            reason: if state.reason.is_empty() { state.compensation_reason.clone() } else { state.reason.clone() },
            step_results,
        })
    }
}
