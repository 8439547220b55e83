//! The self-healing jobs on the server side (ADR 0009): the scheduler that
//! starts a round of job workflows every interval, and the `jobs.*`
//! activities only the orchestrator can run (the stuck detector needs its
//! runtime, the replay its broker), plus those an [`Extension`] adds (the
//! shop's checkout audit). The jobs themselves are sagas in
//! `sagaflow_workflows::jobs`; the shop's workers serve their other steps.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use sagaflow_workflows::jobs;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::extension::Extension;
use crate::runtime::{Runtime, StartRequest, timers::now_ms};

/// How the server runs the jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsOptions {
    /// A round of every job this often; `None` runs them only on demand.
    pub interval: Option<Duration>,
    /// How long a capture may wait for its order before the jobs call it a
    /// mismatch.
    pub grace: Duration,
    /// The broker `replay-failed-events` re-drives dead letters on.
    pub nats_url: Option<String>,
}

impl Default for JobsOptions {
    fn default() -> Self {
        Self { interval: Some(Duration::from_secs(300)), grace: Duration::from_secs(60), nats_url: None }
    }
}

/// The input of a job workflow. Every field is optional so that a start
/// from any client (`sagaflow jobs run`, gRPC) is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// A paged job's cursor: this page starts after it (absent: the first page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// A paged job's page number, 0 for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// The workflow id of a paged run's first page, which names the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// How many records a page reads at most (absent: the service's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<usize>,
}

/// `jobs.next_page` input: the cursor the page's read returned, the page's
/// own input and workflow id.
#[derive(Debug, Deserialize)]
struct NextPageInput {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    input: JobInput,
    workflow_id: String,
}

/// Starts the next page of a paged job's run (its own workflow, of the same
/// type), when the page just read says more follow. The request id is
/// derived from the run and the page number, so a retried attempt finds the
/// page it started and starts nothing twice. Answers `{page, next_workflow_id}`,
/// the id null when this page was the last.
async fn next_page(
    runtime: &Runtime,
    workflow_type: &str,
    input: NextPageInput,
) -> Result<serde_json::Value, ActivityError> {
    let page = input.input.page.unwrap_or(0);
    let Some(after) = input.next else {
        return Ok(serde_json::json!({ "page": page, "next_workflow_id": null }));
    };
    let Some(name) =
        workflow_type.strip_prefix(jobs::PREFIX).filter(|_| runtime.registry().latest(workflow_type).is_some())
    else {
        return Err(ActivityError::non_retryable(
            ActivityError::INVALID_INPUT,
            format!("{workflow_type} is not a job, so it has no next page"),
        ));
    };
    let run = input.input.run.clone().unwrap_or(input.workflow_id);
    let next =
        JobInput { after: Some(after), page: Some(page.saturating_add(1)), run: Some(run.clone()), ..input.input };
    let request_id = format!("page:{run}:{}", page.saturating_add(1));
    match start(runtime, name, &request_id, &next).await {
        Ok((workflow_id, _)) => Ok(serde_json::json!({ "page": page, "next_workflow_id": workflow_id })),
        Err(e @ (crate::runtime::Error::InvalidArgument(_) | crate::runtime::Error::AlreadyExists(_))) => {
            Err(ActivityError::non_retryable("NextPageRefused", e.to_string()))
        }
        Err(e) => Err(ActivityError::retryable("NextPageNotStarted", e.to_string())),
    }
}

/// Starts a round of every job each `interval`, until `stopped` turns true.
///
/// The request id is `scheduled:NAME:SLOT`, with SLOT the number of whole
/// intervals since the epoch: a server restarted within an interval, or a
/// second server on the same store, starts no second run of the same slot.
/// A job none of whose first-step workers is connected is skipped, so that a
/// server without the shop (the bench) is not filled with runs that would
/// only be flagged stuck.
pub async fn schedule(runtime: Runtime, options: JobsOptions, mut stopped: watch::Receiver<bool>) {
    let Some(interval) = options.interval.filter(|i| !i.is_zero()) else { return };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        // A node of a cluster that serves no shard has nowhere to start a job;
        // the nodes that serve some start it (once, by its request id).
        if !runtime.serves_any_shard() {
            continue;
        }
        let slot = u64::try_from(now_ms()).unwrap_or(0) / u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let served = runtime.dispatch().workers_by_type();
        // Every registered job: the platform's and those an application brings.
        let names: Vec<String> = runtime
            .registry()
            .names()
            .into_iter()
            .filter_map(|t| t.strip_prefix(jobs::PREFIX).map(str::to_owned))
            .collect();
        for name in &names {
            let name = name.as_str();
            let workflow_type = jobs::workflow_type(name);
            let first = runtime
                .registry()
                .latest(&workflow_type)
                .and_then(|d| d.steps.first().and_then(|s| s.activity_type().map(str::to_owned)));
            if first.as_ref().is_some_and(|a| served.get(a).copied().unwrap_or(0) == 0) {
                tracing::debug!(job = name, "scheduled job skipped: no worker serves its first step");
                continue;
            }
            let input = JobInput { grace_ms: Some(millis(options.grace)), ..JobInput::default() };
            match start(&runtime, name, &format!("scheduled:{name}:{slot}"), &input).await {
                Ok((workflow_id, false)) => tracing::info!(job = name, %workflow_id, "scheduled job started"),
                Ok((_, true)) => {}
                Err(e) => tracing::warn!(job = name, error = %e, "could not start a scheduled job"),
            }
        }
    }
}

/// Starts job `name` with `request_id`; returns the workflow id and whether
/// it had already started.
///
/// # Errors
/// The runtime's refusal (an unknown job, a store failure).
pub async fn start(
    runtime: &Runtime,
    name: &str,
    request_id: &str,
    input: &JobInput,
) -> crate::runtime::Result<(String, bool)> {
    let input = serde_json::to_string(input).map_err(|e| crate::runtime::Error::InvalidArgument(e.to_string()))?;
    runtime
        .start_workflow(StartRequest {
            workflow_type: jobs::workflow_type(name),
            request_id: request_id.to_owned(),
            input,
            workflow_id: None,
            labels: HashMap::from([("job".to_owned(), name.to_owned())]),
            correlation_id: request_id.to_owned(),
            traceparent: String::new(),
            parent_workflow_id: String::new(),
            redrive: None,
        })
        .await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The name the in-process jobs worker goes by (worker id, token name).
pub const WORKER_NAME: &str = "orchestrator-jobs";
/// The task queues it serves.
pub const QUEUES: &str = "jobs.*";

/// A fresh random token for the in-process jobs worker: 244 random bits,
/// never written anywhere, valid for this process's life only.
pub fn internal_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The in-process worker that serves the `jobs.*` activities over
/// `channel` (an [in-process](crate::in_process) connection to the worker
/// service), like any other worker: the job workflows stay ordinary
/// histories, leased, retried and timed out the same way.
///
/// # Errors
/// An invalid worker setting (the token).
pub fn worker(
    runtime: Runtime,
    channel: tonic::transport::Channel,
    nats_url: Option<String>,
    token: Option<String>,
    extensions: &[Box<dyn Extension>],
) -> sagaflow_worker::Result<Worker> {
    let detect = runtime.clone();
    let pages = runtime.clone();
    let mut builder = Worker::builder(crate::in_process::URI).channel(channel);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    for extension in extensions {
        builder = extension.job_activities(builder, &runtime);
    }
    builder
        .worker_id(WORKER_NAME)
        .max_concurrency(4)
        .activity(jobs::DETECT_STUCK_ACTIVITY, move |_ctx: ActivityContext, _input: serde_json::Value| {
            let runtime = detect.clone();
            async move {
                let flagged_now = runtime.check_stuck().await;
                let stuck: BTreeMap<String, usize> = runtime.stuck_counts().into_iter().collect();
                Ok::<_, ActivityError>(serde_json::json!({
                    "flagged_now": flagged_now,
                    "stuck": stuck.values().sum::<usize>(),
                    "stuck_by_reason": stuck,
                }))
            }
        })
        .activity(jobs::NEXT_PAGE_ACTIVITY, move |ctx: ActivityContext, input: NextPageInput| {
            let runtime = pages.clone();
            async move { next_page(&runtime, ctx.workflow_type(), input).await }
        })
        .activity(jobs::REPLAY_FAILED_EVENTS_ACTIVITY, move |_ctx: ActivityContext, _input: serde_json::Value| {
            let url = nats_url.clone();
            async move {
                let Some(url) = url else {
                    return Ok(serde_json::json!({
                        "replayed": 0, "by_consumer": {}, "skipped": 0,
                        "note": "no broker: events stay in the outbox and nothing is dead-lettered"
                    }));
                };
                match crate::relay::replay_failed_events(&url).await {
                    Ok(report) => Ok(serde_json::json!({
                        "replayed": report.total(), "by_consumer": report.replayed, "skipped": report.skipped
                    })),
                    Err(e @ crate::relay::Error::Broker { .. }) => {
                        Err(ActivityError::retryable("BrokerUnavailable", e.to_string()))
                    }
                    Err(e) => Err(ActivityError::non_retryable("ReplayFailed", e.to_string())),
                }
            }
        })
        .build()
}
