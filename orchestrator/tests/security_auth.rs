//! Tokens and roles, with real server processes: every RPC without a token,
//! with a bad token and with each role; clients see only their own
//! workflows; workers serve only their queues; the CLI and the worker SDK
//! carry tokens; an unauthenticated server stays on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::secure::{self, BENCH_WORKER, CLIENT, OPERATOR, OTHER_CLIENT, WORKER, raw_call, with_token};
use common::{BIN, ServerProcess, WorkerProcess, start_request};
use prost::Message;
use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    DescribeWorkflowRequest, ExecuteWorkflowRequest, Register, WorkerMessage, server_message, worker_message,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;

/// Who may call what, written out independently of the server's table.
const CLIENT_METHODS: &[&str] = &[
    "/sagaflow.v1.WorkflowService/StartWorkflow",
    "/sagaflow.v1.WorkflowService/DescribeWorkflow",
    "/sagaflow.v1.WorkflowService/GetWorkflowHistory",
    "/sagaflow.v1.WorkflowService/AwaitWorkflow",
    "/sagaflow.v1.WorkflowService/ExecuteWorkflow",
    "/sagaflow.v1.WorkflowService/ListWorkflowTypes",
    "/sagaflow.checkout.v1.CheckoutService/StartCheckout",
    "/sagaflow.checkout.v1.CheckoutService/GetCheckout",
];
const WORKER_METHODS: &[&str] = &["/sagaflow.v1.WorkerService/OpenSession"];

/// Every method of every sagaflow service, read from the descriptor set the
/// server is built from: a method added later is covered without editing this test.
fn every_method() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(sagaflow_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = Vec::new();
    for file in set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    paths.sort();
    assert!(paths.len() >= 14, "{paths:?}");
    paths
}

async fn secured() -> (ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let auth = secure::write_auth_file(dir.path());
    let server = ServerProcess::start(&dir.path().join("data"), &["--auth-file", auth.to_str().unwrap()]).await;
    (server, dir)
}

async fn channel(server: &ServerProcess) -> Channel {
    Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn every_rpc_refuses_a_missing_or_bad_token_and_the_wrong_role() {
    let (server, _dir) = secured().await;
    let channel = channel(&server).await;
    let methods = every_method();
    let known: BTreeSet<&str> = methods.iter().map(String::as_str).collect();
    for listed in CLIENT_METHODS.iter().chain(WORKER_METHODS) {
        assert!(known.contains(listed), "{listed} is no longer a method");
    }
    for method in &methods {
        for (token, what) in [(None, "no token"), (Some("not-a-real-token-at-all"), "bad token"), (Some(""), "empty")] {
            let status = raw_call(&channel, method, token).await;
            assert_eq!(status.code(), Code::Unauthenticated, "{method} with {what}: {status:?}");
            assert!(!status.message().contains("not-a-real"), "the token leaked into {status:?}");
        }
        for (token, role) in [(CLIENT, "client"), (WORKER, "worker"), (OPERATOR, "operator")] {
            let allowed = role == "operator"
                || (role == "client" && CLIENT_METHODS.contains(&method.as_str()))
                || (role == "worker" && WORKER_METHODS.contains(&method.as_str()));
            let status = raw_call(&channel, method, Some(token)).await;
            if allowed {
                assert!(
                    !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied),
                    "{method} refused the {role}: {status:?}"
                );
            } else {
                assert_eq!(status.code(), Code::PermissionDenied, "{method} let the {role} through: {status:?}");
                assert!(status.message().contains(role), "{status:?}");
            }
        }
    }
    // Probes need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(serving.into_inner().status, 1);
    // Refusals are counted by reason, and the token never reaches the logs or metrics.
    let metrics = common::scrape(&server.http).await;
    for reason in ["missing", "unknown_token", "wrong_role"] {
        assert!(metrics.contains(&format!("sagaflow_auth_failures_total{{reason=\"{reason}\"}}")), "{reason}");
    }
    assert!(!metrics.contains("not-a-real-token"));
}

#[tokio::test]
async fn a_client_reads_only_the_workflows_it_started() {
    let (server, _dir) = secured().await;
    let mut client = WorkflowServiceClient::new(channel(&server).await);
    let started = client
        .start_workflow(with_token(start_request("bench", "mine-1", "{}"), Some(CLIENT)))
        .await
        .unwrap()
        .into_inner();
    let describe =
        |token| with_token(DescribeWorkflowRequest { workflow_id: started.workflow_id.clone() }, Some(token));
    let mine = client.describe_workflow(describe(CLIENT)).await.unwrap().into_inner();
    assert_eq!(mine.summary.unwrap().labels.get("sagaflow.owner").map(String::as_str), Some("shop"));
    let theirs = client.describe_workflow(describe(OTHER_CLIENT)).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound, "{theirs:?}");
    client.describe_workflow(describe(OPERATOR)).await.unwrap();
    // A client cannot claim another owner by setting the label itself.
    let mut forged = start_request("bench", "forged-1", "{}");
    forged.labels.insert("sagaflow.owner".into(), "shop".into());
    let forged = client.start_workflow(with_token(forged, Some(OTHER_CLIENT))).await.unwrap().into_inner();
    let read = client
        .describe_workflow(with_token(DescribeWorkflowRequest { workflow_id: forged.workflow_id }, Some(CLIENT)))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound);
}

#[tokio::test]
async fn a_client_cannot_start_refunds_or_jobs_by_name() {
    let (server, _dir) = secured().await;
    let mut client = WorkflowServiceClient::new(channel(&server).await);
    for workflow_type in ["refund", "check-invariants", "replay-failed-events"] {
        let start = start_request(workflow_type, &format!("sneaky-{workflow_type}"), "{}");
        let refused = client.start_workflow(with_token(start.clone(), Some(CLIENT))).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{workflow_type}: {refused:?}");
        // Nor through the call that starts and waits.
        let execute = ExecuteWorkflowRequest { start: Some(start.clone()), timeout_ms: 1 };
        let refused = client.execute_workflow(with_token(execute, Some(CLIENT))).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "execute {workflow_type}: {refused:?}");
        // An operator may (whatever the input then says).
        let status = client.start_workflow(with_token(start, Some(OPERATOR))).await.err();
        assert!(!status.as_ref().is_some_and(|s| s.code() == Code::PermissionDenied), "{workflow_type}: {status:?}");
    }
    let metrics = common::scrape(&server.http).await;
    assert!(metrics.contains("sagaflow_auth_failures_total{reason=\"workflow_type_not_allowed\"}"));
}

/// Opens a worker session registering `queue`, and returns the first answer.
async fn register(channel: Channel, token: &str, queue: &str) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let register = Register { worker_id: "w-1".into(), activity_types: vec![queue.into()], held: vec![] };
    tx.send(WorkerMessage { message: Some(worker_message::Message::Register(register)) }).await.unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound =
        WorkerServiceClient::new(channel).open_session(with_token(stream, Some(token))).await?.into_inner();
    let first = inbound.message().await?.and_then(|m| m.message);
    assert!(matches!(first, Some(server_message::Message::Registered(_))), "{first:?}");
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn a_worker_token_serves_only_its_queues() {
    let (server, _dir) = secured().await;
    let channel = channel(&server).await;
    register(channel.clone(), BENCH_WORKER, "bench.reserve").await.unwrap();
    let refused = register(channel.clone(), BENCH_WORKER, "payments.capture").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("payments.capture"), "{refused:?}");
    register(channel.clone(), WORKER, "payments.capture").await.unwrap();
    let client = register(channel, CLIENT, "bench.reserve").await.unwrap_err();
    assert_eq!(client.code(), Code::PermissionDenied);
}

async fn sagaflow(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(BIN);
    command.args(args).env_remove("SAGAFLOW_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().await.unwrap()
}

#[tokio::test]
async fn the_cli_and_the_worker_carry_their_tokens() {
    let (server, dir) = secured().await;
    let url = server.url.as_str();
    // The worker SDK, through `sagaflow worker --token`, runs a saga to the end.
    let _worker = WorkerProcess::start(url, &["--services", "bench", "--token", WORKER]).await;
    let start = sagaflow(
        &["workflow", "start", "bench", "--request-id", "cli-1", "--server", url, "--output", "json"],
        &[("SAGAFLOW_TOKEN", CLIENT)],
    )
    .await;
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    let id =
        serde_json::from_slice::<serde_json::Value>(&start.stdout).unwrap()["workflow_id"].as_str().unwrap().to_owned();
    let mut client = WorkflowServiceClient::new(channel(&server).await);
    let ended = client
        .await_workflow(with_token(
            sagaflow_proto::v1::AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 30_000 },
            Some(CLIENT),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.terminal, "{ended:?}");

    // No token: one line naming the fix, and a failing exit.
    let anonymous = sagaflow(&["workflow", "list", "--server", url], &[]).await;
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8(anonymous.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED") && stderr.contains("Bearer"), "{stderr}");
    // The wrong role is told which role it needs.
    let denied = sagaflow(&["workflow", "list", "--server", url, "--token", CLIENT], &[]).await;
    let stderr = String::from_utf8(denied.stderr).unwrap();
    assert!(!denied.status.success() && stderr.contains("PERMISSION_DENIED"), "{stderr}");
    // An operator token from a file lists it.
    let token_file = dir.path().join("operator.token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    let list = sagaflow(
        &["workflow", "list", "--server", url, "--token-file", token_file.to_str().unwrap(), "--output", "json"],
        &[],
    )
    .await;
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8(list.stdout).unwrap().contains(&id));
}

#[tokio::test]
async fn hash_token_prints_what_the_auth_file_stores() {
    let mut child = tokio::process::Command::new(BIN)
        .args(["auth", "hash-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(format!("{CLIENT}\n").as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sagaflow_orchestrator::auth::hash_token(CLIENT));
    let short = sagaflow(&["auth", "hash-token", "--generate"], &[]).await;
    assert!(short.status.success());
    assert_eq!(String::from_utf8(short.stdout).unwrap().trim().len(), 64);
}

#[tokio::test]
async fn without_auth_the_server_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for flag in ["--listen", "--http-listen"] {
        let mut args = vec!["server", "--data-dir", data, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = "0.0.0.0:0";
        let refused = tokio::time::timeout(Duration::from_secs(30), sagaflow(&args, &[])).await.unwrap();
        assert!(!refused.status.success(), "{flag}: started without auth on 0.0.0.0");
        let stderr = String::from_utf8(refused.stderr).unwrap();
        assert!(stderr.contains("without auth") && stderr.contains("--insecure"), "{stderr}");
    }
    // --insecure starts, and says so loudly.
    let mut child = tokio::process::Command::new(BIN)
        .args(["server", "--data-dir", data, "--listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0", "--insecure"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("INSECURE") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(warned, "no warning for --insecure");
    child.start_kill().unwrap();
    // With auth, a wildcard address is allowed.
    let auth = secure::write_auth_file(dir.path());
    let secured =
        ServerProcess::start_on(&dir.path().join("secured"), "0.0.0.0:0", &["--auth-file", auth.to_str().unwrap()])
            .await;
    assert!(secured.url.contains("0.0.0.0"), "{}", secured.url);
}
