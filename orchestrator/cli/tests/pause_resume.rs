//! An operator pauses a workflow, or a whole activity queue, and resumes it,
//! through the CLI, against a real server and worker:
//! - a paused workflow records inputs and schedules nothing new, the stuck
//!   detector leaves it alone, `list`, `describe` and the metrics show it,
//!   and a `kill -9` restart does not set it running;
//! - a paused queue hands its tasks to no worker and fails none of them for
//!   waiting, across a `kill -9` restart, until it is resumed.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{
    BIN, ServerProcess, WorkerProcess, await_end, event_names, full_history, scrape, start_request, status_of,
    wait_for_event, write_test_definitions,
};
use sagaflow_proto::v1::SignalWorkflowRequest;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::Value;

async fn sagaflow(server: &ServerProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).arg("--server").arg(&server.url).args(args).output().await.unwrap()
}

async fn json(server: &ServerProcess, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let output = sagaflow(server, &all).await;
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The server flags silence after 1 s and looks every 100 ms, so that a
/// paused workflow would be flagged at once if the detector ignored pauses.
const SERVER_ARGS: [&str; 4] = ["--no-progress-after", "1s", "--stuck-check-interval", "100ms"];

async fn paused_gauge_reads(server: &ServerProcess, expected: &str) {
    metrics_show(server, &format!("sagaflow_paused_workflows {expected}")).await;
}

/// Waits until the server's metrics hold `line` (gauges are set on a tick).
async fn metrics_show(server: &ServerProcess, line: &str) {
    for _ in 0..200 {
        if scrape(&server.http).await.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the metrics never showed {line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_workflow_holds_through_signals_and_a_kill_9_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let mut args = vec!["--definitions", definitions.to_str().unwrap()];
    args.extend(SERVER_ARGS);
    let server = ServerProcess::start(dir.path(), &args).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    // `gated`: reserve, then wait for the `approve` signal, then capture.
    let id = client.start_workflow(start_request("gated", "r-pause", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(
        &mut client,
        &id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id == "0.f.1"),
    )
    .await;

    let paused = json(&server, &["workflow", "pause", &id, "--reason", "payments provider incident"]).await;
    assert_eq!(paused["changed"], true, "{paused}");
    let again = json(&server, &["workflow", "pause", &id, "--reason", "twice"]).await;
    assert_eq!(again["changed"], false, "pausing twice records nothing: {again}");

    // The approval arrives while paused: recorded, and the capture waits.
    client
        .signal_workflow(SignalWorkflowRequest {
            workflow_id: id.clone(),
            name: "approve".into(),
            input: b"{}".to_vec(),
            identity: "customer".into(),
        })
        .await
        .unwrap();
    let names = event_names(&full_history(&mut client, &id).await);
    assert_eq!(names.last(), Some(&"SignalReceived"), "nothing follows the signal: {names:?}");
    assert!(names.contains(&"WorkflowPaused"));

    // list, describe and the metrics show it; the stuck detector does not flag it.
    let listed = json(&server, &["workflow", "list", "--paused"]).await;
    let rows = listed["workflows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["paused"]["reason"], "payments provider incident");
    assert_eq!(rows[0]["status"], "RUNNING");
    paused_gauge_reads(&server, "1").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // past --no-progress-after: a flag would be raised by now
    let described = sagaflow(&server, &["workflow", "describe", &id]).await;
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("payments provider incident"), "{text}");
    assert!(!text.contains("NO_PROGRESS"), "a paused workflow is not stuck: {text}");

    // A kill -9 and a restart (recovery decides again) do not set it running.
    server.kill9().await;
    let server = ServerProcess::start(dir.path(), &args).await;
    let mut client = server.client().await;
    let before = full_history(&mut client, &id).await.len();
    paused_gauge_reads(&server, "1").await;
    assert_eq!(full_history(&mut client, &id).await.len(), before, "recovery scheduled nothing");
    drop(worker);
    let worker = WorkerProcess::start(&server.url, &[]).await;

    let resumed = json(&server, &["workflow", "resume", &id, "--reason", "incident over"]).await;
    assert_eq!(resumed["changed"], true, "{resumed}");
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPLETED");
    let names = event_names(&full_history(&mut client, &id).await);
    let resumed_at = names.iter().position(|n| *n == "WorkflowResumed").unwrap();
    let capture_at = names.iter().rposition(|n| *n == "ActivityScheduled").unwrap();
    assert!(resumed_at < capture_at, "the capture was scheduled only after the resume: {names:?}");
    assert!(!names.contains(&"StuckDetected"), "{names:?}");
    paused_gauge_reads(&server, "0").await;

    // A closed workflow cannot be paused: FAILED_PRECONDITION, exit non-zero.
    let refused = sagaflow(&server, &["workflow", "pause", &id, "--reason", "late"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("COMPLETED"), "{refused:?}");
    drop(worker);
}

/// hold (undone by bench.release), then capture, which must start within
/// 500 ms of being scheduled, unless its queue is paused.
const CAPTURE_YAML: &str = "name: held-capture
version: 1
steps:
  - name: hold
    action: {type: activity, activity_type: bench.reserve}
    compensation: {activity_type: bench.release}
  - name: capture
    kind: pivot
    action: {type: activity, activity_type: bench.capture}
    timeouts: {schedule_to_start_ms: 500, start_to_close_ms: 5000}
";

async fn queue_row(server: &ServerProcess, queue: &str) -> Value {
    let rows = json(server, &["worker", "list"]).await;
    rows.as_array().unwrap().iter().find(|q| q["queue"] == queue).cloned().unwrap_or(Value::Null)
}

async fn queue_gauge_reads(server: &ServerProcess, expected: &str) {
    metrics_show(server, &format!("sagaflow_queue_paused{{queue=\"bench.capture\"}} {expected}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_holds_its_tasks_without_failing_them_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let file = dir.path().join("held-capture.yaml");
    std::fs::write(&file, CAPTURE_YAML).unwrap();
    json(&server, &["definition", "apply", file.to_str().unwrap()]).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    let paused = json(&server, &["queue", "pause", "bench.capture", "--reason", "payment provider incident"]).await;
    assert_eq!(paused["changed"], true, "{paused}");
    queue_gauge_reads(&server, "1").await;
    let id =
        client.start_workflow(start_request("held-capture", "r-queue", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(
        &mut client,
        &id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityScheduled(s)) if s.task_id == "1.f.1"),
    )
    .await;
    // Past the capture's 500 ms schedule-to-start budget: a deadline would have fired by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let names = event_names(&full_history(&mut client, &id).await);
    assert_eq!(names.last(), Some(&"ActivityScheduled"), "held, not started and not timed out: {names:?}");
    let row = queue_row(&server, "bench.capture").await;
    assert_eq!(row["backlog"], 1, "{row}");
    assert_eq!(row["paused"]["reason"], "payment provider incident", "{row}");

    // The pause is durable: after kill -9 the task is still held.
    server.kill9().await;
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    drop(worker);
    let worker = WorkerProcess::start(&server.url, &[]).await;
    queue_gauge_reads(&server, "1").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let names = event_names(&full_history(&mut client, &id).await);
    assert_eq!(names.last(), Some(&"ActivityScheduled"), "still held after the restart: {names:?}");
    assert_eq!(queue_row(&server, "bench.capture").await["paused"]["reason"], "payment provider incident");

    let resumed = json(&server, &["queue", "resume", "bench.capture"]).await;
    assert_eq!(resumed["changed"], true, "{resumed}");
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPLETED", "{end:?}");
    let names = event_names(&full_history(&mut client, &id).await);
    assert!(!names.contains(&"ActivityTimedOut"), "no attempt failed for waiting in a paused queue: {names:?}");
    queue_gauge_reads(&server, "0").await;
    let again = json(&server, &["queue", "resume", "bench.capture"]).await;
    assert_eq!(again["changed"], false, "{again}");
    drop(worker);
}
