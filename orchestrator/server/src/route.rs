//! Calls about a workflow go to the node that serves its shard (ADR 0030).
//!
//! On a shared store each node serves some of the cluster's shards. A call
//! that names a workflow of a shard this node does not serve is forwarded,
//! whole and once, to the node whose lease holds that shard (the lease's
//! owner names its `host:port`); that node authenticates and answers it as
//! if it had come there. Which field names the workflow is known per method
//! ([`workflow_field`]); the request's one message is read from its frame
//! without decoding the rest. Calls about no one workflow (lists, reads of
//! the shared store, definitions) and streams are answered here.
//!
//! Who serves each shard is read from the store every [`REFRESH`]. A map
//! that is out of date costs a retry, never a wrong write: the node a call
//! reaches checks the shard itself and answers `UNAVAILABLE` when it does
//! not serve it, and a forwarded call is never forwarded again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::forward::Dialer;
use crate::runtime::Runtime;
use crate::store::Store;

/// How often the map of who serves each shard is read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The field that names the workflow in each routed method's request, as a
/// path of field numbers (an `ExecuteWorkflow` carries a start). A start
/// without a workflow id is served where it arrives (its id is drawn in a
/// served shard).
fn workflow_field(path: &str) -> Option<&'static [u32]> {
    let method = path.strip_prefix("/sagaflow.v1.WorkflowService/")?;
    Some(match method {
        "StartWorkflow" => &[4],
        "ExecuteWorkflow" => &[1, 4],
        "DescribeWorkflow" | "AwaitWorkflow" | "SignalWorkflow" | "CancelWorkflow" | "PauseWorkflow"
        | "ResumeWorkflow" | "TerminateWorkflow" | "DeleteWorkflow" | "RedriveWorkflow" | "ResolveActivity" => &[1],
        _ => return None,
    })
}

/// Whether `path` writes a record of the cluster as a whole (definitions,
/// queue pauses): a write every held shard's epoch must pass, which a node
/// holding no shard cannot make, and which it sends to a node that holds one.
fn writes_the_cluster(path: &str) -> bool {
    matches!(
        path,
        "/sagaflow.v1.DefinitionService/RegisterDefinition"
            | "/sagaflow.v1.DefinitionService/DeprecateDefinition"
            | "/sagaflow.v1.WorkflowService/PauseQueue"
            | "/sagaflow.v1.WorkflowService/ResumeQueue"
    )
}

/// The string at `path` in a protobuf message, read from its wire format;
/// `None` when absent, empty or malformed (the service then answers).
fn string_at(mut message: &[u8], path: &[u32]) -> Option<String> {
    let (&field, rest) = path.split_first()?;
    let mut found = None;
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let (number, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => drop(varint(&mut message)?),
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                let value = message.get(..len)?;
                message = &message[len..];
                if number == u64::from(field) {
                    // The last occurrence wins, as in any protobuf decoder.
                    found = Some(value);
                }
            }
            _ => return None,
        }
    }
    let value = found?;
    if rest.is_empty() {
        std::str::from_utf8(value).ok().filter(|s| !s.is_empty()).map(str::to_owned)
    } else {
        string_at(value, rest)
    }
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The workflow id in a unary call's body: one uncompressed gRPC frame.
fn workflow_of(body: &[u8], field: &[u32]) -> Option<String> {
    let (&compressed, rest) = body.split_first()?;
    let len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    (compressed == 0).then_some(())?;
    string_at(rest.get(4..4 + len)?, field)
}

/// Who serves each shard: the `host:port` its lease's owner named.
/// Subscribers learn of a change as soon as a read finds one.
pub struct ShardMap {
    owners: watch::Sender<Vec<Option<String>>>,
}

impl ShardMap {
    /// Reads the map now and again every [`REFRESH`], for as long as the
    /// returned map is in use.
    pub async fn follow(store: Arc<dyn Store>) -> Arc<Self> {
        let map = Arc::new(Self { owners: watch::Sender::new(Vec::new()) });
        map.refresh(&*store).await;
        let weak = Arc::downgrade(&map);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(map) = weak.upgrade() else { return };
                map.refresh(&*store).await;
            }
        });
        map
    }

    async fn refresh(&self, store: &dyn Store) {
        match store.shard_leases().await {
            Ok(leases) => {
                let mut owners = vec![None; store.shard_count() as usize];
                for lease in leases {
                    if let Some(owner) = owners.get_mut(lease.shard as usize) {
                        *owner = crate::ownership::address_of(&lease.owner).map(str::to_owned);
                    }
                }
                self.owners.send_if_modified(|current| {
                    let changed = *current != owners;
                    *current = owners;
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not read who serves each shard; calls keep the last map"),
        }
    }

    pub(crate) fn owner(&self, shard: u32) -> Option<String> {
        self.owners.borrow().get(shard as usize).cloned().flatten()
    }

    /// Each shard's serving address, by shard.
    pub(crate) fn owners(&self) -> Vec<Option<String>> {
        self.owners.borrow().clone()
    }

    /// Changes whenever a read finds the map changed.
    pub(crate) fn changes(&self) -> watch::Receiver<Vec<Option<String>>> {
        self.owners.subscribe()
    }
}

/// Forwards calls about workflows of shards served elsewhere.
#[derive(Clone)]
pub struct RouteLayer {
    runtime: Runtime,
    map: Arc<ShardMap>,
    dialer: Arc<Dialer>,
    max_message: usize,
}

impl RouteLayer {
    pub fn new(runtime: Runtime, map: Arc<ShardMap>, dialer: Arc<Dialer>, max_message: usize) -> Self {
        Self { runtime, map, dialer, max_message }
    }

    /// A node that serves some shard, when this one serves none.
    fn any_serving_node(&self) -> Option<String> {
        if self.runtime.serves_any_shard() {
            return None;
        }
        self.map.owners().into_iter().flatten().next()
    }

    /// Where a call about `workflow_id` must go, if not here.
    fn elsewhere(&self, workflow_id: &str) -> Option<String> {
        let shard = self.runtime.shard_of(workflow_id);
        if self.runtime.serves_shard(shard) {
            return None;
        }
        self.map.owner(shard)
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Route { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    layer: RouteLayer,
}

impl<S> Service<http::Request<Body>> for Route<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if writes_the_cluster(request.uri().path())
            && !crate::forward::was_forwarded(&request)
            && let Some(address) = self.layer.any_serving_node()
        {
            let dialer = Arc::clone(&self.layer.dialer);
            return Box::pin(async move { Ok(dialer.forward(&address, request).await) });
        }
        // A call forwarded here is answered here, whatever the map says; so
        // is every call while this node serves every shard (the body is
        // then not read twice).
        let field = workflow_field(request.uri().path())
            .filter(|_| !crate::forward::was_forwarded(&request) && !self.layer.runtime.serves_every_shard());
        let Some(field) = field else {
            return Box::pin(self.inner.call(request));
        };
        // The clone that was made ready is the one that serves this call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // A unary request is one small message: read it whole, so that
            // it can be looked into, then sent on or served here.
            let bytes = match Limited::new(body, layer.max_message + 5).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let status = tonic::Status::invalid_argument(format!("reading the request: {e}"));
                    return Ok(status.into_http());
                }
            };
            let target = match workflow_of(&bytes, field) {
                Some(workflow_id) => layer.elsewhere(&workflow_id),
                // A start without an id draws one in a shard served where it
                // is served: a node serving none sends it to one that serves.
                None => layer.any_serving_node(),
            };
            let request = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            match target {
                Some(address) => Ok(layer.dialer.forward(&address, request).await),
                None => inner.call(request).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use sagaflow_proto::v1::{ExecuteWorkflowRequest, SignalWorkflowRequest, StartWorkflowRequest};

    use super::*;

    fn framed(message: &impl Message) -> Vec<u8> {
        let encoded = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&encoded);
        frame
    }

    #[test]
    fn the_workflow_id_is_read_from_each_routed_request() {
        let start = StartWorkflowRequest {
            workflow_type: "checkout".into(),
            request_id: "r-1".into(),
            input: "{\"a\":1}".into(),
            workflow_id: "order-7".into(),
            ..Default::default()
        };
        let field = workflow_field("/sagaflow.v1.WorkflowService/StartWorkflow").unwrap_or_default();
        assert_eq!(workflow_of(&framed(&start), field).as_deref(), Some("order-7"));
        let execute = ExecuteWorkflowRequest { start: Some(start.clone()), timeout_ms: 9 };
        let field = workflow_field("/sagaflow.v1.WorkflowService/ExecuteWorkflow").unwrap_or_default();
        assert_eq!(workflow_of(&framed(&execute), field).as_deref(), Some("order-7"));
        let signal = SignalWorkflowRequest { workflow_id: "order-8".into(), ..Default::default() };
        let field = workflow_field("/sagaflow.v1.WorkflowService/SignalWorkflow").unwrap_or_default();
        assert_eq!(workflow_of(&framed(&signal), field).as_deref(), Some("order-8"));
        // A start without an id is served where it arrives.
        let anonymous = StartWorkflowRequest { workflow_id: String::new(), ..start };
        let field = workflow_field("/sagaflow.v1.WorkflowService/StartWorkflow").unwrap_or_default();
        assert_eq!(workflow_of(&framed(&anonymous), field), None);
        assert!(workflow_field("/sagaflow.v1.WorkflowService/ListWorkflows").is_none());
        assert!(workflow_field("/sagaflow.v1.WorkerService/OpenSession").is_none());
    }

    #[test]
    fn a_malformed_or_compressed_frame_names_no_workflow() {
        let signal = framed(&SignalWorkflowRequest { workflow_id: "order-8".into(), ..Default::default() });
        let mut compressed = signal.clone();
        compressed[0] = 1;
        assert_eq!(workflow_of(&compressed, &[1]), None);
        assert_eq!(workflow_of(&signal[..signal.len() - 1], &[1]), None, "cut short");
        assert_eq!(workflow_of(&[], &[1]), None);
        assert_eq!(workflow_of(&[0, 0, 0, 0, 3, 0x0a, 0x05, b'x'], &[1]), None, "a length past the end");
        assert_eq!(workflow_of(&[0, 0, 0, 0, 2, 0xff, 0xff], &[1]), None, "an unterminated varint");
        assert_eq!(workflow_of(&[0, 0, 0, 0, 3, 0x0a, 0x01, 0xff], &[1]), None, "not UTF-8");
    }
}
