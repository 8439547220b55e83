//! A workflow's state: a fold of its history. `apply` is the only way state
//! changes, so replaying a history always rebuilds the same state.

use std::collections::BTreeMap;

use sagaflow_proto::v1::{HistoryEvent, WorkflowStatus, history_event::Attributes};
use sagaflow_workflows::{Action, Context, SagaDefinition};
use serde_json::Value;

/// An activity attempt that has been scheduled and not yet resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTask {
    pub task_id: String,
    pub step_index: usize,
    pub attempt: u32,
    pub compensation: bool,
    pub activity_type: String,
    pub input: String,
    pub idempotency_key: String,
    pub scheduled_ms: i64,
    /// A side task (an escalation's notification): it never blocks or
    /// completes its step, and it is not retried.
    pub side: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Completed,
    Compensated,
    /// Its condition did not hold: done without running.
    Skipped,
}

impl StepStatus {
    /// Done going forward: the saga may move past it.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Skipped)
    }
}

/// One direction (forward or compensation) of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Track {
    /// Attempts scheduled so far.
    pub attempt: u32,
    /// Attempts before the last operator retry; the budget counts from here.
    pub budget_base: u32,
    pub first_scheduled_ms: i64,
    /// A retry is due at this time.
    pub retry_at: Option<i64>,
    /// Failed for good (non-retryable, or out of attempts): the reason.
    pub blocked: Option<String>,
    pub last_failure: String,
    /// An attempt timed out after a worker may have run it (or its worker
    /// was lost), and no definite answer (a success, a non-retryable
    /// failure, an operator's resolution) came since: the step may have
    /// taken effect. A retryable failure of a later attempt leaves it set.
    pub unknown: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepState {
    pub status: StepStatus,
    pub idempotency_key: Option<String>,
    pub forward: Track,
    pub undo: Track,
    pub escalated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowState {
    pub workflow_id: String,
    pub workflow_type: String,
    pub version: u32,
    pub request_id: String,
    pub input: String,
    pub labels: BTreeMap<String, String>,
    pub correlation_id: String,
    pub traceparent: String,
    pub context: Context,
    pub status: WorkflowStatus,
    pub last_seq: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub closed_ms: i64,
    pub last_progress_seq: u64,
    pub last_progress_ms: i64,
    pub steps: Vec<StepState>,
    pub tasks: BTreeMap<String, PendingTask>,
    /// Sleep and signal-deadline timers: id to firing time.
    pub timers: BTreeMap<String, i64>,
    pub pivot_passed: bool,
    pub cancel_requested: Option<String>,
    /// Step indices whose compensations run, in order; `Some` once compensating.
    pub compensation_plan: Option<Vec<usize>>,
    pub compensation_reason: String,
    /// Reason code, message, and the seq of the StuckDetected event.
    pub stuck: Option<(String, String, u64)>,
    pub result: String,
    pub reason: String,
    /// An operator paused the workflow, for this reason: nothing new is
    /// decided until `WorkflowResumed`.
    pub paused: Option<String>,
    /// A child saga: its parent's workflow id.
    pub parent: Option<String>,
    /// A child whose steps are done, waiting for its parent to release or
    /// compensate it.
    pub held: bool,
    /// A redriven run (ADR 0025): the run it redrives, and its number in the
    /// chain, which every idempotency key of this run ends with.
    pub redrive: Option<(String, u32)>,
}

pub fn task_id(step_index: usize, compensation: bool, attempt: u32) -> String {
    format!("{step_index}.{}.{attempt}", if compensation { 'c' } else { 'f' })
}

/// `(step_index, compensation, attempt)` from a task id.
pub fn parse_task_id(task_id: &str) -> Option<(usize, bool, u32)> {
    let mut parts = task_id.split('.');
    let step = parts.next()?.parse().ok()?;
    let compensation = match parts.next()? {
        "c" => true,
        "f" => false,
        _ => return None,
    };
    let attempt = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((step, compensation, attempt))
}

/// Side tasks are numbered `<step>.n.<n>`.
pub fn side_task_id(step_index: usize) -> String {
    format!("{step_index}.n.1")
}

pub fn is_side_task(task_id: &str) -> bool {
    task_id.split('.').nth(1) == Some("n")
}

pub fn retry_timer_id(step_index: usize, compensation: bool, attempt: u32) -> String {
    format!("retry/{}", task_id(step_index, compensation, attempt))
}

pub fn sleep_timer_id(step_index: usize) -> String {
    format!("sleep/{step_index}")
}

pub fn signal_timer_id(step_index: usize) -> String {
    format!("signal-timeout/{step_index}")
}

/// The error type given to an await-signal step whose deadline passed.
pub const SIGNAL_TIMEOUT: &str = "SignalTimeout";
/// The signal an operator sends to give a blocked step a fresh retry budget.
pub const RETRY_SIGNAL: &str = "sagaflow.retry";

impl WorkflowState {
    /// The state before `WorkflowStarted`.
    pub fn empty(workflow_id: &str) -> Self {
        Self {
            workflow_id: workflow_id.into(),
            workflow_type: String::new(),
            version: 0,
            request_id: String::new(),
            input: String::new(),
            labels: BTreeMap::new(),
            correlation_id: String::new(),
            traceparent: String::new(),
            context: Context::default(),
            status: WorkflowStatus::Unspecified,
            last_seq: 0,
            started_ms: 0,
            updated_ms: 0,
            closed_ms: 0,
            last_progress_seq: 0,
            last_progress_ms: 0,
            steps: Vec::new(),
            tasks: BTreeMap::new(),
            timers: BTreeMap::new(),
            pivot_passed: false,
            cancel_requested: None,
            compensation_plan: None,
            compensation_reason: String::new(),
            stuck: None,
            result: String::new(),
            reason: String::new(),
            paused: None,
            parent: None,
            held: false,
            redrive: None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The first forward step not yet done.
    pub fn cursor(&self) -> Option<usize> {
        self.steps.iter().position(|s| !s.status.is_done())
    }

    /// The steps that may run now: the cursor's step, or, when it belongs to
    /// a parallel group, every member of the group not yet done.
    pub fn frontier(&self, definition: &SagaDefinition) -> Vec<usize> {
        let Some(first) = self.cursor() else { return Vec::new() };
        let Some(group) = definition.steps.get(first).and_then(|s| s.parallel.as_deref()) else {
            return vec![first];
        };
        (first..self.steps.len().min(definition.steps.len()))
            .take_while(|&i| definition.steps[i].parallel.as_deref() == Some(group))
            .filter(|&i| !self.steps[i].status.is_done())
            .collect()
    }

    pub fn track(&self, step_index: usize, compensation: bool) -> Option<&Track> {
        self.steps.get(step_index).map(|s| if compensation { &s.undo } else { &s.forward })
    }

    fn track_mut(&mut self, step_index: usize, compensation: bool) -> Option<&mut Track> {
        self.steps.get_mut(step_index).map(|s| if compensation { &mut s.undo } else { &mut s.forward })
    }

    fn progress(&mut self, seq: u64, time_ms: i64) {
        self.last_progress_seq = seq;
        self.last_progress_ms = time_ms;
    }

    /// Folds one event in. `definition` is the pinned version's.
    pub fn apply(&mut self, event: &HistoryEvent, definition: &SagaDefinition) {
        let Some(attributes) = &event.attributes else {
            return;
        };
        self.last_seq = event.seq;
        self.updated_ms = event.time_ms;
        match attributes {
            Attributes::WorkflowStarted(started) => {
                self.workflow_type.clone_from(&started.workflow_type);
                self.version = started.definition_version;
                self.request_id.clone_from(&started.request_id);
                self.input.clone_from(&started.input);
                self.labels = started.labels.clone().into_iter().collect();
                self.correlation_id.clone_from(&started.correlation_id);
                self.parent = (!started.parent_workflow_id.is_empty()).then(|| started.parent_workflow_id.clone());
                self.traceparent.clone_from(&started.traceparent);
                let input = serde_json::from_str(&started.input).unwrap_or(Value::Null);
                self.context = Context::new(&self.workflow_id, input);
                self.status = WorkflowStatus::Running;
                self.started_ms = event.time_ms;
                self.steps = vec![StepState::default(); definition.steps.len()];
                if !started.redrive_of.is_empty() {
                    self.redrive = Some((started.redrive_of.clone(), started.redrive));
                }
                for carried in &started.carried_steps {
                    self.carry_over(definition, carried);
                }
                self.progress(event.seq, event.time_ms);
            }
            Attributes::ActivityScheduled(s) if is_side_task(&s.task_id) => {
                self.tasks.insert(
                    s.task_id.clone(),
                    PendingTask {
                        task_id: s.task_id.clone(),
                        step_index: s.step_index as usize,
                        attempt: s.attempt,
                        compensation: false,
                        activity_type: s.activity_type.clone(),
                        input: s.input.clone(),
                        idempotency_key: s.idempotency_key.clone(),
                        scheduled_ms: event.time_ms,
                        side: true,
                    },
                );
            }
            Attributes::ActivityScheduled(s) => {
                let index = s.step_index as usize;
                if let Some(step) = self.steps.get_mut(index) {
                    step.idempotency_key.get_or_insert_with(|| s.idempotency_key.clone());
                    if !s.compensation {
                        step.status = StepStatus::Running;
                    }
                }
                if let Some(track) = self.track_mut(index, s.compensation) {
                    // The first attempt of a budget (the first ever, or the
                    // first after an operator's retry) starts its clock.
                    if track.attempt == track.budget_base {
                        track.first_scheduled_ms = event.time_ms;
                    }
                    track.attempt = s.attempt;
                    track.retry_at = None;
                }
                self.tasks.insert(
                    s.task_id.clone(),
                    PendingTask {
                        task_id: s.task_id.clone(),
                        step_index: index,
                        attempt: s.attempt,
                        compensation: s.compensation,
                        activity_type: s.activity_type.clone(),
                        input: s.input.clone(),
                        idempotency_key: s.idempotency_key.clone(),
                        scheduled_ms: event.time_ms,
                        side: false,
                    },
                );
                if s.attempt == 1 {
                    self.progress(event.seq, event.time_ms);
                }
            }
            Attributes::ActivityStarted(_) | Attributes::CompletionIgnored(_) => {}
            Attributes::ActivityCompleted(c) => {
                if let Some(task) = self.tasks.remove(&c.task_id)
                    && !task.side
                {
                    self.settle(definition, task.step_index, task.compensation, &c.result);
                    self.progress(event.seq, event.time_ms);
                }
            }
            Attributes::ActivityResolved(r) => {
                if let Some(index) = definition.step_index(&r.step) {
                    if r.outcome == "succeeded" {
                        self.settle(definition, index, r.compensation, &r.result);
                    } else if let Some(track) = self.track_mut(index, r.compensation) {
                        track.blocked = Some(format!("resolved as failed by {}: {}", r.identity, r.reason));
                        track.retry_at = None;
                        track.unknown = false;
                    }
                    self.progress(event.seq, event.time_ms);
                }
            }
            Attributes::ActivityFailed(f) => {
                let failure = if f.error_type.is_empty() {
                    f.message.clone()
                } else {
                    format!("{}: {}", f.error_type, f.message)
                };
                let known = if f.outcome_unknown { Known::Unknown } else { Known::from_failure(f.definite) };
                self.resolve_failure(&f.task_id, f.next_attempt_ms, failure, known);
            }
            Attributes::ActivityTimedOut(t) => {
                let known = if super::timeout_leaves_outcome_unknown(&t.timeout_type) {
                    Known::Unknown
                } else {
                    Known::Unchanged
                };
                self.resolve_failure(&t.task_id, t.next_attempt_ms, format!("timed out ({})", t.timeout_type), known);
            }
            Attributes::TimerStarted(t) => {
                self.timers.insert(t.timer_id.clone(), t.fire_at_ms);
            }
            Attributes::TimerFired(t) => {
                self.timers.remove(&t.timer_id);
                if let Some(rest) = t.timer_id.strip_prefix("retry/") {
                    if let Some((index, compensation, _)) = parse_task_id(rest)
                        && let Some(track) = self.track_mut(index, compensation)
                    {
                        track.retry_at = None;
                    }
                } else if let Some(index) = t.timer_id.strip_prefix("sleep/").and_then(|i| i.parse::<usize>().ok()) {
                    let name = definition.steps.get(index).map(|s| s.name.clone()).unwrap_or_default();
                    if let Some(step) = self.steps.get_mut(index) {
                        step.status = StepStatus::Completed;
                        self.context.set_step_result(&name, Value::Null);
                    }
                    self.progress(event.seq, event.time_ms);
                } else if let Some(index) =
                    t.timer_id.strip_prefix("signal-timeout/").and_then(|i| i.parse::<usize>().ok())
                    && let Some(step) = self.steps.get_mut(index)
                    && step.status != StepStatus::Completed
                {
                    step.forward.blocked = Some(format!("{SIGNAL_TIMEOUT}: no signal before the deadline"));
                }
            }
            Attributes::SignalReceived(s) => {
                if s.name == RETRY_SIGNAL {
                    for step in &mut self.steps {
                        for track in [&mut step.forward, &mut step.undo] {
                            if track.blocked.take().is_some() {
                                // A fresh budget: as many attempts, and as
                                // much time, as the policy gives. Whether the
                                // outcome is unknown stays as it was.
                                track.budget_base = track.attempt;
                            }
                        }
                    }
                    self.progress(event.seq, event.time_ms);
                } else {
                    // Not progress by itself: an unrelated signal must not clear
                    // a stuck flag. Completing an await-signal step is (below).
                    let input = serde_json::from_str(&s.input).unwrap_or(Value::Null);
                    self.context.set_signal(&s.name, input);
                }
            }
            Attributes::CancelRequested(c) => {
                self.cancel_requested = Some(c.reason.clone());
            }
            Attributes::CancelRefused(_) => {
                self.cancel_requested = None;
            }
            Attributes::CompensationStarted(c) => {
                self.held = false;
                self.status = WorkflowStatus::Compensating;
                self.compensation_reason.clone_from(&c.reason);
                self.compensation_plan = Some(c.steps.iter().filter_map(|name| definition.step_index(name)).collect());
                // The forward attempt that is abandoned (on cancel) stays
                // compensated below; its late completion is ignored.
                self.tasks.retain(|_, t| t.compensation);
                self.timers.clear();
                for step in &mut self.steps {
                    step.forward.retry_at = None;
                }
                self.progress(event.seq, event.time_ms);
            }
            Attributes::WorkflowCompleted(c) => {
                self.result.clone_from(&c.result);
                self.close(WorkflowStatus::Completed, event.time_ms, String::new());
            }
            Attributes::WorkflowCompensated(c) => {
                self.close(WorkflowStatus::Compensated, event.time_ms, c.reason.clone())
            }
            Attributes::WorkflowFailed(f) => self.close(WorkflowStatus::Failed, event.time_ms, f.reason.clone()),
            Attributes::WorkflowCancelled(c) => self.close(WorkflowStatus::Cancelled, event.time_ms, c.reason.clone()),
            Attributes::WorkflowTerminated(t) => {
                self.close(WorkflowStatus::Terminated, event.time_ms, t.reason.clone())
            }
            Attributes::StepSkipped(s) => {
                if let Some(step) = self.steps.get_mut(s.step_index as usize) {
                    step.status = StepStatus::Skipped;
                }
                self.progress(event.seq, event.time_ms);
            }
            Attributes::WorkflowPaused(p) => self.paused = Some(p.reason.clone()),
            Attributes::WorkflowHeld(h) => {
                self.held = true;
                self.result.clone_from(&h.result);
                self.progress(event.seq, event.time_ms);
            }
            Attributes::WorkflowResumed(_) => {
                self.paused = None;
                // The no-progress clock starts again from the resume: the
                // pause was the operator's choice, not the saga's silence.
                self.progress(event.seq, event.time_ms);
            }
            Attributes::StuckDetected(s) => self.stuck = Some((s.reason.clone(), s.message.clone(), event.seq)),
            Attributes::StuckCleared(_) => self.stuck = None,
            Attributes::StepEscalated(e) => {
                if let Some(index) = definition.step_index(&e.step)
                    && let Some(step) = self.steps.get_mut(index)
                {
                    step.escalated = true;
                }
            }
        }
        self.settle_signal_steps(definition, event);
        if definition.pivot_index().and_then(|i| self.steps.get(i)).is_some_and(|s| s.status == StepStatus::Completed) {
            self.pivot_passed = true;
        }
    }

    /// A step's direction took effect: its attempts are settled.
    fn settle(&mut self, definition: &SagaDefinition, index: usize, compensation: bool, result: &str) {
        let name = definition.steps.get(index).map(|s| s.name.clone()).unwrap_or_default();
        let Some(step) = self.steps.get_mut(index) else { return };
        let track = if compensation { &mut step.undo } else { &mut step.forward };
        track.unknown = false;
        track.blocked = None;
        track.retry_at = None;
        if compensation {
            step.status = StepStatus::Compensated;
        } else {
            step.status = StepStatus::Completed;
            let result = serde_json::from_str(result).unwrap_or(Value::Null);
            self.context.set_step_result(&name, result);
        }
    }

    /// A step a redriven run takes over as the earlier run left it.
    fn carry_over(&mut self, definition: &SagaDefinition, carried: &sagaflow_proto::v1::CarriedStep) {
        let index = carried.step_index as usize;
        if carried.skipped {
            if let Some(step) = self.steps.get_mut(index) {
                step.status = StepStatus::Skipped;
            }
            return;
        }
        self.settle(definition, index, false, &carried.result);
        // An await-signal step's input is also read as `/signals/NAME`.
        if let Some(Action::AwaitSignal { signal, .. }) = definition.steps.get(index).map(|s| &s.action) {
            let input = serde_json::from_str(&carried.result).unwrap_or(Value::Null);
            self.context.set_signal(signal, input);
        }
    }

    fn resolve_failure(&mut self, task_id: &str, next_attempt_ms: i64, failure: String, known: Known) {
        let Some(task) = self.tasks.remove(task_id) else {
            return;
        };
        if task.side {
            return;
        }
        if let Some(track) = self.track_mut(task.step_index, task.compensation) {
            match known {
                Known::Unknown => track.unknown = true,
                Known::Definite => track.unknown = false,
                Known::Unchanged => {}
            }
            track.last_failure.clone_from(&failure);
            if next_attempt_ms > 0 {
                track.retry_at = Some(next_attempt_ms);
            } else {
                track.blocked = Some(failure);
            }
        }
    }

    fn close(&mut self, status: WorkflowStatus, time_ms: i64, reason: String) {
        self.status = status;
        self.paused = None;
        self.held = false;
        self.closed_ms = time_ms;
        self.reason = reason;
        self.tasks.clear();
        self.timers.clear();
        self.stuck = None;
        for step in &mut self.steps {
            step.forward.retry_at = None;
            step.undo.retry_at = None;
        }
    }

    /// An await-signal step completes as soon as it is current and its signal
    /// has arrived, whether the signal came before or after it was reached.
    fn settle_signal_steps(&mut self, definition: &SagaDefinition, event: &HistoryEvent) {
        if self.compensation_plan.is_some() || self.is_terminal() {
            return;
        }
        while let Some(index) = self.cursor() {
            let Some(Action::AwaitSignal { signal, .. }) = definition.steps.get(index).map(|s| &s.action) else {
                return;
            };
            let Some(input) = self.context.0.pointer(&format!("/signals/{signal}")).cloned() else {
                return;
            };
            let name = definition.steps[index].name.clone();
            self.steps[index].status = StepStatus::Completed;
            self.context.set_step_result(&name, input);
            self.timers.remove(&signal_timer_id(index));
            self.progress(event.seq, event.time_ms);
        }
    }

    /// Every retry timer that is due, as `(timer_id, fire_at)`.
    pub fn retry_timers(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        self.steps.iter().enumerate().flat_map(|(index, step)| {
            [(&step.forward, false), (&step.undo, true)].into_iter().filter_map(move |(track, comp)| {
                track.retry_at.map(|at| (retry_timer_id(index, comp, track.attempt + 1), at))
            })
        })
    }
}

/// What a failed attempt tells about the step's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// It may have run: the step's outcome is unknown from here.
    Unknown,
    /// A non-retryable answer: nothing was taken, whatever earlier attempts did.
    Definite,
    /// A retryable failure, or an attempt that never started: it changes
    /// nothing about what earlier attempts may have done.
    Unchanged,
}

impl Known {
    fn from_failure(definite: bool) -> Self {
        if definite { Self::Definite } else { Self::Unchanged }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip() {
        assert_eq!(parse_task_id(&task_id(3, true, 12)), Some((3, true, 12)));
        assert_eq!(parse_task_id("3.x.1"), None);
        assert_eq!(parse_task_id("3.f.1.extra"), None);
    }
}
