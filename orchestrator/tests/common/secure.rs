//! Helpers for the security tests: token files, and calls with a token.

use std::path::{Path, PathBuf};

use sagaflow_orchestrator::auth::hash_token;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

pub const CLIENT: &str = "client-token-aaaaaaaaaaaaaaaa";
pub const OTHER_CLIENT: &str = "other-client-token-bbbbbbbbbbbb";
pub const WORKER: &str = "worker-token-cccccccccccccccc";
pub const BENCH_WORKER: &str = "bench-worker-token-dddddddddddd";
pub const OPERATOR: &str = "operator-token-eeeeeeeeeeeeeeee";

/// An auth file with one token per role, a second client, and a worker
/// confined to the bench queues.
pub fn write_auth_file(dir: &Path) -> PathBuf {
    let entry = |name: &str, role: &str, token: &str, queues: Option<&[&str]>| {
        let mut entry = serde_json::json!({"name": name, "role": role, "sha256": hash_token(token)});
        if let Some(queues) = queues {
            entry["queues"] = serde_json::json!(queues);
        }
        entry
    };
    let file = serde_json::json!({"tokens": [
        entry("shop", "client", CLIENT, None),
        entry("other-shop", "client", OTHER_CLIENT, None),
        entry("shop-workers", "worker", WORKER, None),
        entry("bench-workers", "worker", BENCH_WORKER, Some(&["bench.*"])),
        entry("oncall", "operator", OPERATOR, None),
    ]});
    let path = dir.join("auth.json");
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

/// A request carrying `token` (if any) as a bearer token.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Calls any unary-shaped method by path with an empty message: enough to
/// see what the auth layer answers, whatever the method's real types.
pub async fn raw_call(channel: &Channel, path: &str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.unary(with_token((), token), path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}
