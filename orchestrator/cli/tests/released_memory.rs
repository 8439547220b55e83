//! Finished work leaves nothing in memory: against a real server and worker,
//! after 300 sagas (1,200 tasks),
//! - the alarms armed in memory (`sagaflow_timer_alarms`) are back to what
//!   is still pending: a task's deadlines used to stay until they passed;
//! - the workflow slots (`sagaflow_workflow_slots`) are back to the open
//!   workflows: a closed workflow's slot used to stay until
//!   `--max-hot-workflows` evicted it (found by `bench --phase soak`);
//! - a signal deadline answered early takes its alarm with it: it used to
//!   stay in memory until the deadline (a day, here) passed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, await_end, metric_where, scrape, start_request, status_of};
use sagaflow_proto::v1::SignalWorkflowRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_slots_of_finished_work_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--stuck-check-interval", "100ms"]).await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            client
                .start_workflow(start_request("bench", &format!("a-{i}"), "{}"))
                .await
                .unwrap()
                .into_inner()
                .workflow_id,
        );
    }
    for id in &ids {
        assert_eq!(status_of(&await_end(&mut client, id).await), "COMPLETED");
    }
    await_gauge(&server, "sagaflow_timer_alarms", |v| v < 10.0, "finished work stays in memory").await;
    await_gauge(&server, "sagaflow_workflow_slots", |v| v < 10.0, "finished work stays in memory").await;
}

const APPROVAL: &str = "name: approval
version: 1
steps:
  - name: approve
    action: {type: await_signal, signal: approve, timeout_ms: 86400000}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_deadline_answered_early_is_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = dir.path().join("approval.yaml");
    std::fs::write(&definitions, APPROVAL).unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--stuck-check-interval", "100ms", "--definitions", definitions.to_str().unwrap()],
    )
    .await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let started = client.start_workflow(start_request("approval", &format!("s-{i}"), "{}")).await.unwrap();
        ids.push(started.into_inner().workflow_id);
    }
    // Each waits with a day's deadline: its alarm is armed.
    await_gauge(&server, "sagaflow_timer_alarms", |v| v >= 200.0, "the deadlines were not armed").await;
    for id in &ids {
        let signal = SignalWorkflowRequest { workflow_id: id.clone(), name: "approve".into(), ..Default::default() };
        client.signal_workflow(signal).await.unwrap();
    }
    for id in &ids {
        assert_eq!(status_of(&await_end(&mut client, id).await), "COMPLETED");
    }
    await_gauge(&server, "sagaflow_timer_alarms", |v| v < 10.0, "answered deadlines stay armed").await;
}

/// Waits until the gauge's value passes `test` (gauges are set on a tick).
async fn await_gauge(server: &ServerProcess, gauge: &str, test: impl Fn(f64) -> bool, failure: &str) {
    let mut last = None;
    for _ in 0..100 {
        last = metric_where(&scrape(&server.http).await, gauge, &[]);
        if last.is_some_and(&test) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{failure}: {gauge} reads {last:?}");
}
