//! `/workflows/{id}`: one workflow. Its summary (with the stuck flag, what
//! to do about it, and the pause), the timeline, the pending activities and
//! who holds them, the step results and the whole history, every payload
//! expandable as formatted JSON. While it runs, the page's live region is
//! fetched again (`?fragment=live&since=N`, answered 204 while the history
//! has not grown).

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use sagaflow_proto::EventName;
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{DescribeWorkflowResponse, HistoryEvent, WorkflowStarted, WorkflowSummary};
use sagaflow_workflows::{Action, SagaDefinition};
use serde::Deserialize;

use super::layout::{self, Page};
use super::timeline::{self, StepInfo};
use super::{Console, ConsoleError, Link, Viewer, actions, format};
use crate::engine::StuckReason;
use crate::runtime::timers::now_ms;

/// History rows shown at once; a longer history pages back from its end.
pub(super) const HISTORY_PAGE: u64 = 1000;

#[derive(Debug, Default, Deserialize)]
pub(super) struct WorkflowQuery {
    /// `live`: only the live region.
    #[serde(default)]
    fragment: String,
    /// The history length the page shows: unchanged, a live refresh is 204.
    #[serde(default)]
    since: Option<u64>,
    /// The first history event shown.
    #[serde(default)]
    from: Option<u64>,
    /// The action just done, for the notice.
    #[serde(default)]
    done: String,
}

/// Everything the page shows, read once.
pub(super) struct Loaded {
    pub summary: WorkflowSummary,
    pub description: Option<DescribeWorkflowResponse>,
    pub events: Vec<HistoryEvent>,
    pub definition: Option<std::sync::Arc<SagaDefinition>>,
    pub links: Vec<Link>,
}

impl Loaded {
    pub fn started(&self) -> Option<&WorkflowStarted> {
        match self.events.first().and_then(|e| e.attributes.as_ref()) {
            Some(Attributes::WorkflowStarted(started)) => Some(started),
            _ => None,
        }
    }

    pub fn is_open(&self) -> bool {
        !sagaflow_proto::is_terminal(self.summary.status)
    }

    pub fn step_names(&self) -> Vec<String> {
        self.definition.as_ref().map(|d| d.steps.iter().map(|s| s.name.clone()).collect()).unwrap_or_default()
    }
}

/// The summary of a workflow `viewer` may read; another client's reads as missing.
pub(super) async fn readable(console: &Console, viewer: &Viewer, id: &str) -> Result<WorkflowSummary, ConsoleError> {
    let runtime = console.runtime();
    runtime.limits().id("workflow_id", id).map_err(|e| ConsoleError::BadRequest(e.0))?;
    let summary = runtime.describe(id).await?;
    if !viewer.may_read(&summary.labels) {
        return Err(ConsoleError::NotFound(format!("workflow {id} not found")));
    }
    Ok(summary)
}

pub(super) async fn load(console: &Console, summary: WorkflowSummary) -> Result<Loaded, ConsoleError> {
    let runtime = console.runtime();
    let id = summary.workflow_id.clone();
    // A workflow whose definition this server no longer has still shows
    // its history; only the pending activities need its state.
    let description = match runtime.description(&id).await {
        Ok(description) => Some(description),
        Err(crate::runtime::Error::FailedPrecondition(reason)) => {
            tracing::debug!(workflow_id = %id, %reason, "no description for the console");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let events = runtime.history(&id, 1, usize::MAX).await?;
    let definition = runtime.registry().get(&summary.workflow_type, summary.definition_version);
    let links = console.links(&summary);
    Ok(Loaded { summary, description, events, definition, links })
}

pub(super) async fn handler(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<WorkflowQuery>,
) -> Result<Response, ConsoleError> {
    let summary = readable(&console, &viewer, &id).await?;
    let live = query.fragment == "live";
    if live && query.since == Some(summary.history_length) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let loaded = load(&console, summary).await?;
    let region = region(&viewer, &loaded, query.from);
    if live {
        return Ok(Html(region.into_string()).into_response());
    }
    let notice = actions::notice(&query.done);
    let body = html! {
        @if let Some(notice) = notice { p class="notice" role="status" { (notice) } }
        p class="pager" {
            a href="/" { "← Workflows" }
            @if loaded.is_open() {
                label { input id="live-toggle" type="checkbox" checked; " Refresh live" }
            }
            span id="live-status" class="muted" aria-live="polite" {}
        }
        (region)
    };
    Ok(layout::page(&viewer, Page::Workflows, &format!("Workflow {id}"), body))
}

/// What the next step is, for each stuck reason (docs/operations.md).
pub(super) fn suggestion(reason: &str) -> &'static str {
    match StuckReason::from_name(reason) {
        Some(StuckReason::NoWorker) => {
            "Start or fix a worker for the queue the message names (see Workers); the flag clears when the saga moves."
        }
        Some(StuckReason::NoProgress) => {
            "Look at the pending activities: a hung worker holding its lease, a long backoff, a dependency down. \
             Once it is fixed, send the retry signal if a step stays blocked."
        }
        Some(StuckReason::CompensationExhausted) => {
            "Fix the cause (the last failure of the undo, below), then send the retry signal (sagaflow.retry)."
        }
        Some(StuckReason::NonRetryableAfterPivot) => {
            "Fix the cause, then send the retry signal; or settle by hand (a refund) and terminate."
        }
        Some(StuckReason::PivotOutcomeUnknown) => {
            "Ask the provider what happened under the step's idempotency key. Once it answers again, send the retry \
             signal; if its record is clear, resolve the step as succeeded or failed. Never terminate it."
        }
        Some(StuckReason::StepOutcomeUnknown) => {
            "Fix the cause, then send the retry signal: the next attempt carries the same idempotency key."
        }
        Some(StuckReason::HistoryLimit) => {
            "Settle the step by hand and terminate; or restart with a higher --max-history-events and send the retry signal."
        }
        None => "See the runbook, Stuck workflows (docs/operations.md).",
    }
}

/// The steps of the definition, for the timeline.
fn step_infos(definition: Option<&SagaDefinition>) -> Vec<StepInfo> {
    definition
        .map(|d| {
            d.steps
                .iter()
                .map(|s| StepInfo {
                    name: s.name.clone(),
                    signal: match &s.action {
                        Action::AwaitSignal { signal, .. } => Some(signal.clone()),
                        _ => None,
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Everything that changes while the workflow runs.
pub(super) fn region(viewer: &Viewer, loaded: &Loaded, from: Option<u64>) -> Markup {
    let summary = &loaded.summary;
    let id = &summary.workflow_id;
    let live = loaded
        .is_open()
        .then(|| format!("{}?fragment=live&since={}", format::workflow_url(id), summary.history_length));
    let steps = step_infos(loaded.definition.as_deref());
    let context = timeline::Context {
        steps: &steps,
        now_ms: now_ms(),
        open: loaded.is_open(),
        current_step: &summary.current_step,
    };
    let layout = timeline::layout(&loaded.events, &context);
    html! {
        div id="live" data-live-url=[live] data-live-every="2000" data-history-length=(summary.history_length) {
            (summary_section(loaded))
            (flags(viewer, loaded))
            @if viewer.may_act() { (actions::buttons(loaded)) }
            @if !loaded.links.is_empty() {
                ul class="actions" aria-label="Related pages" {
                    @for link in &loaded.links { li { a href=(link.href) { (link.label) } } }
                }
            }
            section aria-labelledby="timeline-h" {
                h2 id="timeline-h" { "Timeline" }
                ul class="legend" aria-hidden="true" {
                    li { span class="sw queue" {} "queued" }
                    li { span class="sw run" {} "running" }
                    li { span class="sw ok" {} "completed" }
                    li { span class="sw bad" {} "failed or timed out" }
                    li { span class="sw backoff" {} "backoff" }
                    li { span class="sw undo" {} "compensation" }
                    li { span class="sw timer" {} "timer or wait" }
                }
                div class="scroll" { (timeline::svg(&layout)) }
            }
            (pending(loaded))
            (results(loaded))
            (history(loaded, from))
        }
    }
}

fn summary_section(loaded: &Loaded) -> Markup {
    let s = &loaded.summary;
    let started = loaded.started();
    let description = loaded.description.as_ref();
    let result = description.map(|d| d.result.as_str()).unwrap_or_default();
    let reason = description.map(|d| d.reason.as_str()).unwrap_or_default();
    let mut labels: Vec<(&String, &String)> = s.labels.iter().collect();
    labels.sort();
    let now = now_ms();
    html! {
        section aria-labelledby="summary-h" {
            h2 id="summary-h" class="visually-hidden" { "Summary" }
            dl class="summary" {
                dt { "Status" }
                dd {
                    span class={ "badge " (format::status_class(s.status)) } data-testid="status" { (format::status(s.status)) }
                    @if !s.paused_reason.is_empty() { " " span class="flag paused" { "paused" } }
                    @if !s.stuck_reason.is_empty() { " " span class="flag" { "stuck " (s.stuck_reason) } }
                }
                dt { "Definition" }
                dd { (s.workflow_type) " version " (s.definition_version) }
                dt { "Current step" }
                dd { @if s.current_step.is_empty() { span class="muted" { "none" } } @else { (s.current_step) } }
                dt { "Started" }
                dd class="when" { (format::timestamp(s.started_ms)) }
                dt { "Closed" }
                dd class="when" {
                    @if s.closed_ms > 0 { (format::timestamp(s.closed_ms)) " (after " (format::duration(s.closed_ms - s.started_ms)) ")" }
                    @else { span class="muted" { "open for " (format::duration(now - s.started_ms)) } }
                }
                dt { "Request id" }
                dd class="mono" { (s.request_id) }
                dt { "Correlation id" }
                dd class="mono" { (s.correlation_id) }
                @if !labels.is_empty() {
                    dt { "Labels" }
                    dd class="mono" { @for (k, v) in labels { span { (k) "=" (v) } " " } }
                }
                @if let Some(started) = started {
                    @if !started.parent_workflow_id.is_empty() {
                        dt { "Parent" }
                        dd { a class="mono" href=(format::workflow_url(&started.parent_workflow_id)) { (started.parent_workflow_id) } }
                    }
                    @if !started.redrive_of.is_empty() {
                        dt { "Redrive of" }
                        dd { a class="mono" href=(format::workflow_url(&started.redrive_of)) { (started.redrive_of) } " (redrive " (started.redrive) ")" }
                    }
                }
                @if !reason.is_empty() {
                    dt { "Reason" }
                    dd data-testid="reason" { (reason) }
                }
                dt { "Input" }
                dd {
                    details id="input" {
                        summary { (format::short(started.map(|s| s.input.as_str()).unwrap_or_default(), 80)) }
                        pre data-testid="input" { (format::pretty_json(started.map(|s| s.input.as_str()).unwrap_or_default())) }
                    }
                }
                @if !result.is_empty() {
                    dt { "Result" }
                    dd { details id="result" { summary { (format::short(result, 80)) } pre { (format::pretty_json(result)) } } }
                }
            }
        }
    }
}

/// The stuck flag with what to do, and the pause with who paused it.
fn flags(viewer: &Viewer, loaded: &Loaded) -> Markup {
    let s = &loaded.summary;
    let paused_by = loaded.events.iter().rev().find_map(|e| match &e.attributes {
        Some(Attributes::WorkflowPaused(p)) => Some((p.identity.clone(), e.time_ms)),
        _ => None,
    });
    html! {
        @if !s.stuck_reason.is_empty() {
            section class="callout" aria-labelledby="stuck-h" data-testid="stuck" {
                h2 id="stuck-h" { "Stuck: " (s.stuck_reason) }
                p { (s.stuck_message) }
                p { strong { "Next step: " } (suggestion(&s.stuck_reason)) }
                @if viewer.may_act() && loaded.is_open() {
                    div class="actions" {
                        a class="button" href=(actions::url(&s.workflow_id, "retry")) { "Send the retry signal…" }
                        a class="button" href=(actions::url(&s.workflow_id, "resolve")) { "Resolve a step…" }
                    }
                }
            }
        }
        @if !s.paused_reason.is_empty() {
            section class="callout paused" aria-labelledby="paused-h" {
                h2 id="paused-h" { "Paused" }
                p { (s.paused_reason) }
                @if let Some((by, at)) = paused_by {
                    p class="muted" { "by " (by) " at " (format::timestamp(at)) ". Nothing new is scheduled until it is resumed." }
                }
            }
        }
    }
}

fn pending(loaded: &Loaded) -> Markup {
    let Some(description) = &loaded.description else { return html! {} };
    if description.pending_activities.is_empty() && !loaded.is_open() {
        return html! {};
    }
    html! {
        section aria-labelledby="pending-h" {
            h2 id="pending-h" { "Pending activities" }
            @if description.pending_activities.is_empty() {
                p class="muted" { "None: the workflow waits for a signal, a timer or its parent, or is paused." }
            } @else {
                div class="scroll" {
                    table class="pending" {
                        thead { tr {
                            th scope="col" { "Step" } th scope="col" { "Activity" } th scope="col" { "Attempt" }
                            th scope="col" { "State" } th scope="col" { "Held by" } th scope="col" { "Scheduled" }
                            th scope="col" { "Next attempt" } th scope="col" { "Last failure" }
                        } }
                        tbody {
                            @for p in &description.pending_activities {
                                tr data-step=(p.step) data-state=(p.state) {
                                    td { @if p.compensation { "undo " } (p.step) }
                                    td class="mono" { (p.activity_type) }
                                    td class="num" { (p.attempt) }
                                    td { (p.state) }
                                    td class="mono" data-testid="worker" { (p.worker_id) }
                                    td class="when" { (format::timestamp(p.scheduled_ms)) }
                                    td class="when" { (format::timestamp(p.next_attempt_ms)) }
                                    td { (format::short(&p.last_failure, 200)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn results(loaded: &Loaded) -> Markup {
    let Some(description) = &loaded.description else { return html! {} };
    if description.step_results.is_empty() {
        return html! {};
    }
    // In step order, as `describe` lists them.
    let order = loaded.step_names();
    let mut results: Vec<(&String, &String)> = description.step_results.iter().collect();
    results.sort_by_key(|(step, _)| order.iter().position(|s| s == *step).unwrap_or(usize::MAX));
    html! {
        section aria-labelledby="results-h" {
            h2 id="results-h" { "Step results" }
            @for (step, result) in results {
                details id={ "result-" (step) } {
                    summary { (step) ": " span class="mono" { (format::short(result, 100)) } }
                    pre { (format::pretty_json(result)) }
                }
            }
        }
    }
}

/// A history event in a few words, naming steps rather than task ids.
fn describe(event: &HistoryEvent, steps: &HashMap<String, String>) -> String {
    let step = |task_id: &str| steps.get(task_id).cloned().unwrap_or_else(|| task_id.to_owned());
    let Some(attributes) = &event.attributes else { return String::new() };
    match attributes {
        Attributes::WorkflowStarted(s) => {
            format!("{} v{} by request {}", s.workflow_type, s.definition_version, s.request_id)
        }
        Attributes::ActivityScheduled(s) => format!(
            "{}{} → {} attempt {}",
            if s.compensation { "undo " } else { "" },
            s.step,
            s.activity_type,
            s.attempt
        ),
        Attributes::ActivityStarted(s) => format!("{} taken by {}", step(&s.task_id), s.worker_id),
        Attributes::ActivityCompleted(c) => format!("{} completed", step(&c.task_id)),
        Attributes::ActivityFailed(f) => {
            let next = if f.next_attempt_ms > 0 {
                format!("; next attempt at {}", format::timestamp(f.next_attempt_ms))
            } else {
                String::new()
            };
            format!("{} failed: {}: {}{next}", step(&f.task_id), f.error_type, f.message)
        }
        Attributes::ActivityTimedOut(t) => format!("{} timed out ({})", step(&t.task_id), t.timeout_type),
        Attributes::TimerStarted(t) => format!("{} timer until {}", t.purpose, format::timestamp(t.fire_at_ms)),
        Attributes::TimerFired(t) => format!("timer {} fired", t.timer_id),
        Attributes::SignalReceived(s) => format!("signal {} from {}", s.name, s.identity),
        Attributes::CancelRequested(c) => format!("cancel requested by {}: {}", c.identity, c.reason),
        Attributes::CompensationStarted(c) => format!("undoing {}: {}", c.steps.join(", "), c.reason),
        Attributes::WorkflowCompleted(_) => "completed".into(),
        Attributes::WorkflowCompensated(c) => format!("compensated: {}", c.reason),
        Attributes::WorkflowFailed(f) => format!("failed: {}", f.reason),
        Attributes::WorkflowCancelled(c) => format!("cancelled: {}", c.reason),
        Attributes::WorkflowTerminated(t) => format!("terminated by {}: {}", t.identity, t.reason),
        Attributes::StuckDetected(s) => format!("{}: {}", s.reason, s.message),
        Attributes::StuckCleared(s) => format!("cleared: {}", s.reason),
        Attributes::StepEscalated(e) => format!("{} escalated after attempt {}: {}", e.step, e.attempt, e.alert),
        Attributes::CompletionIgnored(c) => {
            format!("{} answer of {} ignored ({})", c.outcome, step(&c.task_id), c.reason)
        }
        Attributes::CancelRefused(c) => c.message.clone(),
        Attributes::ActivityResolved(r) => format!("{} resolved {} by {}: {}", r.step, r.outcome, r.identity, r.reason),
        Attributes::StepSkipped(s) => format!("{} skipped", s.step),
        Attributes::WorkflowPaused(p) => format!("paused by {}: {}", p.identity, p.reason),
        Attributes::WorkflowResumed(r) => format!("resumed by {}", r.identity),
        Attributes::WorkflowHeld(h) => format!("held for parent {}", h.parent_workflow_id),
    }
}

/// The row's class: failures red, compensations purple, flags amber.
fn row_class(attributes: &Attributes) -> &'static str {
    match attributes {
        Attributes::ActivityFailed(_)
        | Attributes::ActivityTimedOut(_)
        | Attributes::WorkflowFailed(_)
        | Attributes::WorkflowTerminated(_)
        | Attributes::StuckDetected(_) => "ev-bad",
        Attributes::CompensationStarted(_) | Attributes::WorkflowCompensated(_) | Attributes::WorkflowCancelled(_) => {
            "ev-undo"
        }
        Attributes::ActivityScheduled(s) if s.compensation => "ev-undo",
        Attributes::WorkflowCompleted(_) | Attributes::ActivityCompleted(_) => "ev-ok",
        Attributes::StepEscalated(_)
        | Attributes::CancelRequested(_)
        | Attributes::WorkflowPaused(_)
        | Attributes::ActivityResolved(_) => "ev-flag",
        _ => "",
    }
}

/// An event's attributes as indented JSON, payloads (JSON text) as documents.
fn event_json(attributes: &Attributes) -> String {
    let inner = serde_json::to_value(attributes)
        .ok()
        .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
        .unwrap_or(serde_json::Value::Null);
    serde_json::to_string_pretty(&inner).unwrap_or_default()
}

fn history(loaded: &Loaded, from: Option<u64>) -> Markup {
    let total = loaded.events.len() as u64;
    let first = from.unwrap_or_else(|| total.saturating_sub(HISTORY_PAGE - 1)).clamp(1, total.max(1));
    let last = (first + HISTORY_PAGE - 1).min(total);
    let start_ms = loaded.events.first().map_or(0, |e| e.time_ms);
    let mut steps: HashMap<String, String> = HashMap::new();
    for event in &loaded.events {
        if let Some(Attributes::ActivityScheduled(s)) = &event.attributes {
            let label = if s.compensation { format!("undo {}", s.step) } else { s.step.clone() };
            steps.insert(s.task_id.clone(), label);
        }
    }
    let url = format::workflow_url(&loaded.summary.workflow_id);
    html! {
        section aria-labelledby="history-h" {
            h2 id="history-h" { "History" }
            @if total > HISTORY_PAGE {
                nav class="pager" aria-label="History pages" {
                    span { "Events " (first) " to " (last) " of " (total) "." }
                    @if first > 1 {
                        a href={ (url) "?from=" (first.saturating_sub(HISTORY_PAGE).max(1)) } { "← Earlier" }
                    }
                    @if last < total { a href=(url) { "Latest →" } }
                }
            }
            div class="scroll" {
                table class="history" {
                    thead { tr {
                        th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "+" }
                        th scope="col" { "Event" } th scope="col" { "What" } th scope="col" { "Details" }
                    } }
                    tbody {
                        @for event in loaded.events.iter().filter(|e| e.seq >= first && e.seq <= last) {
                            @if let Some(attributes) = &event.attributes {
                                tr class=(row_class(attributes)) data-seq=(event.seq) data-event=(attributes.event_name()) {
                                    td class="num" { (event.seq) }
                                    td class="when" { (format::timestamp(event.time_ms)) }
                                    td class="num" { (format::offset(event.time_ms - start_ms)) }
                                    td class="type" { (attributes.event_name()) }
                                    td { (format::short(&describe(event, &steps), 240)) }
                                    td {
                                        details id={ "ev-" (event.seq) } {
                                            summary { "JSON" }
                                            pre { (event_json(attributes)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow_proto::v1::{ActivityScheduled, WorkflowStarted, WorkflowStatus};

    use super::*;
    use crate::auth::Principal;

    fn loaded(input: &str) -> Loaded {
        let started = WorkflowStarted {
            workflow_type: "quick".into(),
            definition_version: 1,
            request_id: "<b>r</b>".into(),
            input: input.into(),
            ..Default::default()
        };
        let events = vec![
            HistoryEvent { seq: 1, time_ms: 1_000, attributes: Some(Attributes::WorkflowStarted(started)) },
            HistoryEvent {
                seq: 2,
                time_ms: 1_001,
                attributes: Some(Attributes::ActivityScheduled(ActivityScheduled {
                    task_id: "0.f.1".into(),
                    step: "<img src=x onerror=alert(1)>".into(),
                    attempt: 1,
                    input: input.into(),
                    ..Default::default()
                })),
            },
        ];
        Loaded {
            summary: WorkflowSummary {
                workflow_id: "wf-<script>".into(),
                workflow_type: "quick".into(),
                status: WorkflowStatus::Running as i32,
                request_id: "<b>r</b>".into(),
                current_step: "<i>reserve</i>".into(),
                stuck_reason: "NO_WORKER".into(),
                stuck_message: "<script>alert('stuck')</script>".into(),
                history_length: 2,
                started_ms: 1_000,
                ..Default::default()
            },
            description: None,
            events,
            definition: None,
            links: vec![],
        }
    }

    #[test]
    fn hostile_payloads_are_shown_as_text_never_as_markup() {
        let input = r#"{"note": "</pre><script>alert(1)</script>", "x": "<img src=x onerror=alert(2)>"}"#;
        let viewer = Viewer::for_tests(Principal::anonymous());
        let html = region(&viewer, &loaded(input), None).into_string();
        for hostile in ["<script", "<img", "<b>", "<i>", "</pre><script"] {
            assert!(!html.contains(hostile), "{hostile} reached the page as markup:\n{html}");
        }
        assert!(html.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"), "the input is shown, escaped");
        assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
        assert!(html.contains("data-live-url=\"/workflows/wf-%3Cscript%3E?fragment=live&amp;since=2\""), "{html}");
    }

    #[test]
    fn every_stuck_reason_has_a_next_step() {
        for reason in StuckReason::ALL {
            assert!(!suggestion(reason.as_str()).contains("runbook"), "{reason:?} has no suggestion of its own");
        }
    }
}
