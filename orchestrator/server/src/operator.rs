//! What an operator does to workflows and queues, validated once: the gRPC
//! API (`api/workflow.rs`) and the console (`console/`) both call these, so
//! that a limit, an audit identity or a log line cannot differ between the
//! two doors. Each function checks its fields against the [`Limits`] and
//! then calls the runtime; errors are the runtime's, which the API maps to
//! statuses and the console to pages.
//!
//! Who may call them is not decided here: the role table (`auth::policy`)
//! does it for gRPC, the console's session for the web.
//!
//! [`Limits`]: crate::limits::Limits

use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{QueueInfo, QueueWorker, ResolvedOutcome};

use crate::auth::Principal;
use crate::engine::{Input, Resolution};
use crate::limits::Invalid;
use crate::runtime::{Error, Redriven, Result, Runtime};

fn invalid(e: Invalid) -> Error {
    Error::InvalidArgument(e.0)
}

fn workflow_id(runtime: &Runtime, id: &str) -> Result<()> {
    runtime.limits().id("workflow_id", id).map_err(invalid)
}

/// Cancel: the completed steps are compensated (refused after the pivot).
pub async fn cancel(runtime: &Runtime, id: &str, reason: String, identity: String) -> Result<()> {
    workflow_id(runtime, id)?;
    runtime.limits().id("reason", &reason).map_err(invalid)?;
    runtime.decide(id, Input::Cancel { reason, identity }).await?;
    Ok(())
}

/// Terminate: stop at once, nothing compensated.
pub async fn terminate(runtime: &Runtime, id: &str, reason: String, identity: String) -> Result<()> {
    workflow_id(runtime, id)?;
    runtime.limits().id("reason", &reason).map_err(invalid)?;
    runtime.decide(id, Input::Terminate { reason, identity }).await?;
    Ok(())
}

/// Sends a signal (`sagaflow.retry` among them); `input` is JSON text or
/// empty. Returns the sequence number of its first event (0 when none).
pub async fn signal(runtime: &Runtime, id: &str, name: String, input: &[u8], identity: String) -> Result<u64> {
    workflow_id(runtime, id)?;
    let limits = runtime.limits();
    limits.id("signal name", &name).map_err(invalid)?;
    limits.optional_id("identity", &identity).map_err(invalid)?;
    let input = limits.json_payload("input", input).map_err(invalid)?;
    let events = runtime.decide(id, Input::Signal { name, input, identity }).await?;
    Ok(events.first().map_or(0, |e| e.seq))
}

/// Pauses a workflow; false when it was paused already.
pub async fn pause(runtime: &Runtime, id: &str, reason: String, identity: String) -> Result<bool> {
    workflow_id(runtime, id)?;
    // The reason is what the next operator reads in `describe` and `list`.
    runtime.limits().id("reason", &reason).map_err(invalid)?;
    runtime.limits().optional_id("identity", &identity).map_err(invalid)?;
    let events = runtime.decide(id, Input::Pause { reason, identity }).await?;
    Ok(!events.is_empty())
}

/// Resumes a paused workflow; false when it was not paused.
pub async fn resume(runtime: &Runtime, id: &str, reason: String, identity: String) -> Result<bool> {
    workflow_id(runtime, id)?;
    runtime.limits().optional_id("reason", &reason).map_err(invalid)?;
    runtime.limits().optional_id("identity", &identity).map_err(invalid)?;
    let events = runtime.decide(id, Input::Resume { reason, identity }).await?;
    Ok(!events.is_empty())
}

/// Runs a FAILED or COMPENSATED workflow again as a new run (ADR 0025).
pub async fn redrive(runtime: &Runtime, id: &str) -> Result<Redriven> {
    workflow_id(runtime, id)?;
    runtime.redrive_workflow(id).await
}

/// An operator's decision on what a step's attempts did (`ResolveActivity`).
#[derive(Debug, Clone)]
pub struct Resolve {
    pub step: String,
    pub outcome: ResolvedOutcome,
    /// The step's result (JSON text) when it succeeded; empty for `{}`.
    pub result: Vec<u8>,
    /// The audit trail: required, and kept in the history.
    pub reason: String,
    /// What the caller says of itself; the token's name always leads.
    pub identity: String,
}

/// Where a resolution was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub seq: u64,
    /// The decision was about the step's compensation.
    pub compensation: bool,
}

/// Records an operator's resolution of a step whose outcome no worker can tell.
pub async fn resolve(runtime: &Runtime, caller: &Principal, id: &str, request: Resolve) -> Result<Resolved> {
    workflow_id(runtime, id)?;
    let limits = runtime.limits();
    limits.id("step", &request.step).map_err(invalid)?;
    limits.id("reason", &request.reason).map_err(invalid)?;
    limits.optional_id("identity", &request.identity).map_err(invalid)?;
    let resolution = match request.outcome {
        ResolvedOutcome::Succeeded if request.result.is_empty() => Resolution::Succeeded("{}".into()),
        ResolvedOutcome::Succeeded => {
            Resolution::Succeeded(limits.json_payload("result", &request.result).map_err(invalid)?)
        }
        ResolvedOutcome::Failed if !request.result.is_empty() => {
            return Err(Error::InvalidArgument("a step resolved as failed has no result".into()));
        }
        ResolvedOutcome::Failed => Resolution::Failed,
        ResolvedOutcome::Unspecified => {
            return Err(Error::InvalidArgument("outcome must be SUCCEEDED or FAILED".into()));
        }
    };
    // Who decided is the token's name, whatever the caller says of itself.
    let identity = if request.identity.is_empty() || request.identity == caller.name {
        caller.name.clone()
    } else {
        format!("{} ({})", caller.name, request.identity)
    };
    let outcome = resolution.as_str();
    let input = Input::Resolve {
        step: request.step.clone(),
        resolution,
        reason: request.reason.clone(),
        identity: identity.clone(),
    };
    let events = runtime.decide(id, input).await?;
    let Some((seq, compensation)) = events.iter().find_map(|e| match &e.attributes {
        Some(Attributes::ActivityResolved(r)) => Some((e.seq, r.compensation)),
        _ => None,
    }) else {
        return Err(Error::Internal("the resolution was not recorded".into()));
    };
    tracing::warn!(
        workflow_id = %id,
        step = %request.step,
        outcome,
        compensation,
        operator = %identity,
        reason = %request.reason,
        seq,
        "an operator resolved a step's outcome"
    );
    Ok(Resolved { seq, compensation })
}

/// Every activity queue: its workers and their credit, tasks in flight,
/// backlog and pause (`ListQueues`).
pub fn queues(runtime: &Runtime) -> Vec<QueueInfo> {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    runtime
        .dispatch()
        .queue_stats()
        .into_iter()
        .map(|q| QueueInfo {
            queue: q.queue,
            workers: q.workers.into_iter().map(|(worker_id, credit)| QueueWorker { worker_id, credit }).collect(),
            in_flight: count(q.in_flight),
            backlog: count(q.backlog),
            paused_reason: q.paused.as_ref().map(|p| p.reason.clone()).unwrap_or_default(),
            paused_by: q.paused.as_ref().map(|p| p.identity.clone()).unwrap_or_default(),
            paused_ms: q.paused.as_ref().map_or(0, |p| p.paused_ms),
        })
        .collect()
}

/// Pauses an activity queue; false when it was paused already.
pub async fn pause_queue(runtime: &Runtime, queue: &str, reason: &str, identity: &str) -> Result<bool> {
    let limits = runtime.limits();
    limits.id("queue", queue).map_err(invalid)?;
    limits.id("reason", reason).map_err(invalid)?;
    limits.optional_id("identity", identity).map_err(invalid)?;
    runtime.pause_queue(queue, reason, identity).await
}

/// Resumes an activity queue; false when it was not paused.
pub async fn resume_queue(runtime: &Runtime, queue: &str, identity: &str) -> Result<bool> {
    let limits = runtime.limits();
    limits.id("queue", queue).map_err(invalid)?;
    limits.optional_id("identity", identity).map_err(invalid)?;
    runtime.resume_queue(queue, identity).await
}
