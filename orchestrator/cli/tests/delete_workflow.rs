//! `sagaflow workflow delete ID` against a real server: a closed workflow's
//! history, index row and request id go, durably (a `kill -9` and restart
//! does not bring them back), and its request id then starts a new
//! workflow; an open workflow, or an unknown one, is refused with the
//! right code.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{BIN, ServerProcess, WorkerProcess, await_end, start_request, status_of, write_test_definitions};
use sagaflow_proto::v1::{DescribeWorkflowRequest, GetWorkflowHistoryRequest};
use tonic::Code;

async fn sagaflow(server: &ServerProcess, args: &[&str]) -> Output {
    let mut all = vec!["--server", &server.url, "--output", "json"];
    all.extend(args);
    tokio::process::Command::new(BIN).args(all).output().await.unwrap()
}

fn error_code(output: &Output) -> String {
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    error["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_workflow_is_deleted_durably_and_its_request_id_starts_anew() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let args = ["--definitions", definitions.to_str().unwrap()];
    let server = ServerProcess::start(dir.path(), &args).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    let done = client.start_workflow(start_request("quick", "r-delete", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &done).await), "COMPLETED");
    // `gated` waits for a signal: open.
    let open = client.start_workflow(start_request("gated", "r-open", "{}")).await.unwrap().into_inner().workflow_id;

    let refused = sagaflow(&server, &["workflow", "delete", &open]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(error_code(&refused), "FAILED_PRECONDITION");
    let unknown = sagaflow(&server, &["workflow", "delete", "no-such-workflow"]).await;
    assert_eq!(error_code(&unknown), "NOT_FOUND");

    let deleted = sagaflow(&server, &["workflow", "delete", &done]).await;
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));

    // Gone, and still gone after kill -9 and a restart.
    server.kill9().await;
    let server = ServerProcess::start(dir.path(), &args).await;
    let mut client = server.client().await;
    drop(worker);
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: done.clone() }).await;
    assert_eq!(described.unwrap_err().code(), Code::NotFound);
    let history = client
        .get_workflow_history(GetWorkflowHistoryRequest { workflow_id: done.clone(), ..Default::default() })
        .await;
    assert_eq!(history.unwrap_err().code(), Code::NotFound);
    let listed = sagaflow(&server, &["workflow", "list", "--all"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> =
        listed["workflows"].as_array().unwrap().iter().filter_map(|w| w["workflow_id"].as_str()).collect();
    assert!(!ids.contains(&done.as_str()) && ids.contains(&open.as_str()), "{ids:?}");

    // The request id is free again: a start with it is a new workflow.
    let again = client.start_workflow(start_request("quick", "r-delete", "{}")).await.unwrap().into_inner();
    assert!(!again.already_started);
    assert_ne!(again.workflow_id, done);
    assert_eq!(status_of(&await_end(&mut client, &again.workflow_id).await), "COMPLETED");
    drop(worker);
}
