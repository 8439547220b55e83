//! `/`: workflows, newest first (by start), with filters, a search, paging
//! by cursor, and a live refresh of the first page.
//!
//! Rows come from [`Runtime::newest`], which reads only the summaries it
//! examines; a filter that matches little stops after [`EXAMINE_BUDGET`]
//! rows with a link to search on, as `ListWorkflows` stops at its scan
//! budget. The self-healing jobs' runs (`job.*`) are hidden unless asked
//! for, as `sagaflow workflow list` hides them.

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use sagaflow_proto::v1::{WorkflowStatus, WorkflowSummary};
use serde::Deserialize;

use super::layout::{self, Page};
use super::{Console, ConsoleError, Viewer, format};
use crate::runtime::{Cursor, NewestQuery, timers::now_ms};

/// Rows on a page.
const PAGE: usize = 50;
/// Summaries one request may read under a filter before it answers with
/// what it found (and a cursor to go on).
const EXAMINE_BUDGET: usize = 20_000;
/// The prefix of the self-healing jobs' workflow types.
const JOBS: &str = "job.";

const STATUSES: [WorkflowStatus; 7] = [
    WorkflowStatus::Running,
    WorkflowStatus::Compensating,
    WorkflowStatus::Completed,
    WorkflowStatus::Compensated,
    WorkflowStatus::Failed,
    WorkflowStatus::Cancelled,
    WorkflowStatus::Terminated,
];

/// The list's filters, as its form sends them (every field optional).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ListQuery {
    /// A workflow id (or its start), a request id or a correlation id.
    #[serde(default)]
    pub q: String,
    /// A status name: `RUNNING`, `FAILED`…
    #[serde(default)]
    pub status: String,
    /// A workflow type, or a prefix ending in `*`.
    #[serde(default, rename = "type")]
    pub workflow_type: String,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub stuck: String,
    #[serde(default)]
    pub paused: String,
    /// Also the self-healing jobs' runs.
    #[serde(default)]
    pub jobs: String,
    /// Started at or after (a `datetime-local` value, UTC).
    #[serde(default)]
    pub from: String,
    /// Started at or before.
    #[serde(default)]
    pub to: String,
    /// The cursor: `STARTED_MS:WORKFLOW_ID` of the last row of the previous page.
    #[serde(default)]
    pub after: String,
    /// `live`: only the refreshed region.
    #[serde(default)]
    pub fragment: String,
}

impl ListQuery {
    /// The query string of these filters (no cursor, no fragment).
    fn filters(&self) -> Vec<(&'static str, &str)> {
        [
            ("q", self.q.as_str()),
            ("status", self.status.as_str()),
            ("type", self.workflow_type.as_str()),
            ("label", self.label.as_str()),
            ("stuck", self.stuck.as_str()),
            ("paused", self.paused.as_str()),
            ("jobs", self.jobs.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }

    fn url(&self, extra: &[(&'static str, &str)]) -> String {
        let pairs: Vec<String> = self
            .filters()
            .into_iter()
            .chain(extra.iter().copied())
            .map(|(k, v)| format!("{k}={}", format::encode(v)))
            .collect();
        if pairs.is_empty() { "/".into() } else { format!("/?{}", pairs.join("&")) }
    }

    fn checked(value: &str) -> bool {
        !value.is_empty() && value != "0"
    }
}

/// The filters, checked and parsed.
struct Filter {
    status: Option<i32>,
    /// Exact type, or the prefix of one ending in `*`.
    workflow_type: Option<(String, bool)>,
    label: Option<(String, String)>,
    stuck: bool,
    paused: bool,
    jobs: bool,
    /// The search, as typed and in the viewer's namespace (`NAME:ID`).
    search: Option<(String, String)>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    after: Option<Cursor>,
}

fn parse(console: &Console, viewer: &Viewer, query: &ListQuery) -> Result<Filter, ConsoleError> {
    let limits = console.runtime().limits();
    let bad = |e: crate::limits::Invalid| ConsoleError::BadRequest(e.0);
    for (field, value) in [("search", &query.q), ("type", &query.workflow_type), ("label", &query.label)] {
        limits.optional_id(field, value.trim()).map_err(bad)?;
    }
    let status = match query.status.as_str() {
        "" => None,
        name => Some(
            STATUSES
                .iter()
                .find(|s| sagaflow_proto::status_name(**s) == name)
                .map(|s| *s as i32)
                .ok_or_else(|| ConsoleError::BadRequest(format!("unknown status {name:?}")))?,
        ),
    };
    let workflow_type = match query.workflow_type.trim() {
        "" => None,
        t => Some(match t.strip_suffix('*') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (t.to_owned(), false),
        }),
    };
    let label = match query.label.trim() {
        "" => None,
        l => Some(
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| ConsoleError::BadRequest(format!("label {l:?} is not KEY=VALUE")))?,
        ),
    };
    let time = |text: &str, field: &str| match text.trim() {
        "" => Ok(None),
        t => format::parse_datetime(t)
            .map(Some)
            .ok_or_else(|| ConsoleError::BadRequest(format!("{field} {t:?} is not a date and time"))),
    };
    let after = match query.after.split_once(':') {
        _ if query.after.is_empty() => None,
        Some((ms, id)) if !id.is_empty() => Some(Cursor {
            started_ms: ms.parse().map_err(|_| ConsoleError::BadRequest("the page cursor is malformed".into()))?,
            workflow_id: id.to_owned(),
        }),
        _ => return Err(ConsoleError::BadRequest("the page cursor is malformed".into())),
    };
    let q = query.q.trim();
    Ok(Filter {
        status,
        workflow_type,
        label,
        stuck: ListQuery::checked(&query.stuck),
        paused: ListQuery::checked(&query.paused),
        jobs: ListQuery::checked(&query.jobs),
        search: (!q.is_empty()).then(|| (q.to_owned(), viewer.principal.scoped(q))),
        from_ms: time(&query.from, "from")?,
        to_ms: time(&query.to, "to")?,
        after,
    })
}

impl Filter {
    fn keeps(&self, viewer: &Viewer, s: &WorkflowSummary) -> bool {
        let type_ok = match &self.workflow_type {
            Some((prefix, true)) => s.workflow_type.starts_with(prefix.as_str()),
            Some((exact, false)) => s.workflow_type == *exact,
            // The jobs run every few minutes and would bury the workflows.
            None => self.jobs || !s.workflow_type.starts_with(JOBS),
        };
        let search_ok = self.search.as_ref().is_none_or(|(typed, scoped)| {
            s.correlation_id == *typed
                || s.request_id == *typed
                || s.request_id == *scoped
                || (typed.len() >= 4
                    && (s.workflow_id.starts_with(typed.as_str()) || s.workflow_id.starts_with(scoped.as_str())))
        });
        viewer.may_read(&s.labels)
            && type_ok
            && search_ok
            && self.status.is_none_or(|status| s.status == status)
            && self.label.as_ref().is_none_or(|(k, v)| s.labels.get(k) == Some(v))
            && (!self.stuck || !s.stuck_reason.is_empty())
            && (!self.paused || !s.paused_reason.is_empty())
            && self.from_ms.is_none_or(|from| s.started_ms >= from)
            && self.to_ms.is_none_or(|to| s.started_ms <= to)
    }
}

/// What one request found.
struct Found {
    rows: Vec<(WorkflowSummary, String)>,
    next: Option<Cursor>,
    examined: usize,
    budget_spent: bool,
    /// The search named a workflow or a request id exactly.
    exact: bool,
}

/// A search that names a workflow id or a request id (as typed, or in the
/// viewer's namespace) finds it at once, without a scan.
async fn exact_hits(console: &Console, viewer: &Viewer, filter: &Filter) -> Result<Vec<WorkflowSummary>, ConsoleError> {
    let Some((typed, scoped)) = &filter.search else { return Ok(Vec::new()) };
    let runtime = console.runtime();
    let mut ids: Vec<String> = Vec::new();
    for candidate in [typed, scoped] {
        if runtime.limits().id("search", candidate).is_err() {
            continue;
        }
        if !ids.contains(candidate) && runtime.summary(candidate).await?.is_some() {
            ids.push(candidate.clone());
        }
        if let Some(id) = runtime.workflow_for_request(candidate).await?
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    let mut hits = Vec::new();
    for id in ids {
        match runtime.describe(&id).await {
            Ok(summary) if viewer.may_read(&summary.labels) => hits.push(summary),
            Ok(_) | Err(crate::runtime::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hits)
}

async fn find(console: &Console, viewer: &Viewer, filter: &Filter) -> Result<Found, ConsoleError> {
    let runtime = console.runtime();
    let hits = if filter.after.is_none() { exact_hits(console, viewer, filter).await? } else { Vec::new() };
    let (workflows, next, examined, budget_spent, exact) = if hits.is_empty() {
        let keep = |s: &WorkflowSummary| filter.keeps(viewer, s);
        let page = runtime
            .newest(NewestQuery {
                after: filter.after.clone(),
                started_from_ms: filter.from_ms,
                started_to_ms: filter.to_ms,
                filter: &keep,
                limit: PAGE,
                examine_budget: EXAMINE_BUDGET,
            })
            .await?;
        (page.workflows, page.next, page.examined, page.budget_spent, false)
    } else {
        let n = hits.len();
        (hits, None, n, false, true)
    };
    let mut rows = Vec::with_capacity(workflows.len());
    for summary in workflows {
        let reason = ending_reason(console, &summary).await?;
        rows.push((summary, reason));
    }
    Ok(Found { rows, next, examined, budget_spent, exact })
}

/// Why a closed workflow did not complete: the reason its last event gives.
async fn ending_reason(console: &Console, summary: &WorkflowSummary) -> Result<String, ConsoleError> {
    let status = WorkflowStatus::try_from(summary.status).unwrap_or_default();
    if !status.is_terminal() || status == WorkflowStatus::Completed {
        return Ok(String::new());
    }
    Ok(console.runtime().outcome(summary).await?.1)
}

pub(super) async fn handler(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let filter = parse(&console, &viewer, &query)?;
    let found = find(&console, &viewer, &filter).await?;
    let types: Vec<String> = {
        let mut names: Vec<String> = console.runtime().registry().all().iter().map(|d| d.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let region = region(&query, &filter, &found);
    if query.fragment == "live" {
        return Ok(Html(region.into_string()).into_response());
    }
    let body = html! {
        (filters_form(&query, &types))
        p class="pager" {
            label { input id="live-toggle" type="checkbox" checked[filter.after.is_none()] disabled[filter.after.is_some()]; " Refresh live" }
            span id="live-status" class="muted" aria-live="polite" {}
        }
        (region)
    };
    Ok(layout::page(&viewer, Page::Workflows, "Workflows", body))
}

fn filters_form(query: &ListQuery, types: &[String]) -> Markup {
    html! {
        form class="filters" method="get" action="/" role="search" aria-label="Filter workflows" {
            div {
                label for="f-q" { "Search" }
                input id="f-q" type="search" name="q" value=(query.q) placeholder="workflow, request or correlation id";
            }
            div {
                label for="f-status" { "Status" }
                select id="f-status" name="status" {
                    option value="" selected[query.status.is_empty()] { "any" }
                    @for status in STATUSES {
                        @let name = sagaflow_proto::status_name(status);
                        option value=(name) selected[query.status == name] { (name) }
                    }
                }
            }
            div {
                label for="f-type" { "Type" }
                input id="f-type" type="text" name="type" value=(query.workflow_type) list="f-types" placeholder="checkout, job.*";
                datalist id="f-types" { @for t in types { option value=(t) {} } }
            }
            div {
                label for="f-label" { "Label" }
                input id="f-label" type="text" name="label" value=(query.label) placeholder="key=value";
            }
            div {
                label for="f-from" { "Started from (UTC)" }
                input id="f-from" type="datetime-local" step="1" name="from" value=(query.from);
            }
            div {
                label for="f-to" { "Started until (UTC)" }
                input id="f-to" type="datetime-local" step="1" name="to" value=(query.to);
            }
            div class="checks" {
                label { input type="checkbox" name="stuck" value="1" checked[ListQuery::checked(&query.stuck)]; " stuck" }
                label { input type="checkbox" name="paused" value="1" checked[ListQuery::checked(&query.paused)]; " paused" }
                label { input type="checkbox" name="jobs" value="1" checked[ListQuery::checked(&query.jobs)]; " jobs' runs" }
            }
            div class="actions" {
                button type="submit" class="primary" { "Apply" }
                a class="button" href="/" { "Reset" }
            }
        }
    }
}

fn region(query: &ListQuery, filter: &Filter, found: &Found) -> Markup {
    let live = filter.after.is_none().then(|| query.url(&[("fragment", "live")]));
    let now = now_ms();
    html! {
        div id="live" data-live-url=[live] data-live-every="5000" {
            div class="scroll" {
                table class="workflows" {
                    caption class="muted" {
                        @if found.exact { "The workflow your search names." }
                        @else if found.rows.is_empty() { "No workflow matches." }
                        @else { "Newest first, " (found.rows.len()) " shown." }
                    }
                    thead {
                        tr {
                            th scope="col" { "Workflow" }
                            th scope="col" { "Status" }
                            th scope="col" { "Type" }
                            th scope="col" { "Current step" }
                            th scope="col" { "Stuck" }
                            th scope="col" { "Started" }
                            th scope="col" { "Closed" }
                            th scope="col" { "Duration" }
                            th scope="col" { "Reason" }
                        }
                    }
                    tbody {
                        @for (s, reason) in &found.rows {
                            tr data-workflow-id=(s.workflow_id) data-status=(format::status(s.status)) {
                                td class="id mono" { a href=(format::workflow_url(&s.workflow_id)) { (s.workflow_id) } }
                                td {
                                    span class={ "badge " (format::status_class(s.status)) } { (format::status(s.status)) }
                                    @if !s.paused_reason.is_empty() { " " span class="flag paused" title=(s.paused_reason) { "paused" } }
                                }
                                td { (s.workflow_type) " v" (s.definition_version) }
                                td { (s.current_step) }
                                td {
                                    @if !s.stuck_reason.is_empty() {
                                        span class="flag" title=(s.stuck_message) { (s.stuck_reason) }
                                    }
                                }
                                td class="when" { (format::timestamp(s.started_ms)) }
                                td class="when" { (format::timestamp(s.closed_ms)) }
                                td class="num" {
                                    @if s.closed_ms > 0 { (format::duration(s.closed_ms - s.started_ms)) }
                                    @else { span class="muted" { (format::duration(now - s.started_ms)) " so far" } }
                                }
                                td class="reason" { (format::short(reason, 160)) }
                            }
                        }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                @if filter.after.is_some() { a href=(query.url(&[])) { "← Newest" } }
                @if let Some(next) = &found.next {
                    @let cursor = format!("{}:{}", next.started_ms, next.workflow_id);
                    a href=(query.url(&[("after", cursor.as_str())])) {
                        @if found.budget_spent { "Search older workflows →" } @else { "Older →" }
                    }
                }
                @if found.budget_spent {
                    span class="muted" { "Looked at the " (found.examined) " newest workflows from here; the filter matched " (found.rows.len()) "." }
                }
            }
        }
    }
}
