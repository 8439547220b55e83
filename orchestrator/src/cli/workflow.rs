//! `sagaflow workflow …`: the operator's view of workflows.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, AwaitWorkflowResponse, CancelWorkflowRequest, DescribeWorkflowRequest,
    ExecuteWorkflowRequest, GetWorkflowHistoryRequest, ListWorkflowTypesRequest, ListWorkflowsRequest,
    ResolveActivityRequest, ResolvedOutcome, SignalWorkflowRequest, StartWorkflowRequest, TerminateWorkflowRequest,
    WorkflowStatus,
};

use super::Output;
pub use super::connection::{Conn, connect_channel};
use super::render;

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
        /// Also wait up to this long (such as 30s) for the workflow to end, in
        /// the same call (ExecuteWorkflow), and print as `await` does.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// List workflows, newest id last; filters combine.
    List {
        /// Only this status (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED, CANCELLED, TERMINATED); repeatable.
        #[arg(long = "status", value_parser = parse_status)]
        statuses: Vec<WorkflowStatus>,
        /// Only this workflow type.
        #[arg(long = "type")]
        workflow_type: Option<String>,
        /// Only workflows with this label, KEY=VALUE; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only workflows flagged stuck.
        #[arg(long)]
        stuck: bool,
        /// Rows per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this page token (printed at the end of a page).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a workflow: status, current step, pending activities, results.
    Describe { workflow_id: String },
    /// Print a workflow's history as a timeline.
    History {
        workflow_id: String,
        /// Keep printing new events until the workflow ends.
        #[arg(long)]
        follow: bool,
    },
    /// Wait until a workflow ends (or the timeout passes) and print it.
    Await {
        workflow_id: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Cancel: run the compensations of the completed steps. Refused after the pivot.
    Cancel {
        workflow_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Terminate: stop at once, with no compensation.
    Terminate {
        workflow_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Send a signal. `sagaflow.retry` gives a blocked step a fresh retry budget.
    Signal {
        workflow_id: String,
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

/// Prints how an awaited workflow ended (and, after a start, whether this
/// request id had started it already); still running after `timeout` is an error.
fn print_outcome(
    response: AwaitWorkflowResponse,
    already_started: Option<bool>,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let summary = response.summary.unwrap_or_default();
    match output {
        Output::Json => {
            let mut value = render::summary_json(&summary);
            if let Some(already_started) = already_started {
                value["already_started"] = already_started.into();
            }
            value["terminal"] = response.terminal.into();
            value["result"] = render::json_text(&response.result);
            value["reason"] = response.reason.clone().into();
            println!("{value}");
        }
        Output::Text => println!("{} {}", summary.workflow_id, render::status_label(&summary)),
    }
    if !response.terminal {
        bail!(
            "{} is still {} after {}",
            summary.workflow_id,
            render::status_label(&summary),
            humantime::format_duration(timeout)
        );
    }
    Ok(())
}

/// A gRPC status as one readable line.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", render::code_name(status.code()), status.message())
}

pub async fn run(command: WorkflowCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let mut client = connect(server).await?;
    match command {
        WorkflowCommand::Start { workflow_type, request_id, input, workflow_id, labels, wait } => {
            serde_json::from_str::<serde_json::Value>(&input).context("--input is not valid JSON")?;
            let request = StartWorkflowRequest {
                workflow_type,
                request_id,
                input: input.into_bytes(),
                workflow_id: workflow_id.unwrap_or_default(),
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
            };
            if let Some(timeout) = wait {
                let request = ExecuteWorkflowRequest { start: Some(request), timeout_ms: millis(timeout) };
                let response = client.execute_workflow(request).await.map_err(status_error)?.into_inner();
                return print_outcome(
                    response.outcome.unwrap_or_default(),
                    Some(response.already_started),
                    timeout,
                    output,
                );
            }
            let response = client.start_workflow(request).await.map_err(status_error)?.into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"workflow_id": response.workflow_id, "already_started": response.already_started})
                ),
                Output::Text if response.already_started => {
                    println!("{} (already started by this request id)", response.workflow_id)
                }
                Output::Text => println!("{}", response.workflow_id),
            }
        }
        WorkflowCommand::List { statuses, workflow_type, labels, stuck, limit, page_token } => {
            let request = ListWorkflowsRequest {
                statuses: statuses.into_iter().map(|s| s as i32).collect(),
                workflow_type: workflow_type.unwrap_or_default(),
                labels: labels.into_iter().collect(),
                stuck_only: stuck,
                page_size: limit,
                page_token: page_token.unwrap_or_default(),
            };
            let page = client.list_workflows(request).await.map_err(status_error)?.into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "workflows": page.workflows.iter().map(render::summary_json).collect::<Vec<_>>(),
                        "next_page_token": page.next_page_token,
                    })
                ),
                Output::Text => print!("{}", render::list_table(&page.workflows, &page.next_page_token)),
            }
        }
        WorkflowCommand::Describe { workflow_id } => {
            let described = client
                .describe_workflow(DescribeWorkflowRequest { workflow_id })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => println!("{}", render::describe_json(&described)),
                Output::Text => print!("{}", render::describe_text(&described)),
            }
        }
        WorkflowCommand::History { workflow_id, follow } => history(&mut client, workflow_id, follow, output).await?,
        WorkflowCommand::Await { workflow_id, timeout } => {
            let response = client
                .await_workflow(AwaitWorkflowRequest { workflow_id, timeout_ms: millis(timeout) })
                .await
                .map_err(status_error)?
                .into_inner();
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
                println!(
                    "cancel requested for {workflow_id}: it waits for step {} to answer; if that is the pivot and it \
                     succeeds, the cancel is refused (CancelRefused in the history), otherwise the completed steps are \
                     compensated",
                    summary.current_step
                );
            } else {
                println!("cancel requested for {workflow_id}: its completed steps are being compensated");
            }
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
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"workflow_id": workflow_id, "seq": response.seq, "compensation": response.compensation, "outcome": outcome})
                ),
                Output::Text => {
                    println!("{what} of {workflow_id} resolved as {outcome}: recorded as event #{}", response.seq)
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
            println!("terminated {workflow_id} (nothing was compensated)");
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
            println!("signal {name} recorded as event #{} of {workflow_id}", response.seq);
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
                    println!("{}", serde_json::Value::Array(items));
                }
                Output::Text => print!("{}", render::types_table(&types)),
            }
        }
    }
    Ok(())
}

fn identity() -> String {
    std::env::var("USER").map(|u| format!("cli:{u}")).unwrap_or_else(|_| "cli".into())
}

async fn history(
    client: &mut WorkflowServiceClient<Conn>,
    workflow_id: String,
    follow: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut from_seq = 1;
    loop {
        let wait_ms = if follow && from_seq > 1 { 30_000 } else { 0 };
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.clone(),
                from_seq,
                page_size: 1000,
                wait_ms,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for event in &page.events {
            match output {
                Output::Json => println!("{}", render::event_json(event)),
                Output::Text => println!("{}", render::event_line(event)),
            }
        }
        from_seq = page.next_seq;
        let more_pages = page.events.len() == 1000;
        if page.terminal || (!follow && !more_pages) {
            return Ok(());
        }
    }
}
