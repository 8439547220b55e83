//! ExecuteWorkflow: one call that starts a workflow and waits for its end,
//! with StartWorkflow's idempotency and AwaitWorkflow's deadline.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, WorkerProcess, await_end, full_history, start_request, status_of};
use sagaflow_proto::v1::{AwaitWorkflowResponse, ExecuteWorkflowRequest};
use tonic::Code;

fn execute(request_id: &str, timeout_ms: u32) -> ExecuteWorkflowRequest {
    ExecuteWorkflowRequest { start: Some(start_request("bench", request_id, r#"{"cart":"c-1"}"#)), timeout_ms }
}

fn outcome(response: &sagaflow_proto::v1::ExecuteWorkflowResponse) -> &AwaitWorkflowResponse {
    response.outcome.as_ref().unwrap()
}

#[tokio::test]
async fn one_call_starts_the_workflow_and_returns_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;
    let first = client.execute_workflow(execute("pay-1", 30_000)).await.unwrap().into_inner();
    assert!(!first.already_started);
    assert!(outcome(&first).terminal);
    assert_eq!(status_of(outcome(&first)), "COMPLETED");
    let events = full_history(&mut client, &first.workflow_id).await;
    assert_eq!(common::event_names(&events).last(), Some(&"WorkflowCompleted"));
    // The same request again: the same workflow, already ended, not a second run.
    let again = client.execute_workflow(execute("pay-1", 30_000)).await.unwrap().into_inner();
    assert_eq!(again.workflow_id, first.workflow_id);
    assert!(again.already_started);
    assert_eq!(status_of(outcome(&again)), "COMPLETED");
    assert_eq!(full_history(&mut client, &first.workflow_id).await.len(), events.len());
}

#[tokio::test]
async fn a_wait_that_runs_out_leaves_the_workflow_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    // No worker yet: the first step cannot run.
    let started = client.execute_workflow(execute("pay-2", 200)).await.unwrap().into_inner();
    assert!(!outcome(&started).terminal);
    assert_eq!(status_of(outcome(&started)), "RUNNING");
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    assert_eq!(status_of(&await_end(&mut client, &started.workflow_id).await), "COMPLETED");
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_a_clash_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let missing = client.execute_workflow(ExecuteWorkflowRequest { start: None, timeout_ms: 1 }).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    let mut not_json = execute("pay-3", 1);
    if let Some(start) = not_json.start.as_mut() {
        start.input = b"{not json".to_vec();
    }
    assert_eq!(client.execute_workflow(not_json).await.unwrap_err().code(), Code::InvalidArgument);
    client.execute_workflow(execute("pay-4", 1)).await.unwrap();
    let mut other_input = execute("pay-4", 1);
    if let Some(start) = other_input.start.as_mut() {
        start.input = br#"{"cart":"c-2"}"#.to_vec();
    }
    assert_eq!(client.execute_workflow(other_input).await.unwrap_err().code(), Code::AlreadyExists);
}
