//! Metric names and recorders. The HTTP listener exports them in Prometheus
//! text format on `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_proto::status_name;
use sagaflow_proto::v1::{HistoryEvent, history_event::Attributes};

use crate::engine::WorkflowState;

pub fn record_commit(elapsed: Duration) {
    metrics::histogram!("sagaflow_history_append_seconds").record(elapsed.as_secs_f64());
}

pub fn record_started(workflow_type: &str) {
    metrics::counter!("sagaflow_workflows_started_total", "type" => workflow_type.to_owned()).increment(1);
}

/// Called once per workflow, on the decision that closes it.
pub fn record_finished(state: &WorkflowState) {
    metrics::counter!(
        "sagaflow_workflows_finished_total",
        "type" => state.workflow_type.clone(),
        "status" => status_name(state.status)
    )
    .increment(1);
}

/// The shop's business signals are its domain events: the order success rate
/// is `OrderCreated / (OrderCreated + CheckoutCompensated)` over a window.
pub fn record_domain_events(event_types: &[String]) {
    for event_type in event_types {
        metrics::counter!("sagaflow_domain_events_total", "event_type" => event_type.clone()).increment(1);
    }
}

pub fn record_stuck(by_reason: &HashMap<String, usize>, open: usize) {
    for reason in crate::engine::StuckReason::ALL.map(crate::engine::StuckReason::as_str) {
        metrics::gauge!("sagaflow_stuck_workflows", "reason" => reason)
            .set(by_reason.get(reason).copied().unwrap_or(0) as f64);
    }
    metrics::gauge!("sagaflow_open_workflows").set(open as f64);
}

/// A closed workflow deleted by retention.
pub fn record_expired(workflow_type: &str) {
    metrics::counter!("sagaflow_workflows_expired_total", "workflow_type" => workflow_type.to_owned()).increment(1);
}

/// A closed workflow's history appended to the archive, before its deletion.
/// A crash between the two archives it again: this counts appends.
pub fn record_archived(workflow_type: &str) {
    metrics::counter!("sagaflow_workflows_archived_total", "workflow_type" => workflow_type.to_owned()).increment(1);
}

/// Outbox records deleted unrelayed, past `--outbox-retention` (no broker).
pub fn record_outbox_pruned(records: usize) {
    metrics::counter!("sagaflow_outbox_pruned_total").increment(records as u64);
}

/// Alarms armed in memory (task deadlines, workflow timers, reclaims): it
/// follows the tasks in flight and the timers pending, and must not grow
/// with the tasks done.
pub fn record_alarms(armed: usize) {
    metrics::gauge!("sagaflow_timer_alarms").set(armed as f64);
}

/// Workflows the runtime holds a slot for: open ones with a hot state (at
/// most `--max-hot-workflows`) and any in use now; never closed ones.
pub fn record_slots(slots: usize) {
    metrics::gauge!("sagaflow_workflow_slots").set(slots as f64);
}

/// Workflows an operator paused: held on purpose, so not in the stuck gauge.
pub fn record_paused(paused: usize) {
    metrics::gauge!("sagaflow_paused_workflows").set(paused as f64);
}

/// One series per paused activity queue (1 while paused, 0 once resumed),
/// so that an alert on a pause left in place can resolve.
pub fn record_paused_queues(paused: &[crate::store::QueuePauseRecord]) {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for queue in paused.iter().map(|p| &p.queue) {
        if !seen.contains(queue) {
            seen.push(queue.clone());
        }
    }
    for queue in seen.iter() {
        let value = if paused.iter().any(|p| &p.queue == queue) { 1.0 } else { 0.0 };
        metrics::gauge!("sagaflow_queue_paused", "queue" => queue.clone()).set(value);
    }
}

pub fn record_workers(by_type: &HashMap<String, usize>) {
    for (activity_type, count) in by_type {
        metrics::gauge!("sagaflow_connected_workers", "queue" => activity_type.clone()).set(*count as f64);
    }
}

/// What an activity's metrics need of a task, taken before the decision
/// that may resolve it (the decision removes the task from the state).
#[derive(Debug)]
pub struct TaskTiming {
    task_id: String,
    activity_type: String,
    scheduled_ms: i64,
}

pub fn task_timings(state: &WorkflowState) -> Vec<TaskTiming> {
    state
        .tasks
        .values()
        .map(|t| TaskTiming {
            task_id: t.task_id.clone(),
            activity_type: t.activity_type.clone(),
            scheduled_ms: t.scheduled_ms,
        })
        .collect()
}

/// Counts each attempt's outcome and times it: schedule-to-start (time in the
/// queue) and start-to-close (time in the worker), from the committed events.
pub fn record_activity_events(timings: &[TaskTiming], events: &[HistoryEvent]) {
    let mut started_ms = None;
    for event in events {
        let (task_id, outcome) = match &event.attributes {
            Some(Attributes::ActivityStarted(s)) => {
                started_ms = Some(s.started_ms);
                if let Some(task) = timings.iter().find(|t| t.task_id == s.task_id) {
                    metrics::histogram!("sagaflow_activity_schedule_to_start_seconds", "activity_type" => task.activity_type.clone())
                        .record(seconds_between(task.scheduled_ms, s.started_ms));
                }
                continue;
            }
            Some(Attributes::ActivityCompleted(c)) => (&c.task_id, "completed"),
            Some(Attributes::ActivityFailed(f)) if f.retryable => (&f.task_id, "failed_retryable"),
            Some(Attributes::ActivityFailed(f)) => (&f.task_id, "failed"),
            Some(Attributes::ActivityTimedOut(t)) => (&t.task_id, "timed_out"),
            _ => continue,
        };
        let Some(task) = timings.iter().find(|t| &t.task_id == task_id) else { continue };
        let activity_type = task.activity_type.clone();
        metrics::counter!("sagaflow_activity_attempts_total", "activity_type" => activity_type.clone(), "outcome" => outcome)
            .increment(1);
        let began = started_ms.take().unwrap_or(task.scheduled_ms);
        metrics::histogram!("sagaflow_activity_duration_seconds", "activity_type" => activity_type, "outcome" => outcome)
            .record(seconds_between(began, event.time_ms));
    }
}

fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    (to_ms.saturating_sub(from_ms).max(0) as f64) / 1000.0
}
/// One count per finding of a findings alert, on the counter its definition
/// names (`FindingsAlert::metric`: `sagaflow_invariant_violations_total`
/// unless it names another), by job, alert and invariant. What the alert
/// rules of docs/ops/alerts.yml page on.
pub fn record_findings(workflow_type: &str, metric: &str, alert: &str, findings: &[serde_json::Value]) {
    for finding in findings {
        let invariant = finding.get("invariant").and_then(serde_json::Value::as_str).unwrap_or("unknown").to_owned();
        metrics::counter!(
            metric.to_owned(),
            "job" => workflow_type.to_owned(),
            "alert" => alert.to_owned(),
            "invariant" => invariant
        )
        .increment(1);
    }
}
