//! Tokens and roles, with real server processes: every RPC without a token,
//! with a bad token and with each role; clients see only their own
//! workflows; workers serve only their queues; the CLI and the worker SDK
//! carry tokens; an unauthenticated server stays on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::secure::{self, BENCH_WORKER, CLIENT, OPERATOR, OTHER_CLIENT, WORKER, raw_call, with_token};
use common::{BIN, ServerProcess, WorkerProcess, start_request};
use prost::Message;
use sagaflow_proto::checkout::v1::GetCheckoutRequest;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, DescribeWorkflowRequest, ExecuteWorkflowRequest, GetWorkflowHistoryRequest,
    ListWorkflowTypesRequest, Register, WorkerMessage, server_message, worker_message,
};
use sagaflow_server::Extension;
use sagaflow_server::auth::Role;
use sagaflow_server::auth::policy::Policy;
use sagaflow_shop_server::CheckoutExtension;
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
    // Reads of a saga's shape; registering and deprecating stay with operators.
    "/sagaflow.v1.DefinitionService/GetDefinition",
    "/sagaflow.v1.DefinitionService/ListDefinitions",
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
    secure::start_server(&[]).await
}

async fn channel(server: &ServerProcess) -> Channel {
    Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap()
}

/// The callers of the authorization matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    BadToken,
    Client,
    WorkerInScope,
    WorkerOutOfScope,
    Operator,
}

impl Caller {
    const ALL: [Caller; 6] = [
        Caller::NoToken,
        Caller::BadToken,
        Caller::Client,
        Caller::WorkerInScope,
        Caller::WorkerOutOfScope,
        Caller::Operator,
    ];

    fn token(self) -> Option<&'static str> {
        match self {
            Caller::NoToken => None,
            Caller::BadToken => Some("not-a-real-token-at-all"),
            Caller::Client => Some(CLIENT),
            Caller::WorkerInScope => Some(WORKER),
            // Confined to `bench.*`; the matrix's session asks for `payments.capture`.
            Caller::WorkerOutOfScope => Some(BENCH_WORKER),
            Caller::Operator => Some(OPERATOR),
        }
    }

    fn role(self) -> Option<Role> {
        match self {
            Caller::NoToken | Caller::BadToken => None,
            Caller::Client => Some(Role::Client),
            Caller::WorkerInScope | Caller::WorkerOutOfScope => Some(Role::Worker),
            Caller::Operator => Some(Role::Operator),
        }
    }
}

/// The table of the server under test: the platform's and the shop's.
fn table() -> Policy {
    Policy::with_rules(CheckoutExtension.rules())
}

/// What the matrix expects of one cell, derived from the server's own table.
fn expected(method: &str, caller: Caller) -> Option<Code> {
    let roles = table().rule(method).unwrap_or_else(|| panic!("{method} has no entry in the role table"));
    if roles.is_empty() {
        return None;
    }
    match caller.role() {
        None => Some(Code::Unauthenticated),
        Some(role) if !roles.contains(&role) => Some(Code::PermissionDenied),
        // The role may open a session, but not on a queue outside its token's.
        Some(_) if caller == Caller::WorkerOutOfScope && method.ends_with("/OpenSession") => {
            Some(Code::PermissionDenied)
        }
        Some(_) => None,
    }
}

/// One cell: the method called by `caller`. A session registers for
/// `payments.capture`; any other method gets an empty message, enough to see
/// what the auth layer answers.
async fn call(channel: &Channel, method: &str, caller: Caller) -> tonic::Status {
    if method.ends_with("/OpenSession") {
        return match register(channel.clone(), caller.token(), "payments.capture").await {
            Ok(()) => tonic::Status::ok(""),
            Err(status) => status,
        };
    }
    raw_call(channel, method, caller.token()).await
}

#[tokio::test]
async fn the_authorization_matrix_holds_for_every_rpc_and_every_caller() {
    let (server, _dir) = secured().await;
    let channel = channel(&server).await;
    let mut methods = every_method();
    methods.push("/grpc.health.v1.Health/Check".into());
    // The table agrees with the roles written out independently above.
    for method in &methods {
        let roles = table().rule(method).unwrap_or_else(|| panic!("{method} has no entry in the role table"));
        let client = CLIENT_METHODS.contains(&method.as_str());
        let worker = WORKER_METHODS.contains(&method.as_str());
        assert_eq!(roles.contains(&Role::Client), client, "{method}: client");
        assert_eq!(roles.contains(&Role::Worker), worker, "{method}: worker");
    }
    let mut cells = 0;
    for method in &methods {
        for caller in Caller::ALL {
            let status = call(&channel, method, caller).await;
            match expected(method, caller) {
                Some(code) => {
                    assert_eq!(status.code(), code, "{method} by {caller:?}: {status:?}");
                    assert!(!status.message().contains("not-a-real"), "the token leaked into {status:?}");
                }
                None => assert!(
                    !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied),
                    "{method} refused {caller:?}: {status:?}"
                ),
            }
            cells += 1;
        }
    }
    println!("authorization matrix: {} methods x {} callers = {cells} cells", methods.len(), Caller::ALL.len());
    assert_eq!(cells, methods.len() * 6);
    // Refusals are counted by reason, and the token never reaches the logs or metrics.
    let metrics = common::scrape_as(&server.http, OPERATOR).await;
    for reason in ["missing", "unknown_token", "wrong_role", "queue_not_allowed"] {
        assert!(metrics.contains(&format!("sagaflow_auth_failures_total{{reason=\"{reason}\"}}")), "{reason}");
    }
    assert!(!metrics.contains("not-a-real-token"));
}

#[tokio::test]
async fn the_http_listener_needs_an_operator_token_for_metrics_but_none_for_health() {
    let (server, _dir) = secured().await;
    assert!(common::http(&server.http, "GET", "/healthz", "").await.starts_with("HTTP/1.1 200"));
    let anonymous = common::scrape(&server.http).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(anonymous.to_ascii_lowercase().contains("www-authenticate: bearer"), "{anonymous}");
    assert!(!anonymous.contains("sagaflow_"), "metrics leaked: {anonymous}");
    let client = common::scrape_as(&server.http, CLIENT).await;
    assert!(client.starts_with("HTTP/1.1 403") && client.contains("operator"), "{client}");
    let operator = common::scrape_as(&server.http, OPERATOR).await;
    assert!(operator.starts_with("HTTP/1.1 200") && operator.contains("sagaflow_auth_failures_total"), "{operator}");
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
    // Every other read of it, by the other client, is as missing.
    let id = started.workflow_id.clone();
    let history = GetWorkflowHistoryRequest { workflow_id: id.clone(), ..Default::default() };
    let status = client.get_workflow_history(with_token(history, Some(OTHER_CLIENT))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "history: {status:?}");
    let wait = AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 1 };
    let status = client.await_workflow(with_token(wait, Some(OTHER_CLIENT))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "await: {status:?}");
    let execute = ExecuteWorkflowRequest { start: Some(start_request("bench", "mine-1", "{}")), timeout_ms: 1 };
    // The same request id names no one else's workflow: never an answer about it.
    match client.execute_workflow(with_token(execute, Some(OTHER_CLIENT))).await {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "execute: {status:?}"),
        Ok(own) => assert_ne!(own.into_inner().workflow_id, id),
    }
    let mut checkouts = CheckoutServiceClient::new(channel(&server).await);
    let status = checkouts
        .get_checkout(with_token(GetCheckoutRequest { checkout_id: id.clone() }, Some(OTHER_CLIENT)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "checkout: {status:?}");
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
async fn a_client_cannot_start_any_operator_only_saga() {
    let (server, _dir) = secured().await;
    let mut client = WorkflowServiceClient::new(channel(&server).await);
    // Every type whose definition says operator-only, as the server lists them.
    let types = client
        .list_workflow_types(with_token(ListWorkflowTypesRequest {}, Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner()
        .types;
    let operator_only: Vec<String> = types
        .iter()
        .filter(|t| serde_json::from_str::<serde_json::Value>(&t.definition).unwrap()["operator_only"] == true)
        .map(|t| t.name.clone())
        .collect();
    // The refund and the five jobs, under the names they are registered by.
    assert!(operator_only.contains(&"refund".to_owned()), "{operator_only:?}");
    for job in sagaflow_workflows::jobs::NAMES {
        assert!(operator_only.contains(&sagaflow_workflows::jobs::workflow_type(job)), "{job}: {operator_only:?}");
    }
    assert!(!operator_only.contains(&"checkout".to_owned()) && !operator_only.contains(&"bench".to_owned()));
    for workflow_type in &operator_only {
        let start = start_request(workflow_type, &format!("sneaky-{workflow_type}"), "{}");
        let refused = client.start_workflow(with_token(start.clone(), Some(CLIENT))).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{workflow_type}: {refused:?}");
        // Nor through the call that starts and waits.
        let execute = ExecuteWorkflowRequest { start: Some(start.clone()), timeout_ms: 1 };
        let refused = client.execute_workflow(with_token(execute, Some(CLIENT))).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "execute {workflow_type}: {refused:?}");
    }
    // An operator may (whatever the input then says).
    let start = start_request("job.check-invariants", "operator-run", "{}");
    client.start_workflow(with_token(start, Some(OPERATOR))).await.unwrap();
    let metrics = common::scrape_as(&server.http, OPERATOR).await;
    assert!(metrics.contains("sagaflow_auth_failures_total{reason=\"workflow_type_not_allowed\"}"));
}

/// Opens a worker session registering `queue`, and returns the first answer.
async fn register(channel: Channel, token: Option<&str>, queue: &str) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let register = Register { worker_id: "w-1".into(), activity_types: vec![queue.into()], held: vec![] };
    tx.send(WorkerMessage { message: Some(worker_message::Message::Register(register)) }).await.unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut inbound = WorkerServiceClient::new(channel).open_session(with_token(stream, token)).await?.into_inner();
    let first = inbound.message().await?.and_then(|m| m.message);
    assert!(matches!(first, Some(server_message::Message::Registered(_))), "{first:?}");
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn a_worker_token_serves_only_its_queues() {
    let (server, _dir) = secured().await;
    let channel = channel(&server).await;
    register(channel.clone(), Some(BENCH_WORKER), "bench.reserve").await.unwrap();
    let refused = register(channel.clone(), Some(BENCH_WORKER), "payments.capture").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("payments.capture"), "{refused:?}");
    register(channel.clone(), Some(WORKER), "payments.capture").await.unwrap();
    let client = register(channel, Some(CLIENT), "bench.reserve").await.unwrap_err();
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
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sagaflow_server::auth::hash_token(CLIENT));
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
