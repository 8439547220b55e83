//! Tests of the pure decision core: tables for each rule of the saga
//! semantics, and property tests that drive random sagas with random inputs.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use sagaflow_proto::EventName;
use sagaflow_proto::v1::{HistoryEvent, WorkflowStarted, WorkflowStatus, history_event::Attributes};
use sagaflow_workflows::{RetryPolicy, SagaDefinition, Step};
use serde_json::{Value, json};

use super::{
    Input, Outcome, RETRY_SIGNAL, Rejection, StepStatus, TimeoutKind, WorkflowState, parse_task_id, replay, run, start,
};

const WORKFLOW_ID: &str = "wf-1";
const T0: i64 = 1_000_000;

/// A workflow under test: its definition, live state, full history and clock.
struct Harness {
    definition: SagaDefinition,
    state: WorkflowState,
    history: Vec<HistoryEvent>,
    now: i64,
}

impl Harness {
    fn start(definition: SagaDefinition) -> Self {
        Self::start_with_input(definition, json!({"order": "o-1"}))
    }

    fn start_with_input(definition: SagaDefinition, input: Value) -> Self {
        let started = WorkflowStarted {
            workflow_type: definition.name.clone(),
            definition_version: definition.version,
            request_id: "req-1".into(),
            input: input.to_string(),
            ..Default::default()
        };
        let (state, history) = start(WORKFLOW_ID, started, &definition, T0);
        let harness = Self { definition, state, history, now: T0 };
        harness.check_replay();
        harness
    }

    fn check_replay(&self) {
        assert_eq!(
            replay(WORKFLOW_ID, &self.history, &self.definition),
            self.state,
            "replaying the history must rebuild the live state"
        );
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
    }

    /// Runs an input; a rejection leaves the state exactly as it was.
    fn try_run(&mut self, input: Input) -> Result<Vec<HistoryEvent>, Rejection> {
        let before = self.state.clone();
        let result = run(&mut self.state, &self.definition, input, self.now);
        match &result {
            Ok(events) => self.history.extend(events.iter().cloned()),
            Err(_) => assert_eq!(self.state, before, "a rejected input changes nothing"),
        }
        self.check_replay();
        result
    }

    fn run(&mut self, input: Input) -> Vec<HistoryEvent> {
        self.try_run(input).unwrap()
    }

    fn outcome(&mut self, task_id: &str, outcome: Outcome) -> Vec<HistoryEvent> {
        let started_ms = self.now;
        self.run(Input::ActivityOutcome { task_id: task_id.into(), worker_id: "worker-1".into(), started_ms, outcome })
    }

    fn complete(&mut self, task_id: &str, result: Value) -> Vec<HistoryEvent> {
        self.outcome(task_id, Outcome::Completed(result.to_string()))
    }

    fn fail(&mut self, task_id: &str, retryable: bool) -> Vec<HistoryEvent> {
        self.outcome(task_id, Outcome::Failed { error_type: "Boom".into(), message: "it broke".into(), retryable })
    }

    fn time_out(&mut self, task_id: &str, timeout: TimeoutKind) -> Vec<HistoryEvent> {
        self.run(Input::TimedOut { task_id: task_id.into(), timeout, worker_id: "w-1".into() })
    }

    fn fire(&mut self, timer_id: &str) -> Vec<HistoryEvent> {
        self.run(Input::TimerFired { timer_id: timer_id.into() })
    }

    fn signal(&mut self, name: &str, input: Value) -> Vec<HistoryEvent> {
        self.run(Input::Signal { name: name.into(), input: input.to_string(), identity: "tester".into() })
    }

    fn cancel(&mut self) -> Result<Vec<HistoryEvent>, Rejection> {
        self.try_run(Input::Cancel { reason: "customer changed their mind".into(), identity: "tester".into() })
    }

    fn pending(&self) -> Vec<String> {
        self.state.tasks.keys().cloned().collect()
    }

    fn retry_timers(&self) -> Vec<(String, i64)> {
        self.state.retry_timers().collect()
    }

    fn status(&self) -> WorkflowStatus {
        self.state.status
    }
}

fn names(events: &[HistoryEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.attributes.as_ref().unwrap().event_name()).collect()
}

fn attrs(events: &[HistoryEvent]) -> impl Iterator<Item = &Attributes> {
    events.iter().filter_map(|e| e.attributes.as_ref())
}

/// `(task_id, idempotency_key)` of every ActivityScheduled in `events`.
fn scheduled(events: &[HistoryEvent]) -> Vec<(String, String)> {
    attrs(events)
        .filter_map(|a| match a {
            Attributes::ActivityScheduled(s) => Some((s.task_id.clone(), s.idempotency_key.clone())),
            _ => None,
        })
        .collect()
}

fn scheduled_ids(events: &[HistoryEvent]) -> Vec<String> {
    scheduled(events).into_iter().map(|(id, _)| id).collect()
}

fn count(events: &[HistoryEvent], name: &str) -> usize {
    names(events).iter().filter(|n| **n == name).count()
}

fn stuck_reasons(events: &[HistoryEvent]) -> Vec<String> {
    attrs(events)
        .filter_map(|a| match a {
            Attributes::StuckDetected(s) => Some(s.reason.clone()),
            _ => None,
        })
        .collect()
}

fn policy(initial_ms: u64, max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_interval_ms: initial_ms,
        backoff_coefficient: 2.0,
        maximum_interval_ms: 10_000,
        maximum_attempts: max_attempts,
        non_retryable_error_types: Vec::new(),
    }
}

/// hotel (compensable, undone by hotel.cancel), charge (pivot), email (retriable).
fn trip() -> SagaDefinition {
    SagaDefinition::builder("trip", 1)
        .step(Step::activity("hotel", "hotel.book").compensate_with("hotel.cancel"))
        .step(Step::activity("charge", "payments.charge").pivot())
        .step(Step::activity("email", "mail.send").retriable().escalate_after(3, "EmailDelayed"))
        .build()
        .unwrap()
}

/// Three compensable steps with compensations, then a pivot.
fn three_compensable() -> SagaDefinition {
    SagaDefinition::builder("three", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::activity("b", "b.do").compensate_with("b.undo"))
        .step(Step::activity("c", "c.do").compensate_with("c.undo"))
        .step(Step::activity("pay", "payments.capture").pivot())
        .build()
        .unwrap()
}

#[test]
fn happy_path_completes_with_every_result() {
    let mut h = Harness::start(trip());
    assert_eq!(names(&h.history), ["WorkflowStarted", "ActivityScheduled"]);
    assert_eq!(h.pending(), ["0.f.1"]);
    assert_eq!(h.status(), WorkflowStatus::Running);

    let events = h.complete("0.f.1", json!({"booking": "b-1"}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "ActivityScheduled"]);
    assert_eq!(h.pending(), ["1.f.1"]);
    h.complete("1.f.1", json!({"payment": "p-1"}));
    assert!(h.state.pivot_passed);
    assert_eq!(h.pending(), ["2.f.1"]);
    let events = h.complete("2.f.1", json!({"sent": true}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "WorkflowCompleted"]);

    let expected = json!({
        "hotel": {"booking": "b-1"},
        "charge": {"payment": "p-1"},
        "email": {"sent": true},
    });
    let Some(Attributes::WorkflowCompleted(done)) = &events[2].attributes else {
        panic!("expected WorkflowCompleted");
    };
    assert_eq!(serde_json::from_str::<Value>(&done.result).unwrap(), expected);
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert_eq!(serde_json::from_str::<Value>(&h.state.result).unwrap(), expected);
    assert!(h.state.tasks.is_empty());
    assert_eq!(h.state.closed_ms, h.now);
    assert_eq!(count(&h.history, "CompensationStarted"), 0);
}

#[test]
fn scheduled_tasks_carry_input_and_derived_keys() {
    let mut h = Harness::start(trip());
    let Some(Attributes::ActivityScheduled(s)) = &h.history[1].attributes else {
        panic!("expected ActivityScheduled");
    };
    assert_eq!(s.activity_type, "hotel.book");
    assert_eq!(s.idempotency_key, format!("{WORKFLOW_ID}/hotel"));
    assert_eq!(s.attempt, 1);
    assert!(!s.compensation);
    let input: Value = serde_json::from_str(&s.input).unwrap();
    assert_eq!(input["input"], json!({"order": "o-1"}));
    assert_eq!(input["workflow_id"], json!(WORKFLOW_ID));

    let events = h.complete("0.f.1", json!({"booking": "b-1"}));
    let Some(Attributes::ActivityScheduled(s)) = &events[2].attributes else {
        panic!("expected ActivityScheduled");
    };
    let input: Value = serde_json::from_str(&s.input).unwrap();
    assert_eq!(input["steps"]["hotel"], json!({"booking": "b-1"}));
}

#[test]
fn non_retryable_pivot_failure_compensates_earlier_steps() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({"booking": "b-1"}));
    let events = h.fail("1.f.1", false);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed", "CompensationStarted", "ActivityScheduled"]);
    let Some(Attributes::ActivityFailed(f)) = &events[1].attributes else {
        panic!("expected ActivityFailed");
    };
    assert!(!f.retryable);
    assert_eq!(f.next_attempt_ms, 0);
    let Some(Attributes::CompensationStarted(c)) = &events[2].attributes else {
        panic!("expected CompensationStarted");
    };
    assert_eq!(c.steps, ["hotel"]);
    assert!(c.reason.contains("charge"), "{}", c.reason);
    assert_eq!(h.status(), WorkflowStatus::Compensating);
    assert_eq!(scheduled(&events), [("0.c.1".to_string(), format!("{WORKFLOW_ID}/hotel/compensate"))]);
    let Some(Attributes::ActivityScheduled(s)) = &events[3].attributes else {
        panic!("expected ActivityScheduled");
    };
    assert_eq!(s.activity_type, "hotel.cancel");
    assert!(s.compensation);

    let events = h.complete("0.c.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "WorkflowCompensated"]);
    assert_eq!(h.status(), WorkflowStatus::Compensated);
    assert_eq!(h.state.steps[0].status, StepStatus::Compensated);
    assert!(h.state.reason.contains("charge"));
}

#[test]
fn compensations_run_one_at_a_time_in_reverse_order() {
    let mut h = Harness::start(three_compensable());
    for (i, task) in ["0.f.1", "1.f.1", "2.f.1"].into_iter().enumerate() {
        h.complete(task, json!({ "step": i }));
    }
    let events = h.fail("3.f.1", false);
    let Some(Attributes::CompensationStarted(c)) = &events[2].attributes else {
        panic!("expected CompensationStarted");
    };
    assert_eq!(c.steps, ["c", "b", "a"]);
    assert_eq!(h.state.compensation_plan, Some(vec![2, 1, 0]));

    let mut order = Vec::new();
    for _ in 0..3 {
        let pending = h.pending();
        assert_eq!(pending.len(), 1, "one compensation at a time: {pending:?}");
        order.push(pending[0].clone());
        h.complete(&pending[0], json!({}));
    }
    assert_eq!(order, ["2.c.1", "1.c.1", "0.c.1"]);
    assert_eq!(h.status(), WorkflowStatus::Compensated);
    let undo_types: Vec<String> = attrs(&h.history)
        .filter_map(|a| match a {
            Attributes::ActivityScheduled(s) if s.compensation => Some(s.activity_type.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(undo_types, ["c.undo", "b.undo", "a.undo"]);
}

#[test]
fn retryable_failure_retries_after_backoff_with_the_same_key() {
    let definition = SagaDefinition::builder("retry", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo").retry(policy(500, 5)))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.advance(10);
    let events = h.fail("0.f.1", true);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed"]);
    let Some(Attributes::ActivityFailed(f)) = &events[1].attributes else {
        panic!("expected ActivityFailed");
    };
    assert!(f.retryable);
    assert_eq!(f.next_attempt_ms, h.now + 500);
    assert!(h.pending().is_empty());
    assert_eq!(h.retry_timers(), [("retry/0.f.2".to_string(), h.now + 500)]);

    // A Wake before the timer fires changes nothing.
    assert!(h.run(Input::Wake).is_empty());
    // An unknown timer is ignored.
    assert!(h.fire("retry/0.f.3").is_empty());

    h.advance(500);
    let events = h.fire("retry/0.f.2");
    assert_eq!(names(&events), ["TimerFired", "ActivityScheduled"]);
    assert_eq!(h.pending(), ["0.f.2"]);
    assert!(h.retry_timers().is_empty());
    let keys: Vec<(String, String)> = scheduled(&h.history);
    assert_eq!(
        keys,
        [("0.f.1".to_string(), format!("{WORKFLOW_ID}/a")), ("0.f.2".to_string(), format!("{WORKFLOW_ID}/a")),]
    );
    // Firing the same timer again does nothing.
    assert!(h.fire("retry/0.f.2").is_empty());

    // The backoff grows by the coefficient.
    let events = h.fail("0.f.2", true);
    let Some(Attributes::ActivityFailed(f)) = &events[1].attributes else {
        panic!("expected ActivityFailed");
    };
    assert_eq!(f.next_attempt_ms, h.now + 1_000);

    // A timeout retries the same way.
    h.fire("retry/0.f.3");
    let events = h.time_out("0.f.3", TimeoutKind::StartToClose);
    let Some(Attributes::ActivityTimedOut(t)) = &events[0].attributes else {
        panic!("expected ActivityTimedOut");
    };
    assert_eq!(t.timeout_type, "START_TO_CLOSE");
    assert_eq!(t.next_attempt_ms, h.now + 2_000);
    h.fire("retry/0.f.4");
    h.complete("0.f.4", json!({}));
    assert_eq!(h.pending(), ["1.f.1"]);
    assert_eq!(h.status(), WorkflowStatus::Running);
}

#[test]
fn exhausted_attempts_lead_to_compensation() {
    let definition = SagaDefinition::builder("exhaust", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::activity("b", "b.do").compensate_with("b.undo").retry(policy(100, 2)))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    let events = h.fail("1.f.1", true);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed"]);
    h.advance(100);
    h.fire("retry/1.f.2");
    let events = h.fail("1.f.2", true);
    let Some(Attributes::ActivityFailed(f)) = &events[1].attributes else {
        panic!("expected ActivityFailed");
    };
    assert!(!f.retryable, "the last attempt is not retried");
    assert_eq!(f.next_attempt_ms, 0);
    let Some(Attributes::CompensationStarted(c)) = &events[2].attributes else {
        panic!("expected CompensationStarted, got {:?}", names(&events));
    };
    // The failed step started, and may have taken effect: it is undone too.
    assert_eq!(c.steps, ["b", "a"]);
    assert!(h.retry_timers().is_empty());
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
}

#[test]
fn a_non_retryable_error_type_is_not_retried() {
    let mut retry = policy(100, 5);
    retry.non_retryable_error_types = vec!["CardDeclined".into()];
    let definition = SagaDefinition::builder("declined", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::activity("pay", "pay.do").pivot().retry(retry))
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    let events = h.outcome(
        "1.f.1",
        Outcome::Failed { error_type: "CardDeclined".into(), message: "no funds".into(), retryable: true },
    );
    assert_eq!(count(&events, "CompensationStarted"), 1);
    assert!(h.retry_timers().is_empty());
}

#[test]
fn first_step_failing_without_compensations_fails_the_workflow() {
    let definition = SagaDefinition::builder("fail", 1)
        .step(Step::activity("a", "a.do"))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    let events = h.fail("0.f.1", false);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed", "WorkflowFailed"]);
    let Some(Attributes::WorkflowFailed(f)) = &events[2].attributes else {
        panic!("expected WorkflowFailed");
    };
    assert_eq!(f.step, "a");
    assert_eq!(h.status(), WorkflowStatus::Failed);
}

#[test]
fn retriable_step_escalates_once_and_stays_open() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    let mut escalations = Vec::new();
    for attempt in 1..=6 {
        let task = format!("2.f.{attempt}");
        assert_eq!(h.pending(), std::slice::from_ref(&task));
        let events = if attempt % 2 == 0 { h.time_out(&task, TimeoutKind::Heartbeat) } else { h.fail(&task, true) };
        for a in attrs(&events) {
            if let Attributes::StepEscalated(e) = a {
                escalations.push((e.step.clone(), e.attempt, e.alert.clone(), attempt));
            }
        }
        assert_eq!(h.status(), WorkflowStatus::Running);
        let (timer, at) = h.retry_timers().pop().unwrap();
        h.now = at;
        h.fire(&timer);
    }
    assert_eq!(escalations, [("email".to_string(), 3, "EmailDelayed".to_string(), 3)]);
    assert!(h.state.steps[2].escalated);
    assert!(h.state.stuck.is_none());
    h.complete("2.f.7", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert_eq!(count(&h.history, "StepEscalated"), 1);
}

#[test]
fn an_escalation_notifies_once_beside_the_step() {
    let mut definition = trip();
    let email = definition.steps.iter_mut().find(|s| s.name == "email").unwrap();
    email.escalation.as_mut().unwrap().notify = Some("notify.customer".into());
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    for attempt in 1..=3 {
        h.fail(&format!("2.f.{attempt}"), true);
        let (timer, at) = h.retry_timers().pop().unwrap();
        h.now = at;
        h.fire(&timer);
    }
    // The notification runs beside the step's fourth attempt.
    assert_eq!(h.pending(), ["2.f.4", "2.n.1"]);
    let notify = h.state.tasks["2.n.1"].clone();
    assert_eq!(notify.activity_type, "notify.customer");
    assert!(notify.input.contains("EmailDelayed"), "{}", notify.input);
    // Its failure is not retried and changes nothing for the step.
    h.fail("2.n.1", true);
    assert!(h.retry_timers().is_empty());
    h.complete("2.f.4", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert_eq!(scheduled_ids(&h.history).iter().filter(|id| id.contains(".n.")).count(), 1);
}

#[test]
fn non_retryable_failure_after_pivot_is_stuck_until_the_retry_signal() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    let events = h.fail("2.f.1", false);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed", "StuckDetected"]);
    assert_eq!(stuck_reasons(&events), ["NON_RETRYABLE_AFTER_PIVOT"]);
    assert_eq!(h.status(), WorkflowStatus::Running);
    assert!(h.pending().is_empty());
    assert_eq!(h.state.stuck.as_ref().map(|s| s.0.as_str()), Some("NON_RETRYABLE_AFTER_PIVOT"));
    // Nothing more happens on its own, and it is not reported twice.
    assert!(h.run(Input::Wake).is_empty());
    assert_eq!(count(&h.history, "CompensationStarted"), 0);

    h.advance(60_000);
    let events = h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(names(&events), ["SignalReceived", "StuckCleared", "ActivityScheduled"]);
    assert!(h.state.stuck.is_none());
    assert_eq!(h.pending(), ["2.f.2"]);
    let keys = scheduled(&h.history);
    assert_eq!(keys[2].1, keys[3].1, "the retry reuses the step's key");
    h.complete("2.f.2", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn retry_signal_gives_an_exhausted_step_a_fresh_budget() {
    let definition = SagaDefinition::builder("budget", 1)
        .step(Step::activity("pay", "pay.do").pivot())
        .step(Step::activity("ship", "ship.do").retriable().retry(policy(100, 2)))
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", true);
    h.advance(100);
    h.fire("retry/1.f.2");
    let events = h.fail("1.f.2", true);
    assert_eq!(stuck_reasons(&events), ["NON_RETRYABLE_AFTER_PIVOT"]);
    let events = h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(count(&events, "StuckCleared"), 1);
    assert_eq!(h.pending(), ["1.f.3"]);
    // Two more attempts are allowed before it blocks again.
    let events = h.fail("1.f.3", true);
    assert_eq!(count(&events, "StuckDetected"), 0);
    h.advance(1_000);
    h.fire("retry/1.f.4");
    let events = h.fail("1.f.4", true);
    assert_eq!(stuck_reasons(&events), ["NON_RETRYABLE_AFTER_PIVOT"]);
}

#[test]
fn exhausted_compensation_is_stuck_and_stays_compensating() {
    let definition = SagaDefinition::builder("undo-fails", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo").compensation_retry(policy(100, 2)))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", false);
    assert_eq!(h.pending(), ["0.c.1"]);
    let events = h.fail("0.c.1", true);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed"]);
    h.advance(100);
    h.fire("retry/0.c.2");
    assert_eq!(h.pending(), ["0.c.2"]);
    let events = h.fail("0.c.2", true);
    assert_eq!(stuck_reasons(&events), ["COMPENSATION_EXHAUSTED"]);
    assert_eq!(h.status(), WorkflowStatus::Compensating);
    assert!(h.pending().is_empty());
    assert!(h.run(Input::Wake).is_empty());
    assert_eq!(count(&h.history, "WorkflowCompensated"), 0);

    // The operator fixes the cause and asks for a retry.
    let events = h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(names(&events), ["SignalReceived", "StuckCleared", "ActivityScheduled"]);
    let keys = scheduled(&h.history);
    assert_eq!(keys.last().unwrap().0, "0.c.3");
    assert_eq!(keys.last().unwrap().1, format!("{WORKFLOW_ID}/a/compensate"));
    h.complete("0.c.3", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
}

#[test]
fn cancel_before_the_pivot_waits_for_the_attempt_then_compensates() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    assert_eq!(h.pending(), ["1.f.1"]);
    let events = h.cancel().unwrap();
    assert_eq!(names(&events), ["CancelRequested"]);
    assert_eq!(h.status(), WorkflowStatus::Running);
    assert_eq!(h.pending(), ["1.f.1"], "the attempt in flight is awaited");
    // Cancelling twice changes nothing.
    assert!(h.cancel().unwrap().is_empty());

    let events = h.complete("1.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "CompensationStarted", "ActivityScheduled"]);
    let Some(Attributes::CompensationStarted(c)) = &events[2].attributes else {
        panic!("expected CompensationStarted");
    };
    assert_eq!(c.steps, ["b", "a"]);
    assert!(c.reason.starts_with("cancelled"), "{}", c.reason);
    assert_eq!(h.pending(), ["1.c.1"]);
    h.complete("1.c.1", json!({}));
    let events = h.complete("0.c.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "WorkflowCancelled"]);
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
    assert_eq!(h.state.reason, "customer changed their mind");
    assert_eq!(count(&h.history, "ActivityScheduled"), 4);
    // Now it is closed.
    assert_eq!(h.cancel(), Err(Rejection::Terminal("CANCELLED")));
}

#[test]
fn cancel_while_a_retry_is_pending_compensates_at_once() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", true);
    assert_eq!(h.retry_timers().len(), 1);
    let events = h.cancel().unwrap();
    assert_eq!(names(&events), ["CancelRequested", "CompensationStarted", "ActivityScheduled"]);
    assert_eq!(h.pending(), ["1.c.1"]);
    assert!(h.retry_timers().is_empty(), "the abandoned forward retry is disarmed: {:?}", h.retry_timers());
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
}

#[test]
fn cancel_with_nothing_to_undo_closes_at_once() {
    let definition = SagaDefinition::builder("nothing", 1)
        .step(Step::activity("a", "a.do"))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.cancel().unwrap();
    let events = h.complete("0.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "WorkflowCancelled"]);
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
}

#[test]
fn cancel_after_the_pivot_is_rejected() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    let history_len = h.history.len();
    assert_eq!(h.cancel(), Err(Rejection::PastPivot("charge".into())));
    assert_eq!(h.history.len(), history_len);
    assert_eq!(h.pending(), ["2.f.1"]);
}

#[test]
fn cancel_racing_the_pivot_loses_once_the_pivot_succeeds() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({}));
    h.cancel().unwrap();
    assert_eq!(h.pending(), ["1.f.1"]);
    let events = h.complete("1.f.1", json!({}));
    // The refusal is recorded, with the cancel's reason and why.
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "CancelRefused", "ActivityScheduled"]);
    let refused = cancel_refused(&events);
    assert_eq!(refused.reason, "customer changed their mind");
    assert_eq!(refused.step, "charge");
    assert!(refused.message.contains("succeeded"), "{}", refused.message);
    assert!(h.state.cancel_requested.is_none());
    assert_eq!(count(&h.history, "CompensationStarted"), 0);
    assert_eq!(h.pending(), ["2.f.1"]);
    // A later cancel is refused at once, as after any pivot.
    assert_eq!(h.cancel(), Err(Rejection::PastPivot("charge".into())));
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert_eq!(count(&h.history, "CancelRefused"), 1);
}

#[test]
fn terminate_closes_without_compensating() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    let events = h.run(Input::Terminate { reason: "operator".into(), identity: "ops".into() });
    assert_eq!(names(&events), ["WorkflowTerminated"]);
    assert_eq!(h.status(), WorkflowStatus::Terminated);
    assert!(h.pending().is_empty());
    assert!(h.state.timers.is_empty());
    assert!(h.retry_timers().is_empty());
    assert_eq!(count(&h.history, "CompensationStarted"), 0);
    assert!(scheduled_ids(&h.history).iter().all(|id| id.contains(".f.")));
    // Everything that follows is refused or ignored.
    let refused = h.try_run(Input::Terminate { reason: "again".into(), identity: "ops".into() });
    assert_eq!(refused, Err(Rejection::Terminal("TERMINATED")));
    assert!(h.try_run(Input::Signal { name: "x".into(), input: "{}".into(), identity: "t".into() }).is_err());
    let events = h.complete("2.f.1", json!({}));
    assert_eq!(names(&events), ["CompletionIgnored"]);
    assert_eq!(h.status(), WorkflowStatus::Terminated);
}

#[test]
fn terminate_while_compensating_stops_the_compensation() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    h.fail("2.f.1", false);
    assert_eq!(h.pending(), ["2.c.1"]);
    let events = h.run(Input::Terminate { reason: "operator".into(), identity: "ops".into() });
    assert_eq!(names(&events), ["WorkflowTerminated"]);
    assert!(h.pending().is_empty());
    assert_eq!(h.status(), WorkflowStatus::Terminated);
}

/// Asserts that the last run recorded only a CompletionIgnored, and changed
/// nothing else in the state.
fn assert_ignored(h: &mut Harness, task_id: &str, reason: &str) {
    let before = h.state.clone();
    h.advance(5);
    let events = h.complete(task_id, json!({"late": true}));
    assert_eq!(names(&events), ["CompletionIgnored"]);
    let Some(Attributes::CompletionIgnored(c)) = &events[0].attributes else {
        panic!("expected CompletionIgnored");
    };
    assert_eq!(c.task_id, task_id);
    assert_eq!(c.reason, reason);
    assert_eq!(c.outcome, "completed");
    assert_eq!(c.worker_id, "worker-1");
    let mut expected = before;
    expected.last_seq = events[0].seq;
    expected.updated_ms = h.now;
    assert_eq!(h.state, expected);
}

#[test]
fn late_and_duplicate_completions_are_recorded_and_change_nothing() {
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({"booking": "b-1"}));
    assert_ignored(&mut h, "0.f.1", "duplicate");

    // Attempt 1 of the pivot times out; its completion arrives late.
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    assert_ignored(&mut h, "1.f.1", "late");
    let (timer, at) = h.retry_timers().pop().unwrap();
    h.now = at;
    h.fire(&timer);
    assert_ignored(&mut h, "1.f.1", "late");
    h.complete("1.f.2", json!({}));
    assert_ignored(&mut h, "1.f.2", "duplicate");
    // An unknown task id is ignored too.
    assert_ignored(&mut h, "9.f.1", "late");
    assert_ignored(&mut h, "not-a-task", "late");

    let forward_completions =
        attrs(&h.history).filter(|a| matches!(a, Attributes::ActivityCompleted(c) if c.task_id == "0.f.1")).count();
    assert_eq!(forward_completions, 1);
    assert_eq!(h.state.context.0["steps"]["hotel"], json!({"booking": "b-1"}));
    // A failure or a timeout for a stale attempt is no different.
    let events = h.fail("1.f.1", false);
    assert_eq!(names(&events), ["CompletionIgnored"]);
    assert!(h.time_out("1.f.1", TimeoutKind::StartToClose).is_empty());
    assert_eq!(h.pending(), ["2.f.1"]);
}

#[test]
fn schedule_to_close_timeout_is_final() {
    // Before the pivot, the step's budget is spent and compensation covers
    // whatever the attempt did (the step itself is undone too).
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    let events = h.time_out("1.f.1", TimeoutKind::ScheduleToClose);
    let Some(Attributes::ActivityTimedOut(t)) = &events[0].attributes else {
        panic!("expected ActivityTimedOut");
    };
    assert_eq!(t.next_attempt_ms, 0);
    let Some(Attributes::CompensationStarted(c)) = &events[1].attributes else {
        panic!("expected CompensationStarted, got {:?}", names(&events));
    };
    assert_eq!(c.steps, ["b", "a"]);

    // At the pivot, the budget is spent too, but nothing undoes a capture:
    // the saga stops and says so.
    let mut h = Harness::start(trip());
    h.complete("0.f.1", json!({}));
    let events = h.time_out("1.f.1", TimeoutKind::ScheduleToClose);
    assert_eq!(names(&events), ["ActivityTimedOut", "StuckDetected"]);
    assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"]);
}

#[test]
fn sleep_step_waits_for_its_timer() {
    let definition = SagaDefinition::builder("sleepy", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::sleep("cool-off", Duration::from_secs(30)))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.advance(7);
    let events = h.complete("0.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "TimerStarted"]);
    let Some(Attributes::TimerStarted(t)) = &events[2].attributes else {
        panic!("expected TimerStarted");
    };
    assert_eq!(t.timer_id, "sleep/1");
    assert_eq!(t.fire_at_ms, h.now + 30_000);
    assert_eq!(t.purpose, "sleep");
    assert_eq!(h.state.timers.get("sleep/1"), Some(&(h.now + 30_000)));
    assert!(h.pending().is_empty());
    assert!(h.run(Input::Wake).is_empty());

    h.advance(30_000);
    let events = h.fire("sleep/1");
    assert_eq!(names(&events), ["TimerFired", "ActivityScheduled"]);
    assert_eq!(h.state.steps[1].status, StepStatus::Completed);
    assert!(h.state.timers.is_empty());
    assert_eq!(h.pending(), ["2.f.1"]);
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert_eq!(h.state.context.0["steps"]["cool-off"], Value::Null);
}

fn approval() -> SagaDefinition {
    SagaDefinition::builder("approval", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::await_signal("approve", "approved", Duration::from_secs(60)))
        .step(Step::activity("pay", "pay.do").pivot().input_from("by", "/steps/approve/by"))
        .build()
        .unwrap()
}

#[test]
fn await_signal_completes_on_a_signal_after_it_is_reached() {
    let mut h = Harness::start(approval());
    let events = h.complete("0.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "TimerStarted"]);
    assert_eq!(h.state.timers.get("signal-timeout/1"), Some(&(h.now + 60_000)));
    // Another signal does not satisfy the step.
    let events = h.signal("something-else", json!({}));
    assert_eq!(names(&events), ["SignalReceived"]);
    assert!(h.pending().is_empty());

    h.advance(1_000);
    let events = h.signal("approved", json!({"by": "alice"}));
    assert_eq!(names(&events), ["SignalReceived", "ActivityScheduled"]);
    assert_eq!(h.state.steps[1].status, StepStatus::Completed);
    assert!(h.state.timers.is_empty(), "the deadline is disarmed");
    let Some(Attributes::ActivityScheduled(s)) = &events[1].attributes else {
        panic!("expected ActivityScheduled");
    };
    assert_eq!(serde_json::from_str::<Value>(&s.input).unwrap(), json!({"by": "alice"}));
    // The disarmed deadline no longer fires.
    assert!(h.fire("signal-timeout/1").is_empty());
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn await_signal_completes_on_a_signal_that_arrived_before() {
    let mut h = Harness::start(approval());
    let events = h.signal("approved", json!({"by": "bob"}));
    assert_eq!(names(&events), ["SignalReceived"]);
    assert_eq!(h.pending(), ["0.f.1"]);
    let events = h.complete("0.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "ActivityScheduled"]);
    assert_eq!(h.state.steps[1].status, StepStatus::Completed);
    assert_eq!(count(&h.history, "TimerStarted"), 0);
    assert_eq!(h.pending(), ["2.f.1"]);
    assert_eq!(h.state.context.0["steps"]["approve"], json!({"by": "bob"}));
}

#[test]
fn await_signal_times_out_into_compensation() {
    let mut h = Harness::start(approval());
    h.complete("0.f.1", json!({}));
    h.advance(60_000);
    let events = h.fire("signal-timeout/1");
    assert_eq!(names(&events), ["TimerFired", "CompensationStarted", "ActivityScheduled"]);
    let Some(Attributes::CompensationStarted(c)) = &events[1].attributes else {
        panic!("expected CompensationStarted");
    };
    assert_eq!(c.steps, ["a"]);
    assert!(c.reason.contains("SignalTimeout"), "{}", c.reason);
    // The signal, too late, changes nothing about the compensation.
    h.signal("approved", json!({"by": "carol"}));
    assert_eq!(h.pending(), ["0.c.1"]);
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
}

#[test]
fn an_await_signal_pivot_passes_the_point_of_no_return() {
    let definition = SagaDefinition::builder("approved-pivot", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::await_signal("captured", "payment-captured", Duration::ZERO).pivot())
        .step(Step::activity("ship", "ship.do").retriable())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    assert!(h.pending().is_empty());
    assert!(h.state.timers.is_empty(), "a zero timeout waits forever");
    h.signal("payment-captured", json!({}));
    assert!(h.state.pivot_passed);
    assert_eq!(h.pending(), ["2.f.1"]);
    assert_eq!(h.cancel(), Err(Rejection::PastPivot("captured".into())));
}

#[test]
fn a_sleep_pivot_passes_the_point_of_no_return() {
    let definition = SagaDefinition::builder("sleep-pivot", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::sleep("settle", Duration::from_secs(1)).pivot())
        .step(Step::activity("ship", "ship.do").retriable())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.advance(1_000);
    h.fire("sleep/1");
    assert!(h.state.pivot_passed);
    assert_eq!(h.cancel(), Err(Rejection::PastPivot("settle".into())));
}

#[test]
fn stuck_reports_are_deduplicated_and_cleared_by_progress() {
    let mut h = Harness::start(trip());
    let events =
        h.run(Input::Stuck { reason: super::StuckReason::NoWorker, message: "no worker polls hotel.book".into() });
    assert_eq!(stuck_reasons(&events), ["NO_WORKER"]);
    let events = h.run(Input::Stuck { reason: super::StuckReason::NoWorker, message: "still none".into() });
    assert!(events.is_empty());
    let events = h.complete("0.f.1", json!({}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted", "StuckCleared", "ActivityScheduled"]);
    assert!(h.state.stuck.is_none());
}

// ---------------------------------------------------------------------------
// Unknown outcomes (ADR 0006): an attempt that timed out after a worker may
// have run it has an unknown outcome. Unknown is not failed.

fn cancel_refused(events: &[HistoryEvent]) -> sagaflow_proto::v1::CancelRefused {
    attrs(events)
        .find_map(|a| match a {
            Attributes::CancelRefused(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a CancelRefused event")
}

/// hotel (compensable), charge (pivot, `attempts` attempts), email (retriable).
fn trip_with_pivot_attempts(attempts: u32) -> SagaDefinition {
    let mut definition = trip();
    definition.steps[1].retry = policy(100, attempts);
    definition
}

/// Fires the retry timer that is due next, moving the clock to it.
fn fire_next_retry(h: &mut Harness) -> Vec<HistoryEvent> {
    let (timer, at) = h.retry_timers().pop().expect("a retry timer");
    h.now = h.now.max(at);
    h.fire(&timer)
}

fn resolve(h: &mut Harness, step: &str, resolution: super::Resolution) -> Result<Vec<HistoryEvent>, Rejection> {
    h.try_run(Input::Resolve {
        step: step.into(),
        resolution,
        reason: "the gateway's dashboard says so".into(),
        identity: "ops-alice".into(),
    })
}

#[test]
fn a_pivot_that_times_out_is_retried_with_its_key_then_stuck_never_compensated() {
    let mut h = Harness::start(trip_with_pivot_attempts(3));
    h.complete("0.f.1", json!({}));
    // Attempts 1 and 2 time out (a hung gateway, a lost worker): retried.
    for (attempt, kind) in [(1, TimeoutKind::StartToClose), (2, TimeoutKind::Heartbeat)] {
        let events = h.time_out(&format!("1.f.{attempt}"), kind);
        assert_eq!(names(&events), ["ActivityTimedOut"]);
        assert!(h.state.steps[1].forward.unknown);
        fire_next_retry(&mut h);
    }
    // The third and last times out too: the outcome is still unknown.
    let events = h.time_out("1.f.3", TimeoutKind::StartToClose);
    assert_eq!(names(&events), ["ActivityTimedOut", "StuckDetected"]);
    assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"]);
    let message = &h.state.stuck.as_ref().unwrap().1;
    assert!(message.contains("sagaflow.retry") && message.contains("workflow resolve"), "{message}");
    assert_eq!(h.status(), WorkflowStatus::Running, "it stays open");
    assert!(h.pending().is_empty() && h.retry_timers().is_empty());
    assert!(h.run(Input::Wake).is_empty(), "nothing happens on its own");
    assert_eq!(count(&h.history, "CompensationStarted"), 0);
    // Every attempt carried the one key the gateway deduplicates on.
    let keys: BTreeSet<String> =
        scheduled(&h.history).into_iter().filter(|(id, _)| id.starts_with("1.f.")).map(|(_, k)| k).collect();
    assert_eq!(keys.len(), 1);

    // The gateway is back; the operator asks for another try, with the same key.
    let events = h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(names(&events), ["SignalReceived", "StuckCleared", "ActivityScheduled"]);
    assert_eq!(scheduled(&events), [("1.f.4".to_string(), format!("{WORKFLOW_ID}/charge"))]);
    // It answers with the capture it took long ago: the saga moves on.
    h.complete("1.f.4", json!({"captured": 2499}));
    assert!(h.state.pivot_passed);
    assert!(!h.state.steps[1].forward.unknown);
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn every_timeout_kind_after_the_start_leaves_the_outcome_unknown() {
    // A single-attempt pivot (the bench saga's): one timeout spends it.
    for (kind, started) in [
        (TimeoutKind::StartToClose, true),
        (TimeoutKind::Heartbeat, true),
        (TimeoutKind::ScheduleToClose, true),
        // Dispatch applies a schedule-to-start deadline to a queued task
        // alone: no worker had it, so nothing was taken.
        (TimeoutKind::ScheduleToStart, false),
    ] {
        let mut h = Harness::start(trip_with_pivot_attempts(1));
        h.complete("0.f.1", json!({}));
        let events = h.time_out("1.f.1", kind);
        assert_eq!(h.state.steps[1].forward.unknown, started, "{kind:?}");
        if started {
            assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"], "{kind:?}");
            assert_eq!(count(&events, "CompensationStarted"), 0, "{kind:?}");
        } else {
            assert_eq!(count(&events, "CompensationStarted"), 1, "{kind:?}");
        }
    }
}

#[test]
fn only_a_definite_answer_settles_an_unknown_pivot() {
    // (the answer to attempt 2, after attempt 1 timed out) -> what follows
    let cases: [(Outcome, &str); 4] = [
        // A retryable error says nothing about what attempt 1 did.
        (Outcome::Failed { error_type: "Unavailable".into(), message: "503".into(), retryable: true }, "stuck"),
        // A non-retryable error says nothing was taken.
        (Outcome::Failed { error_type: "Declined".into(), message: "no".into(), retryable: false }, "compensate"),
        // So does an error type the policy calls non-retryable.
        (Outcome::Failed { error_type: "Fatal".into(), message: "no".into(), retryable: true }, "compensate"),
        (Outcome::Completed("{}".into()), "forward"),
    ];
    for (answer, expected) in cases {
        let mut definition = trip_with_pivot_attempts(2);
        definition.steps[1].retry.non_retryable_error_types = vec!["Fatal".into()];
        let mut h = Harness::start(definition);
        h.complete("0.f.1", json!({}));
        h.time_out("1.f.1", TimeoutKind::StartToClose);
        fire_next_retry(&mut h);
        let events = h.outcome("1.f.2", answer.clone());
        let got = if count(&events, "CompensationStarted") == 1 {
            "compensate"
        } else if stuck_reasons(&events) == ["PIVOT_OUTCOME_UNKNOWN"] {
            "stuck"
        } else if h.state.pivot_passed {
            "forward"
        } else {
            "other"
        };
        assert_eq!(got, expected, "{answer:?}: {:?}", names(&events));
    }
}

#[test]
fn a_worker_that_cuts_an_attempt_off_leaves_its_outcome_unknown() {
    // The worker's own start-to-close timer, or a panic, may strike after
    // the effect: the same as a timeout here.
    for error_type in [sagaflow_proto::error_types::START_TO_CLOSE_TIMEOUT, sagaflow_proto::error_types::PANIC] {
        let mut h = Harness::start(trip_with_pivot_attempts(1));
        h.complete("0.f.1", json!({}));
        let events = h.outcome(
            "1.f.1",
            Outcome::Failed { error_type: error_type.into(), message: "cut off".into(), retryable: true },
        );
        assert!(h.state.steps[1].forward.unknown, "{error_type}");
        assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"], "{error_type}");
    }
}

#[test]
fn definite_failures_alone_still_compensate_the_pivot() {
    // No attempt timed out: each answer said the capture failed.
    let mut h = Harness::start(trip_with_pivot_attempts(2));
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", true);
    fire_next_retry(&mut h);
    let events = h.fail("1.f.2", true);
    assert!(!h.state.steps[1].forward.unknown);
    assert_eq!(count(&events, "CompensationStarted"), 1);
}

#[test]
fn the_retry_signal_gives_an_unknown_pivot_a_fresh_budget_in_attempts_and_time() {
    let mut definition = trip_with_pivot_attempts(2);
    definition.steps[1].timeouts.schedule_to_close_ms = 1_000;
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    let first = h.state.steps[1].forward.first_scheduled_ms;
    h.advance(1_000);
    let events = h.time_out("1.f.1", TimeoutKind::ScheduleToClose);
    assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"]);
    h.advance(60_000);
    h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(h.pending(), ["1.f.2"]);
    let track = &h.state.steps[1].forward;
    assert_eq!((track.budget_base, track.first_scheduled_ms), (1, h.now));
    assert!(track.first_scheduled_ms > first);
    assert!(track.unknown, "a retry asks again; it settles nothing by itself");
    assert!(h.state.stuck.is_none(), "the flag cleared with the new attempt");
}

#[test]
fn an_operator_resolves_an_unknown_pivot_as_succeeded() {
    let mut h = Harness::start(trip_with_pivot_attempts(1));
    h.complete("0.f.1", json!({}));
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    assert!(h.state.stuck.is_some());
    let events =
        resolve(&mut h, "charge", super::Resolution::Succeeded(json!({"captured": 2499}).to_string())).unwrap();
    assert_eq!(names(&events), ["ActivityResolved", "StuckCleared", "ActivityScheduled"]);
    let Some(Attributes::ActivityResolved(r)) = &events[0].attributes else { panic!("expected ActivityResolved") };
    assert_eq!((r.step.as_str(), r.compensation, r.outcome.as_str()), ("charge", false, "succeeded"));
    assert_eq!((r.identity.as_str(), r.reason.as_str()), ("ops-alice", "the gateway's dashboard says so"));
    assert!(h.state.pivot_passed);
    assert_eq!(h.state.context.0["steps"]["charge"], json!({"captured": 2499}));
    assert_eq!(h.pending(), ["2.f.1"]);
    // The step is settled: a second decision is refused.
    assert!(matches!(resolve(&mut h, "charge", super::Resolution::Failed), Err(Rejection::NotResolvable(_))));
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn an_operator_resolves_an_unknown_pivot_as_failed_and_it_compensates() {
    let mut h = Harness::start(trip_with_pivot_attempts(1));
    h.complete("0.f.1", json!({}));
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    let events = resolve(&mut h, "charge", super::Resolution::Failed).unwrap();
    assert_eq!(names(&events), ["ActivityResolved", "StuckCleared", "CompensationStarted", "ActivityScheduled"]);
    let Some(Attributes::CompensationStarted(c)) = &events[2].attributes else {
        panic!("expected CompensationStarted")
    };
    assert!(c.reason.contains("resolved as failed by ops-alice"), "{}", c.reason);
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
    assert_eq!(resolve(&mut h, "charge", super::Resolution::Failed), Err(Rejection::Terminal("COMPENSATED")));
}

#[test]
fn an_operator_may_settle_the_pivot_while_its_retry_waits() {
    let mut h = Harness::start(trip_with_pivot_attempts(5));
    h.complete("0.f.1", json!({}));
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    assert_eq!(h.retry_timers().len(), 1);
    resolve(&mut h, "charge", super::Resolution::Succeeded(String::new())).unwrap();
    assert!(h.retry_timers().is_empty(), "the pending retry is disarmed");
    assert_eq!(h.state.context.0["steps"]["charge"], Value::Null);
    assert_eq!(h.pending(), ["2.f.1"]);
}

#[test]
fn resolutions_that_do_not_apply_are_refused_and_change_nothing() {
    use super::Resolution::{Failed, Succeeded};
    let mut h = Harness::start(trip_with_pivot_attempts(2));
    assert_eq!(resolve(&mut h, "nope", Failed), Err(Rejection::UnknownStep("nope".into())));
    // Not attempted yet.
    assert!(matches!(resolve(&mut h, "charge", Failed), Err(Rejection::NotResolvable(_))));
    // An attempt in flight answers for itself.
    let refused = resolve(&mut h, "hotel", Succeeded("{}".into()));
    assert!(matches!(&refused, Err(Rejection::NotResolvable(m)) if m.contains("running")), "{refused:?}");
    h.complete("0.f.1", json!({}));
    // Done already.
    assert!(matches!(resolve(&mut h, "hotel", Failed), Err(Rejection::NotResolvable(_))));
    h.complete("1.f.1", json!({}));
    h.fail("2.f.1", false);
    assert_eq!(stuck_reasons(&h.history), ["NON_RETRYABLE_AFTER_PIVOT"]);
    // After the pivot a step cannot fail, only be retried or settled.
    let refused = resolve(&mut h, "email", Failed);
    assert!(matches!(&refused, Err(Rejection::NotResolvable(m)) if m.contains("sagaflow.retry")), "{refused:?}");
    resolve(&mut h, "email", Succeeded("{}".into())).unwrap();
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn cancel_during_an_unknown_pivot_waits_and_is_refused_when_the_retry_succeeds() {
    let mut h = Harness::start(trip_with_pivot_attempts(3));
    h.complete("0.f.1", json!({}));
    assert_eq!(names(&h.cancel().unwrap()), ["CancelRequested"]);
    // The attempt in flight times out: its effect is unknown, so the cancel
    // does not compensate; the pivot is retried instead.
    let events = h.time_out("1.f.1", TimeoutKind::StartToClose);
    assert_eq!(names(&events), ["ActivityTimedOut"]);
    assert_eq!(h.retry_timers().len(), 1);
    let events = fire_next_retry(&mut h);
    assert_eq!(names(&events), ["TimerFired", "ActivityScheduled"]);
    let events = h.complete("1.f.2", json!({}));
    assert_eq!(count(&events, "CancelRefused"), 1);
    assert_eq!(count(&h.history, "CompensationStarted"), 0);
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn cancel_during_an_unknown_pivot_compensates_once_it_definitely_failed() {
    let mut h = Harness::start(trip_with_pivot_attempts(3));
    h.complete("0.f.1", json!({}));
    h.cancel().unwrap();
    h.time_out("1.f.1", TimeoutKind::Heartbeat);
    fire_next_retry(&mut h);
    // A retryable answer settles nothing: still no compensation.
    let events = h.fail("1.f.2", true);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed"]);
    fire_next_retry(&mut h);
    let events = h.fail("1.f.3", false);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed", "CompensationStarted", "ActivityScheduled"]);
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
    assert_eq!(count(&h.history, "CancelRefused"), 0);
}

#[test]
fn cancel_with_a_pivot_out_of_retries_waits_for_the_operator() {
    for (resolution, status) in [
        (super::Resolution::Failed, WorkflowStatus::Cancelled),
        (super::Resolution::Succeeded("{}".into()), WorkflowStatus::Completed),
    ] {
        let mut h = Harness::start(trip_with_pivot_attempts(1));
        h.complete("0.f.1", json!({}));
        h.cancel().unwrap();
        let events = h.time_out("1.f.1", TimeoutKind::StartToClose);
        assert_eq!(stuck_reasons(&events), ["PIVOT_OUTCOME_UNKNOWN"]);
        assert!(h.run(Input::Wake).is_empty());
        // A second cancel changes nothing either.
        assert!(h.cancel().unwrap().is_empty());
        let succeeded = matches!(resolution, super::Resolution::Succeeded(_));
        resolve(&mut h, "charge", resolution).unwrap();
        assert_eq!(count(&h.history, "CancelRefused"), usize::from(succeeded));
        while let Some(task) = h.pending().first().cloned() {
            h.complete(&task, json!({}));
        }
        assert_eq!(h.status(), status);
    }
}

#[test]
fn a_retriable_step_that_keeps_timing_out_is_flagged_unknown_and_retried_with_its_key() {
    let definition = SagaDefinition::builder("late-ship", 1)
        .step(Step::activity("pay", "pay.do").pivot())
        .step(Step::activity("ship", "ship.do").retriable().retry(policy(100, 2)))
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    fire_next_retry(&mut h);
    let events = h.time_out("1.f.2", TimeoutKind::StartToClose);
    assert_eq!(stuck_reasons(&events), ["STEP_OUTCOME_UNKNOWN"]);
    assert_eq!(h.status(), WorkflowStatus::Running);
    let events = h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(names(&events), ["SignalReceived", "StuckCleared", "ActivityScheduled"]);
    let keys: BTreeSet<String> =
        scheduled(&h.history).into_iter().filter(|(id, _)| id.starts_with("1.")).map(|(_, k)| k).collect();
    assert_eq!(keys.len(), 1);
    h.complete("1.f.3", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn a_compensation_that_times_out_is_retried_and_never_assumed_done() {
    let definition = SagaDefinition::builder("undo-hangs", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo").compensation_retry(policy(100, 2)))
        .step(Step::activity("pay", "pay.do").pivot())
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", false);
    let events = h.time_out("0.c.1", TimeoutKind::StartToClose);
    assert_eq!(names(&events), ["ActivityTimedOut"]);
    assert!(h.state.steps[0].undo.unknown);
    let events = fire_next_retry(&mut h);
    assert_eq!(scheduled(&events), [("0.c.2".to_string(), format!("{WORKFLOW_ID}/a/compensate"))]);
    let events = h.time_out("0.c.2", TimeoutKind::StartToClose);
    assert_eq!(stuck_reasons(&events), ["COMPENSATION_EXHAUSTED"]);
    assert!(h.state.stuck.as_ref().unwrap().1.contains("unknown"));
    assert_eq!(h.status(), WorkflowStatus::Compensating);
    assert_eq!(h.state.steps[0].status, StepStatus::Completed, "not assumed undone");
    // A compensation is never given up, only done again or settled by hand.
    assert!(matches!(resolve(&mut h, "a", super::Resolution::Failed), Err(Rejection::NotResolvable(_))));
    assert!(matches!(
        resolve(&mut h, "pay", super::Resolution::Succeeded("{}".into())),
        Err(Rejection::NotResolvable(_))
    ));
    let events = resolve(&mut h, "a", super::Resolution::Succeeded("{}".into())).unwrap();
    assert_eq!(names(&events), ["ActivityResolved", "StuckCleared", "WorkflowCompensated"]);
    let Some(Attributes::ActivityResolved(r)) = &events[0].attributes else { panic!("expected ActivityResolved") };
    assert!(r.compensation);
}

// ---------------------------------------------------------------------------
// Parallel groups and conditions (ADR 0020).

/// hotel and flight at once (group "book"), then charge (pivot), then the
/// email and the loyalty points at once (group "after").
fn parallel_trip() -> SagaDefinition {
    SagaDefinition::builder("parallel-trip", 1)
        .step(
            Step::activity("hotel", "hotel.book")
                .compensate_with("hotel.cancel")
                .retry(policy(100, 3))
                .parallel("book"),
        )
        .step(
            Step::activity("flight", "flight.book")
                .compensate_with("flight.cancel")
                .retry(policy(100, 3))
                .parallel("book"),
        )
        .step(Step::activity("charge", "payments.charge").pivot().input_from("hotel", "/steps/hotel"))
        .step(Step::activity("email", "mail.send").retriable().parallel("after"))
        .step(Step::activity("points", "loyalty.credit").retriable().parallel("after"))
        .build()
        .unwrap()
}

#[test]
fn a_parallel_group_runs_at_once_and_joins() {
    let mut h = Harness::start(parallel_trip());
    assert_eq!(h.pending(), ["0.f.1", "1.f.1"], "both members at once");
    let events = h.complete("1.f.1", json!({"flight": "f-1"}));
    assert!(scheduled_ids(&events).is_empty(), "the group joins: nothing before the hotel is done");
    let events = h.complete("0.f.1", json!({"hotel": "h-1"}));
    assert_eq!(scheduled_ids(&events), ["2.f.1"]);
    let events = h.complete("2.f.1", json!({}));
    assert_eq!(scheduled_ids(&events), ["3.f.1", "4.f.1"]);
    h.complete("4.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Running);
    h.complete("3.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

#[test]
fn a_failed_member_awaits_its_sibling_then_compensates_every_step_that_ran() {
    let mut h = Harness::start(parallel_trip());
    let events = h.fail("0.f.1", false);
    assert_eq!(count(&events, "CompensationStarted"), 0, "the flight attempt in flight is awaited, not raced");
    assert_eq!(h.pending(), ["1.f.1"]);
    let events = h.complete("1.f.1", json!({"flight": "f-1"}));
    let plan = attrs(&events)
        .find_map(|a| match a {
            Attributes::CompensationStarted(c) => Some(c.steps.clone()),
            _ => None,
        })
        .expect("compensation once the sibling answered");
    assert_eq!(plan, ["flight", "hotel"], "newest first; the failed hotel too, since it may have taken effect");
    assert_eq!(h.pending(), ["1.c.1"], "one compensation at a time");
    h.complete("1.c.1", json!({}));
    assert_eq!(h.pending(), ["0.c.1"]);
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
}

#[test]
fn a_sibling_waiting_for_its_retry_is_compensated_at_once() {
    let mut h = Harness::start(parallel_trip());
    h.fail("1.f.1", true);
    assert_eq!(h.retry_timers().len(), 1);
    let events = h.fail("0.f.1", false);
    assert_eq!(count(&events, "CompensationStarted"), 1, "no attempt in flight: nothing to wait for");
    assert!(h.retry_timers().is_empty(), "the sibling's retry is dropped");
    assert_eq!(h.pending(), ["1.c.1"]);
}

#[test]
fn a_cancel_during_a_parallel_group_waits_for_every_member() {
    let mut h = Harness::start(parallel_trip());
    let events = h.cancel().unwrap();
    assert_eq!(names(&events), ["CancelRequested"]);
    h.complete("0.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Running, "the flight still runs");
    assert_eq!(h.pending(), ["1.f.1"]);
    let events = h.complete("1.f.1", json!({}));
    assert_eq!(count(&events, "CompensationStarted"), 1);
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
}

#[test]
fn a_blocked_member_after_the_pivot_is_stuck_while_its_sibling_goes_on() {
    let mut h = Harness::start(parallel_trip());
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    h.complete("2.f.1", json!({}));
    let events = h.fail("3.f.1", false);
    assert_eq!(stuck_reasons(&events), ["NON_RETRYABLE_AFTER_PIVOT"]);
    assert_eq!(h.pending(), ["4.f.1"], "the points still run");
    h.complete("4.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Running);
    assert!(h.state.stuck.is_some(), "still stuck on the email after the points' progress");
    h.signal(RETRY_SIGNAL, json!({}));
    assert_eq!(h.pending(), ["3.f.2"]);
    h.complete("3.f.2", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

/// gift_wrap runs only for a gift; insurance only above 100; both may read
/// the input and earlier results.
fn conditional() -> SagaDefinition {
    let gift = sagaflow_workflows::Condition::Equals { pointer: "/input/gift".into(), value: json!(true) };
    let large = sagaflow_workflows::Condition::GreaterThan { pointer: "/steps/price/total".into(), value: 100.0 };
    SagaDefinition::builder("conditional", 1)
        .step(Step::activity("price", "catalog.price"))
        .step(Step::activity("wrap", "gift.wrap").compensate_with("gift.unwrap").when(gift))
        .step(Step::activity("insure", "insurance.buy").compensate_with("insurance.cancel").when(large))
        .step(Step::activity("pay", "payments.capture").pivot())
        .build()
        .unwrap()
}

fn skipped_steps(events: &[HistoryEvent]) -> Vec<String> {
    attrs(events)
        .filter_map(|a| match a {
            Attributes::StepSkipped(s) => Some(s.step.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_step_whose_condition_fails_is_skipped_and_never_compensated() {
    let mut h = Harness::start_with_input(conditional(), json!({"gift": false}));
    let events = h.complete("0.f.1", json!({"total": 250}));
    assert_eq!(skipped_steps(&events), ["wrap"]);
    assert_eq!(h.state.steps[1].status, StepStatus::Skipped);
    assert_eq!(scheduled_ids(&events), ["2.f.1"], "insurance holds on the price's result");
    h.complete("2.f.1", json!({}));
    let events = h.fail("3.f.1", false);
    let plan = attrs(&events).find_map(|a| match a {
        Attributes::CompensationStarted(c) => Some(c.steps.clone()),
        _ => None,
    });
    assert_eq!(plan.unwrap(), ["insure"], "the skipped wrap has nothing to undo");
}

#[test]
fn a_condition_that_holds_runs_the_step_and_is_not_evaluated_again() {
    let mut h = Harness::start_with_input(conditional(), json!({"gift": true}));
    let events = h.complete("0.f.1", json!({"total": 50}));
    assert_eq!(scheduled_ids(&events), ["1.f.1"]);
    // A retry of the running step does not look at the condition again.
    h.fail("1.f.1", true);
    let (timer, at) = h.retry_timers()[0].clone();
    h.now = at;
    let events = h.fire(&timer);
    assert_eq!(scheduled_ids(&events), ["1.f.2"]);
    let events = h.complete("1.f.2", json!({}));
    assert_eq!(skipped_steps(&events), ["insure"], "50 is not above 100");
    let Some(Attributes::StepSkipped(skip)) = attrs(&events).find(|a| matches!(a, Attributes::StepSkipped(_))) else {
        panic!("expected StepSkipped");
    };
    assert!(skip.condition.contains("greater_than"), "the history says which condition: {}", skip.condition);
    h.complete("3.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
}

// ---------------------------------------------------------------------------
// Pause and resume.

fn pause(h: &mut Harness) -> Result<Vec<HistoryEvent>, Rejection> {
    h.try_run(Input::Pause { reason: "downstream broken".into(), identity: "ops".into() })
}

fn resume(h: &mut Harness) -> Result<Vec<HistoryEvent>, Rejection> {
    h.try_run(Input::Resume { reason: "fixed".into(), identity: "ops".into() })
}

#[test]
fn a_paused_workflow_records_outcomes_but_schedules_nothing_until_resumed() {
    let mut h = Harness::start(trip());
    assert_eq!(names(&pause(&mut h).unwrap()), ["WorkflowPaused"]);
    assert!(pause(&mut h).unwrap().is_empty(), "pausing twice records nothing");
    // The attempt in flight finishes and is recorded; the next step waits.
    let events = h.complete("0.f.1", json!({"booking": "b-1"}));
    assert_eq!(names(&events), ["ActivityStarted", "ActivityCompleted"]);
    assert!(h.pending().is_empty());
    assert_eq!(h.status(), WorkflowStatus::Running);
    assert!(h.run(Input::Wake).is_empty(), "nothing follows while paused");
    let events = resume(&mut h).unwrap();
    assert_eq!(names(&events), ["WorkflowResumed", "ActivityScheduled"]);
    assert_eq!(h.pending(), ["1.f.1"]);
    assert!(resume(&mut h).unwrap().is_empty(), "resuming a running workflow records nothing");
}

#[test]
fn a_retry_or_a_cancel_while_paused_waits_for_the_resume() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    pause(&mut h).unwrap();
    let events = h.fail("1.f.1", true);
    assert_eq!(names(&events), ["ActivityStarted", "ActivityFailed"]);
    let (timer, at) = h.retry_timers()[0].clone();
    h.now = at;
    let events = h.fire(&timer);
    assert_eq!(names(&events), ["TimerFired"], "the retry is due but not scheduled while paused");
    assert_eq!(names(&h.cancel().unwrap()), ["CancelRequested"]);
    assert_eq!(count(&h.history, "CompensationStarted"), 0, "the cancel is recorded, its compensation waits");
    let events = resume(&mut h).unwrap();
    assert_eq!(names(&events)[..2], ["WorkflowResumed", "CompensationStarted"]);
    // b's failed attempt may have taken effect: it is undone too, first.
    assert_eq!(h.pending(), ["1.c.1"]);
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
}

#[test]
fn a_paused_workflow_can_be_terminated_and_a_closed_one_cannot_be_paused() {
    let mut h = Harness::start(trip());
    pause(&mut h).unwrap();
    h.run(Input::Terminate { reason: "give up".into(), identity: "ops".into() });
    assert_eq!(h.status(), WorkflowStatus::Terminated);
    assert_eq!(h.state.paused, None, "a closed workflow is not paused");
    assert!(matches!(pause(&mut h), Err(Rejection::Terminal(_))));
    assert!(matches!(resume(&mut h), Err(Rejection::Terminal(_))));
}

// ---------------------------------------------------------------------------
// Child sagas (ADR 0023).

/// room, then the child saga `extras`, then pay (the pivot).
fn with_child() -> SagaDefinition {
    SagaDefinition::builder("trip-with-extras", 1)
        .step(Step::activity("room", "hotel.book").compensate_with("hotel.cancel"))
        .step(Step::child("extras", "extras").input_from("trip", "/input/order"))
        .step(Step::activity("pay", "payments.capture").pivot())
        .build()
        .unwrap()
}

#[test]
fn a_child_step_is_a_task_for_the_orchestrator_and_is_undone_by_its_child() {
    let mut h = Harness::start(with_child());
    h.complete("0.f.1", json!({"room": "r-1"}));
    let Some(Attributes::ActivityScheduled(child)) = h.history.last().and_then(|e| e.attributes.as_ref()) else {
        panic!("expected the child's task");
    };
    assert_eq!(child.activity_type, sagaflow_workflows::CHILD_ACTIVITY);
    assert_eq!(child.idempotency_key, format!("{WORKFLOW_ID}/extras"), "the child's request id");
    assert_eq!(serde_json::from_str::<Value>(&child.input).unwrap(), json!({"trip": "o-1"}));
    h.complete("1.f.1", json!({"seat": {"seat": "12A"}}));
    let events = h.fail("2.f.1", false);
    let plan = attrs(&events).find_map(|a| match a {
        Attributes::CompensationStarted(c) => Some(c.steps.clone()),
        _ => None,
    });
    assert_eq!(plan.unwrap(), ["extras", "room"], "the completed child is undone first");
    let Some(Attributes::ActivityScheduled(undo)) = events.last().and_then(|e| e.attributes.as_ref()) else {
        panic!("expected the child's compensation");
    };
    assert_eq!(undo.activity_type, sagaflow_workflows::CHILD_COMPENSATION);
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);
}

fn start_child(definition: SagaDefinition) -> Harness {
    let started = WorkflowStarted {
        workflow_type: definition.name.clone(),
        definition_version: definition.version,
        request_id: "parent-1/extras".into(),
        input: "{}".into(),
        parent_workflow_id: "parent-1".into(),
        ..Default::default()
    };
    let (state, history) = start(WORKFLOW_ID, started, &definition, T0);
    Harness { definition, state, history, now: T0 }
}

#[test]
fn a_child_is_held_when_done_and_completes_only_when_released() {
    let mut h = start_child(three_compensable_without_pivot());
    for task in ["0.f.1", "1.f.1", "2.f.1"] {
        h.complete(task, json!({"done": task}));
    }
    assert_eq!(names(&h.history).last(), Some(&"WorkflowHeld"));
    assert_eq!(h.status(), WorkflowStatus::Running, "held, not completed: its parent may still undo it");
    assert!(h.state.held);
    assert!(matches!(h.cancel(), Err(Rejection::HeldByParent(p)) if p == "parent-1"));
    assert!(h.run(Input::Wake).is_empty());
    let events = h.run(Input::Release);
    assert_eq!(names(&events), ["WorkflowCompleted"]);
    assert_eq!(serde_json::from_str::<Value>(&h.state.result).unwrap()["c"], json!({"done": "2.f.1"}));
    assert!(matches!(h.try_run(Input::Release), Err(Rejection::Terminal(_))));
    h.check_replay();
}

#[test]
fn a_held_child_compensated_by_its_parent_undoes_its_steps() {
    let mut h = start_child(three_compensable_without_pivot());
    assert!(h.run(Input::CompensateChild { reason: "early".into() }).is_empty(), "not held yet: nothing");
    for task in ["0.f.1", "1.f.1", "2.f.1"] {
        h.complete(task, json!({}));
    }
    let events = h.run(Input::CompensateChild { reason: "parent parent-1 is compensating".into() });
    assert_eq!(names(&events), ["CompensationStarted", "ActivityScheduled"]);
    assert!(!h.state.held);
    for task in ["2.c.1", "1.c.1", "0.c.1"] {
        assert_eq!(h.pending(), [task]);
        h.complete(task, json!({}));
    }
    assert_eq!(h.status(), WorkflowStatus::Compensated);
    assert_eq!(h.state.reason, "parent parent-1 is compensating");
}

#[test]
fn a_held_child_with_nothing_to_undo_ends_compensated() {
    let definition = SagaDefinition::builder("note", 1).step(Step::activity("note", "log.write")).build().unwrap();
    let mut h = start_child(definition);
    h.complete("0.f.1", json!({}));
    let events = h.run(Input::CompensateChild { reason: "parent compensating".into() });
    assert_eq!(names(&events), ["CompensationStarted", "WorkflowCompensated"]);
}

fn three_compensable_without_pivot() -> SagaDefinition {
    SagaDefinition::builder("extras", 1)
        .step(Step::activity("a", "a.do").compensate_with("a.undo"))
        .step(Step::activity("b", "b.do").compensate_with("b.undo"))
        .step(Step::activity("c", "c.do").compensate_with("c.undo"))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Property tests.

#[derive(Debug, Clone)]
struct CompensableSpec {
    /// Runs at once with the compensable step before it that has this flag too.
    parallel: bool,
    /// `Some(holds)`: the step has a condition, which holds or not.
    condition: Option<bool>,
    has_compensation: bool,
    max_attempts: u32,
    compensation_max_attempts: u32,
}

#[derive(Debug, Clone)]
struct RetriableSpec {
    parallel: bool,
    condition: Option<bool>,
    /// 0 = unlimited.
    max_attempts: u32,
    escalate_after: Option<u32>,
}

#[derive(Debug, Clone)]
struct Shape {
    compensable: Vec<CompensableSpec>,
    /// A child-saga step after the compensable steps.
    child: bool,
    pivot: Option<u32>,
    retriable: Vec<RetriableSpec>,
    /// The workflow is itself a child (so it has no pivot): held when done.
    parented: bool,
}

impl Shape {
    fn definition(&self) -> SagaDefinition {
        let retry = |max| RetryPolicy {
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 1_000,
            maximum_attempts: max,
            non_retryable_error_types: vec!["Fatal".into()],
        };
        let mut builder = SagaDefinition::builder("random", 1);
        // A run of consecutive parallel steps is one group, named after its first step.
        let mut group = String::new();
        for (i, c) in self.compensable.iter().enumerate() {
            if !c.parallel || i == 0 || !self.compensable[i - 1].parallel {
                group = format!("pre{i}");
            }
            let mut step = shaped(
                Step::activity(format!("c{i}"), format!("c{i}.do")).retry(retry(c.max_attempts)),
                c.parallel,
                c.condition,
                &group,
            );
            if c.has_compensation {
                step =
                    step.compensate_with(format!("c{i}.undo")).compensation_retry(retry(c.compensation_max_attempts));
            }
            builder = builder.step(step);
        }
        if self.child {
            builder = builder.step(Step::child("kid", "kid-saga").retry(retry(2)));
        }
        if let Some(max) = self.pivot {
            builder = builder.step(Step::activity("pivot", "pivot.do").pivot().retry(retry(max)));
            for (i, r) in self.retriable.iter().enumerate() {
                if !r.parallel || i == 0 || !self.retriable[i - 1].parallel {
                    group = format!("post{i}");
                }
                let mut step = shaped(
                    Step::activity(format!("r{i}"), format!("r{i}.do")).retriable().retry(retry(r.max_attempts)),
                    r.parallel,
                    r.condition,
                    &group,
                );
                if let Some(after) = r.escalate_after {
                    step = step.escalate_after(after, format!("R{i}Delayed"));
                }
                builder = builder.step(step);
            }
        }
        builder.build().unwrap()
    }

    fn start(&self) -> Harness {
        if self.parented { start_child(self.definition()) } else { Harness::start(self.definition()) }
    }
}

/// Puts a step in `group` and gives it a condition on the input (which the
/// harness starts as `{"order": "o-1"}`) that holds or not.
fn shaped(step: Step, parallel: bool, condition: Option<bool>, group: &str) -> Step {
    let step = if parallel { step.parallel(group) } else { step };
    match condition {
        Some(holds) => step.when(sagaflow_workflows::Condition::Equals {
            pointer: "/input/order".into(),
            value: json!(if holds { "o-1" } else { "o-2" }),
        }),
        None => step,
    }
}

/// The shape as a top-level saga with a pivot (a cancel races it).
fn with_a_pivot(mut shape: Shape) -> Shape {
    shape.pivot.get_or_insert(2);
    shape.parented = false;
    shape
}

fn condition() -> impl Strategy<Value = Option<bool>> {
    prop::option::weighted(0.3, any::<bool>())
}

fn shapes() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec(
            (prop::bool::weighted(0.75), 1u32..=4, 1u32..=4, any::<bool>(), condition()).prop_map(
                |(has, max, cmax, parallel, condition)| CompensableSpec {
                    parallel,
                    condition,
                    has_compensation: has,
                    max_attempts: max,
                    compensation_max_attempts: cmax,
                },
            ),
            1..=4,
        ),
        prop::option::of(1u32..=4),
        prop::collection::vec(
            (0u32..=4, prop::option::of(1u32..=3), any::<bool>(), condition()).prop_map(
                |(max, esc, parallel, condition)| RetriableSpec {
                    parallel,
                    condition,
                    max_attempts: max,
                    escalate_after: esc,
                },
            ),
            0..=2,
        ),
    )
        .prop_flat_map(|(compensable, pivot, retriable)| {
            (prop::bool::weighted(0.25), prop::bool::weighted(0.25)).prop_map(move |(child, parented)| {
                // A child saga has no pivot: its parent must be able to undo it.
                let pivot = if parented { None } else { pivot };
                Shape {
                    retriable: if pivot.is_some() { retriable.clone() } else { Vec::new() },
                    compensable: compensable.clone(),
                    child,
                    pivot,
                    parented,
                }
            })
        })
}

/// One move of the random driver: what kind, which target, how much time passes.
#[derive(Debug, Clone, Copy)]
struct Move {
    choice: u8,
    pick: usize,
    elapse: i64,
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    prop::collection::vec(
        (0u8..100, any::<usize>(), 0i64..3_000).prop_map(|(choice, pick, elapse)| Move { choice, pick, elapse }),
        0..80,
    )
}

/// Every timer the workflow waits on, retry timers included, earliest first.
fn all_timers(state: &WorkflowState) -> Vec<(String, i64)> {
    let mut timers: Vec<(String, i64)> =
        state.timers.iter().map(|(id, at)| (id.clone(), *at)).chain(state.retry_timers()).collect();
    timers.sort_by_key(|(id, at)| (*at, id.clone()));
    timers
}

/// (e): an open workflow always has a reason to be open.
fn assert_open_for_a_reason(state: &WorkflowState) {
    if state.is_terminal() {
        assert!(state.tasks.is_empty(), "a closed workflow has no tasks");
        assert!(all_timers(state).is_empty(), "a closed workflow has no timers");
        assert!(state.stuck.is_none());
        return;
    }
    assert!(
        state.stuck.is_some()
            || state.paused.is_some()
            || state.held
            || !state.tasks.is_empty()
            || !all_timers(state).is_empty(),
        "an open workflow with nothing to wait on: {state:#?}"
    );
}

fn task_outcome(h: &mut Harness, task_id: &str, kind: u8) -> Vec<HistoryEvent> {
    let attempt_result = json!({"task": task_id});
    match kind % 20 {
        0..=13 => h.complete(task_id, attempt_result),
        14 | 15 => h.fail(task_id, true),
        16 => h.fail(task_id, false),
        17 if h.now % 3 == 0 => h.outcome(
            task_id,
            Outcome::Failed {
                error_type: sagaflow_proto::error_types::START_TO_CLOSE_TIMEOUT.into(),
                message: "the worker cut it off".into(),
                retryable: true,
            },
        ),
        17 => h.outcome(
            task_id,
            Outcome::Failed { error_type: "Fatal".into(), message: "policy says no".into(), retryable: true },
        ),
        _ => h.time_out(task_id, if h.now % 4 == 0 { TimeoutKind::ScheduleToClose } else { TimeoutKind::StartToClose }),
    }
}

/// Applies one random move, checking what must hold after any input.
fn drive(h: &mut Harness, m: Move) {
    h.advance(m.elapse);
    let tasks = h.pending();
    let timers = all_timers(&h.state);
    match m.choice {
        0 if m.pick.is_multiple_of(2) => {
            let result = h.try_run(Input::Terminate { reason: "random".into(), identity: "driver".into() });
            if let Err(rejection) = result {
                assert!(matches!(rejection, Rejection::Terminal(_)));
            }
        }
        96 | 97 => {
            // A parent's decision on its held child; a no-op on anything else.
            let (was_terminal, was_held, was_paused) = (h.state.is_terminal(), h.state.held, h.state.paused.is_some());
            let input = if m.pick.is_multiple_of(2) {
                Input::Release
            } else {
                Input::CompensateChild { reason: "parent compensating".into() }
            };
            match h.try_run(input) {
                Ok(events) => assert!(was_held || events.is_empty(), "{:?}", names(&events)),
                Err(Rejection::Terminal(_)) => assert!(was_terminal),
                Err(Rejection::Paused(_)) => assert!(was_held && was_paused),
                Err(other) => panic!("refused as {other:?}"),
            }
        }
        0 | 98 | 99 => {
            let was_terminal = h.state.is_terminal();
            let result = if h.state.paused.is_some() { resume(h) } else { pause(h) };
            assert_eq!(result.is_err(), was_terminal);
        }
        1..=3 => {
            let was_terminal = h.state.is_terminal();
            let was_held = h.state.held;
            let pivot_passed = h.state.pivot_passed;
            match h.cancel() {
                Ok(events) => assert!(!was_terminal && !pivot_passed, "{:?}", names(&events)),
                Err(Rejection::Terminal(_)) => assert!(was_terminal),
                Err(Rejection::PastPivot(_)) => assert!(pivot_passed),
                Err(Rejection::HeldByParent(_)) => assert!(was_held),
                Err(other) => panic!("a cancel refused as {other:?}"),
            }
        }
        4 | 5 => {
            // An operator's decision on a random step, which may not apply.
            let step = h.definition.steps[m.pick % h.definition.steps.len()].name.clone();
            let resolution = if (m.pick / 7).is_multiple_of(2) {
                super::Resolution::Succeeded(json!({"resolved": true}).to_string())
            } else {
                super::Resolution::Failed
            };
            let was_terminal = h.state.is_terminal();
            match resolve(h, &step, resolution) {
                Ok(events) => assert_eq!(names(&events).first(), Some(&"ActivityResolved")),
                Err(Rejection::Terminal(_)) => assert!(was_terminal),
                Err(Rejection::NotResolvable(_)) => {}
                Err(other) => panic!("unexpected rejection {other:?}"),
            }
        }
        6..=9 => {
            let name = if m.pick.is_multiple_of(2) { RETRY_SIGNAL } else { "ping" };
            let was_terminal = h.state.is_terminal();
            let result = h.try_run(Input::Signal { name: name.into(), input: "{}".into(), identity: "driver".into() });
            assert_eq!(result.is_err(), was_terminal);
        }
        10..=14 => {
            // A completion for any task ever scheduled: late, duplicate, or real.
            let ids = scheduled_ids(&h.history);
            if ids.is_empty() {
                return;
            }
            let id = ids[m.pick % ids.len()].clone();
            if h.state.tasks.contains_key(&id) {
                task_outcome(h, &id, 0);
            } else {
                let before = h.state.clone();
                let events = h.complete(&id, json!({"stale": true}));
                assert_eq!(names(&events), ["CompletionIgnored"]);
                let mut expected = before;
                expected.last_seq = h.state.last_seq;
                expected.updated_ms = h.now;
                assert_eq!(h.state, expected);
            }
        }
        15..=29 if !timers.is_empty() => {
            let (id, at) = &timers[m.pick % timers.len()];
            h.now = h.now.max(*at);
            let events = h.fire(id);
            assert_eq!(names(&events).first(), Some(&"TimerFired"));
        }
        _ if !tasks.is_empty() => {
            let id = tasks[m.pick % tasks.len()].clone();
            task_outcome(h, &id, m.choice);
        }
        _ if !timers.is_empty() => {
            let (id, at) = &timers[0];
            h.now = h.now.max(*at);
            h.fire(id);
        }
        _ => {
            assert!(h.run(Input::Wake).is_empty(), "a Wake decides nothing new");
        }
    }
    assert_open_for_a_reason(&h.state);
}

/// One move of a run whose workers answer `answer` (see [`task_outcome`]):
/// the first pending task gets its answer, else the next timer fires, else an
/// operator sends the retry signal to a stuck workflow.
fn operate(h: &mut Harness, answer: u8) {
    if let Some(id) = h.pending().first().cloned() {
        h.advance(10);
        task_outcome(h, &id, answer);
    } else if let Some((id, at)) = all_timers(&h.state).first().cloned() {
        h.now = h.now.max(at);
        h.fire(&id);
    } else if h.state.paused.is_some() {
        resume(h).unwrap();
    } else if h.state.held {
        h.run(Input::Release);
    } else if h.state.stuck.is_some() {
        h.signal(RETRY_SIGNAL, json!({}));
    } else {
        panic!("wedged: {:#?}", h.state);
    }
    assert_open_for_a_reason(&h.state);
}

/// An honest operator and honest workers: every task succeeds, every timer
/// fires, every stuck workflow gets the retry signal. It must close.
fn drain(h: &mut Harness) {
    for _ in 0..200 {
        if h.state.is_terminal() {
            return;
        }
        // Answer 0: the task succeeds.
        operate(h, 0);
    }
    panic!("did not close after 200 honest moves: {:#?}", h.state);
}

fn is_terminal_event(a: &Attributes) -> bool {
    matches!(
        a,
        Attributes::WorkflowCompleted(_)
            | Attributes::WorkflowCompensated(_)
            | Attributes::WorkflowFailed(_)
            | Attributes::WorkflowCancelled(_)
            | Attributes::WorkflowTerminated(_)
    )
}

/// (a) to (d), and a few more, over a whole history.
fn check_history(definition: &SagaDefinition, history: &[HistoryEvent]) {
    let pivot = definition.pivot_index();
    let mut forward_scheduled: BTreeSet<usize> = BTreeSet::new();
    let mut forward_completed: BTreeMap<usize, usize> = BTreeMap::new();
    let mut compensated: BTreeSet<usize> = BTreeSet::new();
    let mut skipped: BTreeSet<usize> = BTreeSet::new();
    let mut keys: BTreeMap<(usize, bool), String> = BTreeMap::new();
    let mut plan: Option<Vec<usize>> = None;
    let mut last_first_compensation: Option<usize> = None;
    let mut pivot_done = false;
    // An attempt of the pivot timed out after it may have run, and no
    // definite answer came since.
    let mut pivot_unknown = false;
    let mut cancel_pending = false;
    let mut closed = false;
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut paused = false;
    let mut parented = false;
    let mut held = false;
    let is_pivot = |task_id: &str| parse_task_id(task_id).is_some_and(|(i, c, _)| !c && Some(i) == pivot);

    for (i, event) in history.iter().enumerate() {
        // (a) seqs are contiguous from 1.
        assert_eq!(event.seq, i as u64 + 1, "seq of event {i}");
        let attributes = event.attributes.as_ref().unwrap();
        if closed {
            assert!(
                matches!(attributes, Attributes::CompletionIgnored(_)),
                "only ignored completions follow the close, got {}",
                attributes.event_name()
            );
            continue;
        }
        // (i) while paused, inputs are recorded but nothing is decided.
        if paused {
            assert!(
                !matches!(
                    attributes,
                    Attributes::ActivityScheduled(_)
                        | Attributes::TimerStarted(_)
                        | Attributes::CompensationStarted(_)
                        | Attributes::StepSkipped(_)
                        | Attributes::CancelRefused(_)
                        | Attributes::WorkflowCompleted(_)
                        | Attributes::WorkflowCompensated(_)
                        | Attributes::WorkflowFailed(_)
                        | Attributes::WorkflowCancelled(_)
                ),
                "{} while paused",
                attributes.event_name()
            );
        }
        match attributes {
            Attributes::WorkflowPaused(_) => paused = true,
            Attributes::WorkflowResumed(_) => paused = false,
            Attributes::WorkflowStarted(started) => {
                assert_eq!(i, 0);
                parented = !started.parent_workflow_id.is_empty();
                // A redrive's carried steps are done before anything runs.
                for carried in &started.carried_steps {
                    let index = carried.step_index as usize;
                    if carried.skipped {
                        skipped.insert(index);
                    } else {
                        forward_completed.insert(index, 0);
                    }
                }
            }
            Attributes::WorkflowHeld(_) => {
                // (j) a child is held once every step is done, and only a child.
                assert!(parented, "held without a parent");
                assert!(plan.is_none());
                assert_eq!(forward_completed.len() + skipped.len(), definition.steps.len());
                held = true;
            }
            Attributes::ActivityScheduled(s) => {
                let index = s.step_index as usize;
                let (step, compensation, attempt) = parse_task_id(&s.task_id).unwrap();
                assert_eq!((step, compensation, attempt), (index, s.compensation, s.attempt));
                // Every attempt of one direction of a step reuses one key.
                let key = keys.entry((index, s.compensation)).or_insert_with(|| s.idempotency_key.clone());
                assert_eq!(*key, s.idempotency_key, "key of {}", s.task_id);
                if s.compensation {
                    // (d) never after the pivot.
                    assert!(!pivot_done, "compensation {} after the pivot", s.task_id);
                    // (c) only a started step with a compensation, in plan order.
                    assert!(definition.steps[index].undoes());
                    assert!(forward_scheduled.contains(&index));
                    let p = plan.as_ref().expect("compensation outside a plan");
                    let position = p.iter().position(|&x| x == index).unwrap();
                    assert!(
                        p[..position].iter().all(|x| compensated.contains(x)),
                        "compensation of {index} before the later steps were undone"
                    );
                    if attempt == 1 {
                        if let Some(last) = last_first_compensation {
                            assert!(index < last, "compensations in reverse step order");
                        }
                        last_first_compensation = Some(index);
                    }
                } else {
                    assert!(plan.is_none(), "forward work while compensating");
                    assert!(!skipped.contains(&index), "skipped step {index} scheduled");
                    // (h) a step starts once every earlier step outside its
                    // parallel group is done (completed or skipped).
                    let group = definition.steps[index].parallel.as_ref();
                    for earlier in 0..index {
                        let sibling = group.is_some() && definition.steps[earlier].parallel.as_ref() == group;
                        let done = forward_completed.contains_key(&earlier) || skipped.contains(&earlier);
                        assert!(sibling || done, "step {index} scheduled before step {earlier} was done");
                    }
                    forward_scheduled.insert(index);
                    in_flight.insert(s.task_id.clone());
                }
            }
            Attributes::ActivityFailed(f) => {
                in_flight.remove(&f.task_id);
                if is_pivot(&f.task_id) && f.outcome_unknown {
                    pivot_unknown = true;
                } else if is_pivot(&f.task_id) && f.definite {
                    pivot_unknown = false;
                }
            }
            Attributes::ActivityTimedOut(t) => {
                in_flight.remove(&t.task_id);
                if is_pivot(&t.task_id) && t.timeout_type != "SCHEDULE_TO_START" {
                    pivot_unknown = true;
                }
            }
            Attributes::ActivityResolved(r) => {
                let index = definition.step_index(&r.step).unwrap();
                if r.compensation {
                    assert!(compensated.insert(index), "{index} compensated twice");
                } else if r.outcome == "succeeded" {
                    let n = forward_completed.entry(index).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "step {index} completed twice");
                    pivot_done |= Some(index) == pivot;
                } else if Some(index) == pivot {
                    pivot_unknown = false;
                }
            }
            Attributes::StepSkipped(k) => {
                let index = k.step_index as usize;
                assert!(definition.steps[index].when.is_some(), "step {index} skipped without a condition");
                assert!(!forward_scheduled.contains(&index), "step {index} skipped after it ran");
                assert!(skipped.insert(index), "step {index} skipped twice");
            }
            Attributes::CancelRequested(_) => cancel_pending = true,
            Attributes::CancelRefused(_) => {
                // (g) a cancel is refused only once the pivot succeeded.
                assert!(pivot_done && cancel_pending, "a cancel refused before the pivot succeeded");
                cancel_pending = false;
            }
            Attributes::ActivityCompleted(c) => {
                in_flight.remove(&c.task_id);
                let (index, compensation, _) = parse_task_id(&c.task_id).unwrap();
                if compensation {
                    assert!(compensated.insert(index), "{index} compensated twice");
                } else {
                    // (b) at most one accepted completion per step.
                    let n = forward_completed.entry(index).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "step {index} completed twice");
                    if Some(index) == pivot {
                        pivot_done = true;
                    }
                }
            }
            Attributes::CompensationStarted(c) => {
                assert!(!pivot_done, "compensation started after the pivot");
                // (f) never past a pivot that may have taken effect.
                assert!(!pivot_unknown, "compensation started while the pivot's outcome is unknown");
                assert!(plan.is_none(), "compensation started twice");
                // A forward attempt in flight is awaited, never raced.
                assert!(in_flight.is_empty(), "compensating while {in_flight:?} run");
                let indices: Vec<usize> = c.steps.iter().map(|name| definition.step_index(name).unwrap()).collect();
                // Exactly the started steps that can be undone, newest first.
                let expected: Vec<usize> =
                    forward_scheduled.iter().rev().copied().filter(|&i| definition.steps[i].undoes()).collect();
                assert_eq!(indices, expected);
                plan = Some(indices);
            }
            Attributes::WorkflowCompleted(_) => {
                assert!(plan.is_none());
                assert!(!parented || held, "a child completes only once held and released");
                assert_eq!(forward_completed.len() + skipped.len(), definition.steps.len());
            }
            Attributes::WorkflowCompensated(_) | Attributes::WorkflowCancelled(_) => {
                assert!(!pivot_done, "undone after the pivot");
                let done: BTreeSet<usize> = plan.iter().flatten().copied().collect();
                assert_eq!(done, compensated, "every planned compensation ran");
            }
            _ => {}
        }
        closed = is_terminal_event(attributes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_drivers_keep_the_saga_invariants(shape in shapes(), script in moves()) {
        let definition = shape.definition();
        let mut h = shape.start();
        assert_open_for_a_reason(&h.state);
        for m in script {
            drive(&mut h, m);
        }
        check_history(&definition, &h.history);
        drain(&mut h);
        check_history(&definition, &h.history);
        prop_assert!(h.state.is_terminal());
        prop_assert_eq!(replay(WORKFLOW_ID, &h.history, &definition), h.state);
    }

    #[test]
    fn honest_runs_complete_or_compensate(
        shape in shapes(),
        failures in prop::collection::vec(0u8..20, 0..20),
    ) {
        // Workers fail now and then but never lie; nobody cancels or terminates.
        let definition = shape.definition();
        let mut h = shape.start();
        let mut failures = failures.into_iter();
        for _ in 0..300 {
            if h.state.is_terminal() {
                break;
            }
            operate(&mut h, failures.next().unwrap_or(0));
        }
        check_history(&definition, &h.history);
        let status = h.state.status;
        prop_assert!(
            matches!(
                status,
                WorkflowStatus::Completed | WorkflowStatus::Compensated | WorkflowStatus::Failed
            ),
            "status {:?}",
            status
        );
        if h.state.pivot_passed {
            prop_assert_eq!(status, WorkflowStatus::Completed);
        }
        // A run that failed or compensated can be redriven once the workers
        // are fixed: what it carries over stands, and what it runs has a
        // fresh key.
        if status != WorkflowStatus::Completed && h.state.parent.is_none() {
            let mut r = redrive(&h, 1);
            for _ in 0..300 {
                if r.state.is_terminal() {
                    break;
                }
                operate(&mut r, 0);
            }
            check_history(&definition, &r.history);
            for (task, key) in scheduled(&r.history) {
                prop_assert!(key.ends_with("/redrive-1"), "{}: {}", task, key);
            }
            let Some(Attributes::WorkflowStarted(started)) = &r.history[0].attributes else { unreachable!() };
            for carried in &started.carried_steps {
                prop_assert!(
                    carried.skipped || !definition.steps[carried.step_index as usize].undoes(),
                    "{} can be undone",
                    carried.step
                );
                prop_assert!(
                    !scheduled(&r.history).iter().any(|(task, _)| parse_task_id(task).is_some_and(|(i, _, _)| i == carried.step_index as usize)),
                    "carried step {} ran again", carried.step
                );
            }
        }
    }

    #[test]
    fn a_cancel_waits_for_a_definite_pivot_outcome(
        shape in shapes().prop_map(with_a_pivot),
        answers in prop::collection::vec(0u8..20, 0..40),
        cancel_at in 0usize..30,
    ) {
        // Workers answer at random (timeouts included); a cancel arrives at a
        // random moment; an operator retries whatever is stuck.
        let definition = shape.definition();
        let mut h = shape.start();
        let mut answers = answers.into_iter();
        let mut cancel_recorded = false;
        for round in 0..400 {
            if round == cancel_at {
                cancel_recorded = h.cancel().is_ok_and(|events| !events.is_empty());
            }
            if h.state.is_terminal() {
                break;
            }
            operate(&mut h, answers.next().unwrap_or(0));
        }
        check_history(&definition, &h.history);
        prop_assert!(h.state.is_terminal(), "still open: {:?}", names(&h.history));
        if cancel_recorded {
            let refused = count(&h.history, "CancelRefused");
            if h.state.pivot_passed {
                prop_assert_eq!(refused, 1);
                prop_assert_eq!(h.state.status, WorkflowStatus::Completed);
            } else {
                prop_assert_eq!(refused, 0);
                prop_assert!(matches!(h.state.status, WorkflowStatus::Cancelled | WorkflowStatus::Compensated | WorkflowStatus::Failed), "{:?}", h.state.status);
            }
        }
    }
}

// Redrive (ADR 0025).

/// A quote (nothing to undo), an approval, then the pivot keyed by the order.
fn quoted_payment() -> SagaDefinition {
    SagaDefinition::builder("quoted-payment", 1)
        .step(Step::activity("quote", "prices.quote"))
        .step(Step::await_signal("approve", "approved", Duration::ZERO))
        .step(
            Step::activity("pay", "payments.capture")
                .pivot()
                .idempotency_key_from("/input/order")
                .input_from("by", "/signals/approved/by")
                .input_from("price", "/steps/quote/cents"),
        )
        .build()
        .unwrap()
}

/// Starts the redrive of `ended` as the engine's start would.
fn redrive(ended: &Harness, number: u32) -> Harness {
    let plan = super::redrive_plan(&ended.state, &ended.definition).unwrap();
    let started = WorkflowStarted {
        workflow_type: ended.definition.name.clone(),
        definition_version: ended.definition.version,
        request_id: format!("sagaflow.redrive/{WORKFLOW_ID}"),
        input: ended.state.input.clone(),
        redrive_of: WORKFLOW_ID.into(),
        redrive: number,
        carried_steps: plan.carried,
        ..Default::default()
    };
    let definition = ended.definition.clone();
    let (state, history) = start(WORKFLOW_ID, started, &definition, T0 + 60_000);
    let harness = Harness { definition, state, history, now: T0 + 60_000 };
    harness.check_replay();
    harness
}

#[test]
fn a_failed_run_is_redriven_from_the_failed_step_with_the_steps_that_stand() {
    let mut h = Harness::start(quoted_payment());
    h.complete("0.f.1", json!({"cents": 1200}));
    h.signal("approved", json!({"by": "alice"}));
    assert_eq!(scheduled(&h.history).last().unwrap(), &("2.f.1".to_owned(), "o-1".to_owned()));
    h.fail("2.f.1", false);
    assert_eq!(h.status(), WorkflowStatus::Failed, "nothing ran that can be undone");

    let plan = super::redrive_plan(&h.state, &h.definition).unwrap();
    assert_eq!(plan.from_step.as_deref(), Some("pay"));
    let carried: Vec<&str> = plan.carried.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(carried, ["quote", "approve"]);

    let r = redrive(&h, 1);
    assert_eq!(r.state.steps[0].status, StepStatus::Completed);
    assert_eq!(r.state.steps[1].status, StepStatus::Completed);
    assert_eq!(
        names(&r.history),
        ["WorkflowStarted", "ActivityScheduled"],
        "the pivot runs at once, nothing before it"
    );
    let Some(Attributes::ActivityScheduled(pay)) = &r.history[1].attributes else { unreachable!() };
    assert_eq!((pay.task_id.as_str(), pay.idempotency_key.as_str()), ("2.f.1", "o-1/redrive-1"));
    let input: Value = serde_json::from_str(&pay.input).unwrap();
    assert_eq!(input, json!({"by": "alice", "price": 1200}), "carried results and signals are read as before");
}

#[test]
fn a_compensated_run_is_redriven_from_its_first_undone_step_with_fresh_keys() {
    let mut h = Harness::start(three_compensable());
    h.complete("0.f.1", json!({}));
    h.fail("1.f.1", false);
    h.complete("1.c.1", json!({}));
    h.complete("0.c.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Compensated);

    let mut r = redrive(&h, 2);
    assert_eq!(r.pending(), ["0.f.1"], "an undone step runs again");
    r.complete("0.f.1", json!({}));
    r.complete("1.f.1", json!({}));
    r.complete("2.f.1", json!({}));
    r.complete("3.f.1", json!({}));
    assert_eq!(r.status(), WorkflowStatus::Completed);
    for (task, key) in scheduled(&r.history) {
        assert!(key.ends_with("/redrive-2"), "{task}: {key}");
    }
}

#[test]
fn only_failed_or_compensated_top_level_runs_are_redriven() {
    let mut h = Harness::start(trip());
    let refused = super::redrive_plan(&h.state, &h.definition).unwrap_err();
    assert!(refused.to_string().contains("RUNNING"), "{refused}");
    h.complete("0.f.1", json!({}));
    h.complete("1.f.1", json!({}));
    h.complete("2.f.1", json!({}));
    assert_eq!(h.status(), WorkflowStatus::Completed);
    assert!(matches!(super::redrive_plan(&h.state, &h.definition), Err(super::Unredrivable::Status(..))));

    let mut child = Harness::start(quoted_payment());
    child.fail("0.f.1", false);
    assert_eq!(child.status(), WorkflowStatus::Failed);
    child.state.parent = Some("parent-1".into());
    assert!(matches!(super::redrive_plan(&child.state, &child.definition), Err(super::Unredrivable::Child(..))));
}

#[test]
fn two_group_members_blocked_for_different_reasons_raise_one_flag_that_stays() {
    let definition = SagaDefinition::builder("after-pivot-group", 1)
        .step(Step::activity("charge", "payments.charge").pivot())
        .step(Step::activity("email", "mail.send").retriable().retry(policy(100, 1)).parallel("after"))
        .step(Step::activity("points", "loyalty.credit").retriable().retry(policy(100, 1)).parallel("after"))
        .build()
        .unwrap();
    let mut h = Harness::start(definition);
    h.complete("0.f.1", json!({}));
    assert_eq!(h.pending(), ["1.f.1", "2.f.1"]);
    h.time_out("1.f.1", TimeoutKind::StartToClose);
    h.fail("2.f.1", false);
    let flags: Vec<String> = attrs(&h.history)
        .filter_map(|a| match a {
            Attributes::StuckDetected(s) => Some(s.reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(flags, ["STEP_OUTCOME_UNKNOWN"], "the first flag stays until progress clears it");
    assert!(h.run(Input::Wake).is_empty(), "the flags used to replace each other on every decision");
}
