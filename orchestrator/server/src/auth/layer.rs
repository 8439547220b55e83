//! The tower layer in front of every gRPC service: authenticates the bearer
//! token and checks the method against the role table before any handler runs.
//! [`guard_http`] applies the same table to the HTTP listener's paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::policy::Policy;
use super::{Principal, Tokens};

/// Installs [`Principal`]s on requests. With no tokens configured every
/// request is [`Principal::anonymous`] and nothing is refused.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
    policy: Arc<Policy>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Arc<Tokens>>, policy: Arc<Policy>) -> Self {
        Self { tokens, policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, tokens: self.tokens.clone(), policy: Arc::clone(&self.policy) }
    }
}

#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
    policy: Arc<Policy>,
}

/// Why a request was refused; the `reason` label of `sagaflow_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    UnknownToken,
    WrongRole,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownToken => "unknown_token",
            Refusal::WrongRole => "wrong_role",
        }
    }
}

/// The principal for this request, or why it is refused.
fn admit<B>(
    tokens: &Tokens,
    policy: &Policy,
    request: &http::Request<B>,
) -> Result<Option<Principal>, (Refusal, Status)> {
    let path = request.uri().path();
    let roles = policy.allowed(path);
    if roles.is_empty() {
        return Ok(None);
    }
    let header = request.headers().get(http::header::AUTHORIZATION).ok_or_else(|| {
        (Refusal::Missing, Status::unauthenticated("this call needs a token: authorization: Bearer TOKEN"))
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            (Refusal::Malformed, Status::unauthenticated("the authorization header must be Bearer TOKEN"))
        })?;
    let principal =
        tokens.find(token).ok_or_else(|| (Refusal::UnknownToken, Status::unauthenticated("unknown token")))?;
    if !roles.contains(&principal.role) {
        let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err((
            Refusal::WrongRole,
            Status::permission_denied(format!(
                "{path} needs the role {}; token {:?} has {}",
                needed.join(" or "),
                principal.name,
                principal.role.as_str()
            )),
        ));
    }
    Ok(Some(principal.clone()))
}

/// Logs and counts a refusal; the token itself is never logged, only why it failed and where.
fn record(refusal: Refusal, path: &str, message: &str) {
    tracing::warn!(reason = refusal.reason(), method = path, "refused a call: {message}");
    metrics::counter!("sagaflow_auth_failures_total", "reason" => refusal.reason()).increment(1);
}

/// The HTTP listener's auth (`/metrics` needs an operator token, `/healthz`
/// none), as an axum middleware: the role table of the gRPC services, with
/// HTTP's codes (401 with `WWW-Authenticate: Bearer`, 403).
pub async fn guard_http(
    axum::extract::State(tokens): axum::extract::State<Option<Arc<Tokens>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(tokens) = tokens else { return next.run(request).await };
    // The HTTP listener serves platform paths only.
    match admit(&tokens, &Policy::default(), &request) {
        Ok(_) => next.run(request).await,
        Err((refusal, status)) => {
            record(refusal, request.uri().path(), status.message());
            let message = format!("{}\n", status.message());
            if refusal == Refusal::WrongRole {
                (http::StatusCode::FORBIDDEN, message).into_response()
            } else {
                (http::StatusCode::UNAUTHORIZED, [(http::header::WWW_AUTHENTICATE, "Bearer")], message).into_response()
            }
        }
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // A box per call: negligible next to a gRPC call, and it keeps the
    // layer free of a futures crate.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(tokens) = &self.tokens else {
            return Box::pin(self.inner.call(request));
        };
        match admit(tokens, &self.policy, &request) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Box::pin(self.inner.call(request))
            }
            Err((refusal, status)) => {
                record(refusal, request.uri().path(), status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, hash_token};

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            r#"{{"tokens": [{{"name": "shop", "role": "client", "sha256": "{}"}}]}}"#,
            hash_token("client-token-0123456789")
        ))
        .expect("valid")
    }

    fn request(path: &str, authorization: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).expect("valid request")
    }

    #[test]
    fn each_refusal_has_its_code() {
        let tokens = tokens();
        let start = "/sagaflow.v1.WorkflowService/StartWorkflow";
        let cancel = "/sagaflow.v1.WorkflowService/CancelWorkflow";
        let refusal =
            |path, auth| admit(&tokens, &Policy::default(), &request(path, auth)).err().map(|(r, s)| (r, s.code()));
        assert_eq!(refusal(start, None), Some((Refusal::Missing, tonic::Code::Unauthenticated)));
        assert_eq!(refusal(start, Some("Basic abc")), Some((Refusal::Malformed, tonic::Code::Unauthenticated)));
        assert_eq!(refusal(start, Some("Bearer nope")), Some((Refusal::UnknownToken, tonic::Code::Unauthenticated)));
        assert_eq!(
            refusal(cancel, Some("Bearer client-token-0123456789")),
            Some((Refusal::WrongRole, tonic::Code::PermissionDenied))
        );
        let admitted = admit(&tokens, &Policy::default(), &request(start, Some("Bearer client-token-0123456789")));
        assert_eq!(admitted.ok().flatten().map(|p| p.role), Some(Role::Client));
        assert!(matches!(admit(&tokens, &Policy::default(), &request("/grpc.health.v1.Health/Check", None)), Ok(None)));
    }
}
