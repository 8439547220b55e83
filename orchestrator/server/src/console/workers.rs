//! `/workers`: every activity queue, the workers connected to it with their
//! credit, the tasks in flight and waiting, and whether an operator paused
//! it: what `ListQueues` answers (`crate::operator::queues`). Operators only,
//! as `ListQueues` is. A queue's pause and resume go through a confirmation
//! like a workflow's actions.

use axum::extract::{Form, Path, Query};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sagaflow_proto::v1::QueueInfo;
use serde::Deserialize;

use super::layout::{self, Page};
use super::{Console, ConsoleError, Viewer, format};
use crate::operator;

#[derive(Debug, Default, Deserialize)]
pub(super) struct WorkersQuery {
    #[serde(default)]
    fragment: String,
    #[serde(default)]
    done: String,
}

fn queue_url(queue: &str, action: &str) -> String {
    format!("/queues/{}/{action}", format::encode(queue))
}

fn region(viewer: &Viewer, queues: &[QueueInfo]) -> Markup {
    let workers: usize = queues.iter().map(|q| q.workers.len()).sum();
    html! {
        div id="live" data-live-url="/workers?fragment=live" data-live-every="3000" {
            p class="muted" { (queues.len()) " queues, " (workers) " worker sessions across them." }
            div class="scroll" {
                table class="queues" {
                    thead { tr {
                        th scope="col" { "Queue" } th scope="col" { "Workers (credit)" } th scope="col" { "In flight" }
                        th scope="col" { "Backlog" } th scope="col" { "Paused" }
                        @if viewer.may_act() { th scope="col" { "Action" } }
                    } }
                    tbody {
                        @for q in queues {
                            tr data-queue=(q.queue) {
                                th scope="row" class="mono" { (q.queue) }
                                td {
                                    @if q.workers.is_empty() { span class="flag" { "none connected" } }
                                    @for w in &q.workers { span class="mono" data-worker=(w.worker_id) { (w.worker_id) } " (" (w.credit) ")" br; }
                                }
                                td class="num" data-testid="in-flight" { (q.in_flight) }
                                td class="num" data-testid="backlog" { (q.backlog) }
                                td {
                                    @if !q.paused_reason.is_empty() {
                                        span class="flag paused" { "paused" } " " (q.paused_reason)
                                        span class="muted" { " by " (q.paused_by) " at " (format::timestamp(q.paused_ms)) }
                                    }
                                }
                                @if viewer.may_act() {
                                    td {
                                        @if q.paused_reason.is_empty() { a class="button" href=(queue_url(&q.queue, "pause")) { "Pause…" } }
                                        @else { a class="button" href=(queue_url(&q.queue, "resume")) { "Resume…" } }
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

pub(super) async fn handler(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Query(query): Query<WorkersQuery>,
) -> Result<Response, ConsoleError> {
    // ListQueues is operator-only: queue names and worker ids span every tenant.
    viewer.must_act()?;
    let queues = operator::queues(console.runtime());
    let region = region(&viewer, &queues);
    if query.fragment == "live" {
        return Ok(Html(region.into_string()).into_response());
    }
    let notice = match query.done.as_str() {
        "pause" => Some("Queue paused: its tasks wait, handed to no worker, until it is resumed."),
        "resume" => Some("Queue resumed."),
        _ => None,
    };
    let body = html! {
        @if let Some(notice) = notice { p class="notice" role="status" { (notice) } }
        p class="pager" {
            label { input id="live-toggle" type="checkbox" checked; " Refresh live" }
            span id="live-status" class="muted" aria-live="polite" {}
        }
        (region)
    };
    Ok(layout::page(&viewer, Page::Workers, "Workers and queues", body))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct QueueForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

fn confirm_form(viewer: &Viewer, queue: &str, pause: bool, reason: &str, error: Option<&str>) -> Response {
    let title = if pause { "Pause a queue" } else { "Resume a queue" };
    let body = html! {
        p { "Queue " strong class="mono" { (queue) } }
        p {
            @if pause { "Its tasks stay queued, handed to no worker and failed by no queue-side deadline, until an operator resumes it. Attempts already running finish." }
            @else { "Its waiting tasks are handed to workers again." }
        }
        @if let Some(error) = error { p class="error" role="alert" { (error) } }
        form class="action" method="post" action=(queue_url(queue, if pause { "pause" } else { "resume" })) {
            input type="hidden" name="csrf" value=(viewer.csrf());
            @if pause {
                label for="reason" { "Reason (shown on this page and by `sagaflow worker list`)" }
                input id="reason" name="reason" type="text" required value=(reason) autofocus;
            }
            div class="actions" {
                button type="submit" class=(if pause { "danger" } else { "primary" }) { (if pause { "Pause queue" } else { "Resume queue" }) }
                a class="button" href="/workers" { "Back" }
            }
        }
    };
    layout::page(viewer, Page::Workers, title, body)
}

fn which(action: &str) -> Result<bool, ConsoleError> {
    match action {
        "pause" => Ok(true),
        "resume" => Ok(false),
        _ => Err(ConsoleError::NotFound(format!("no queue action {action:?}"))),
    }
}

pub(super) async fn confirm(
    viewer: Viewer,
    Path((queue, action)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    viewer.must_act()?;
    Ok(confirm_form(&viewer, &queue, which(&action)?, "", None))
}

pub(super) async fn act(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<QueueForm>,
) -> Result<Response, ConsoleError> {
    viewer.must_act()?;
    viewer.check_csrf(&form.csrf)?;
    let pause = which(&action)?;
    let reason = form.reason.trim();
    let done = if pause {
        operator::pause_queue(console.runtime(), &queue, reason, &viewer.identity()).await
    } else {
        operator::resume_queue(console.runtime(), &queue, &viewer.identity()).await
    };
    match done.map_err(ConsoleError::from) {
        Ok(_) => Ok(Redirect::to(&format!("/workers?done={action}")).into_response()),
        Err(e @ ConsoleError::BadRequest(_)) => {
            let mut page = confirm_form(&viewer, &queue, pause, reason, Some(&e.to_string()));
            *page.status_mut() = e.status();
            Ok(page)
        }
        Err(e) => Err(e),
    }
}
