//! `sagaflow workflow …`: the operator's view of workflows.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, AwaitWorkflowResponse, CancelWorkflowRequest, DeleteWorkflowRequest, DescribeWorkflowRequest,
    ExecuteWorkflowRequest, GetWorkflowHistoryRequest, ListWorkflowTypesRequest, ListWorkflowsRequest,
    PauseWorkflowRequest, RedriveWorkflowRequest, ResolveActivityRequest, ResolvedOutcome, ResumeWorkflowRequest,
    SignalWorkflowRequest, StartWorkflowRequest, TerminateWorkflowRequest, WorkflowStatus, WorkflowSummary,
};

use super::Output;
pub use super::connection::{Conn, connect_channel};
use super::render;
use sagaflow_server::engine::StuckReason;

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Start a workflow (idempotent by --request-id).
    Start {
        /// The workflow type, such as `checkout` (see `workflow types`).
        workflow_type: String,
        /// Idempotency key: the same id and input return the same workflow.
        #[arg(long)]
        request_id: String,
        /// The input, a JSON document.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Choose the workflow id instead of a generated one.
        #[arg(long)]
        workflow_id: Option<String>,
        /// A label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Run this version of the definition (see `definition list`); by default the latest
        /// version that is not deprecated.
        #[arg(long, value_name = "N")]
        definition_version: Option<u32>,
        /// Also wait for the workflow to end (60s, or the given duration such as 5m) and print
        /// how it ended, as `await` does; exits 3 unless it COMPLETED, 4 if it still runs.
        #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "60s", value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// List workflows, newest first; filters combine. The self-healing jobs' workflows are left
    /// out unless --all or --type job.*.
    List {
        /// Only this status (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED, CANCELLED, TERMINATED); repeatable.
        #[arg(long = "status", value_parser = parse_status)]
        statuses: Vec<WorkflowStatus>,
        /// Only this workflow type, or the types under a prefix (`job.*`).
        #[arg(long = "type")]
        workflow_type: Option<String>,
        /// Only workflows with this label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only workflows flagged stuck.
        #[arg(long)]
        stuck: bool,
        /// Only workflows an operator paused.
        #[arg(long)]
        paused: bool,
        /// Only workflows started within this long, such as 1h or 30m.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Also list the self-healing jobs' workflows (`job.*`).
        #[arg(long)]
        all: bool,
        /// Rows to show: the newest this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a workflow: status, current step, pending activities, results.
    Describe {
        /// The workflow's id, as `start` or `list` printed it.
        workflow_id: String,
    },
    /// Print a workflow's history as a timeline.
    History {
        /// The workflow's id.
        workflow_id: String,
        /// Keep printing new events until the workflow ends.
        #[arg(long)]
        follow: bool,
        /// Print whole payloads (inputs, results) instead of their first 120 characters.
        #[arg(long)]
        full: bool,
        /// Read a deleted workflow's history from the server's archive (`server --archive-dir`):
        /// its most recently archived copy, printed as a live history is. Fails with
        /// FAILED_PRECONDITION if the server archives nothing, NOT_FOUND if it never archived ID.
        #[arg(long, conflicts_with = "follow")]
        archived: bool,
    },
    /// Wait until a workflow ends (or the timeout passes) and print it; exits 3 unless it COMPLETED.
    Await {
        /// The workflow's id.
        workflow_id: String,
        /// How long to wait, such as 30s or 5m; past it the command exits 4 and the workflow runs on.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Cancel: run the compensations of the completed steps. Refused after the pivot.
    Cancel {
        /// The workflow's id.
        workflow_id: String,
        /// Why, for the history and whoever reads it later.
        #[arg(long)]
        reason: String,
    },
    /// Pause: schedule nothing new (no attempt, retry, timer or compensation) until resumed;
    /// attempts already scheduled finish. For a flow whose downstream is broken. Operators only.
    Pause {
        /// The workflow's id.
        workflow_id: String,
        /// Why, shown by `describe` and `list` while it is paused, and kept in the history.
        #[arg(long)]
        reason: String,
    },
    /// Resume a paused workflow: it decides again from where it is. Operators only.
    Resume {
        /// The workflow's id.
        workflow_id: String,
        /// Why, for the history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete a closed workflow now: its history, its index row and its request id (a start
    /// reusing that request id then starts a new workflow). Refused for an open workflow.
    /// Operators only.
    Delete {
        /// The workflow's id.
        workflow_id: String,
    },
    /// Run a FAILED or COMPENSATED workflow again once its cause is fixed, as a new run
    /// (`ID.redrive-N`, labelled `sagaflow.redrive_of=ID`) on the same definition version and
    /// input. The steps that stand (completed or skipped, never undone) are carried over; the
    /// rest run again with fresh idempotency keys. Redriving the same run twice answers with the
    /// same new run. Operators only.
    Redrive {
        /// The ended workflow's id.
        workflow_id: String,
    },
    /// Terminate: stop at once, with no compensation.
    Terminate {
        /// The workflow's id.
        workflow_id: String,
        /// Why, for the history and whoever settles the effects by hand.
        #[arg(long)]
        reason: String,
    },
    /// Send a signal. `sagaflow.retry` gives a blocked step a fresh retry budget.
    Signal {
        /// The workflow's id.
        workflow_id: String,
        /// The signal's name: one a step waits for, or `sagaflow.retry`.
        name: String,
        /// The signal's payload, a JSON document.
        #[arg(long)]
        input: Option<String>,
    },
    /// Record what a step's attempts did when no worker can tell (a pivot
    /// flagged PIVOT_OUTCOME_UNKNOWN, say): an audited decision, kept in the
    /// history, that the saga then acts on. Operators only.
    Resolve {
        workflow_id: String,
        /// The step, as the definition names it (`capture`).
        #[arg(long)]
        step: String,
        /// `succeeded`: the effect took place (the saga moves on); `failed`:
        /// nothing was taken (before or at the pivot, the saga compensates).
        #[arg(long, value_parser = parse_outcome)]
        outcome: ResolvedOutcome,
        /// Why, with the evidence (a gateway reference, a ticket); required.
        #[arg(long)]
        reason: String,
        /// The step's result for `succeeded`, a JSON document (default {}).
        #[arg(long)]
        result: Option<String>,
    },
    /// List the registered workflow types and their versions.
    Types,
}

fn parse_outcome(text: &str) -> Result<ResolvedOutcome, String> {
    match text {
        "succeeded" => Ok(ResolvedOutcome::Succeeded),
        "failed" => Ok(ResolvedOutcome::Failed),
        _ => Err(format!("unknown outcome {text:?}; one of succeeded, failed")),
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_status(text: &str) -> Result<WorkflowStatus, String> {
    let upper = text.to_ascii_uppercase();
    WorkflowStatus::from_str_name(&format!("WORKFLOW_STATUS_{upper}"))
        .filter(|s| *s != WorkflowStatus::Unspecified)
        .ok_or_else(|| format!("unknown status {text:?}; one of RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED, CANCELLED, TERMINATED"))
}

pub async fn connect(server: &str) -> anyhow::Result<WorkflowServiceClient<Conn>> {
    Ok(WorkflowServiceClient::new(connect_channel(server).await?))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// How long one await call may last while a command waits: short enough
/// that a stuck flag raised meanwhile is reported within it.
const WAIT_SLICE: Duration = Duration::from_secs(2);

/// One await call of at most `slice` (0 would mean the server's longest wait).
async fn await_once(
    client: &mut WorkflowServiceClient<Conn>,
    workflow_id: &str,
    slice: Duration,
) -> anyhow::Result<AwaitWorkflowResponse> {
    let request = AwaitWorkflowRequest { workflow_id: workflow_id.to_owned(), timeout_ms: millis(slice).max(1) };
    Ok(client.await_workflow(request).await.map_err(status_error)?.into_inner())
}

/// Waits until `workflow_id` ends or `timeout` passes, starting from `first`
/// when the caller already has an answer. Each new stuck flag (a step no
/// worker serves, a spent retry budget) is told on stderr as it is raised,
/// so that a wait is never silent about why nothing moves.
pub async fn wait_for_end(
    client: &mut WorkflowServiceClient<Conn>,
    workflow_id: &str,
    timeout: Duration,
    first: Option<AwaitWorkflowResponse>,
    output: Output,
) -> anyhow::Result<AwaitWorkflowResponse> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut response = match first {
        Some(response) => response,
        None => await_once(client, workflow_id, timeout.min(WAIT_SLICE)).await?,
    };
    let mut told = String::new();
    loop {
        let summary = response.summary.clone().unwrap_or_default();
        if !summary.stuck_reason.is_empty() && summary.stuck_reason != told {
            told.clone_from(&summary.stuck_reason);
            match output {
                Output::Json => eprintln!(
                    "{}",
                    serde_json::json!({"waiting": {"workflow_id": workflow_id, "stuck": {"reason": summary.stuck_reason, "message": summary.stuck_message}}})
                ),
                Output::Text => {
                    eprintln!("waiting: {workflow_id} is stuck ({}): {}", summary.stuck_reason, summary.stuck_message)
                }
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Waiting longer for a saga that only an operator moves on tells nothing.
        let operator_needed = StuckReason::from_name(&summary.stuck_reason).is_some_and(StuckReason::needs_an_operator);
        if response.terminal || left.is_zero() || operator_needed {
            return Ok(response);
        }
        response = await_once(client, workflow_id, left.min(WAIT_SLICE)).await?;
    }
}

/// The failure of a wait that did not see the workflow complete: still
/// running after `timeout`, or ended otherwise (with the reason it gives).
/// `what` names the workflow for the reader ("checkout chk-…").
pub fn outcome_failure(response: &AwaitWorkflowResponse, what: &str, timeout: Duration) -> Option<super::Failure> {
    let summary = response.summary.clone().unwrap_or_default();
    if !response.terminal {
        if StuckReason::from_name(&summary.stuck_reason).is_some_and(StuckReason::needs_an_operator) {
            return Some(super::Failure::StillRunning(format!(
                "{what} is open and flagged stuck: {}: {}",
                summary.stuck_reason, summary.stuck_message
            )));
        }
        let stuck =
            if summary.stuck_message.is_empty() { String::new() } else { format!(": {}", summary.stuck_message) };
        return Some(super::Failure::StillRunning(format!(
            "{what} is still {} after {}{stuck}",
            render::status_label(&summary),
            humantime::format_duration(timeout)
        )));
    }
    let status = WorkflowStatus::try_from(summary.status).unwrap_or_default();
    if status == WorkflowStatus::Completed {
        return None;
    }
    let reason = if response.reason.is_empty() { String::new() } else { format!(": {}", response.reason) };
    Some(super::Failure::NotCompleted(format!(
        "{what} ended {}, not COMPLETED{reason}",
        sagaflow_proto::status_name(status)
    )))
}

/// Prints how an awaited workflow ended (and, after a start, whether this
/// request id had started it already). Anything but `COMPLETED` fails the
/// command, so that a script can trust the exit code.
fn print_outcome(
    response: AwaitWorkflowResponse,
    already_started: Option<bool>,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let summary = response.summary.clone().unwrap_or_default();
    match output {
        Output::Json => {
            let mut value = render::summary_json(&summary);
            if let Some(already_started) = already_started {
                value["already_started"] = already_started.into();
            }
            value["terminal"] = response.terminal.into();
            value["result"] = render::json_text(&response.result);
            value["reason"] = response.reason.clone().into();
            outln!("{value}");
        }
        Output::Text if response.reason.is_empty() => {
            outln!("{} {}", summary.workflow_id, render::status_label(&summary))
        }
        Output::Text => outln!("{} {}: {}", summary.workflow_id, render::status_label(&summary), response.reason),
    }
    match outcome_failure(&response, &summary.workflow_id, timeout) {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// A gRPC status as one readable line.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    super::Failure::Status { code: render::code_name(status.code()), message: status.message().to_owned() }.into()
}

pub async fn run(command: WorkflowCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let mut client = connect(server).await?;
    match command {
        WorkflowCommand::Start { workflow_type, request_id, input, workflow_id, labels, definition_version, wait } => {
            serde_json::from_str::<serde_json::Value>(&input).context("--input is not valid JSON")?;
            let request = StartWorkflowRequest {
                workflow_type,
                request_id,
                input: input.into_bytes(),
                workflow_id: workflow_id.unwrap_or_default(),
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
                definition_version,
            };
            if let Some(timeout) = wait {
                let started = tokio::time::Instant::now();
                let request =
                    ExecuteWorkflowRequest { start: Some(request), timeout_ms: millis(timeout.min(WAIT_SLICE)).max(1) };
                let response = client.execute_workflow(request).await.map_err(status_error)?.into_inner();
                let first = response.outcome.unwrap_or_default();
                let workflow_id = first.summary.as_ref().map(|s| s.workflow_id.clone()).unwrap_or_default();
                let left = timeout.saturating_sub(started.elapsed());
                let outcome = wait_for_end(&mut client, &workflow_id, left, Some(first), output).await?;
                return print_outcome(outcome, Some(response.already_started), timeout, output);
            }
            let response = client.start_workflow(request).await.map_err(status_error)?.into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({"workflow_id": response.workflow_id, "already_started": response.already_started})
                ),
                Output::Text if response.already_started => {
                    outln!("{} (already started by this request id)", response.workflow_id)
                }
                Output::Text => outln!("{}", response.workflow_id),
            }
        }
        WorkflowCommand::List { statuses, workflow_type, labels, stuck, paused, since, all, limit } => {
            let filter = ListFilter { statuses, workflow_type, labels, stuck, paused, since, all };
            let listed = list(&mut client, &filter, limit as usize).await?;
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({
                        "workflows": listed.rows.iter().map(|(summary, reason)| {
                            let mut value = render::summary_json(summary);
                            value["reason"] = reason.clone().into();
                            value
                        }).collect::<Vec<_>>(),
                        "matched": listed.matched,
                        "truncated_scan": listed.truncated_scan,
                    })
                ),
                Output::Text => {
                    out!("{}", render::list_table(&listed.rows));
                    if listed.matched > listed.rows.len() {
                        outln!(
                            "the newest {} of {}; narrow with --since, --status or --type, or raise --limit",
                            listed.rows.len(),
                            listed.matched
                        );
                    }
                    if listed.truncated_scan {
                        outln!("(only the first {MAX_LISTED} workflows by id were read; narrow the filters)");
                    }
                }
            }
        }
        WorkflowCommand::Describe { workflow_id } => {
            let described = client
                .describe_workflow(DescribeWorkflowRequest { workflow_id: workflow_id.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            let summary = described.summary.clone().unwrap_or_default();
            // Once compensating or closed, the status itself tells of the cancel.
            let running = WorkflowStatus::try_from(summary.status) == Ok(WorkflowStatus::Running);
            let cancel = if running { cancel_requested(&mut client, &workflow_id).await? } else { None };
            match output {
                Output::Json => {
                    let mut value = render::describe_json(&described);
                    value["cancel_requested"] = cancel.as_ref().map_or(
                        serde_json::Value::Null,
                        |c| serde_json::json!({"reason": c.reason, "by": c.identity, "at": render::timestamp(c.at_ms)}),
                    );
                    outln!("{value}");
                }
                Output::Text => {
                    let order = step_order(&mut client, &summary.workflow_type, summary.definition_version).await;
                    out!("{}", render::describe_text(&described, &order, cancel.as_ref()));
                }
            }
        }
        WorkflowCommand::History { workflow_id, follow, full, archived } => {
            history(&mut client, workflow_id, HistoryRead { follow, archived }, full, output).await?;
        }
        WorkflowCommand::Await { workflow_id, timeout } => {
            let response = wait_for_end(&mut client, &workflow_id, timeout, None, output).await?;
            print_outcome(response, None, timeout, output)?;
        }
        WorkflowCommand::Cancel { workflow_id, reason } => {
            client
                .cancel_workflow(CancelWorkflowRequest {
                    workflow_id: workflow_id.clone(),
                    reason,
                    identity: identity(),
                })
                .await
                .map_err(status_error)?;
            let summary = client
                .describe_workflow(DescribeWorkflowRequest { workflow_id: workflow_id.clone() })
                .await
                .map_err(status_error)?
                .into_inner()
                .summary
                .unwrap_or_default();
            if summary.status == WorkflowStatus::Running as i32 {
                // A cancel waits for an attempt in flight, and for a pivot
                // whose outcome is unknown (ADR 0006).
                outln!(
                    "cancel of {workflow_id} recorded: it waits for step {} to answer, which finishes (or times out) \
                     first; if that is the pivot and it succeeds, the cancel is refused (CancelRefused in the \
                     history), otherwise the completed steps are compensated; `workflow describe` shows where it is",
                    summary.current_step
                );
            } else {
                outln!("cancel of {workflow_id} recorded: its completed steps are being compensated");
            }
        }
        WorkflowCommand::Delete { workflow_id } => {
            client
                .delete_workflow(DeleteWorkflowRequest { workflow_id: workflow_id.clone() })
                .await
                .map_err(status_error)?;
            match output {
                Output::Json => outln!("{}", serde_json::json!({"workflow_id": workflow_id, "deleted": true})),
                Output::Text => outln!("{workflow_id} deleted: its history, index row and request id are gone"),
            }
        }
        WorkflowCommand::Redrive { workflow_id } => {
            let redriven = client
                .redrive_workflow(RedriveWorkflowRequest { workflow_id: workflow_id.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({
                        "workflow_id": redriven.workflow_id,
                        "redrive_of": workflow_id,
                        "from_step": redriven.from_step,
                        "carried_steps": redriven.carried_steps,
                        "already_redriven": redriven.already_redriven,
                    })
                ),
                Output::Text => {
                    let verb = if redriven.already_redriven { "was already redriven as" } else { "redriven as" };
                    outln!("{workflow_id} {verb} {}", redriven.workflow_id);
                    if redriven.from_step.is_empty() {
                        outln!("  every step stands; the new run only closes");
                    } else {
                        outln!("  runs again from step {}", redriven.from_step);
                    }
                    if !redriven.carried_steps.is_empty() {
                        outln!("  carried over: {}", redriven.carried_steps.join(" "));
                    }
                }
            }
        }
        WorkflowCommand::Pause { workflow_id, reason } => {
            let request = PauseWorkflowRequest { workflow_id: workflow_id.clone(), reason, identity: identity() };
            let changed = client.pause_workflow(request).await.map_err(status_error)?.into_inner().changed;
            print_pause(&workflow_id, true, changed, output)?;
        }
        WorkflowCommand::Resume { workflow_id, reason } => {
            let request = ResumeWorkflowRequest { workflow_id: workflow_id.clone(), reason, identity: identity() };
            let changed = client.resume_workflow(request).await.map_err(status_error)?.into_inner().changed;
            print_pause(&workflow_id, false, changed, output)?;
        }
        WorkflowCommand::Resolve { workflow_id, step, outcome, reason, result } => {
            let result = result.unwrap_or_default();
            if !result.is_empty() {
                serde_json::from_str::<serde_json::Value>(&result).context("--result is not valid JSON")?;
            }
            let response = client
                .resolve_activity(ResolveActivityRequest {
                    workflow_id: workflow_id.clone(),
                    step: step.clone(),
                    outcome: outcome as i32,
                    reason,
                    result: result.into_bytes(),
                    identity: identity(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let what = if response.compensation { format!("the compensation of {step}") } else { step };
            let outcome = if outcome == ResolvedOutcome::Succeeded { "succeeded" } else { "failed" };
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({"workflow_id": workflow_id, "seq": response.seq, "compensation": response.compensation, "outcome": outcome})
                ),
                Output::Text => {
                    outln!("{what} of {workflow_id} resolved as {outcome}: recorded as event #{}", response.seq)
                }
            }
        }
        WorkflowCommand::Terminate { workflow_id, reason } => {
            client
                .terminate_workflow(TerminateWorkflowRequest {
                    workflow_id: workflow_id.clone(),
                    reason,
                    identity: identity(),
                })
                .await
                .map_err(status_error)?;
            outln!("terminated {workflow_id} (nothing was compensated)");
        }
        WorkflowCommand::Signal { workflow_id, name, input } => {
            let input = input.unwrap_or_default();
            if !input.is_empty() {
                serde_json::from_str::<serde_json::Value>(&input).context("--input is not valid JSON")?;
            }
            let response = client
                .signal_workflow(SignalWorkflowRequest {
                    workflow_id: workflow_id.clone(),
                    name: name.clone(),
                    input: input.into_bytes(),
                    identity: identity(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            outln!("signal {name} recorded as event #{} of {workflow_id}", response.seq);
        }
        WorkflowCommand::Types => {
            let types =
                client.list_workflow_types(ListWorkflowTypesRequest {}).await.map_err(status_error)?.into_inner().types;
            match output {
                Output::Json => {
                    let items: Vec<serde_json::Value> = types
                        .iter()
                        .map(|t| serde_json::json!({"name": t.name, "version": t.version, "definition": render::json_text(&t.definition)}))
                        .collect();
                    outln!("{}", serde_json::Value::Array(items));
                }
                Output::Text => out!("{}", render::types_table(&types)),
            }
        }
    }
    Ok(())
}

/// At most this many summaries are read to sort a listing: the server
/// lists by id, so "newest first" needs every match in hand.
const MAX_LISTED: usize = 20_000;

/// What `workflow list` asks for.
struct ListFilter {
    statuses: Vec<WorkflowStatus>,
    workflow_type: Option<String>,
    labels: Vec<(String, String)>,
    stuck: bool,
    paused: bool,
    since: Option<Duration>,
    all: bool,
}

impl ListFilter {
    /// What the server cannot filter: a type prefix, the age, the jobs.
    fn keeps(&self, summary: &WorkflowSummary, since_ms: i64) -> bool {
        let type_ok = match self.workflow_type.as_deref().and_then(|t| t.strip_suffix('*')) {
            Some(prefix) => summary.workflow_type.starts_with(prefix),
            // The jobs run every few minutes and would bury the user's own workflows.
            None => self.all || self.workflow_type.is_some() || !summary.workflow_type.starts_with("job."),
        };
        type_ok && summary.started_ms >= since_ms
    }
}

struct Listed {
    /// Newest first, each with why it ended when it did not complete.
    rows: Vec<(WorkflowSummary, String)>,
    matched: usize,
    truncated_scan: bool,
}

async fn list(client: &mut WorkflowServiceClient<Conn>, filter: &ListFilter, limit: usize) -> anyhow::Result<Listed> {
    let exact_type = filter.workflow_type.clone().filter(|t| !t.ends_with('*')).unwrap_or_default();
    let since_ms = filter.since.map_or(0, |since| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(now.saturating_sub(since).as_millis()).unwrap_or(i64::MAX)
    });
    let mut matches = Vec::new();
    let mut page_token = String::new();
    let mut read = 0;
    loop {
        let request = ListWorkflowsRequest {
            statuses: filter.statuses.iter().map(|s| *s as i32).collect(),
            workflow_type: exact_type.clone(),
            labels: filter.labels.iter().cloned().collect(),
            stuck_only: filter.stuck,
            paused_only: filter.paused,
            page_size: 1000,
            page_token: page_token.clone(),
        };
        let page = client.list_workflows(request).await.map_err(status_error)?.into_inner();
        read += page.workflows.len();
        matches.extend(page.workflows.into_iter().filter(|s| filter.keeps(s, since_ms)));
        if page.next_page_token.is_empty() || read >= MAX_LISTED {
            let truncated_scan = !page.next_page_token.is_empty();
            matches.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then_with(|| a.workflow_id.cmp(&b.workflow_id)));
            let matched = matches.len();
            matches.truncate(limit);
            let mut rows = Vec::with_capacity(matches.len());
            for summary in matches {
                let reason = ending_reason(client, &summary).await;
                rows.push((summary, reason));
            }
            return Ok(Listed { rows, matched, truncated_scan });
        }
        page_token = page.next_page_token;
    }
}

/// Why a closed workflow did not complete (the summary does not carry it);
/// empty for one that runs or completed, or when the server does not say.
async fn ending_reason(client: &mut WorkflowServiceClient<Conn>, summary: &WorkflowSummary) -> String {
    let status = WorkflowStatus::try_from(summary.status).unwrap_or_default();
    if summary.closed_ms <= 0 || status == WorkflowStatus::Completed {
        return String::new();
    }
    let request = DescribeWorkflowRequest { workflow_id: summary.workflow_id.clone() };
    client.describe_workflow(request).await.map(|d| d.into_inner().reason).unwrap_or_default()
}

/// A cancel that was recorded while the workflow still runs (it waits for
/// the running step's outcome), read from the history, where it is
/// recorded the moment it is accepted.
async fn cancel_requested(
    client: &mut WorkflowServiceClient<Conn>,
    workflow_id: &str,
) -> anyhow::Result<Option<render::CancelRequest>> {
    use sagaflow_proto::v1::history_event::Attributes;
    let mut from_seq = 1;
    loop {
        let request = GetWorkflowHistoryRequest {
            workflow_id: workflow_id.to_owned(),
            from_seq,
            page_size: 1000,
            ..Default::default()
        };
        let page = client.get_workflow_history(request).await.map_err(status_error)?.into_inner();
        for event in &page.events {
            if let Some(Attributes::CancelRequested(c)) = &event.attributes {
                return Ok(Some(render::CancelRequest {
                    reason: c.reason.clone(),
                    identity: c.identity.clone(),
                    at_ms: event.time_ms,
                }));
            }
        }
        if page.events.len() < 1000 {
            return Ok(None);
        }
        from_seq = page.next_seq;
    }
}

/// The steps of a workflow type's version, in order; empty when the server
/// does not say (the results then read alphabetically).
async fn step_order(client: &mut WorkflowServiceClient<Conn>, workflow_type: &str, version: u32) -> Vec<String> {
    let Ok(types) = client.list_workflow_types(ListWorkflowTypesRequest {}).await else { return Vec::new() };
    types
        .into_inner()
        .types
        .iter()
        .find(|t| t.name == workflow_type && t.version == version)
        .map(|t| render::step_names(&t.definition))
        .unwrap_or_default()
}

/// What `workflow pause` or `resume` did: `paused` is the state asked for.
fn print_pause(workflow_id: &str, paused: bool, changed: bool, output: Output) -> anyhow::Result<()> {
    match (output, paused, changed) {
        (Output::Json, ..) => {
            outln!("{}", serde_json::json!({"workflow_id": workflow_id, "paused": paused, "changed": changed}));
        }
        (Output::Text, true, true) => outln!(
            "{workflow_id} paused: nothing new is scheduled; attempts already running finish. \
             `sagaflow workflow resume {workflow_id}` lets it go on"
        ),
        (Output::Text, true, false) => outln!("{workflow_id} was already paused; nothing changed"),
        (Output::Text, false, true) => outln!("{workflow_id} resumed"),
        (Output::Text, false, false) => outln!("{workflow_id} was not paused; nothing changed"),
    }
    Ok(())
}

pub fn identity() -> String {
    std::env::var("USER").map(|u| format!("cli:{u}")).unwrap_or_else(|_| "cli".into())
}

/// Which history `workflow history` reads, and how.
#[derive(Debug, Clone, Copy)]
struct HistoryRead {
    /// Wait for new events until the workflow ends.
    follow: bool,
    /// From the server's archive, not the live store.
    archived: bool,
}

async fn history(
    client: &mut WorkflowServiceClient<Conn>,
    workflow_id: String,
    read: HistoryRead,
    full: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut timeline = render::Timeline::new(full);
    let mut from_seq = 1;
    // Each archived page is a search of the archive: take the largest pages the server gives.
    let page_size = if read.archived { 10_000 } else { 1000 };
    loop {
        let wait_ms = if read.follow && from_seq > 1 { 30_000 } else { 0 };
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.clone(),
                from_seq,
                page_size,
                wait_ms,
                archived: read.archived,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for event in &page.events {
            match output {
                Output::Json => outln!("{}", render::event_json(event)),
                Output::Text => outln!("{}", timeline.line(event)),
            }
        }
        from_seq = page.next_seq;
        let more_pages = page.events.len() == page_size as usize;
        if page.terminal || (!read.follow && !more_pages) {
            return Ok(());
        }
    }
}
