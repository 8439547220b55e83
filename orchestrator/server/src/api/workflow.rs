//! `sagaflow.v1.WorkflowService`.

use std::sync::Arc;
use std::time::Duration;

use sagaflow_proto::v1::workflow_service_server::WorkflowService;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, AwaitWorkflowResponse, CancelWorkflowRequest, CancelWorkflowResponse, DeleteWorkflowRequest,
    DeleteWorkflowResponse, DescribeWorkflowRequest, DescribeWorkflowResponse, ExecuteWorkflowRequest,
    ExecuteWorkflowResponse, GetWorkflowHistoryRequest, GetWorkflowHistoryResponse, ListQueuesRequest,
    ListQueuesResponse, ListWorkflowTypesRequest, ListWorkflowTypesResponse, ListWorkflowsRequest,
    ListWorkflowsResponse, PauseQueueRequest, PauseQueueResponse, PauseWorkflowRequest, PauseWorkflowResponse,
    RedriveWorkflowRequest, RedriveWorkflowResponse, ResolveActivityRequest, ResolveActivityResponse, ResolvedOutcome,
    ResumeQueueRequest, ResumeQueueResponse, ResumeWorkflowRequest, ResumeWorkflowResponse, SignalWorkflowRequest,
    SignalWorkflowResponse, StartWorkflowRequest, StartWorkflowResponse, TerminateWorkflowRequest,
    TerminateWorkflowResponse, WorkflowStatus, WorkflowSummary, WorkflowType,
};
use tonic::{Request, Response, Status};

use super::{Origin, invalid};
use crate::auth::{self, Principal, Role};
use crate::operator;
use crate::runtime::{Ended, Runtime, StartRequest};
use crate::store::{ListQuery, WorkflowFilter};
use sagaflow_proto::is_terminal;

const DEFAULT_HISTORY_PAGE: u32 = 1000;
const MAX_HISTORY_PAGE: u32 = 10_000;
const DEFAULT_LIST_PAGE: u32 = 100;
const MAX_LIST_PAGE: u32 = 1000;
/// A list call reads at most this many index rows before returning a partial page.
const LIST_SCAN_BUDGET: usize = 100_000;
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct WorkflowApi {
    runtime: Runtime,
}

impl WorkflowApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }

    fn workflow_id(&self, id: &str) -> Result<(), Status> {
        self.runtime.limits().id("workflow_id", id).map_err(invalid)
    }

    /// The summary, if `caller` may read this workflow. Another client's
    /// workflow reads as missing: its existence is not ours to tell.
    async fn summary(&self, workflow_id: &str, caller: &Principal) -> Result<WorkflowSummary, Status> {
        self.workflow_id(workflow_id)?;
        let summary = self.runtime.describe(workflow_id).await?;
        if !caller.may_read(&summary.labels) {
            return Err(Status::not_found(format!("workflow {workflow_id} not found")));
        }
        Ok(summary)
    }

    /// `GetWorkflowHistory{archived}`: a page of a deleted workflow's history,
    /// from the archive. The live read's rule applies: a client reads only
    /// what it started, by the owner label its `WorkflowStarted` carries, and
    /// another client's workflow reads as missing.
    async fn archived_history(
        &self,
        request: &GetWorkflowHistoryRequest,
        caller: &Principal,
    ) -> Result<GetWorkflowHistoryResponse, Status> {
        self.workflow_id(&request.workflow_id)?;
        let (_, history) = self.runtime.archived_history(&request.workflow_id).await?;
        let labels = match history.first().and_then(|e| e.attributes.as_ref()) {
            Some(sagaflow_proto::v1::history_event::Attributes::WorkflowStarted(started)) => started.labels.clone(),
            _ => Default::default(),
        };
        if !caller.may_read(&labels) {
            return Err(Status::not_found(format!("workflow {} is not in the archive", request.workflow_id)));
        }
        let page = match request.page_size {
            0 => DEFAULT_HISTORY_PAGE,
            n => n.min(MAX_HISTORY_PAGE),
        } as usize;
        let from = request.from_seq.max(1);
        let last = history.last().map_or(0, |e| e.seq);
        let events: Vec<_> = history.into_iter().filter(|e| e.seq >= from).take(page).collect();
        let next_seq = events.last().map_or(from, |e| e.seq + 1);
        // An archived workflow is closed: the page that reaches its last event ends it.
        Ok(GetWorkflowHistoryResponse { events, next_seq, terminal: next_seq > last })
    }

    /// `StartWorkflow`'s work, once the call's origin is read from its metadata.
    async fn start(&self, mut request: StartWorkflowRequest, origin: Origin) -> Result<(String, bool), Status> {
        let Origin { correlation_id, traceparent, caller } = origin;
        let limits = self.runtime.limits();
        limits.id("workflow_type", &request.workflow_type).map_err(invalid)?;
        limits.id("request_id", &request.request_id).map_err(invalid)?;
        limits.optional_id("workflow_id", &request.workflow_id).map_err(invalid)?;
        limits.labels(request.labels.iter()).map_err(invalid)?;
        let input = limits.json_payload("input", &request.input).map_err(invalid)?;
        // Read for the checks below only; the runtime resolves it again
        // under its own lookup and refuses a deprecated or unknown version.
        let definition = {
            let registry = self.runtime.registry();
            match request.definition_version {
                Some(v) => registry.get(&request.workflow_type, v),
                None => registry.to_start(&request.workflow_type, None).ok().map(|e| Arc::clone(&e.definition)),
            }
        };
        if caller.role == Role::Client && definition.as_ref().is_some_and(|d| d.operator_only) {
            tracing::warn!(token = %caller.name, workflow_type = %request.workflow_type, "refused a client start");
            metrics::counter!("sagaflow_auth_failures_total", "reason" => "workflow_type_not_allowed").increment(1);
            return Err(Status::permission_denied(format!(
                "starting {:?} needs the role operator; token {:?} has client",
                request.workflow_type, caller.name
            )));
        }
        if let Some(api) = definition.as_ref().and_then(|d| d.started_by.as_ref()) {
            // Its API derives the ids and idempotency keys it runs with; a
            // raw input could name another run's.
            return Err(Status::failed_precondition(format!(
                "{:?} is started through {api}, not StartWorkflow",
                request.workflow_type
            )));
        }
        // Stamped by the server, never trusted from the client: it decides who reads the workflow.
        request.labels.extend(caller.owner_label());
        // A client's ids live in its own namespace.
        let request_id = caller.scoped(&request.request_id);
        limits.id("request_id", &request_id).map_err(invalid)?;
        let workflow_id = (!request.workflow_id.is_empty()).then(|| caller.scoped(&request.workflow_id));
        limits.optional_id("workflow_id", workflow_id.as_deref().unwrap_or_default()).map_err(invalid)?;
        let start = StartRequest {
            workflow_type: request.workflow_type,
            request_id,
            input,
            workflow_id,
            labels: request.labels,
            correlation_id,
            traceparent,
            parent_workflow_id: String::new(),
            redrive: None,
        };
        Ok(self.runtime.start_workflow_version(start, request.definition_version).await?)
    }

    /// `AwaitWorkflow`'s work.
    async fn await_end(
        &self,
        workflow_id: &str,
        timeout_ms: u32,
        caller: &Principal,
    ) -> Result<AwaitWorkflowResponse, Status> {
        let summary = self.summary(workflow_id, caller).await?;
        let ended = if is_terminal(summary.status) {
            self.runtime.ended(summary).await?
        } else {
            self.runtime.await_terminal(workflow_id, wait_budget(timeout_ms)).await?
        };
        let Ended { summary, result, reason } = Arc::unwrap_or_clone(ended);
        let terminal = is_terminal(summary.status);
        Ok(AwaitWorkflowResponse { summary: Some(summary), terminal, result, reason })
    }
}

fn wait_budget(timeout_ms: u32) -> Duration {
    if timeout_ms == 0 { MAX_WAIT } else { Duration::from_millis(u64::from(timeout_ms)).min(MAX_WAIT) }
}

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    async fn start_workflow(
        &self,
        request: Request<StartWorkflowRequest>,
    ) -> Result<Response<StartWorkflowResponse>, Status> {
        let origin = Origin::of(&request, &request.get_ref().request_id);
        let (workflow_id, already_started) = self.start(request.into_inner(), origin).await?;
        Ok(Response::new(StartWorkflowResponse { workflow_id, already_started }))
    }

    async fn execute_workflow(
        &self,
        request: Request<ExecuteWorkflowRequest>,
    ) -> Result<Response<ExecuteWorkflowResponse>, Status> {
        let origin = Origin::of(&request, request.get_ref().start.as_ref().map_or("", |s| &s.request_id));
        let caller = origin.caller.clone();
        let ExecuteWorkflowRequest { start, timeout_ms } = request.into_inner();
        let start = start.ok_or_else(|| Status::invalid_argument("ExecuteWorkflow needs `start`"))?;
        let (workflow_id, already_started) = self.start(start, origin).await?;
        let outcome = self.await_end(&workflow_id, timeout_ms, &caller).await?;
        Ok(Response::new(ExecuteWorkflowResponse { workflow_id, already_started, outcome: Some(outcome) }))
    }

    async fn describe_workflow(
        &self,
        request: Request<DescribeWorkflowRequest>,
    ) -> Result<Response<DescribeWorkflowResponse>, Status> {
        let caller = auth::principal(&request);
        let workflow_id = request.into_inner().workflow_id;
        let summary = self.summary(&workflow_id, &caller).await?;
        let description = self.runtime.description(&workflow_id).await?;
        Ok(Response::new(DescribeWorkflowResponse { summary: Some(summary), ..description }))
    }

    async fn get_workflow_history(
        &self,
        request: Request<GetWorkflowHistoryRequest>,
    ) -> Result<Response<GetWorkflowHistoryResponse>, Status> {
        let caller = auth::principal(&request);
        let request = request.into_inner();
        if request.archived {
            return Ok(Response::new(self.archived_history(&request, &caller).await?));
        }
        // The summary is read (after a durability barrier) before the events:
        // if it is terminal, no event can follow the ones read below.
        let mut summary = self.summary(&request.workflow_id, &caller).await?;
        let page = match request.page_size {
            0 => DEFAULT_HISTORY_PAGE,
            n => n.min(MAX_HISTORY_PAGE),
        } as usize;
        let from = request.from_seq.max(1);
        let mut events = self.runtime.history(&request.workflow_id, from, page).await?;
        if events.is_empty() && request.wait_ms > 0 && !is_terminal(summary.status) {
            self.runtime.wait_for_change(&request.workflow_id, from - 1, wait_budget(request.wait_ms)).await?;
            summary = self.runtime.describe(&request.workflow_id).await?;
            events = self.runtime.history(&request.workflow_id, from, page).await?;
        }
        let next_seq = events.last().map_or(from, |e| e.seq + 1);
        let terminal = is_terminal(summary.status) && next_seq > summary.history_length;
        Ok(Response::new(GetWorkflowHistoryResponse { events, next_seq, terminal }))
    }

    async fn list_workflows(
        &self,
        request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        let request = request.into_inner();
        let statuses: Vec<i32> = request.statuses.clone();
        if statuses.iter().any(|s| WorkflowStatus::try_from(*s).is_err()) {
            return Err(Status::invalid_argument("unknown status in the filter"));
        }
        self.runtime.limits().optional_id("workflow_type", &request.workflow_type).map_err(invalid)?;
        self.runtime.limits().optional_id("page_token", &request.page_token).map_err(invalid)?;
        let limit = match request.page_size {
            0 => DEFAULT_LIST_PAGE,
            n => n.min(MAX_LIST_PAGE),
        } as usize;
        let query = ListQuery {
            id_prefix: String::new(),
            after: (!request.page_token.is_empty()).then(|| request.page_token.clone()),
            limit,
            scan_budget: LIST_SCAN_BUDGET,
            filter: WorkflowFilter {
                statuses,
                workflow_type: request.workflow_type.clone(),
                labels: request.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                stuck_only: request.stuck_only,
                paused_only: request.paused_only,
                closed_at_or_before_ms: None,
            },
        };
        let page = self.runtime.list(&query).await?;
        Ok(Response::new(ListWorkflowsResponse {
            workflows: page.workflows,
            next_page_token: page.next_after.unwrap_or_default(),
        }))
    }

    async fn await_workflow(
        &self,
        request: Request<AwaitWorkflowRequest>,
    ) -> Result<Response<AwaitWorkflowResponse>, Status> {
        let caller = auth::principal(&request);
        let request = request.into_inner();
        Ok(Response::new(self.await_end(&request.workflow_id, request.timeout_ms, &caller).await?))
    }

    async fn signal_workflow(
        &self,
        request: Request<SignalWorkflowRequest>,
    ) -> Result<Response<SignalWorkflowResponse>, Status> {
        let request = request.into_inner();
        let seq = operator::signal(&self.runtime, &request.workflow_id, request.name, &request.input, request.identity)
            .await?;
        Ok(Response::new(SignalWorkflowResponse { seq }))
    }

    async fn cancel_workflow(
        &self,
        request: Request<CancelWorkflowRequest>,
    ) -> Result<Response<CancelWorkflowResponse>, Status> {
        let request = request.into_inner();
        operator::cancel(&self.runtime, &request.workflow_id, request.reason, request.identity).await?;
        Ok(Response::new(CancelWorkflowResponse {}))
    }

    async fn pause_workflow(
        &self,
        request: Request<PauseWorkflowRequest>,
    ) -> Result<Response<PauseWorkflowResponse>, Status> {
        let request = request.into_inner();
        let changed = operator::pause(&self.runtime, &request.workflow_id, request.reason, request.identity).await?;
        Ok(Response::new(PauseWorkflowResponse { changed }))
    }

    async fn resume_workflow(
        &self,
        request: Request<ResumeWorkflowRequest>,
    ) -> Result<Response<ResumeWorkflowResponse>, Status> {
        let request = request.into_inner();
        let changed = operator::resume(&self.runtime, &request.workflow_id, request.reason, request.identity).await?;
        Ok(Response::new(ResumeWorkflowResponse { changed }))
    }

    async fn delete_workflow(
        &self,
        request: Request<DeleteWorkflowRequest>,
    ) -> Result<Response<DeleteWorkflowResponse>, Status> {
        let request = request.into_inner();
        self.workflow_id(&request.workflow_id)?;
        self.runtime.delete_workflow(&request.workflow_id).await?;
        Ok(Response::new(DeleteWorkflowResponse {}))
    }

    async fn redrive_workflow(
        &self,
        request: Request<RedriveWorkflowRequest>,
    ) -> Result<Response<RedriveWorkflowResponse>, Status> {
        let request = request.into_inner();
        let redriven = operator::redrive(&self.runtime, &request.workflow_id).await?;
        Ok(Response::new(RedriveWorkflowResponse {
            workflow_id: redriven.workflow_id,
            from_step: redriven.from_step.unwrap_or_default(),
            carried_steps: redriven.carried_steps,
            already_redriven: redriven.already_redriven,
        }))
    }

    async fn terminate_workflow(
        &self,
        request: Request<TerminateWorkflowRequest>,
    ) -> Result<Response<TerminateWorkflowResponse>, Status> {
        let request = request.into_inner();
        operator::terminate(&self.runtime, &request.workflow_id, request.reason, request.identity).await?;
        Ok(Response::new(TerminateWorkflowResponse {}))
    }

    /// Operator-only (the role table fails closed, and lists it nowhere).
    async fn resolve_activity(
        &self,
        request: Request<ResolveActivityRequest>,
    ) -> Result<Response<ResolveActivityResponse>, Status> {
        let caller = auth::principal(&request);
        let request = request.into_inner();
        let outcome = ResolvedOutcome::try_from(request.outcome).unwrap_or(ResolvedOutcome::Unspecified);
        let resolve = operator::Resolve {
            step: request.step,
            outcome,
            result: request.result,
            reason: request.reason,
            identity: request.identity,
        };
        let resolved = operator::resolve(&self.runtime, &caller, &request.workflow_id, resolve).await?;
        Ok(Response::new(ResolveActivityResponse { seq: resolved.seq, compensation: resolved.compensation }))
    }

    async fn list_workflow_types(
        &self,
        _request: Request<ListWorkflowTypesRequest>,
    ) -> Result<Response<ListWorkflowTypesResponse>, Status> {
        let types = self
            .runtime
            .registry()
            .all()
            .into_iter()
            .map(|d| WorkflowType { name: d.name.clone(), version: d.version, definition: d.to_json() })
            .collect();
        Ok(Response::new(ListWorkflowTypesResponse { types }))
    }

    async fn list_queues(&self, _request: Request<ListQueuesRequest>) -> Result<Response<ListQueuesResponse>, Status> {
        Ok(Response::new(ListQueuesResponse { queues: operator::queues(&self.runtime) }))
    }

    async fn pause_queue(&self, request: Request<PauseQueueRequest>) -> Result<Response<PauseQueueResponse>, Status> {
        let request = request.into_inner();
        let changed = operator::pause_queue(&self.runtime, &request.queue, &request.reason, &request.identity).await?;
        Ok(Response::new(PauseQueueResponse { changed }))
    }

    async fn resume_queue(
        &self,
        request: Request<ResumeQueueRequest>,
    ) -> Result<Response<ResumeQueueResponse>, Status> {
        let request = request.into_inner();
        let changed = operator::resume_queue(&self.runtime, &request.queue, &request.identity).await?;
        Ok(Response::new(ResumeQueueResponse { changed }))
    }
}
