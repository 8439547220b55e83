//! `sagaflow jobs run NAME`: run one self-healing job now, as its workflow
//! on the server, and print what it found (ADR 0009).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, StartWorkflowRequest, WorkflowStatus};
use sagaflow_server::jobs::JobInput;
use sagaflow_server::workflows::jobs;
use serde_json::{Map, Value, json};

use super::Output;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Run one job now and print what it did. Exits non-zero when it finds a
    /// violation or the run fails.
    Run {
        /// The job: reconcile-payments-vs-orders, release-expired-inventory,
        /// detect-stuck-sagas, replay-failed-events or check-invariants.
        name: String,
        /// A capture younger than this may still be on its way to an order: not yet a mismatch.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// How long to wait for the job to finish.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// A paged job (reconcile-payments-vs-orders) reads at most this many
        /// payment intents a page; by default the service's own page size.
        #[arg(long)]
        page_size: Option<usize>,
    },
    /// List the jobs.
    List,
}

/// What one run found, ready to print.
#[derive(Debug)]
pub struct JobReport {
    pub job: String,
    pub workflow_id: String,
    /// Each step's result; the captures snapshot is summarised as its size.
    pub steps: Map<String, Value>,
    pub violations: Vec<Value>,
}

impl JobReport {
    pub fn to_json(&self) -> Value {
        let mut report = json!({
            "job": self.job,
            "workflow_id": self.workflow_id,
            "ok": self.violations.is_empty(),
            "violations": self.violations,
            "steps": self.steps,
        });
        // A one-step job's figures also sit at the top (`replayed`, `released`…).
        let results: Vec<&Value> = self.steps.values().collect();
        if let (Some(object), [only]) = (report.as_object_mut(), results.as_slice())
            && let Some(fields) = only.as_object()
        {
            for (key, value) in fields {
                object.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        report
    }

    /// The run in one line, such as `check-invariants: 0 violations (…)`.
    pub fn headline(&self) -> String {
        let count = |step: &str, field: &str| self.steps.get(step).and_then(|s| s.get(field)).cloned();
        let n = |v: Option<Value>| v.map_or_else(|| "0".into(), |v| v.to_string());
        match self.job.as_str() {
            jobs::CHECK_INVARIANTS => format!(
                "check-invariants: {} violations ({} captures, {} orders and {} held reservations compared with the \
                 checkouts, {} within the grace period)",
                self.violations.len(),
                n(count("orders", "checked_captures")),
                n(count("orders", "checked_orders")),
                n(count("checkouts", "checked_reservations")),
                count("orders", "pending").and_then(|v| v.as_u64()).unwrap_or(0)
                    + count("checkouts", "pending").and_then(|v| v.as_u64()).unwrap_or(0),
            ),
            jobs::RECONCILE_PAYMENTS_VS_ORDERS => format!(
                "reconcile-payments-vs-orders: repaired {} refund records, {} mismatches left for an operator ({} within the grace period; {} captures and {} orders; pages read: {})",
                self.steps.get("orders").and_then(|s| s.get("repairs")).and_then(Value::as_array).map_or(0, Vec::len),
                self.violations.len(),
                n(count("orders", "pending")),
                n(count("orders", "checked_captures")),
                n(count("orders", "checked_orders")),
                count("next", "pages").map_or_else(|| "1".into(), |v| v.to_string()),
            ),
            jobs::RELEASE_EXPIRED_INVENTORY => {
                format!("release-expired-inventory: released {} expired reservations", n(count("release", "released")))
            }
            jobs::DETECT_STUCK_SAGAS => format!(
                "detect-stuck-sagas: flagged {} now; {} open sagas flagged stuck {}",
                n(count("detect", "flagged_now")),
                n(count("detect", "stuck")),
                count("detect", "stuck_by_reason").unwrap_or(Value::Null)
            ),
            jobs::REPLAY_FAILED_EVENTS => {
                let by = count("replay", "by_consumer")
                    .and_then(|b| b.as_object().cloned())
                    .map(|b| b.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", "))
                    .filter(|b| !b.is_empty())
                    .map(|b| format!(" ({b})"))
                    .unwrap_or_default();
                let mut line = format!(
                    "replay-failed-events: re-drove {} dead-lettered events{by}",
                    n(count("replay", "replayed"))
                );
                if let Some(skipped) = count("replay", "skipped").filter(|s| s.as_u64().unwrap_or(0) > 0) {
                    line.push_str(&format!("\nskipped {skipped} dead letters without an original subject"));
                }
                line
            }
            other => format!("{other}: done"),
        }
    }

    fn text(&self) -> String {
        let mut out = self.headline();
        for violation in &self.violations {
            let field = |k: &str| violation.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            out.push_str(&format!("\n  VIOLATION {} {}: {}", field("invariant"), field("subject"), field("detail")));
        }
        out.push_str(&format!("\n(workflow {})", self.workflow_id));
        out
    }
}

/// Starts job `name` on the server, waits for it and collects its findings.
///
/// # Errors
/// An unknown job, an unreachable server, a run that did not finish within
/// `timeout` or did not complete.
pub async fn run_job(server: &str, name: &str, input: &JobInput, timeout: Duration) -> anyhow::Result<JobReport> {
    if !jobs::NAMES.contains(&name) {
        bail!("unknown job {name:?}; known jobs: {}", jobs::NAMES.join(", "));
    }
    run_job_on(super::workflow::connect(server).await?, name, input, timeout).await
}

/// [`run_job`] through `client` (a chaos run's, with its operator token).
///
/// # Errors
/// As [`run_job`].
pub async fn run_job_on(
    mut client: WorkflowServiceClient<super::workflow::Conn>,
    name: &str,
    input: &JobInput,
    timeout: Duration,
) -> anyhow::Result<JobReport> {
    let request_id = format!("manual:{name}:{}", uuid::Uuid::new_v4());
    let started = client
        .start_workflow(StartWorkflowRequest {
            workflow_type: jobs::workflow_type(name),
            request_id,
            input: serde_json::to_vec(input)?,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot start job {name}"))?
        .into_inner();
    let workflow_id = started.workflow_id;
    let deadline = tokio::time::Instant::now() + timeout;
    // A paged job is a chain of runs, one per page: each names the next in
    // its `next` step, and the report adds them up.
    let mut steps = Map::new();
    let mut violations = Vec::new();
    let mut pages = 0_u64;
    let mut page_id = Some(workflow_id.clone());
    while let Some(id) = page_id.take() {
        let page = await_page(&mut client, name, &id, deadline, timeout).await?;
        pages += 1;
        for result in page.values() {
            if let Some(found) = result.get("violations").and_then(Value::as_array) {
                violations.extend(found.iter().cloned());
            }
        }
        page_id = page.get("next").and_then(|n| n.get("next_workflow_id")).and_then(Value::as_str).map(str::to_owned);
        for (step, result) in summarised(page) {
            match steps.get_mut(&step) {
                Some(total) => add_up(total, result),
                None => {
                    steps.insert(step, result);
                }
            }
        }
    }
    if let Some(next) = steps.get_mut("next") {
        *next = json!({ "pages": pages });
    }
    Ok(JobReport { job: name.to_owned(), workflow_id, steps, violations })
}

/// Waits for one run (a job, or a page of one) to end and returns its
/// steps' results.
async fn await_page(
    client: &mut WorkflowServiceClient<super::workflow::Conn>,
    name: &str,
    workflow_id: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<Map<String, Value>> {
    let done = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!(
                "job {name} did not finish within {}; see `sagaflow workflow describe {workflow_id}`",
                humantime::format_duration(timeout)
            );
        }
        let wait = left.min(Duration::from_secs(30));
        let answer = client
            .await_workflow(AwaitWorkflowRequest {
                workflow_id: workflow_id.to_owned(),
                timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(30_000),
            })
            .await
            .with_context(|| format!("waiting for job {name}"))?
            .into_inner();
        if answer.terminal {
            break answer;
        }
    };
    let status = done.summary.as_ref().map_or(0, |s| s.status);
    if status != WorkflowStatus::Completed as i32 {
        let status = WorkflowStatus::try_from(status).map_or("UNKNOWN", sagaflow_proto::status_name);
        bail!("job {name} ended {status}: {}; see `sagaflow workflow history {workflow_id}`", done.reason);
    }
    Ok(match serde_json::from_str::<Value>(&done.result) {
        Ok(Value::Object(steps)) => steps,
        _ => Map::new(),
    })
}

/// The steps' results with the snapshots, inputs of later steps, summarised
/// as their sizes.
fn summarised(mut steps: Map<String, Value>) -> Map<String, Value> {
    for (step, list) in [("captures", "captures"), ("reservations", "held")] {
        if let Some(snapshot) = steps.get_mut(step) {
            let count = snapshot.get(list).and_then(Value::as_array).map_or(0, Vec::len);
            *snapshot = json!({ list: count });
        }
    }
    steps
}

/// Adds one page's step result to the run's: counts are summed, lists
/// joined, anything else is the last page's.
fn add_up(total: &mut Value, page: Value) {
    let (Some(total), Value::Object(page)) = (total.as_object_mut(), page) else { return };
    for (field, value) in page {
        match (total.get_mut(&field), value) {
            (Some(Value::Number(sum)), Value::Number(n)) => {
                if let (Some(a), Some(b)) = (sum.as_u64(), n.as_u64()) {
                    *sum = a.saturating_add(b).into();
                }
            }
            (Some(Value::Array(all)), Value::Array(more)) => all.extend(more),
            (_, value) => {
                total.insert(field, value);
            }
        }
    }
}

pub async fn run(command: JobsCommand, server: &str, output: Output) -> anyhow::Result<()> {
    let (name, grace, timeout, page_size) = match command {
        JobsCommand::List => {
            match output {
                Output::Json => outln!("{}", json!(jobs::NAMES)),
                Output::Text => {
                    for name in jobs::NAMES {
                        outln!("{name}");
                    }
                }
            }
            return Ok(());
        }
        JobsCommand::Run { name, grace, timeout, page_size } => (name, grace, timeout, page_size),
    };
    let input = JobInput {
        grace_ms: Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
        page_size,
        ..JobInput::default()
    };
    let report = run_job(server, &name, &input, timeout).await?;
    print_report(&report, output)
}

/// Prints a run; a violation is a failure (non-zero exit).
pub fn print_report(report: &JobReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => outln!("{}", report.to_json()),
        Output::Text => outln!("{}", report.text()),
    }
    if !report.violations.is_empty() {
        bail!("{} found {} violations", report.job, report.violations.len());
    }
    Ok(())
}
