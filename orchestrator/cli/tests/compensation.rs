//! Failures before the pivot are undone in reverse order; a compensation that
//! keeps failing is flagged stuck with an alert, never silently dropped.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    BIN, ServerProcess, WorkerProcess, await_end, event_names, full_history, start_request, status_of, wait_for_event,
    write_test_definitions,
};
use sagaflow_proto::v1::SignalWorkflowRequest;
use sagaflow_proto::v1::history_event::Attributes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retryable_failure_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let _worker = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal"]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPENSATED");
    assert!(end.reason.contains("capture"), "{}", end.reason);
    let events = full_history(&mut client, &id).await;
    let compensations: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.compensation => Some(s.activity_type.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(compensations, vec!["bench.release"]);
    let names = event_names(&events);
    assert!(names.contains(&"CompensationStarted") && names.ends_with(&["WorkflowCompensated"]), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_is_stuck_with_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(
        dir.path(),
        &["--definitions", definitions.to_str().unwrap(), "--stuck-check-interval", "100ms"],
    )
    .await;
    let broken =
        WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal", "--fault", "bench.release=error"]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("quick", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    let stuck = wait_for_event(&mut client, &id, Duration::from_secs(15), |e| {
        matches!(e.attributes, Some(Attributes::StuckDetected(_)))
    })
    .await;
    let Some(Attributes::StuckDetected(detected)) = stuck.attributes else { unreachable!() };
    assert_eq!(detected.reason, "COMPENSATION_EXHAUSTED");
    assert!(detected.message.contains("sagaflow.retry"), "tells the operator what to do: {}", detected.message);

    // The operator sees it with `workflow list --stuck`, and on /metrics.
    let listed = tokio::process::Command::new(BIN)
        .args(["workflow", "list", "--stuck", "--output", "json", "--server", &server.url])
        .output()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["workflows"][0]["workflow_id"], id.as_str());
    assert_eq!(listed["workflows"][0]["status"], "COMPENSATING");
    assert_eq!(listed["workflows"][0]["stuck"]["reason"], "COMPENSATION_EXHAUSTED");
    let mut metric = String::new();
    for _ in 0..100 {
        metric = common::scrape(&server.http).await;
        if metric.contains("sagaflow_stuck_workflows{reason=\"COMPENSATION_EXHAUSTED\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric.contains("sagaflow_stuck_workflows{reason=\"COMPENSATION_EXHAUSTED\"} 1"), "{metric}");

    // Fix the cause, then ask for a retry: the compensation finishes.
    broken.kill9().await;
    let _fixed = WorkerProcess::start(&server.url, &[]).await;
    client
        .signal_workflow(SignalWorkflowRequest {
            workflow_id: id.clone(),
            name: "sagaflow.retry".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPENSATED");
    let names = event_names(&full_history(&mut client, &id).await);
    assert!(names.contains(&"StuckCleared"), "{names:?}");
}
