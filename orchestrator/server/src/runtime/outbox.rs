//! Domain events for the transactional outbox, derived from a decision's
//! history events and the definition's declarations (`Step::emits`, the
//! saga's lifecycle events, escalation alerts). Pure: the same history
//! always yields the same events with the same ids.

use sagaflow_proto::v1::HistoryEvent;
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_workflows::SagaDefinition;
use serde_json::{Value, json};

use crate::engine::{WorkflowState, parse_task_id};
use crate::store::OutboxRecord;

fn record(
    state: &WorkflowState,
    event: &HistoryEvent,
    event_type: &str,
    step: Option<&str>,
    data: Value,
) -> OutboxRecord {
    let payload = json!({
        "workflow_id": state.workflow_id,
        "workflow_type": state.workflow_type,
        "step": step,
        "data": data,
    });
    OutboxRecord {
        seq: 0,
        event_id: format!("{}/{}", state.workflow_id, event.seq),
        event_type: event_type.to_owned(),
        workflow_id: state.workflow_id.clone(),
        workflow_seq: event.seq,
        correlation_id: state.correlation_id.clone(),
        payload: payload.to_string(),
        time_ms: event.time_ms,
    }
}

/// A step's findings alert (`Step::alert_on_findings`) raised by a
/// completion: the findings are its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct RaisedAlert {
    pub step: String,
    pub event: String,
    /// The counter the findings are counted on (`FindingsAlert::metric`).
    pub metric: String,
    pub findings: Vec<Value>,
    /// The history event that completed the step.
    pub seq: u64,
}

/// The findings alerts that `events` raise. Pure, like the domain events.
pub fn raised_alerts(definition: &SagaDefinition, events: &[HistoryEvent]) -> Vec<RaisedAlert> {
    let mut raised = Vec::new();
    for event in events {
        let Some(Attributes::ActivityCompleted(c)) = &event.attributes else { continue };
        let Some((index, false, _)) = parse_task_id(&c.task_id) else { continue };
        let Some(step) = definition.steps.get(index) else { continue };
        let Some(alert) = &step.alert else { continue };
        let result = json_text(&c.result);
        if let Some(Value::Array(findings)) = result.pointer(&alert.pointer)
            && !findings.is_empty()
        {
            raised.push(RaisedAlert {
                step: step.name.clone(),
                event: alert.event.clone(),
                metric: alert.metric.clone(),
                findings: findings.clone(),
                seq: event.seq,
            });
        }
    }
    raised
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub fn domain_events(state: &WorkflowState, definition: &SagaDefinition, events: &[HistoryEvent]) -> Vec<OutboxRecord> {
    let lifecycle = &definition.events;
    let mut records = Vec::new();
    for event in events {
        let Some(attributes) = &event.attributes else { continue };
        let emitted = match attributes {
            Attributes::WorkflowStarted(s) => lifecycle.started.as_deref().map(|t| (t, None, json_text(&s.input))),
            Attributes::ActivityCompleted(c) => match parse_task_id(&c.task_id) {
                Some((index, false, _)) => definition.steps.get(index).and_then(|step| {
                    step.emits.as_deref().map(|t| (t, Some(step.name.as_str()), json_text(&c.result)))
                }),
                _ => None,
            },
            // A step an operator settled as done took effect as surely as
            // one a worker completed: its event says so (a capture the
            // gateway took is a `PaymentCaptured`, whoever tells).
            Attributes::ActivityResolved(r) if !r.compensation && r.outcome == "succeeded" => definition
                .steps
                .iter()
                .find(|s| s.name == r.step)
                .and_then(|step| step.emits.as_deref().map(|t| (t, Some(step.name.as_str()), json_text(&r.result)))),
            Attributes::StepEscalated(e) => {
                Some((e.alert.as_str(), Some(e.step.as_str()), json!({ "attempt": e.attempt })))
            }
            Attributes::WorkflowCompleted(c) => lifecycle.completed.as_deref().map(|t| (t, None, json_text(&c.result))),
            Attributes::WorkflowCompensated(c) => {
                lifecycle.compensated.as_deref().map(|t| (t, None, json!({ "reason": c.reason })))
            }
            Attributes::WorkflowCancelled(c) => {
                lifecycle.compensated.as_deref().map(|t| (t, None, json!({ "reason": c.reason, "cancelled": true })))
            }
            Attributes::WorkflowFailed(f) => {
                lifecycle.failed.as_deref().map(|t| (t, None, json!({ "reason": f.reason, "step": f.step })))
            }
            Attributes::WorkflowTerminated(x) => {
                lifecycle.failed.as_deref().map(|t| (t, None, json!({ "reason": x.reason, "terminated": true })))
            }
            _ => None,
        };
        if let Some((event_type, step, data)) = emitted {
            records.push(record(state, event, event_type, step, data));
        }
    }
    for alert in raised_alerts(definition, events) {
        let Some(event) = events.iter().find(|e| e.seq == alert.seq) else { continue };
        let mut alerted =
            record(state, event, &alert.event, Some(alert.step.as_str()), json!({ "findings": alert.findings }));
        // The same history event may also emit the step's own event: the
        // suffix keeps the ids unique, and stable across a replay.
        alerted.event_id.push_str("/alert");
        records.push(alerted);
    }
    records
}

#[cfg(test)]
mod tests {
    use sagaflow_proto::v1::{ActivityCompleted, ActivityScheduled, StepEscalated, WorkflowStarted};
    use sagaflow_workflows::shop;

    use super::*;
    use crate::engine;

    fn at(seq: u64, attributes: Attributes) -> HistoryEvent {
        HistoryEvent { seq, time_ms: 5, attributes: Some(attributes) }
    }

    #[test]
    fn checkout_events_follow_the_declarations() {
        let definition = shop::checkout();
        let started = WorkflowStarted { workflow_type: "checkout".into(), input: "{}".into(), ..Default::default() };
        let history = vec![
            at(1, Attributes::WorkflowStarted(started)),
            at(
                2,
                Attributes::ActivityScheduled(ActivityScheduled {
                    task_id: "1.f.1".into(),
                    step_index: 1,
                    ..Default::default()
                }),
            ),
            at(
                3,
                Attributes::ActivityCompleted(ActivityCompleted {
                    task_id: "1.f.1".into(),
                    result: r#"{"reservation_id":"r"}"#.into(),
                }),
            ),
            at(
                4,
                Attributes::StepEscalated(StepEscalated {
                    step: "ship".into(),
                    attempt: 5,
                    alert: "ShipmentDelayed".into(),
                }),
            ),
        ];
        let state = engine::replay("chk-1", &history, &definition);
        let records = domain_events(&state, &definition, &history);
        let kinds: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(kinds, ["CheckoutStarted", "InventoryReserved", "ShipmentDelayed"]);
        assert_eq!(records[1].event_id, "chk-1/3");
        assert_eq!(records[1].workflow_seq, 3);
        assert!(records[1].payload.contains("reservation_id"));
    }

    #[test]
    fn a_failed_or_terminated_checkout_publishes_its_end() {
        use sagaflow_proto::v1::{WorkflowFailed, WorkflowTerminated};
        let definition = shop::checkout();
        let started = WorkflowStarted { workflow_type: "checkout".into(), input: "{}".into(), ..Default::default() };
        let start = at(1, Attributes::WorkflowStarted(started));
        let failed =
            at(2, Attributes::WorkflowFailed(WorkflowFailed { step: "price".into(), reason: "UnknownSku".into() }));
        let terminated =
            at(2, Attributes::WorkflowTerminated(WorkflowTerminated { reason: "ops".into(), ..Default::default() }));
        for end in [failed, terminated] {
            let history = vec![start.clone(), end];
            let state = engine::replay("chk-1", &history, &definition);
            let records = domain_events(&state, &definition, &history);
            let kinds: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
            assert_eq!(kinds, ["CheckoutStarted", "CheckoutFailed"]);
        }
    }

    #[test]
    fn findings_raise_an_alert_and_none_raise_nothing() {
        let definition = sagaflow_workflows::jobs::check_invariants();
        let started =
            WorkflowStarted { workflow_type: definition.name.clone(), input: "{}".into(), ..Default::default() };
        let completed = |seq: u64, result: &str| {
            at(seq, Attributes::ActivityCompleted(ActivityCompleted { task_id: "0.f.1".into(), result: result.into() }))
        };
        let history = vec![
            at(1, Attributes::WorkflowStarted(started)),
            at(
                2,
                Attributes::ActivityScheduled(ActivityScheduled {
                    task_id: "0.f.1".into(),
                    step_index: 0,
                    ..Default::default()
                }),
            ),
        ];
        let state = engine::replay("job-1", &history, &definition);
        let clean = [completed(3, r#"{"violations":[]}"#)];
        assert!(raised_alerts(&definition, &clean).is_empty());
        assert!(domain_events(&state, &definition, &clean).is_empty());
        let broken = [completed(3, r#"{"violations":[{"invariant":"stock_conservation","subject":"sku-mug"}]}"#)];
        let alerts = raised_alerts(&definition, &broken);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].step.as_str(), alerts[0].event.as_str()), ("inventory", "InvariantViolated"));
        // The counter is the definition's (FindingsAlert::metric), not a name in the server.
        assert_eq!(alerts[0].metric, "sagaflow_invariant_violations_total");
        let reconcile = sagaflow_workflows::jobs::reconcile_payments_vs_orders();
        let index = reconcile.step_index("orders").expect("the reconciliation has an orders step");
        let mismatch = [at(
            3,
            Attributes::ActivityCompleted(ActivityCompleted {
                task_id: format!("{index}.f.1"),
                result: r#"{"violations":[{"invariant":"capture_has_order_or_refund"}]}"#.into(),
            }),
        )];
        let alerts = raised_alerts(&reconcile, &mismatch);
        assert_eq!(
            (alerts[0].event.as_str(), alerts[0].metric.as_str()),
            ("PaymentMismatch", "sagaflow_payment_mismatches_total")
        );
        let records = domain_events(&state, &definition, &broken);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event_id, "job-1/3/alert");
        assert!(records[0].payload.contains("sku-mug"), "{}", records[0].payload);
    }
}
