//! The pure decision core. `state.rs` folds events into state; `decide.rs`
//! turns an input and the state into new events. Nothing here does I/O, so
//! the whole saga semantics is tested with tables and property tests.

mod decide;
mod redrive;
mod state;
#[cfg(test)]
mod tests;

pub use decide::{
    Input, Outcome, Rejection, Resolution, StuckReason, TimeoutKind, decide, handle, run,
    timeout_leaves_outcome_unknown,
};
pub use redrive::{RedrivePlan, Unredrivable, redrive_plan};
pub use state::{
    PendingTask, RETRY_SIGNAL, SIGNAL_TIMEOUT, StepState, StepStatus, Track, WorkflowState, is_side_task,
    parse_task_id, task_id,
};

use sagaflow_proto::v1::{HistoryEvent, WorkflowStarted, history_event::Attributes};
use sagaflow_workflows::SagaDefinition;

/// Starts a workflow: its first event, and whatever follows at once.
pub fn start(
    workflow_id: &str,
    started: WorkflowStarted,
    definition: &SagaDefinition,
    now: i64,
) -> (WorkflowState, Vec<HistoryEvent>) {
    let mut state = WorkflowState::empty(workflow_id);
    let first = HistoryEvent { seq: 1, time_ms: now, attributes: Some(Attributes::WorkflowStarted(started)) };
    state.apply(&first, definition);
    let mut events = vec![first];
    // `Wake` is never rejected.
    if let Ok(more) = run(&mut state, definition, Input::Wake, now) {
        events.extend(more);
    }
    (state, events)
}

/// Rebuilds a state from a stored history.
pub fn replay(workflow_id: &str, history: &[HistoryEvent], definition: &SagaDefinition) -> WorkflowState {
    let mut state = WorkflowState::empty(workflow_id);
    for event in history {
        state.apply(event, definition);
    }
    state
}
