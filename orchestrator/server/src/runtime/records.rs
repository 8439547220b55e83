//! Derived records as functions of a workflow's state: what the store keeps
//! beside the history, and what recovery and rebuilds read back.

use std::collections::{BTreeMap, BTreeSet};

use sagaflow_proto::v1::{ActivityTask, WorkflowSummary};
use sagaflow_workflows::SagaDefinition;

use crate::engine::{PendingTask, WorkflowState};
use crate::store::{TaskRecord, TimerRecord};

fn add(at: i64, budget_ms: u64) -> i64 {
    if budget_ms == 0 { 0 } else { at.saturating_add(i64::try_from(budget_ms).unwrap_or(i64::MAX)) }
}

pub fn task_record(state: &WorkflowState, definition: &SagaDefinition, task: &PendingTask) -> TaskRecord {
    let step = definition.steps.get(task.step_index);
    let timeouts = step
        .map(|s| match (&s.compensation, task.compensation) {
            (Some(c), true) => c.timeouts,
            _ => s.timeouts,
        })
        .unwrap_or_default();
    let first_scheduled =
        state.track(task.step_index, task.compensation).map_or(task.scheduled_ms, |t| t.first_scheduled_ms);
    TaskRecord {
        task: Some(ActivityTask {
            workflow_id: state.workflow_id.clone(),
            task_id: task.task_id.clone(),
            workflow_type: state.workflow_type.clone(),
            activity_type: task.activity_type.clone(),
            step: step.map(|s| s.name.clone()).unwrap_or_default(),
            attempt: task.attempt,
            compensation: task.compensation,
            input: task.input.clone(),
            idempotency_key: task.idempotency_key.clone(),
            correlation_id: state.correlation_id.clone(),
            traceparent: crate::telemetry::workflow_trace(&state.workflow_id, &state.traceparent).context.to_string(),
            start_to_close_ms: u32::try_from(timeouts.start_to_close_ms).unwrap_or(u32::MAX),
            heartbeat_ms: u32::try_from(timeouts.heartbeat_ms).unwrap_or(u32::MAX),
            // Minted per lease, when the task is handed to a worker.
            lease_token: String::new(),
        }),
        scheduled_ms: task.scheduled_ms,
        schedule_to_start_deadline_ms: add(task.scheduled_ms, timeouts.schedule_to_start_ms),
        schedule_to_close_deadline_ms: add(first_scheduled, timeouts.schedule_to_close_ms),
    }
}

pub fn timer_records(state: &WorkflowState) -> BTreeSet<TimerRecord> {
    state
        .timers
        .iter()
        .map(|(id, at)| (id.clone(), *at))
        .chain(state.retry_timers())
        .map(|(timer_id, fire_at_ms)| TimerRecord { fire_at_ms, workflow_id: state.workflow_id.clone(), timer_id })
        .collect()
}

/// The step an operator should look at.
fn current_step(state: &WorkflowState, definition: &SagaDefinition) -> String {
    if state.is_terminal() {
        return String::new();
    }
    let name = |i: usize| definition.steps.get(i).map(|s| s.name.clone()).unwrap_or_default();
    if let Some(plan) = &state.compensation_plan {
        return plan
            .iter()
            .find(|&&i| state.steps[i].status != crate::engine::StepStatus::Compensated)
            .map(|&i| format!("undo {}", name(i)))
            .unwrap_or_default();
    }
    if state.held {
        return format!("(held for parent {})", state.parent.as_deref().unwrap_or_default());
    }
    state.cursor().map(name).unwrap_or_default()
}

pub fn summary(state: &WorkflowState, definition: &SagaDefinition) -> WorkflowSummary {
    let (stuck_reason, stuck_message) =
        state.stuck.as_ref().map(|(r, m, _)| (r.clone(), m.clone())).unwrap_or_default();
    WorkflowSummary {
        workflow_id: state.workflow_id.clone(),
        workflow_type: state.workflow_type.clone(),
        definition_version: state.version,
        status: state.status as i32,
        request_id: state.request_id.clone(),
        labels: state.labels.clone().into_iter().collect(),
        started_ms: state.started_ms,
        updated_ms: state.updated_ms,
        closed_ms: state.closed_ms,
        history_length: state.last_seq,
        stuck_reason,
        stuck_message,
        correlation_id: state.correlation_id.clone(),
        current_step: current_step(state, definition),
        paused_reason: state.paused.clone().unwrap_or_default(),
    }
}

/// What changed in the derived records between two states of one workflow.
#[derive(Debug, Default)]
pub struct Delta {
    pub new_tasks: Vec<TaskRecord>,
    pub gone_tasks: Vec<String>,
    pub new_timers: Vec<TimerRecord>,
    pub gone_timers: Vec<TimerRecord>,
}

/// The derived records of one state, for diffing.
#[derive(Debug, Default, Clone)]
pub struct Derived {
    pub tasks: BTreeSet<String>,
    pub timers: BTreeSet<TimerRecord>,
}

pub fn derived(state: &WorkflowState) -> Derived {
    Derived { tasks: state.tasks.keys().cloned().collect(), timers: timer_records(state) }
}

pub fn delta(before: &Derived, after: &WorkflowState, definition: &SagaDefinition) -> Delta {
    let now = derived(after);
    let tasks: BTreeMap<&String, &PendingTask> = after.tasks.iter().collect();
    Delta {
        new_tasks: now
            .tasks
            .difference(&before.tasks)
            .filter_map(|id| tasks.get(id))
            .map(|t| task_record(after, definition, t))
            .collect(),
        gone_tasks: before.tasks.difference(&now.tasks).cloned().collect(),
        new_timers: now.timers.difference(&before.timers).cloned().collect(),
        gone_timers: before.timers.difference(&now.timers).cloned().collect(),
    }
}
