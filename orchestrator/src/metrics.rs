//! Metric names and recorders. The HTTP listener exports them in Prometheus
//! text format on `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use sagaflow_proto::status_name;

use crate::engine::WorkflowState;

pub fn record_flush(elapsed: Duration) {
    metrics::histogram!("sagaflow_store_flush_seconds").record(elapsed.as_secs_f64());
}

pub fn record_commit(elapsed: Duration) {
    metrics::histogram!("sagaflow_history_append_seconds").record(elapsed.as_secs_f64());
}

pub fn record_started(workflow_type: &str) {
    metrics::counter!("sagaflow_workflows_started_total", "type" => workflow_type.to_owned()).increment(1);
}

pub fn record_decision(state: &WorkflowState) {
    if state.is_terminal() {
        metrics::counter!(
            "sagaflow_workflows_finished_total",
            "type" => state.workflow_type.clone(),
            "status" => status_name(state.status)
        )
        .increment(1);
    }
}

pub fn record_stuck(by_reason: &HashMap<String, usize>, open: usize) {
    for reason in ["NO_PROGRESS", "COMPENSATION_EXHAUSTED", "NO_WORKER", "NON_RETRYABLE_AFTER_PIVOT"] {
        metrics::gauge!("sagaflow_stuck_workflows", "reason" => reason)
            .set(by_reason.get(reason).copied().unwrap_or(0) as f64);
    }
    metrics::gauge!("sagaflow_open_workflows").set(open as f64);
}

pub fn record_workers(by_type: &HashMap<String, usize>) {
    for (activity_type, count) in by_type {
        metrics::gauge!("sagaflow_connected_workers", "queue" => activity_type.clone()).set(*count as f64);
    }
}
