//! Operator controls: cancel compensates, terminate stops at once, a signal
//! carries data into the saga, and cancel is refused after the pivot.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    ServerProcess, WorkerProcess, await_end, event_names, full_history, start_request, status_of, wait_for_event,
    write_test_definitions,
};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    CancelWorkflowRequest, DescribeWorkflowRequest, SignalWorkflowRequest, TerminateWorkflowRequest,
};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    server: ServerProcess,
    _worker: WorkerProcess,
    _dir: tempfile::TempDir,
}

async fn setup(worker_args: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(dir.path(), &["--definitions", definitions.to_str().unwrap()]).await;
    let worker = WorkerProcess::start(&server.url, worker_args).await;
    Setup { server, _worker: worker, _dir: dir }
}

/// Starts a `gated` saga and waits until it waits for its approval.
async fn gated_at_approval(client: &mut WorkflowServiceClient<Channel>, request_id: &str) -> String {
    let id = client.start_workflow(start_request("gated", request_id, "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(
        client,
        &id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id == "0.f.1"),
    )
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_compensates_the_completed_steps() {
    let setup = setup(&[]).await;
    let mut client = setup.server.client().await;
    let id = gated_at_approval(&mut client, "r-cancel").await;
    let cancel = CancelWorkflowRequest {
        workflow_id: id.clone(),
        reason: "customer abandoned the cart".into(),
        identity: "ops".into(),
    };
    client.cancel_workflow(cancel.clone()).await.unwrap();
    // Cancelling twice is harmless: accepted while compensating, or refused
    // once the workflow is already CANCELLED (the compensation is quick).
    if let Err(status) = client.cancel_workflow(cancel).await {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
        assert!(status.message().contains("CANCELLED"), "{status}");
    }
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "CANCELLED");
    assert_eq!(end.reason, "customer abandoned the cart");
    let events = full_history(&mut client, &id).await;
    let undone = events.iter().any(|e| matches!(&e.attributes, Some(Attributes::ActivityScheduled(s)) if s.compensation && s.activity_type == "bench.release"));
    assert!(undone, "{:?}", event_names(&events));
    assert_eq!(event_names(&events).iter().filter(|n| **n == "CancelRequested").count(), 1);
    // A cancelled workflow refuses further cancels clearly.
    let again = client
        .cancel_workflow(CancelWorkflowRequest { workflow_id: id, reason: "again".into(), identity: String::new() })
        .await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_without_compensating() {
    let setup = setup(&[]).await;
    let mut client = setup.server.client().await;
    let id = gated_at_approval(&mut client, "r-terminate").await;
    client
        .terminate_workflow(TerminateWorkflowRequest {
            workflow_id: id.clone(),
            reason: "fraud".into(),
            identity: "ops".into(),
        })
        .await
        .unwrap();
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "TERMINATED");
    let names = event_names(&full_history(&mut client, &id).await);
    assert!(!names.contains(&"CompensationStarted"), "{names:?}");
    assert_eq!(names.last(), Some(&"WorkflowTerminated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_releases_the_saga_with_its_data() {
    let setup = setup(&[]).await;
    let mut client = setup.server.client().await;
    let id = gated_at_approval(&mut client, "r-signal").await;
    let signal = SignalWorkflowRequest {
        workflow_id: id.clone(),
        name: "approve".into(),
        input: br#"{"approved_by":"risk-team"}"#.to_vec(),
        identity: "ops".into(),
    };
    client.signal_workflow(signal).await.unwrap();
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPLETED");
    let result: serde_json::Value = serde_json::from_str(&end.result).unwrap();
    assert_eq!(result["approve"]["approved_by"], "risk-team");
    // Signals to a finished workflow are refused.
    let late = SignalWorkflowRequest { workflow_id: id, name: "approve".into(), ..Default::default() };
    assert_eq!(client.signal_workflow(late).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_the_pivot_is_refused() {
    // The order step hangs, so the saga waits after its pivot.
    let setup = setup(&["--fault", "bench.order=hang"]).await;
    let mut client = setup.server.client().await;
    let id = client.start_workflow(start_request("quick", "r-pivot", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(
        &mut client,
        &id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id == "1.f.1"),
    )
    .await;
    let refused = client
        .cancel_workflow(CancelWorkflowRequest {
            workflow_id: id.clone(),
            reason: "too late".into(),
            identity: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("pivot"), "{}", refused.message());
    let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: id }).await.unwrap().into_inner();
    assert_eq!(described.summary.unwrap().status, sagaflow_proto::v1::WorkflowStatus::Running as i32);
}
