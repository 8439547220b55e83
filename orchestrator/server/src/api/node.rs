//! The node service (ADR 0030): what one node's runtime asks of the node
//! serving another shard, both ends. [`NodeApi`] serves it, always here
//! (a node that no longer serves the shard answers UNAVAILABLE, never passes
//! the call on); [`NodeClient`] is how a runtime reaches the others
//! ([`OtherNodes`]), to the address the shard's lease names, with the
//! cluster's node token under auth.

use std::sync::Arc;
use std::time::Duration;

use sagaflow_proto::v1::node_service_client::NodeServiceClient;
use sagaflow_proto::v1::node_service_server::NodeService;
use sagaflow_proto::v1::{CompensateChildRequest, CompensateChildResponse, StartInShardRequest, StartInShardResponse};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::engine::Input;
use crate::forward::Dialer;
use crate::route::ShardMap;
use crate::runtime::{Error, OtherNodes, Result, Runtime, StartRequest};

/// How long a node may take to answer another.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long a call waits for the map to name a node for its shard: one
/// released a moment ago is taken within a second, and the map, read every
/// second, names the taker a second later at most.
const OWNER_WITHIN: Duration = Duration::from_secs(3);
/// How often the map is looked at meanwhile.
const OWNER_POLL: Duration = Duration::from_millis(50);

pub struct NodeApi {
    runtime: Runtime,
}

impl NodeApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn start_in_shard(
        &self,
        request: Request<StartInShardRequest>,
    ) -> Result<Response<StartInShardResponse>, Status> {
        let request = request.into_inner();
        required("workflow_type", &request.workflow_type)?;
        required("request_id", &request.request_id)?;
        required("workflow_id", &request.workflow_id)?;
        let limits = self.runtime.limits();
        for (field, value) in [("request_id", &request.request_id), ("workflow_id", &request.workflow_id)] {
            limits.id(field, value).map_err(|e| Status::invalid_argument(e.0))?;
        }
        let version = (request.definition_version > 0).then_some(request.definition_version);
        let start = StartRequest {
            workflow_type: request.workflow_type,
            request_id: request.request_id,
            input: request.input,
            workflow_id: Some(request.workflow_id),
            labels: request.labels,
            correlation_id: request.correlation_id,
            traceparent: request.traceparent,
            parent_workflow_id: request.parent_workflow_id,
            redrive: None,
        };
        let (workflow_id, already_started) = self.runtime.start_here(start, version).await?;
        Ok(Response::new(StartInShardResponse { workflow_id, already_started }))
    }

    async fn compensate_child(
        &self,
        request: Request<CompensateChildRequest>,
    ) -> Result<Response<CompensateChildResponse>, Status> {
        let request = request.into_inner();
        required("workflow_id", &request.workflow_id)?;
        self.runtime.decide(&request.workflow_id, Input::CompensateChild { reason: request.reason }).await?;
        Ok(Response::new(CompensateChildResponse {}))
    }
}

/// Reaches the node serving a shard through its lease's address.
pub struct NodeClient {
    map: Arc<ShardMap>,
    dialer: Arc<Dialer>,
    /// `Bearer TOKEN` under auth.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// This node's address: a map naming it for a shard this runtime does
    /// not serve is a second behind (the shard was just handed over).
    own_address: Option<String>,
}

impl NodeClient {
    pub fn new(map: Arc<ShardMap>, dialer: Arc<Dialer>, node_token: Option<&str>, own_address: Option<String>) -> Self {
        let authorization = node_token.and_then(|token| format!("Bearer {token}").parse().ok());
        Self { map, dialer, authorization, own_address }
    }

    async fn client(&self, shard: u32, workflow_id: &str) -> Result<NodeServiceClient<tonic::transport::Channel>> {
        let deadline = tokio::time::Instant::now() + OWNER_WITHIN;
        let address = loop {
            let owner = self.map.owner(shard).filter(|owner| self.own_address.as_ref() != Some(owner));
            match owner {
                Some(address) => break address,
                None if tokio::time::Instant::now() < deadline => tokio::time::sleep(OWNER_POLL).await,
                None => return Err(Error::NotServed { workflow_id: workflow_id.to_owned(), shard }),
            }
        };
        let channel = self.dialer.channel(&address).map_err(|e| {
            Error::Unreachable(format!("cannot reach the node serving shard {shard} at {address}: {e}"))
        })?;
        Ok(NodeServiceClient::new(channel))
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(ANSWER_WITHIN);
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        request
    }
}

/// The runtime's error for a status another node answered with.
fn error_of(status: Status, shard: u32, workflow_id: &str) -> Error {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument => Error::InvalidArgument(message),
        Code::NotFound => Error::NotFound(message),
        Code::AlreadyExists => Error::AlreadyExists(message),
        Code::FailedPrecondition => Error::FailedPrecondition(message),
        Code::ResourceExhausted => Error::ResourceExhausted(message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled | Code::Unknown => {
            Error::Unreachable(format!("the node serving shard {shard} (workflow {workflow_id}): {message}"))
        }
        _ => Error::Internal(format!("the node serving shard {shard} (workflow {workflow_id}): {status:?}")),
    }
}

#[tonic::async_trait]
impl OtherNodes for NodeClient {
    async fn start(&self, shard: u32, request: &StartRequest, version: Option<u32>) -> Result<(String, bool)> {
        let workflow_id = request.workflow_id.clone().unwrap_or_default();
        let message = StartInShardRequest {
            workflow_type: request.workflow_type.clone(),
            definition_version: version.unwrap_or(0),
            request_id: request.request_id.clone(),
            input: request.input.clone(),
            workflow_id: workflow_id.clone(),
            labels: request.labels.clone(),
            correlation_id: request.correlation_id.clone(),
            traceparent: request.traceparent.clone(),
            parent_workflow_id: request.parent_workflow_id.clone(),
        };
        let answer = self.client(shard, &workflow_id).await?.start_in_shard(self.request(message)).await;
        let started = answer.map_err(|status| error_of(status, shard, &workflow_id))?.into_inner();
        Ok((started.workflow_id, started.already_started))
    }

    async fn compensate_child(&self, shard: u32, child: &str, reason: &str) -> Result<()> {
        let message = CompensateChildRequest { workflow_id: child.to_owned(), reason: reason.to_owned() };
        let answer = self.client(shard, child).await?.compensate_child(self.request(message)).await;
        answer.map(drop).map_err(|status| error_of(status, shard, child))
    }
}
