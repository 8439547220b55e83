//! An operator's actions on a workflow, each behind a confirmation: the
//! button is a link to a page that says what the action does and asks for
//! what it needs (a reason, a signal's payload); only that page's form
//! POSTs, with the session's CSRF token. The work is done by
//! [`crate::operator`], which the gRPC API calls too.

use axum::extract::{Form, Path};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use sagaflow_proto::v1::{ResolvedOutcome, WorkflowStatus};
use serde::Deserialize;

use super::layout::{self, Page};
use super::workflow::{self, Loaded};
use super::{Console, ConsoleError, Viewer, format};
use crate::operator;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Cancel,
    Terminate,
    Signal,
    Retry,
    Pause,
    Resume,
    Resolve,
    Redrive,
}

const ALL: [Action; 8] = [
    Action::Cancel,
    Action::Terminate,
    Action::Signal,
    Action::Retry,
    Action::Pause,
    Action::Resume,
    Action::Resolve,
    Action::Redrive,
];

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Terminate => "terminate",
            Self::Signal => "signal",
            Self::Retry => "retry",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Resolve => "resolve",
            Self::Redrive => "redrive",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        ALL.into_iter().find(|a| a.name() == name)
    }

    /// The button's words.
    fn label(self) -> &'static str {
        match self {
            Self::Cancel => "Cancel…",
            Self::Terminate => "Terminate…",
            Self::Signal => "Signal…",
            Self::Retry => "Retry signal…",
            Self::Pause => "Pause…",
            Self::Resume => "Resume…",
            Self::Resolve => "Resolve a step…",
            Self::Redrive => "Redrive…",
        }
    }

    /// The confirmation's title and its submit button.
    fn confirm(self) -> (&'static str, &'static str) {
        match self {
            Self::Cancel => ("Cancel the workflow", "Cancel workflow"),
            Self::Terminate => ("Terminate the workflow", "Terminate workflow"),
            Self::Signal => ("Send a signal", "Send signal"),
            Self::Retry => ("Send the retry signal", "Send sagaflow.retry"),
            Self::Pause => ("Pause the workflow", "Pause workflow"),
            Self::Resume => ("Resume the workflow", "Resume workflow"),
            Self::Resolve => ("Resolve a step's outcome", "Record resolution"),
            Self::Redrive => ("Redrive the workflow", "Redrive workflow"),
        }
    }

    /// What it does, said before it is done.
    fn explanation(self) -> &'static str {
        match self {
            Self::Cancel => {
                "The completed steps are compensated, in reverse order. A step that is running answers first. \
                 Refused after the pivot: money has moved, refund instead."
            }
            Self::Terminate => {
                "The workflow stops at once and nothing is compensated: whatever its steps did stays done, for you \
                 to settle by hand."
            }
            Self::Signal => "Delivers a named signal with a JSON payload, as a step awaiting it expects.",
            Self::Retry => {
                "Sends sagaflow.retry: a step blocked after its retries (a failed undo, a step after the pivot, an \
                 unknown outcome) gets a fresh retry budget, under the same idempotency key."
            }
            Self::Pause => {
                "Nothing new is scheduled (no attempt, retry, timer, compensation or close) until it is resumed; \
                 attempts already running finish."
            }
            Self::Resume => "The workflow decides again from where it is.",
            Self::Resolve => {
                "Records what a step's attempts did when no worker can tell. The decision is kept in the history \
                 with your name and reason, and the saga acts on it: succeeded moves on, failed compensates (before \
                 or at the pivot)."
            }
            Self::Redrive => {
                "Runs the workflow again as a new run on the same definition version and input, once its cause is \
                 fixed. The steps that stand are carried over; the rest run again with fresh idempotency keys."
            }
        }
    }

    /// Whether the action applies to a workflow in this state.
    fn applies(self, loaded: &Loaded) -> bool {
        let status = WorkflowStatus::try_from(loaded.summary.status).unwrap_or_default();
        let open = loaded.is_open();
        let paused = !loaded.summary.paused_reason.is_empty();
        match self {
            Self::Cancel => status == WorkflowStatus::Running,
            Self::Terminate | Self::Signal | Self::Retry | Self::Resolve => open,
            Self::Pause => open && !paused,
            Self::Resume => open && paused,
            Self::Redrive => matches!(status, WorkflowStatus::Failed | WorkflowStatus::Compensated),
        }
    }

    fn dangerous(self) -> bool {
        matches!(self, Self::Cancel | Self::Terminate | Self::Resolve)
    }
}

pub(super) fn url(workflow_id: &str, action: &str) -> String {
    format!("{}/act/{action}", format::workflow_url(workflow_id))
}

/// The buttons of the actions that apply (an operator's page only).
pub(super) fn buttons(loaded: &Loaded) -> Markup {
    let id = &loaded.summary.workflow_id;
    let applicable: Vec<Action> = ALL.into_iter().filter(|a| a.applies(loaded)).collect();
    html! {
        @if !applicable.is_empty() {
            nav class="actions" aria-label="Actions" {
                @for action in applicable {
                    a class={ "button" @if action.dangerous() { " danger" } } href=(url(id, action.name())) data-action=(action.name()) {
                        (action.label())
                    }
                }
            }
        }
    }
}

/// The notice after an action, on the workflow's page (`?done=`).
pub(super) fn notice(done: &str) -> Option<&'static str> {
    Some(match Action::parse(done)? {
        Action::Cancel => {
            "Cancel recorded. The completed steps are compensated once the running step answers (or it is refused \
             if that step is the pivot and succeeds)."
        }
        Action::Terminate => "Terminated. Nothing was compensated.",
        Action::Signal => "Signal recorded.",
        Action::Retry => "Retry signal recorded: the blocked step runs again.",
        Action::Pause => "Paused: nothing new is scheduled until it is resumed.",
        Action::Resume => "Resumed.",
        Action::Resolve => "Resolution recorded; the saga acts on it.",
        Action::Redrive => "This is the new run of the redriven workflow.",
    })
}

/// What an action's form sends; each action reads its own fields.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    result: String,
}

async fn target(console: &Console, viewer: &Viewer, id: &str, action: &str) -> Result<(Loaded, Action), ConsoleError> {
    viewer.must_act()?;
    let action = Action::parse(action).ok_or_else(|| ConsoleError::NotFound(format!("no action {action:?}")))?;
    let summary = workflow::readable(console, viewer, id).await?;
    let loaded = workflow::load(console, summary).await?;
    Ok((loaded, action))
}

fn form(viewer: &Viewer, loaded: &Loaded, action: Action, filled: &ActionForm, error: Option<&str>) -> Markup {
    let id = &loaded.summary.workflow_id;
    let (_, submit) = action.confirm();
    let steps = loaded.step_names();
    let chosen_step = if filled.step.is_empty() { loaded.summary.current_step.as_str() } else { filled.step.as_str() };
    html! {
        p { "Workflow " a class="mono" href=(format::workflow_url(id)) { (id) } " is "
            span class={ "badge " (format::status_class(loaded.summary.status)) } { (format::status(loaded.summary.status)) }
            @if !loaded.summary.current_step.is_empty() { " at step " strong { (loaded.summary.current_step) } } "." }
        @if !loaded.summary.stuck_reason.is_empty() {
            p class="callout" { "Stuck " (loaded.summary.stuck_reason) ": " (loaded.summary.stuck_message) }
        }
        p { (action.explanation()) }
        @if !action.applies(loaded) {
            p class="error" role="alert" { "This action does not apply to the workflow as it is now; the server will refuse it." }
        }
        @if let Some(error) = error { p class="error" role="alert" data-testid="error" { (error) } }
        form class="action" method="post" action=(url(id, action.name())) {
            input type="hidden" name="csrf" value=(viewer.csrf());
            @match action {
                Action::Cancel | Action::Terminate | Action::Pause => {
                    label for="reason" { "Reason (kept in the history)" }
                    input id="reason" name="reason" type="text" required value=(filled.reason) autofocus;
                }
                Action::Resume => {
                    label for="reason" { "Reason (optional)" }
                    input id="reason" name="reason" type="text" value=(filled.reason) autofocus;
                }
                Action::Signal => {
                    label for="name" { "Signal name" }
                    input id="name" name="name" type="text" required value=(filled.name) autofocus;
                    label for="input" { "Payload (JSON, optional)" }
                    textarea id="input" name="input" spellcheck="false" { (filled.input) }
                }
                Action::Resolve => {
                    label for="step" { "Step" }
                    @if steps.is_empty() {
                        input id="step" name="step" type="text" required value=(chosen_step);
                    } @else {
                        select id="step" name="step" required {
                            @for step in &steps { option value=(step) selected[step == chosen_step] { (step) } }
                        }
                    }
                    fieldset {
                        legend { "What the attempts did" }
                        label { input type="radio" name="outcome" value="succeeded" required checked[filled.outcome == "succeeded"]; " succeeded: the effect took place" }
                        label { input type="radio" name="outcome" value="failed" checked[filled.outcome == "failed"]; " failed: nothing was taken" }
                    }
                    label for="reason" { "Reason, with the evidence (a gateway reference, a ticket)" }
                    input id="reason" name="reason" type="text" required value=(filled.reason);
                    label for="result" { "The step's result when it succeeded (JSON, optional)" }
                    textarea id="result" name="result" spellcheck="false" { (filled.result) }
                }
                Action::Retry | Action::Redrive => {}
            }
            div class="actions" {
                button type="submit" class={ @if action.dangerous() { "danger" } @else { "primary" } } { (submit) }
                a class="button" href=(format::workflow_url(id)) { "Back" }
            }
        }
    }
}

fn confirm_page(
    viewer: &Viewer,
    loaded: &Loaded,
    action: Action,
    filled: &ActionForm,
    error: Option<&str>,
) -> Response {
    let (title, _) = action.confirm();
    layout::page(viewer, Page::Workflows, title, form(viewer, loaded, action, filled, error))
}

pub(super) async fn confirm(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    let (loaded, action) = target(&console, &viewer, &id, &action).await?;
    Ok(confirm_page(&viewer, &loaded, action, &ActionForm::default(), None))
}

pub(super) async fn act(
    axum::Extension(console): axum::Extension<Console>,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    Form(filled): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    viewer.must_act()?;
    viewer.check_csrf(&filled.csrf)?;
    let (loaded, action) = target(&console, &viewer, &id, &action).await?;
    match perform(&console, &viewer, &id, action, &filled).await {
        Ok(landing) => {
            tracing::info!(workflow_id = %id, action = action.name(), viewer = %viewer.principal.name, "console action");
            Ok(Redirect::to(&format!("{}?done={}", format::workflow_url(&landing), action.name())).into_response())
        }
        Err(e @ (ConsoleError::BadRequest(_) | ConsoleError::Refused(_))) => {
            let status = e.status();
            let mut page = confirm_page(&viewer, &loaded, action, &filled, Some(&e.to_string()));
            *page.status_mut() = status;
            Ok(page)
        }
        Err(e) => Err(e),
    }
}

/// Does the action; returns the workflow to show next (a redrive's new run).
async fn perform(
    console: &Console,
    viewer: &Viewer,
    id: &str,
    action: Action,
    form: &ActionForm,
) -> Result<String, ConsoleError> {
    let runtime = console.runtime();
    let identity = viewer.identity();
    let reason = form.reason.trim().to_owned();
    match action {
        Action::Cancel => operator::cancel(runtime, id, reason, identity).await?,
        Action::Terminate => operator::terminate(runtime, id, reason, identity).await?,
        Action::Pause => {
            operator::pause(runtime, id, reason, identity).await?;
        }
        Action::Resume => {
            operator::resume(runtime, id, reason, identity).await?;
        }
        Action::Signal => {
            operator::signal(runtime, id, form.name.trim().to_owned(), form.input.trim().as_bytes(), identity).await?;
        }
        Action::Retry => {
            operator::signal(runtime, id, crate::engine::RETRY_SIGNAL.to_owned(), b"", identity).await?;
        }
        Action::Resolve => {
            let outcome = match form.outcome.as_str() {
                "succeeded" => ResolvedOutcome::Succeeded,
                "failed" => ResolvedOutcome::Failed,
                _ => return Err(ConsoleError::BadRequest("choose what the attempts did: succeeded or failed".into())),
            };
            let resolve = operator::Resolve {
                step: form.step.trim().to_owned(),
                outcome,
                result: form.result.trim().as_bytes().to_vec(),
                reason,
                identity: "console".into(),
            };
            operator::resolve(runtime, &viewer.principal, id, resolve).await?;
        }
        Action::Redrive => return Ok(operator::redrive(runtime, id).await?.workflow_id),
    }
    Ok(id.to_owned())
}
