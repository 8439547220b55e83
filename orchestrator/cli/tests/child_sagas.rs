//! Child sagas against a real server and worker (ADR 0023): a parent that
//! compensates has its completed child undo itself; a parent that passes its
//! pivot releases its held child, also after a `kill -9` of the server while
//! the child was held; a held child refuses a cancel of its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    ServerProcess, WorkerProcess, apply_definitions, await_end, event_names, full_history, start_request, status_of,
    wait_for_event,
};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{CancelWorkflowRequest, SignalWorkflowRequest};
use tonic::Code;
use tonic::transport::Channel;

const DEFINITIONS: &str = "name: extras
version: 1
steps:
  - name: seat
    action: {type: activity, activity_type: bench.reserve}
    compensation: {activity_type: bench.release}
---
name: trip-child
version: 1
steps:
  - name: room
    action: {type: activity, activity_type: bench.reserve}
    compensation: {activity_type: bench.release}
  - name: extras
    action: {type: child, workflow_type: extras}
  - name: go
    action: {type: await_signal, signal: go, timeout_ms: 0}
  - name: pay
    kind: pivot
    action: {type: activity, activity_type: bench.capture}
    retry: {initial_interval_ms: 50, maximum_attempts: 2}
";

async fn signal_go(client: &mut sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient<Channel>, id: &str) {
    let signal = SignalWorkflowRequest {
        workflow_id: id.into(),
        name: "go".into(),
        input: b"{}".to_vec(),
        identity: "test".into(),
    };
    client.signal_workflow(signal).await.unwrap();
}

async fn started_and_held(
    client: &mut sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient<Channel>,
    request_id: &str,
) -> (String, String) {
    let id =
        client.start_workflow(start_request("trip-child", request_id, "{}")).await.unwrap().into_inner().workflow_id;
    // The parent's child step completes once the child is held.
    wait_for_event(
        client,
        &id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id == "1.f.1"),
    )
    .await;
    let child = format!("{id}.extras");
    (id, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_is_undone_with_its_parent_and_released_past_the_parents_pivot_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    apply_definitions(&server, dir.path(), DEFINITIONS).await;
    // The first capture is declined for good: that trip compensates.
    let worker = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal:1"]).await;
    let mut client = server.client().await;

    // 1. The parent compensates: its held child undoes its seat, then the room goes.
    let (declined, child) = started_and_held(&mut client, "trip-declined").await;
    let names = event_names(&full_history(&mut client, &child).await);
    assert_eq!(names.last(), Some(&"WorkflowHeld"), "{names:?}");
    signal_go(&mut client, &declined).await;
    assert_eq!(status_of(&await_end(&mut client, &declined).await), "COMPENSATED");
    let end = await_end(&mut client, &child).await;
    assert_eq!(status_of(&end), "COMPENSATED", "{end:?}");
    let events = full_history(&mut client, &child).await;
    let released_seat = events.iter().any(|e| {
        matches!(&e.attributes, Some(Attributes::ActivityScheduled(s)) if s.compensation && s.activity_type == "bench.release")
    });
    assert!(released_seat, "{:?}", event_names(&events));
    let parent = full_history(&mut client, &declined).await;
    let undone: Vec<String> = parent
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.compensation => Some(s.step.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(undone, ["extras", "room"], "newest first: the child, then the room");

    // 2. A held child refuses its own cancel; it belongs to its parent.
    let (paid, child) = started_and_held(&mut client, "trip-paid").await;
    let cancel = CancelWorkflowRequest { workflow_id: child.clone(), reason: "no".into(), identity: "ops".into() };
    let refused = client.cancel_workflow(cancel).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("held for its parent"), "{refused}");

    // 3. kill -9 while the child is held; after the restart the parent's
    //    pivot still releases it.
    server.kill9().await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    drop(worker);
    let worker = WorkerProcess::start(&server.url, &[]).await;
    signal_go(&mut client, &paid).await;
    assert_eq!(status_of(&await_end(&mut client, &paid).await), "COMPLETED");
    let end = await_end(&mut client, &child).await;
    assert_eq!(status_of(&end), "COMPLETED", "{end:?}");
    let names = event_names(&full_history(&mut client, &child).await);
    assert_eq!(names[names.len() - 2..], ["WorkflowHeld", "WorkflowCompleted"], "{names:?}");
    drop(worker);
}
