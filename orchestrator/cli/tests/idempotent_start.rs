//! StartWorkflow is idempotent by request id, also under concurrency.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, start_request};
use sagaflow_proto::v1::ListWorkflowsRequest;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_duplicates_start_one_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = server.client().await;
        calls.push(tokio::spawn(async move {
            client
                .start_workflow(start_request("bench", "pay-click-1", r#"{"cart":"c-1"}"#))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut responses = Vec::new();
    for call in calls {
        responses.push(call.await.unwrap());
    }
    let first = responses[0].workflow_id.clone();
    assert!(responses.iter().all(|r| r.workflow_id == first), "all calls return the same workflow");
    assert_eq!(responses.iter().filter(|r| !r.already_started).count(), 1, "exactly one call started it");
    let listed = server.client().await.list_workflows(ListWorkflowsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.workflows.len(), 1);
}

#[tokio::test]
async fn same_request_id_with_other_input_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let first = client.start_workflow(start_request("bench", "r-1", r#"{"a":1,"b":2}"#)).await.unwrap().into_inner();
    // Key order and whitespace do not make a different input.
    let again =
        client.start_workflow(start_request("bench", "r-1", r#"{ "b": 2, "a": 1 }"#)).await.unwrap().into_inner();
    assert_eq!(again.workflow_id, first.workflow_id);
    assert!(again.already_started);
    let other = client.start_workflow(start_request("bench", "r-1", r#"{"a":2}"#)).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    assert!(other.message().contains(&first.workflow_id), "{}", other.message());
    let other_type =
        client.start_workflow(start_request("job.check-invariants", "r-1", r#"{"a":1,"b":2}"#)).await.unwrap_err();
    assert_eq!(other_type.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_chosen_workflow_id_cannot_be_taken_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let mut request = start_request("bench", "r-1", "{}");
    request.workflow_id = "order-42".into();
    assert_eq!(client.start_workflow(request.clone()).await.unwrap().into_inner().workflow_id, "order-42");
    // A retry of that start (same request id, same id) is answered with it.
    let retried = client.start_workflow(request.clone()).await.unwrap().into_inner();
    assert_eq!((retried.workflow_id.as_str(), retried.already_started), ("order-42", true));
    request.request_id = "r-2".into();
    assert_eq!(client.start_workflow(request).await.unwrap_err().code(), Code::AlreadyExists);
}
