//! A result larger than the server takes fails its attempt, not the worker's
//! stream (real server process, the worker SDK in the test): before, a 1 MiB
//! result ended the stream unacknowledged, the SDK re-sent it on every
//! reconnect, and the worker served nothing else again.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, start_request};
use sagaflow_proto::v1::{AwaitWorkflowRequest, WorkflowStatus};
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use sagaflow_workflows::{SagaDefinition, Step};
use serde_json::{Value, json};

#[tokio::test]
async fn a_result_over_the_limit_fails_its_attempt_and_the_worker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let definitions: Vec<SagaDefinition> = [("big-result", "test.big"), ("small-result", "test.small")]
        .into_iter()
        .map(|(name, activity)| {
            SagaDefinition::builder(name, 1).step(Step::activity("only", activity)).build().unwrap()
        })
        .collect();
    let file = dir.path().join("definitions.json");
    std::fs::write(&file, serde_json::to_string(&definitions).unwrap()).unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &["--definitions", file.to_str().unwrap()]).await;
    let worker = Worker::builder(server.url.clone())
        .worker_id("big-results")
        .activity("test.big", |_ctx: ActivityContext, _input: Value| async move {
            Ok::<_, ActivityError>(json!({ "blob": "x".repeat(1024 * 1024) }))
        })
        .activity("test.small", |_ctx: ActivityContext, _input: Value| async move {
            Ok::<_, ActivityError>(json!({ "ok": true }))
        })
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run());
    let mut client = server.client().await;
    let mut ended = Vec::new();
    for kind in ["big-result", "small-result"] {
        let id = client.start_workflow(start_request(kind, kind, "{}")).await.unwrap().into_inner().workflow_id;
        let answer = client
            .await_workflow(AwaitWorkflowRequest { workflow_id: id, timeout_ms: 20_000 })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.terminal, "{kind} did not end: {answer:?}");
        ended.push((answer.summary.unwrap().status(), answer.reason));
    }
    assert_eq!(ended[0].0, WorkflowStatus::Failed, "{ended:?}");
    assert!(ended[0].1.contains("ResultTooLarge"), "{ended:?}");
    assert_eq!(ended[1].0, WorkflowStatus::Completed, "the worker still serves: {ended:?}");
    running.abort();
}
