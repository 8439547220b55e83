//! How the CLI prints things: aligned tables and a timeline for people, and
//! stable JSON for programs.

use std::collections::HashMap;

use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{DescribeWorkflowResponse, HistoryEvent, WorkflowStatus, WorkflowSummary, WorkflowType};
use sagaflow_proto::{EventName, status_name};
use serde_json::{Value, json};

pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut out, c| {
        if c.is_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
        out
    })
}

/// Times and events in their JSON form come from the server crate, which
/// writes the same form into the archive and reads it back.
pub use sagaflow_server::history_json::{event_json, timestamp};

fn time_of_day(ms: i64) -> String {
    let full = timestamp(ms);
    full.get(11..23).map_or(full.clone(), str::to_owned)
}

/// JSON text as a value; plain text when it is not JSON.
pub fn json_text(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub fn status_label(summary: &WorkflowSummary) -> String {
    let status = status_name(WorkflowStatus::try_from(summary.status).unwrap_or_default());
    let mut label = status.to_owned();
    if !summary.paused_reason.is_empty() {
        label += " (paused)";
    }
    if !summary.stuck_reason.is_empty() {
        label += &format!(" (stuck: {})", summary.stuck_reason);
    }
    label
}

pub fn summary_json(summary: &WorkflowSummary) -> Value {
    let status = status_name(WorkflowStatus::try_from(summary.status).unwrap_or_default());
    json!({
        "workflow_id": summary.workflow_id,
        "workflow_type": summary.workflow_type,
        "definition_version": summary.definition_version,
        "status": status,
        "request_id": summary.request_id,
        "labels": summary.labels,
        "started_at": timestamp(summary.started_ms),
        "updated_at": timestamp(summary.updated_ms),
        "closed_at": (summary.closed_ms > 0).then(|| timestamp(summary.closed_ms)),
        "history_length": summary.history_length,
        "current_step": summary.current_step,
        "correlation_id": summary.correlation_id,
        "stuck": (!summary.stuck_reason.is_empty()).then(|| json!({"reason": summary.stuck_reason, "message": summary.stuck_message})),
        "paused": (!summary.paused_reason.is_empty()).then(|| json!({"reason": summary.paused_reason})),
    })
}

/// Left-aligned columns sized to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = widths[i])).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// Workflows with, for each, why it ended when it did not complete.
pub fn list_table(rows: &[(WorkflowSummary, String)]) -> String {
    if rows.is_empty() {
        return "no workflows match\n".into();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(s, reason)| {
            vec![
                s.workflow_id.clone(),
                s.workflow_type.clone(),
                status_label(s),
                s.current_step.clone(),
                s.history_length.to_string(),
                timestamp(s.started_ms),
                timestamp(s.closed_ms),
                short_text(reason, 60),
            ]
        })
        .collect();
    table(&["WORKFLOW ID", "TYPE", "STATUS", "STEP", "EVENTS", "STARTED", "CLOSED", "REASON"], &rows)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn short_text(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

pub fn types_table(types: &[WorkflowType]) -> String {
    let rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            let steps = json_text(&t.definition)
                .get("steps")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(|s| s.get("name").and_then(Value::as_str)).collect::<Vec<_>>().join(" → "))
                .unwrap_or_default();
            vec![t.name.clone(), t.version.to_string(), steps]
        })
        .collect();
    table(&["TYPE", "VERSION", "STEPS"], &rows)
}

/// The step names of `definition` (a definition's JSON), in step order.
pub fn step_names(definition: &str) -> Vec<String> {
    json_text(definition)
        .get("steps")
        .and_then(Value::as_array)
        .map(|steps| steps.iter().filter_map(|s| s.get("name").and_then(Value::as_str)).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A cancel recorded on a workflow that still runs.
#[derive(Debug, Clone)]
pub struct CancelRequest {
    pub reason: String,
    pub identity: String,
    pub at_ms: i64,
}

/// `step_order` lists the definition's steps, so that results read in the
/// order they were made; a step it does not name goes last.
pub fn describe_text(
    described: &DescribeWorkflowResponse,
    step_order: &[String],
    cancel: Option<&CancelRequest>,
) -> String {
    let summary = described.summary.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{name:<14}{value}\n"));
        }
    };
    field("Workflow", summary.workflow_id.clone());
    field("Type", format!("{} v{}", summary.workflow_type, summary.definition_version));
    let status = match cancel {
        // Until the running step reports, the engine keeps the status; say why it has not moved.
        Some(_) => format!("{} (cancel requested; compensation follows the running step)", status_label(&summary)),
        None => status_label(&summary),
    };
    field("Status", status);
    if let Some(c) = cancel {
        field("Cancel", format!("requested {} by {}: {}", timestamp(c.at_ms), c.identity, c.reason));
    }
    field("Step", summary.current_step.clone());
    field("Request id", summary.request_id.clone());
    field("Correlation", summary.correlation_id.clone());
    field("Started", timestamp(summary.started_ms));
    field("Closed", timestamp(summary.closed_ms));
    field("Events", summary.history_length.to_string());
    if !summary.labels.is_empty() {
        let mut labels: Vec<String> = summary.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        field("Labels", labels.join(", "));
    }
    field("Paused", summary.paused_reason.clone());
    field("Stuck", summary.stuck_message.clone());
    field("Reason", described.reason.clone());
    field("Result", described.result.clone());
    if !described.pending_activities.is_empty() {
        out.push_str("\nPending activities:\n");
        let rows: Vec<Vec<String>> = described
            .pending_activities
            .iter()
            .map(|p| {
                let what = if p.compensation { format!("undo {}", p.step) } else { p.step.clone() };
                let when = if p.next_attempt_ms > 0 {
                    format!("retry at {}", timestamp(p.next_attempt_ms))
                } else {
                    p.worker_id.clone()
                };
                vec![
                    what,
                    p.activity_type.clone(),
                    p.attempt.to_string(),
                    p.state.clone(),
                    when,
                    p.last_failure.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["STEP", "ACTIVITY", "ATTEMPT", "STATE", "WORKER / NEXT", "LAST FAILURE"], &rows));
    }
    if !described.step_results.is_empty() {
        out.push_str("\nStep results:\n");
        let mut results: Vec<_> = described.step_results.iter().collect();
        let position = |step: &str| step_order.iter().position(|s| s == step).unwrap_or(usize::MAX);
        results.sort_by(|a, b| position(a.0).cmp(&position(b.0)).then_with(|| a.0.cmp(b.0)));
        for (step, result) in results {
            out.push_str(&format!("  {step:<12}{result}\n"));
        }
    }
    out
}

pub fn describe_json(described: &DescribeWorkflowResponse) -> Value {
    let mut value = summary_json(&described.summary.clone().unwrap_or_default());
    value["result"] = json_text(&described.result);
    value["reason"] = described.reason.clone().into();
    value["pending_activities"] = described
        .pending_activities
        .iter()
        .map(|p| {
            json!({
                "task_id": p.task_id, "step": p.step, "activity_type": p.activity_type, "attempt": p.attempt,
                "compensation": p.compensation, "state": p.state, "worker_id": p.worker_id,
                "next_attempt_at": (p.next_attempt_ms > 0).then(|| timestamp(p.next_attempt_ms)), "last_failure": p.last_failure,
            })
        })
        .collect();
    value["step_results"] =
        described.step_results.iter().map(|(k, v)| (k.clone(), json_text(v))).collect::<serde_json::Map<_, _>>().into();
    value
}

/// Renders a history as a timeline, one event at a time. It remembers
/// what earlier events said about each task, so that a line names the step
/// (`reserve`, `undo reserve`) rather than the task id (`1.f.1`).
#[derive(Debug, Default)]
pub struct Timeline {
    /// Whole payloads rather than their first characters.
    full: bool,
    step_of: HashMap<String, String>,
}

impl Timeline {
    pub fn new(full: bool) -> Self {
        Self { full, ..Self::default() }
    }

    fn step(&self, task_id: &str) -> String {
        self.step_of.get(task_id).cloned().unwrap_or_else(|| task_id.to_owned())
    }

    fn payload(&self, json: &str) -> String {
        if self.full { json.to_owned() } else { short(json) }
    }

    /// One line: `#seq  time  EventType  details`.
    pub fn line(&mut self, event: &HistoryEvent) -> String {
        let Some(attributes) = &event.attributes else {
            return format!("#{:<4} {}  (unknown event)", event.seq, time_of_day(event.time_ms));
        };
        let detail = match attributes {
            Attributes::WorkflowStarted(s) => {
                let mut line = format!(
                    "{} v{} request={} input={}",
                    s.workflow_type,
                    s.definition_version,
                    s.request_id,
                    self.payload(&s.input)
                );
                if !s.redrive_of.is_empty() {
                    let carried: Vec<&str> = s.carried_steps.iter().map(|c| c.step.as_str()).collect();
                    let carried = if carried.is_empty() { "none".to_owned() } else { carried.join(" ") };
                    line.push_str(&format!(" redrive {} of {}, carried over: {carried}", s.redrive, s.redrive_of));
                }
                line
            }
            Attributes::ActivityScheduled(s) => {
                let what = if s.compensation { format!("undo {}", s.step) } else { s.step.clone() };
                self.step_of.insert(s.task_id.clone(), what.clone());
                format!("{what} → {} attempt {} key={}", s.activity_type, s.attempt, s.idempotency_key)
            }
            Attributes::ActivityStarted(s) => format!("{} by {}", self.step(&s.task_id), s.worker_id),
            Attributes::ActivityCompleted(c) => format!("{} result={}", self.step(&c.task_id), self.payload(&c.result)),
            Attributes::ActivityFailed(f) => {
                let next = if f.next_attempt_ms > 0 {
                    format!("retry at {}", time_of_day(f.next_attempt_ms))
                } else {
                    "no retry".into()
                };
                format!("{} {}: {} ({next})", self.step(&f.task_id), f.error_type, f.message)
            }
            Attributes::ActivityTimedOut(t) => {
                let next = if t.next_attempt_ms > 0 {
                    format!("retry at {}", time_of_day(t.next_attempt_ms))
                } else {
                    "no retry".into()
                };
                let held = if t.worker_id.is_empty() { String::new() } else { format!(" held by {}", t.worker_id) };
                format!("{} {}{held} ({next})", self.step(&t.task_id), t.timeout_type)
            }
            Attributes::TimerStarted(t) => {
                format!("{} fires at {}", t.timer_id, time_of_day(t.fire_at_ms))
            }
            Attributes::TimerFired(t) => t.timer_id.clone(),
            Attributes::SignalReceived(s) => format!("{} input={}", s.name, self.payload(&s.input)),
            Attributes::CancelRequested(c) => format!("{} by {}", c.reason, c.identity),
            Attributes::CompensationStarted(c) => format!("{}; undo {}", c.reason, c.steps.join(", ")),
            Attributes::WorkflowCompleted(c) => format!("result={}", self.payload(&c.result)),
            Attributes::WorkflowCompensated(c) => c.reason.clone(),
            Attributes::WorkflowFailed(f) => format!("{} {}", f.step, f.reason),
            Attributes::WorkflowCancelled(c) => c.reason.clone(),
            Attributes::WorkflowTerminated(t) => format!("{} by {}", t.reason, t.identity),
            Attributes::StuckDetected(s) => format!("{}: {}", s.reason, s.message),
            Attributes::StuckCleared(s) => format!("was {}", s.reason),
            Attributes::StepEscalated(e) => {
                format!("{} after attempt {} of {}", e.alert, e.attempt, e.step)
            }
            Attributes::WorkflowHeld(h) => {
                format!("steps done; held until parent {} releases or compensates it", h.parent_workflow_id)
            }
            Attributes::WorkflowPaused(p) => format!("by {}: {}", p.identity, p.reason),
            Attributes::WorkflowResumed(r) => format!(
                "by {}{}",
                r.identity,
                if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
            ),
            Attributes::StepSkipped(k) => format!("{}: its condition did not hold ({})", k.step, k.condition),
            Attributes::CompletionIgnored(c) => {
                format!("{} {} ({}) from {}", self.step(&c.task_id), c.reason, c.outcome, c.worker_id)
            }
            Attributes::CancelRefused(c) => format!("{} ({})", c.message, c.reason),
            Attributes::ActivityResolved(r) => {
                let what = if r.compensation { format!("undo {}", r.step) } else { r.step.clone() };
                format!("{what} {} by {}: {}", r.outcome, r.identity, r.reason)
            }
        };
        format!("#{:<4} {}  {:<20} {}", event.seq, time_of_day(event.time_ms), attributes.event_name(), detail.trim())
    }
}

fn short(json: &str) -> String {
    short_text(json, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_like_grpc() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }

    #[test]
    fn tables_align() {
        let out = table(&["A", "BB"], &[vec!["long cell".into(), "x".into()]]);
        assert_eq!(out, "A          BB\nlong cell  x\n");
    }
}
