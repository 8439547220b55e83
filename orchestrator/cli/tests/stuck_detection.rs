//! A queue without a worker is flagged stuck with its reason; the flag
//! clears when a worker arrives and the saga moves again.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    BIN, ServerProcess, WorkerProcess, await_end, event_names, full_history, start_request, status_of, wait_for_event,
};
use sagaflow_proto::v1::history_event::Attributes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_is_flagged_then_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--no-worker-after", "300ms", "--stuck-check-interval", "100ms", "--log-format", "json"];
    let server = ServerProcess::start_logged(dir.path(), &args, "warn").await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    let event = wait_for_event(&mut client, &id, Duration::from_secs(10), |e| {
        matches!(e.attributes, Some(Attributes::StuckDetected(_)))
    })
    .await;
    let Some(Attributes::StuckDetected(stuck)) = event.attributes else { unreachable!() };
    assert_eq!(stuck.reason, "NO_WORKER");
    assert!(stuck.message.contains("bench.reserve"), "names the queue: {}", stuck.message);
    // The operator's log line carries the id that ties it to the client's request.
    let history = full_history(&mut client, &id).await;
    let Some(Attributes::WorkflowStarted(started)) = &history[0].attributes else { unreachable!() };
    assert!(!started.correlation_id.is_empty());
    let line = format!("\"correlation_id\":\"{}\"", started.correlation_id);
    let stuck_line = |l: &str| l.contains("stuck saga detected") && l.contains(&line);
    server.logs.await_line("about the stuck saga", Duration::from_secs(10), stuck_line).await;

    let text = tokio::process::Command::new(BIN)
        .args(["workflow", "list", "--stuck", "--server", &server.url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&id) && text.contains("stuck: NO_WORKER"), "{text}");

    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPLETED");
    let names = event_names(&full_history(&mut client, &id).await);
    assert!(names.contains(&"StuckCleared"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "StuckDetected").count(), 1, "flagged once: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workflow_is_flagged_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--no-progress-after", "400ms", "--no-worker-after", "1h", "--stuck-check-interval", "100ms"],
    )
    .await;
    // A worker that takes the task and never answers.
    let _worker = WorkerProcess::start(&server.url, &["--fault", "bench.reserve=hang"]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    let event = wait_for_event(&mut client, &id, Duration::from_secs(10), |e| {
        matches!(e.attributes, Some(Attributes::StuckDetected(_)))
    })
    .await;
    let Some(Attributes::StuckDetected(stuck)) = event.attributes else { unreachable!() };
    assert_eq!(stuck.reason, "NO_PROGRESS");
    assert!(stuck.message.contains("reserve"), "{}", stuck.message);
}
