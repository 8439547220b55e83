//! Retention against a real server: a closed workflow is deleted once its
//! saga's retention (or the server's `--retention`) has passed; a saga that
//! sets a longer `retention_ms` keeps its workflows, and an open workflow is
//! never touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    ServerProcess, WorkerProcess, apply_definitions, await_end, scrape, start_request, status_of,
    write_test_definitions,
};
use sagaflow_proto::v1::DescribeWorkflowRequest;
use tonic::Code;

const DEFINITIONS: &str = "name: short-lived
version: 1
steps:
  - name: hold
    action: {type: activity, activity_type: bench.reserve}
---
name: kept
version: 1
retention_ms: 3600000
steps:
  - name: hold
    action: {type: activity, activity_type: bench.reserve}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_workflows_go_after_their_retention_and_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let tests = write_test_definitions(dir.path());
    let args = ["--definitions", tests.to_str().unwrap(), "--retention", "1s", "--retention-check-interval", "100ms"];
    let server = ServerProcess::start(dir.path(), &args).await;
    apply_definitions(&server, dir.path(), DEFINITIONS).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    let short =
        client.start_workflow(start_request("short-lived", "r-short", "{}")).await.unwrap().into_inner().workflow_id;
    let kept = client.start_workflow(start_request("kept", "r-kept", "{}")).await.unwrap().into_inner().workflow_id;
    // `gated` waits for a signal: open for the whole test.
    let open = client.start_workflow(start_request("gated", "r-open", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &short).await), "COMPLETED");
    assert_eq!(status_of(&await_end(&mut client, &kept).await), "COMPLETED");

    // The default retention (1 s) passes and the next pass deletes it.
    let mut gone = false;
    for _ in 0..200 {
        let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: short.clone() }).await;
        if described.as_ref().is_err_and(|e| e.code() == Code::NotFound) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "{short} was not deleted within 10 s of closing with a 1 s retention");
    // Passes ran after the short one closed; the others are still there.
    for id in [&kept, &open] {
        let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: id.clone() }).await;
        assert!(described.is_ok(), "{id}: {described:?}");
    }
    let metrics = scrape(&server.http).await;
    assert!(
        metrics.lines().any(|l| l == "sagaflow_workflows_expired_total{workflow_type=\"short-lived\"} 1"),
        "{}",
        metrics.lines().filter(|l| l.contains("expired")).collect::<Vec<_>>().join("\n")
    );
    // Its request id starts a new workflow.
    let again = client.start_workflow(start_request("short-lived", "r-short", "{}")).await.unwrap().into_inner();
    assert!(!again.already_started && again.workflow_id != short);
    drop(worker);
}
