//! The tower layer that charges each gRPC call to its budget. It runs after
//! the auth layer, so it knows the caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tower::{Layer, Service};

use super::{Admission, Budget, Refused};
use crate::auth::policy::Policy;
use crate::auth::{Principal, Role};

#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
    policy: Arc<Policy>,
}

impl AdmissionLayer {
    pub fn new(admission: Arc<Admission>, policy: Arc<Policy>) -> Self {
        Self { admission, policy }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit { inner, admission: Arc::clone(&self.admission), policy: Arc::clone(&self.policy) }
    }
}

#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
    policy: Arc<Policy>,
}

/// The budget of a call to `path` by `caller` (`None` when auth is off).
fn budget(policy: &Policy, path: &str, caller: Option<&Principal>) -> Budget {
    // A node's call carries work its own node admitted already.
    if policy.allowed(path).is_empty()
        || path == "/sagaflow.v1.WorkerService/OpenSession"
        || path.starts_with("/sagaflow.v1.NodeService/")
    {
        return Budget::Exempt;
    }
    match caller {
        Some(Principal { role: Role::Operator, .. }) => Budget::Operator,
        Some(Principal { role: Role::Worker | Role::Node, .. }) => Budget::Exempt,
        Some(Principal { role: Role::Client, name, .. }) => Budget::Client { token: name.clone() },
        // Without auth everyone is one anonymous caller; the methods only an
        // operator would call keep their own budget so that they still get through.
        None if policy.is_operator_only(path) => Budget::Operator,
        None => Budget::Client { token: "anonymous".into() },
    }
}

fn refusal(refused: Refused) -> Status {
    let millis = u64::try_from(refused.retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut status = Status::resource_exhausted(format!(
        "the server is at its limit ({}); retry after {millis} ms",
        refused.shed.reason().replace('_', " ")
    ));
    // `grpc-retry-pushback-ms` is what gRPC retry policies read; `retry-after-ms` is for people and scripts.
    for key in ["retry-after-ms", "grpc-retry-pushback-ms"] {
        status.metadata_mut().insert(key, MetadataValue::from(millis));
    }
    status
}

/// How long a refusal waits for the rest of the refused request.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads a refused request's body to its end (or for [`DRAIN`]) before the
/// refusal is sent. Answered while the client is still sending, the stream
/// has to be reset, and the rest of the body then draws a second reset: a
/// shed burst doubled the frames on the connection, and h2 counts such
/// resets against a limit (1,024) past which it closes the connection.
async fn drain<B: tonic::codegen::Body + Unpin>(mut body: B) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN, async { while let Some(Ok(_)) = body.frame().await {} }).await;
}

impl<S, B, ResBody> Service<http::Request<B>> for Admit<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: tonic::codegen::Body + Send + Unpin + 'static,
    B::Data: Send,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let budget = budget(&self.policy, request.uri().path(), request.extensions().get::<Principal>());
        match self.admission.admit(&budget) {
            Ok(admitted) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    // The slot is held until the response (for a stream, its
                    // headers) is ready.
                    let response = call.await;
                    drop(admitted);
                    response
                })
            }
            Err(refused) => {
                metrics::counter!("sagaflow_requests_shed_total", "reason" => refused.shed.reason()).increment(1);
                tracing::debug!(reason = refused.shed.reason(), method = request.uri().path(), "shed a call");
                let body = request.into_body();
                Box::pin(async move {
                    drain(body).await;
                    Ok(refusal(refused).into_http())
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_caller_and_the_method() {
        let start = "/sagaflow.v1.WorkflowService/StartWorkflow";
        let cancel = "/sagaflow.v1.WorkflowService/CancelWorkflow";
        let client = Principal { name: "shop".into(), role: Role::Client, queues: None };
        let operator = Principal { name: "ops".into(), role: Role::Operator, queues: None };
        assert_eq!(budget(&Policy::default(), start, Some(&client)), Budget::Client { token: "shop".into() });
        assert_eq!(budget(&Policy::default(), start, Some(&operator)), Budget::Operator);
        assert_eq!(budget(&Policy::default(), start, None), Budget::Client { token: "anonymous".into() });
        assert_eq!(budget(&Policy::default(), cancel, None), Budget::Operator);
        assert_eq!(budget(&Policy::default(), "/sagaflow.v1.WorkerService/OpenSession", None), Budget::Exempt);
        assert_eq!(budget(&Policy::default(), "/grpc.health.v1.Health/Check", None), Budget::Exempt);
    }

    #[test]
    fn a_refusal_carries_the_wait() {
        let status =
            refusal(Refused { shed: super::super::Shed::Rate, retry_after: std::time::Duration::from_millis(250) });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()), Some("250"));
        assert!(status.message().contains("retry after 250 ms"), "{}", status.message());
    }
}
