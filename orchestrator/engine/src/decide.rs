//! The decision function: what happens next, given the state and an input.
//! Pure: no clock (the caller passes `now`), no I/O, no randomness.

use sagaflow_proto::v1::{
    ActivityCompleted, ActivityFailed, ActivityResolved, ActivityScheduled, ActivityStarted, ActivityTimedOut,
    CancelRefused, CancelRequested, CompensationStarted, CompletionIgnored, HistoryEvent, SignalReceived,
    StepEscalated, StepSkipped, StuckCleared, StuckDetected, TimerFired, TimerStarted, WorkflowCancelled,
    WorkflowCompensated, WorkflowCompleted, WorkflowFailed, WorkflowHeld, WorkflowPaused, WorkflowResumed,
    WorkflowTerminated, history_event::Attributes,
};
use sagaflow_workflows::{Action, InputSpec, RetryPolicy, SagaDefinition, Step, StepKind, Timeouts};

use super::state::{StepStatus, Track, WorkflowState, parse_task_id, signal_timer_id, sleep_timer_id, task_id};

/// What woke the workflow.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    ActivityOutcome {
        task_id: String,
        worker_id: String,
        started_ms: i64,
        outcome: Outcome,
    },
    TimedOut {
        task_id: String,
        timeout: TimeoutKind,
        /// Who held the lease, for the operator reading the history; empty if no one.
        worker_id: String,
    },
    TimerFired {
        timer_id: String,
    },
    Signal {
        name: String,
        input: String,
        identity: String,
    },
    Cancel {
        reason: String,
        identity: String,
    },
    Terminate {
        reason: String,
        identity: String,
    },
    Stuck {
        reason: StuckReason,
        message: String,
    },
    /// An operator's decision on what a step's attempts did (see [`Resolution`]).
    Resolve {
        step: String,
        resolution: Resolution,
        reason: String,
        identity: String,
    },
    /// An operator holds the workflow where it is (see [`WorkflowState::paused`]).
    Pause {
        reason: String,
        identity: String,
    },
    /// An operator lets a paused workflow go on.
    Resume {
        reason: String,
        identity: String,
    },
    /// A held child's parent can no longer undo it (it passed its pivot or
    /// closed): the child completes.
    Release,
    /// A held child's parent is compensating: the child undoes its steps.
    CompensateChild {
        reason: String,
    },
    /// Nothing new: decide again (after recovery, say).
    Wake,
}

/// What an operator says a step's attempts did, when no worker can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The effect took place; the JSON text is the step's result.
    Succeeded(String),
    /// Nothing was taken: the same as a non-retryable failure.
    Failed,
}

impl Resolution {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(String),
    Failed { error_type: String, message: String, retryable: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    ScheduleToStart,
    StartToClose,
    Heartbeat,
    ScheduleToClose,
}

/// Whether an attempt that timed out (`ActivityTimedOut.timeout_type`) may
/// have run, so that its outcome is unknown (ADR 0006). Only a
/// schedule-to-start deadline finds the attempt still in its queue: dispatch
/// applies it to a queued task alone, so no worker was ever handed it.
pub fn timeout_leaves_outcome_unknown(timeout_type: &str) -> bool {
    timeout_type != TimeoutKind::ScheduleToStart.as_str()
}

impl TimeoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScheduleToStart => "SCHEDULE_TO_START",
            Self::StartToClose => "START_TO_CLOSE",
            Self::Heartbeat => "HEARTBEAT",
            Self::ScheduleToClose => "SCHEDULE_TO_CLOSE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckReason {
    NoProgress,
    CompensationExhausted,
    NoWorker,
    NonRetryableAfterPivot,
    /// The pivot's retries are spent and no attempt gave a definite answer:
    /// it may have taken effect (money captured), so the saga neither
    /// compensates nor moves on until a definite answer or an operator's
    /// decision.
    PivotOutcomeUnknown,
    /// The same for a retriable step after the pivot whose budget is spent.
    StepOutcomeUnknown,
    /// The history reached its limit once the pivot had been attempted:
    /// failing there could keep money with no order, so the saga stops and
    /// waits for an operator instead (the runtime raises it).
    HistoryLimit,
}

impl StuckReason {
    /// Every reason, for the stuck gauge: a reason with no workflow reads 0,
    /// not absent, so that an alert on it can resolve.
    pub const ALL: [Self; 7] = [
        Self::NoProgress,
        Self::CompensationExhausted,
        Self::NoWorker,
        Self::NonRetryableAfterPivot,
        Self::PivotOutcomeUnknown,
        Self::StepOutcomeUnknown,
        Self::HistoryLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoProgress => "NO_PROGRESS",
            Self::CompensationExhausted => "COMPENSATION_EXHAUSTED",
            Self::NoWorker => "NO_WORKER",
            Self::NonRetryableAfterPivot => "NON_RETRYABLE_AFTER_PIVOT",
            Self::PivotOutcomeUnknown => "PIVOT_OUTCOME_UNKNOWN",
            Self::StepOutcomeUnknown => "STEP_OUTCOME_UNKNOWN",
            Self::HistoryLimit => "HISTORY_LIMIT",
        }
    }

    /// Whether only an operator moves such a saga on (a retry signal, a
    /// resolution), rather than time or a worker coming back.
    pub fn needs_an_operator(self) -> bool {
        matches!(
            self,
            Self::CompensationExhausted
                | Self::NonRetryableAfterPivot
                | Self::PivotOutcomeUnknown
                | Self::StepOutcomeUnknown
                | Self::HistoryLimit
        )
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Why an input was refused; the API maps these to gRPC statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("workflow is already {0}")]
    Terminal(&'static str),
    #[error("the workflow passed its pivot step ({0}); it can no longer be cancelled, only moved forward")]
    PastPivot(String),
    #[error("the workflow has no step {0:?}")]
    UnknownStep(String),
    /// A resolution that does not apply to the step as it is now.
    #[error("{0}")]
    NotResolvable(String),
    #[error("the workflow is a child saga held for its parent {0}: cancel or terminate the parent instead")]
    HeldByParent(String),
    /// A parent's release or compensation of a paused child waits for the resume.
    #[error("the workflow is paused ({0}): resume it first")]
    Paused(String),
}

/// Failures a worker reports for an attempt it cut off midway: its own
/// start-to-close timer fired, or the handler panicked. Either may come after
/// the effect, so they leave the outcome unknown, as a timeout here does.
const CUT_OFF: &[&str] = &[sagaflow_proto::error_types::START_TO_CLOSE_TIMEOUT, sagaflow_proto::error_types::PANIC];

/// A runaway decision loop would be a bug; this bounds it.
const MAX_ROUNDS: usize = 64;

/// Handles `input`, then decides until nothing more follows. Mutates `state`
/// as the returned events are applied; on a failed commit the caller drops it.
pub fn run(
    state: &mut WorkflowState,
    definition: &SagaDefinition,
    input: Input,
    now: i64,
) -> Result<Vec<HistoryEvent>, Rejection> {
    let mut events = Vec::new();
    for attributes in handle(state, definition, input, now)? {
        push(state, definition, &mut events, attributes, now);
    }
    for _ in 0..MAX_ROUNDS {
        let next = decide(state, definition, now);
        if next.is_empty() {
            break;
        }
        for attributes in next {
            push(state, definition, &mut events, attributes, now);
        }
    }
    Ok(events)
}

fn push(
    state: &mut WorkflowState,
    definition: &SagaDefinition,
    events: &mut Vec<HistoryEvent>,
    attributes: Attributes,
    now: i64,
) {
    let event = HistoryEvent { seq: state.last_seq + 1, time_ms: now, attributes: Some(attributes) };
    state.apply(&event, definition);
    events.push(event);
}

fn status_name(state: &WorkflowState) -> &'static str {
    sagaflow_proto::status_name(state.status)
}

/// Turns an input into the events that record it.
pub fn handle(
    state: &WorkflowState,
    definition: &SagaDefinition,
    input: Input,
    now: i64,
) -> Result<Vec<Attributes>, Rejection> {
    match input {
        Input::ActivityOutcome { task_id, worker_id, started_ms, outcome } => {
            Ok(handle_outcome(state, definition, task_id, worker_id, started_ms, outcome, now))
        }
        Input::TimedOut { task_id, timeout, worker_id } => {
            let Some(task) = state.tasks.get(&task_id) else {
                return Ok(Vec::new());
            };
            let retry = if timeout == TimeoutKind::ScheduleToClose || task.side {
                0
            } else {
                next_attempt_ms(state, definition, task.step_index, task.compensation, task.attempt, true, "", now)
            };
            let mut events = vec![Attributes::ActivityTimedOut(ActivityTimedOut {
                task_id: task_id.clone(),
                timeout_type: timeout.as_str().into(),
                next_attempt_ms: retry,
                worker_id,
            })];
            if !task.side {
                events.extend(escalation(state, definition, task.step_index, task.compensation, task.attempt));
            }
            Ok(events)
        }
        Input::TimerFired { timer_id } => {
            let known = state.timers.contains_key(&timer_id) || state.retry_timers().any(|(id, _)| id == timer_id);
            Ok(if known && !state.is_terminal() {
                vec![Attributes::TimerFired(TimerFired { timer_id })]
            } else {
                Vec::new()
            })
        }
        Input::Signal { name, input, identity } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            Ok(vec![Attributes::SignalReceived(SignalReceived { name, input, identity })])
        }
        Input::Cancel { reason, identity } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            if state.held {
                return Err(Rejection::HeldByParent(state.parent.clone().unwrap_or_default()));
            }
            if state.pivot_passed {
                let pivot = definition.pivot_index().and_then(|i| definition.steps.get(i)).map(|s| s.name.clone());
                return Err(Rejection::PastPivot(pivot.unwrap_or_default()));
            }
            // Cancelling twice, or while already compensating, changes nothing.
            if state.cancel_requested.is_some() || state.compensation_plan.is_some() {
                return Ok(Vec::new());
            }
            Ok(vec![Attributes::CancelRequested(CancelRequested { reason, identity })])
        }
        Input::Terminate { reason, identity } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            Ok(vec![Attributes::WorkflowTerminated(WorkflowTerminated { reason, identity })])
        }
        Input::Stuck { reason, message } => {
            let already = state.stuck.as_ref().is_some_and(|(r, _, _)| r == reason.as_str());
            Ok(if state.is_terminal() || already {
                Vec::new()
            } else {
                vec![Attributes::StuckDetected(StuckDetected { reason: reason.as_str().into(), message })]
            })
        }
        Input::Resolve { step, resolution, reason, identity } => {
            handle_resolution(state, definition, step, resolution, reason, identity)
        }
        Input::Pause { reason, identity } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            Ok(if state.paused.is_some() {
                Vec::new()
            } else {
                vec![Attributes::WorkflowPaused(WorkflowPaused { reason, identity })]
            })
        }
        Input::Resume { reason, identity } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            Ok(if state.paused.is_some() {
                vec![Attributes::WorkflowResumed(WorkflowResumed { reason, identity })]
            } else {
                Vec::new()
            })
        }
        Input::Release => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            if let Some(reason) = state.paused.as_ref().filter(|_| state.held) {
                return Err(Rejection::Paused(reason.clone()));
            }
            Ok(if state.held {
                vec![Attributes::WorkflowCompleted(WorkflowCompleted { result: state.result.clone() })]
            } else {
                Vec::new()
            })
        }
        Input::CompensateChild { reason } => {
            if state.is_terminal() {
                return Err(Rejection::Terminal(status_name(state)));
            }
            if let Some(paused) = state.paused.as_ref().filter(|_| state.held) {
                return Err(Rejection::Paused(paused.clone()));
            }
            // An empty plan (nothing of the child can be undone) still goes
            // through CompensationStarted, so that the child ends COMPENSATED.
            Ok(if state.held {
                vec![Attributes::CompensationStarted(CompensationStarted {
                    reason,
                    steps: undo_plan(state, definition),
                })]
            } else {
                Vec::new()
            })
        }
        Input::Wake => Ok(Vec::new()),
    }
}

/// Checks an operator's resolution against the step as it is now. A step is
/// resolvable once it was attempted and while no attempt of it runs: an
/// attempt in flight may still answer for itself. Forward, a step may be
/// resolved succeeded (any kind) or failed (before or at the pivot: a step
/// after it cannot fail, only be retried). While compensating, a planned
/// compensation may be resolved succeeded (undone by hand); never failed,
/// since a compensation is never given up.
fn handle_resolution(
    state: &WorkflowState,
    definition: &SagaDefinition,
    step_name: String,
    resolution: Resolution,
    reason: String,
    identity: String,
) -> Result<Vec<Attributes>, Rejection> {
    if state.is_terminal() {
        return Err(Rejection::Terminal(status_name(state)));
    }
    let not = |why: String| Err(Rejection::NotResolvable(why));
    let index = definition.step_index(&step_name).ok_or_else(|| Rejection::UnknownStep(step_name.clone()))?;
    let (Some(step), Some(progress)) = (definition.steps.get(index), state.steps.get(index)) else {
        return Err(Rejection::UnknownStep(step_name));
    };
    let compensation = state.compensation_plan.is_some();
    if compensation {
        if !state.compensation_plan.iter().flatten().any(|&i| i == index) {
            return not(format!("step {step_name} is not among the compensations being run"));
        }
        if progress.status == StepStatus::Compensated {
            return not(format!("step {step_name} is already compensated"));
        }
        if resolution == Resolution::Failed {
            return not(format!(
                "a compensation is never given up: fix its cause and signal {}, or resolve it succeeded once it is undone by hand",
                super::state::RETRY_SIGNAL
            ));
        }
    } else {
        if progress.status == StepStatus::Completed {
            return not(format!("step {step_name} has already completed"));
        }
        if progress.forward.attempt == 0 || !matches!(step.action, Action::Activity { .. }) {
            return not(format!("step {step_name} has not run an activity; there is nothing to resolve"));
        }
        if resolution == Resolution::Failed && step.kind == StepKind::Retriable {
            return not(format!(
                "step {step_name} comes after the pivot and cannot fail; signal {} to try it again",
                super::state::RETRY_SIGNAL
            ));
        }
    }
    if let Some(task) =
        state.tasks.values().find(|t| t.step_index == index && t.compensation == compensation && !t.side)
    {
        return not(format!(
            "attempt {} of step {step_name} is running; wait for its answer or its timeout",
            task.attempt
        ));
    }
    let result = match &resolution {
        Resolution::Succeeded(result) => result.clone(),
        Resolution::Failed => String::new(),
    };
    Ok(vec![Attributes::ActivityResolved(ActivityResolved {
        step: step_name,
        compensation,
        outcome: resolution.as_str().into(),
        result,
        reason,
        identity,
    })])
}

fn handle_outcome(
    state: &WorkflowState,
    definition: &SagaDefinition,
    task_id: String,
    worker_id: String,
    started_ms: i64,
    outcome: Outcome,
    now: i64,
) -> Vec<Attributes> {
    let outcome_name = match &outcome {
        Outcome::Completed(_) => "completed".to_string(),
        Outcome::Failed { error_type, .. } => format!("failed: {error_type}"),
    };
    let Some(task) = state.tasks.get(&task_id) else {
        // Late (the attempt timed out or the workflow moved on) or a duplicate.
        let duplicate = parse_task_id(&task_id).is_some_and(|(index, compensation, attempt)| {
            let done = state.steps.get(index).is_some_and(|s| {
                if compensation { s.status == StepStatus::Compensated } else { s.status == StepStatus::Completed }
            });
            done && state.track(index, compensation).is_some_and(|t| t.attempt == attempt)
        });
        return vec![Attributes::CompletionIgnored(CompletionIgnored {
            task_id,
            reason: if duplicate { "duplicate" } else { "late" }.into(),
            outcome: outcome_name,
            worker_id,
        })];
    };
    let mut events =
        vec![Attributes::ActivityStarted(ActivityStarted { task_id: task_id.clone(), worker_id, started_ms })];
    match outcome {
        Outcome::Completed(result) => events.push(Attributes::ActivityCompleted(ActivityCompleted { task_id, result })),
        Outcome::Failed { error_type, message, retryable } => {
            let outcome_unknown = CUT_OFF.contains(&error_type.as_str());
            let definite = !outcome_unknown
                && (!retryable
                    || policy_of(definition, task.step_index, task.compensation)
                        .is_some_and(|p| p.is_non_retryable(&error_type)));
            let next = if task.side {
                0
            } else {
                next_attempt_ms(
                    state,
                    definition,
                    task.step_index,
                    task.compensation,
                    task.attempt,
                    retryable,
                    &error_type,
                    now,
                )
            };
            events.push(Attributes::ActivityFailed(ActivityFailed {
                task_id,
                error_type,
                message,
                retryable: next > 0,
                next_attempt_ms: next,
                definite,
                outcome_unknown,
            }));
            if !task.side {
                events.extend(escalation(state, definition, task.step_index, task.compensation, task.attempt));
            }
        }
    }
    events
}

fn policies(step: &Step, compensation: bool) -> (&RetryPolicy, &Timeouts) {
    match (&step.compensation, compensation) {
        (Some(c), true) => (&c.retry, &c.timeouts),
        _ => (&step.retry, &step.timeouts),
    }
}

fn policy_of(definition: &SagaDefinition, step_index: usize, compensation: bool) -> Option<&RetryPolicy> {
    definition.steps.get(step_index).map(|step| policies(step, compensation).0)
}

/// When the next attempt is due, or 0 when the step has failed for good.
#[allow(clippy::too_many_arguments)]
fn next_attempt_ms(
    state: &WorkflowState,
    definition: &SagaDefinition,
    step_index: usize,
    compensation: bool,
    attempt: u32,
    retryable: bool,
    error_type: &str,
    now: i64,
) -> i64 {
    let (Some(step), Some(track)) = (definition.steps.get(step_index), state.track(step_index, compensation)) else {
        return 0;
    };
    let (policy, timeouts) = policies(step, compensation);
    if !retryable
        || policy.is_non_retryable(error_type)
        || !policy.allows_another(attempt.saturating_sub(track.budget_base))
    {
        return 0;
    }
    let delay = i64::try_from(policy.backoff(attempt + 1).as_millis()).unwrap_or(i64::MAX);
    let due = now.saturating_add(delay.max(1));
    let budget = i64::try_from(timeouts.schedule_to_close_ms).unwrap_or(i64::MAX);
    if budget > 0 && due >= track.first_scheduled_ms.saturating_add(budget) {
        return 0;
    }
    due
}

/// A retriable step past its threshold raises its alert once.
fn escalation(
    state: &WorkflowState,
    definition: &SagaDefinition,
    step_index: usize,
    compensation: bool,
    attempt: u32,
) -> Vec<Attributes> {
    let Some(step) = definition.steps.get(step_index) else { return Vec::new() };
    let Some(escalation) = step.escalation.as_ref() else { return Vec::new() };
    let already = state.steps.get(step_index).is_some_and(|s| s.escalated);
    if compensation || already || attempt < escalation.after_attempts {
        return Vec::new();
    }
    let mut events = vec![Attributes::StepEscalated(StepEscalated {
        step: step.name.clone(),
        attempt,
        alert: escalation.alert.clone(),
    })];
    if let Some(notify) = &escalation.notify {
        let key = state.steps[step_index]
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("{}/{}", state.workflow_id, step.name));
        let input = serde_json::json!({
            "alert": escalation.alert,
            "step": step.name,
            "attempt": attempt,
            "input": state.context.input_for(&step.input),
            "workflow_input": state.context.0.get("input"),
        });
        events.push(Attributes::ActivityScheduled(ActivityScheduled {
            task_id: super::state::side_task_id(step_index),
            step_index: u32::try_from(step_index).unwrap_or(u32::MAX),
            step: step.name.clone(),
            activity_type: notify.clone(),
            attempt: 1,
            compensation: false,
            input: input.to_string(),
            idempotency_key: format!("{key}/{}", escalation.alert),
        }));
    }
    events
}

/// What follows from the state alone.
pub fn decide(state: &WorkflowState, definition: &SagaDefinition, now: i64) -> Vec<Attributes> {
    if state.is_terminal() {
        return Vec::new();
    }
    // A history that does not fit its definition (no WorkflowStarted, or a
    // corrupted record) is left as it is: deciding on it would index steps
    // that are not there, and any event written would build on the damage.
    // The stuck detector reports it, as it does any workflow that stops
    // making progress. Found by fuzzing (fuzz/, src/fuzzing.rs).
    if state.steps.len() != definition.steps.len() {
        return Vec::new();
    }
    if let Some((reason, _, seq)) = &state.stuck
        && state.last_progress_seq > *seq
    {
        return vec![Attributes::StuckCleared(StuckCleared { reason: reason.clone() })];
    }
    // Paused: inputs are still recorded (outcomes of attempts already
    // scheduled, timers, signals, a cancel request), but nothing follows
    // from them until an operator resumes. Only `Resume` clears the flag, so
    // no race with a late outcome or a timer can set the workflow running.
    if state.paused.is_some() {
        return Vec::new();
    }
    if let Some(plan) = &state.compensation_plan {
        return decide_compensation(state, definition, plan);
    }
    if let Some(reason) = &state.cancel_requested {
        if state.pivot_passed {
            // The cancel waited for the pivot, and the pivot succeeded: the
            // money is taken, so the saga goes on, and says why.
            let step = definition.pivot_index().and_then(|i| definition.steps.get(i)).map(|s| s.name.clone());
            let step = step.unwrap_or_default();
            return vec![Attributes::CancelRefused(CancelRefused {
                reason: reason.clone(),
                message: format!(
                    "the pivot step {step} succeeded while the cancel waited for it; the saga can only move forward"
                ),
                step,
            })];
        }
        // Let an attempt in flight finish first, so that its effect, if any,
        // is known and compensated rather than racing the compensation.
        if state.tasks.values().any(|t| !t.compensation && !t.side) {
            return Vec::new();
        }
        // A pivot whose outcome is unknown may have taken effect, and nothing
        // undoes it: the cancel waits for a definite answer, which its
        // retries (below) or an operator's resolution will give.
        if !pivot_outcome_unknown(state, definition) {
            return start_compensation(state, definition, format!("cancelled: {reason}"), None);
        }
    }
    let frontier = state.frontier(definition);
    if frontier.is_empty() {
        let result = state.context.steps().to_string();
        return match &state.parent {
            // A child is done only when its parent can no longer undo it.
            Some(_) if state.held => Vec::new(),
            Some(parent) => {
                vec![Attributes::WorkflowHeld(WorkflowHeld { result, parent_workflow_id: parent.clone() })]
            }
            None => vec![Attributes::WorkflowCompleted(WorkflowCompleted { result })],
        };
    }
    let skipped = skip_unmet_conditions(state, definition, &frontier);
    if !skipped.is_empty() {
        return skipped;
    }
    let mut events = Vec::new();
    for &index in &frontier {
        let step = &definition.steps[index];
        let progress = &state.steps[index];
        let Some(failure) = &progress.forward.blocked else { continue };
        let unknown = progress.forward.unknown;
        let stuck = match step.kind {
            StepKind::Pivot if unknown => stuck_once(
                state,
                super::StuckReason::PivotOutcomeUnknown,
                format!(
                    "pivot step {} may have taken effect: its {} attempts gave no definite answer ({failure}); \
                     it is neither compensated nor moved past. Once the cause is fixed, signal {} to try it again \
                     with the same key, or record what happened with `sagaflow workflow resolve {} --step {} \
                     --outcome succeeded|failed --reason ...`",
                    step.name,
                    progress.forward.attempt,
                    super::state::RETRY_SIGNAL,
                    state.workflow_id,
                    step.name
                ),
            ),
            StepKind::Retriable if unknown => stuck_once(
                state,
                super::StuckReason::StepOutcomeUnknown,
                format!(
                    "step {} after the pivot gave no definite answer in {} attempts ({failure}); fix the cause, \
                     then signal {}",
                    step.name,
                    progress.forward.attempt,
                    super::state::RETRY_SIGNAL
                ),
            ),
            StepKind::Retriable => stuck_once(
                state,
                super::StuckReason::NonRetryableAfterPivot,
                format!(
                    "step {} failed after the pivot and cannot be undone: {failure}; fix the cause, then signal {}",
                    step.name,
                    super::state::RETRY_SIGNAL
                ),
            ),
            StepKind::Compensable | StepKind::Pivot => {
                return fail_forward(state, definition, format!("step {} failed: {failure}", step.name), index);
            }
        };
        // One stuck flag at a time; a retriable group's other steps go on.
        // Two members blocked for different reasons would otherwise replace
        // each other's flag on every decision, without end (found by the
        // property tests).
        if events.is_empty() && !flagged_by_a_step(state) {
            events = stuck;
        }
        if step.kind == StepKind::Pivot {
            return events;
        }
    }
    for &index in &frontier {
        let step = &definition.steps[index];
        let progress = &state.steps[index];
        if progress.forward.blocked.is_some() {
            continue;
        }
        match &step.action {
            Action::Activity { .. } | Action::Child { .. } => {
                let activity_type = step.activity_type().unwrap_or(sagaflow_workflows::CHILD_ACTIVITY);
                let busy = state.tasks.values().any(|t| t.step_index == index && !t.compensation && !t.side);
                if busy || progress.forward.retry_at.is_some() {
                    continue;
                }
                match schedule(state, definition, index, false, activity_type, &step.input) {
                    Ok(scheduled) => events.push(scheduled),
                    Err(reason) => {
                        return fail_forward(state, definition, format!("step {}: {reason}", step.name), index);
                    }
                }
            }
            Action::Sleep { duration_ms } => {
                let id = sleep_timer_id(index);
                if !state.timers.contains_key(&id) {
                    let fire_at_ms = now.saturating_add(i64::try_from(*duration_ms).unwrap_or(i64::MAX));
                    events.push(Attributes::TimerStarted(TimerStarted {
                        timer_id: id,
                        fire_at_ms,
                        purpose: "sleep".into(),
                    }));
                }
            }
            Action::AwaitSignal { timeout_ms, .. } => {
                let id = signal_timer_id(index);
                if *timeout_ms != 0 && !state.timers.contains_key(&id) {
                    let fire_at_ms = now.saturating_add(i64::try_from(*timeout_ms).unwrap_or(i64::MAX));
                    events.push(Attributes::TimerStarted(TimerStarted {
                        timer_id: id,
                        fire_at_ms,
                        purpose: "signal-timeout".into(),
                    }));
                }
            }
        }
    }
    events
}

/// `StepSkipped` for each step of the frontier reached for the first time
/// whose condition does not hold. Evaluated once: the step is then either
/// skipped or scheduled, and the history says which.
fn skip_unmet_conditions(state: &WorkflowState, definition: &SagaDefinition, frontier: &[usize]) -> Vec<Attributes> {
    frontier
        .iter()
        .filter_map(|&index| {
            let step = &definition.steps[index];
            let condition = step.when.as_ref()?;
            let progress = &state.steps[index];
            let reached_first_time = progress.status == StepStatus::Pending && progress.forward.attempt == 0;
            (reached_first_time && !condition.holds(&state.context.0)).then(|| {
                Attributes::StepSkipped(StepSkipped {
                    step: step.name.clone(),
                    step_index: u32::try_from(index).unwrap_or(u32::MAX),
                    condition: serde_json::to_string(condition).unwrap_or_default(),
                })
            })
        })
        .collect()
}

/// A step before the pivot (or the pivot) failed for good. Any other
/// attempt of the frontier still in flight (a parallel sibling's) is
/// awaited first, so that its effect, if any, is known and compensated
/// rather than racing its compensation; then every step that ran is
/// compensated.
fn fail_forward(state: &WorkflowState, definition: &SagaDefinition, reason: String, index: usize) -> Vec<Attributes> {
    if state.tasks.values().any(|t| !t.compensation && !t.side) {
        return Vec::new();
    }
    start_compensation(state, definition, reason, Some(index))
}

/// Whether the pivot ran and none of its answers so far is definite: it may
/// have taken effect.
fn pivot_outcome_unknown(state: &WorkflowState, definition: &SagaDefinition) -> bool {
    definition
        .pivot_index()
        .and_then(|i| state.steps.get(i))
        .is_some_and(|s| s.status != StepStatus::Completed && s.forward.unknown)
}

/// Whether the workflow is flagged stuck for a step that needs an operator,
/// a flag only progress (a retry, a resolution) clears.
fn flagged_by_a_step(state: &WorkflowState) -> bool {
    use super::StuckReason::{NonRetryableAfterPivot, PivotOutcomeUnknown, StepOutcomeUnknown};
    state.stuck.as_ref().is_some_and(|(reason, _, _)| {
        [PivotOutcomeUnknown, StepOutcomeUnknown, NonRetryableAfterPivot].iter().any(|r| r.as_str() == reason)
    })
}

fn stuck_once(state: &WorkflowState, reason: super::StuckReason, message: String) -> Vec<Attributes> {
    if state.stuck.as_ref().is_some_and(|(r, _, _)| r == reason.as_str()) {
        return Vec::new();
    }
    vec![Attributes::StuckDetected(StuckDetected { reason: reason.as_str().into(), message })]
}

fn decide_compensation(state: &WorkflowState, definition: &SagaDefinition, plan: &[usize]) -> Vec<Attributes> {
    let Some(&index) = plan.iter().find(|&&i| state.steps[i].status != StepStatus::Compensated) else {
        return vec![match &state.cancel_requested {
            Some(reason) => Attributes::WorkflowCancelled(WorkflowCancelled { reason: reason.clone() }),
            None => Attributes::WorkflowCompensated(WorkflowCompensated { reason: state.compensation_reason.clone() }),
        }];
    };
    let step = &definition.steps[index];
    let (undo_activity, undo_input) = match (&step.compensation, &step.action) {
        (Some(compensation), _) => (compensation.activity_type.as_str(), &compensation.input),
        (None, Action::Child { .. }) => (sagaflow_workflows::CHILD_COMPENSATION, &InputSpec::Context),
        (None, _) => return Vec::new(),
    };
    let track: &Track = &state.steps[index].undo;
    if let Some(failure) = &track.blocked {
        // Out of attempts, and never assumed done, even when the last ones
        // timed out and may have worked: a retry with the same key tells.
        let unknown = if track.unknown { " (the outcome of its last attempts is unknown)" } else { "" };
        return stuck_once(
            state,
            super::StuckReason::CompensationExhausted,
            format!(
                "compensation of step {} gave up after {} attempts{unknown}: {failure}; fix the cause, then signal {}",
                step.name,
                track.attempt,
                super::state::RETRY_SIGNAL
            ),
        );
    }
    let busy = state.tasks.values().any(|t| t.step_index == index && t.compensation);
    if busy || track.retry_at.is_some() {
        return Vec::new();
    }
    // A compensation reuses its forward step's key, recorded when the step
    // was attempted (the only steps a plan holds). A history whose plan names
    // a step that never ran does not fit its definition: left as it is, for
    // the stuck detector, like any such history (see `decide`).
    schedule(state, definition, index, true, undo_activity, undo_input).into_iter().collect()
}

/// Compensates every compensable step that ever started (including the one
/// that failed: a timed-out attempt may have taken effect), newest first.
fn start_compensation(
    state: &WorkflowState,
    definition: &SagaDefinition,
    reason: String,
    failed: Option<usize>,
) -> Vec<Attributes> {
    let steps = undo_plan(state, definition);
    if steps.is_empty() {
        return vec![match &state.cancel_requested {
            Some(cancel) => Attributes::WorkflowCancelled(WorkflowCancelled { reason: cancel.clone() }),
            None => Attributes::WorkflowFailed(WorkflowFailed {
                reason,
                step: failed.and_then(|i| definition.steps.get(i)).map(|s| s.name.clone()).unwrap_or_default(),
            }),
        }];
    }
    vec![Attributes::CompensationStarted(CompensationStarted { reason, steps })]
}

/// Every step that ever started and can be undone, newest first: the
/// failed one included, since a timed-out attempt may have taken effect.
fn undo_plan(state: &WorkflowState, definition: &SagaDefinition) -> Vec<String> {
    definition
        .steps
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, s)| s.undoes() && state.steps[*i].forward.attempt > 0)
        .map(|(_, s)| s.name.clone())
        .collect()
}

fn schedule(
    state: &WorkflowState,
    definition: &SagaDefinition,
    index: usize,
    compensation: bool,
    activity_type: &str,
    input: &InputSpec,
) -> Result<Attributes, String> {
    let step = &definition.steps[index];
    let forward_key = match (&state.steps[index].idempotency_key, &state.redrive) {
        (Some(key), _) => key.clone(),
        (None, None) => state.context.key_for(&step.idempotency_key, &state.workflow_id, &step.name)?,
        (None, Some((_, number))) => {
            let key = state.context.key_for(&step.idempotency_key, &state.workflow_id, &step.name)?;
            format!("{key}/redrive-{number}")
        }
    };
    let idempotency_key = if compensation { format!("{forward_key}/compensate") } else { forward_key };
    let attempt = state.track(index, compensation).map_or(0, |t| t.attempt) + 1;
    Ok(Attributes::ActivityScheduled(ActivityScheduled {
        task_id: task_id(index, compensation, attempt),
        step_index: u32::try_from(index).unwrap_or(u32::MAX),
        step: step.name.clone(),
        activity_type: activity_type.into(),
        attempt,
        compensation,
        input: state.context.input_json(input),
        idempotency_key,
    }))
}
