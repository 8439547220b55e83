//! Finished work leaves nothing in memory: against a real server and worker,
//! after 300 sagas (1,200 tasks),
//! - the alarms armed in memory (`sagaflow_timer_alarms`) are back to what
//!   is still pending: a task's deadlines used to stay until they passed;
//! - the workflow slots (`sagaflow_workflow_slots`) are back to the open
//!   workflows: a closed workflow's slot used to stay until
//!   `--max-hot-workflows` evicted it (found by `bench --phase soak`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, await_end, scrape, start_request, status_of};

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
    gauge_falls_below(&server, "sagaflow_timer_alarms", 10.0).await;
    gauge_falls_below(&server, "sagaflow_workflow_slots", 10.0).await;
}

/// Waits until the gauge reads below `bound` (gauges are set on a tick).
async fn gauge_falls_below(server: &ServerProcess, gauge: &str, bound: f64) {
    let mut last = String::new();
    for _ in 0..100 {
        let metrics = scrape(&server.http).await;
        last = metrics.lines().find(|l| l.split_whitespace().next() == Some(gauge)).unwrap_or_default().to_owned();
        let value: f64 = last.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(f64::MAX);
        if value < bound {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("finished work stays in memory: {last:?}");
}
