//! A finished task leaves no alarm behind: against a real server and worker,
//! after 300 sagas (1,200 tasks, each with start-to-close and
//! schedule-to-close deadlines far in the future), the alarms armed in
//! memory (`sagaflow_timer_alarms`) are back to what is still pending. They
//! used to stay until their deadlines passed, and memory grew with every
//! task done (found by `bench --phase soak`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, await_end, scrape, start_request, status_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_of_finished_tasks_are_dropped() {
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
    let mut last = String::new();
    for _ in 0..100 {
        let metrics = scrape(&server.http).await;
        last = metrics.lines().find(|l| l.starts_with("sagaflow_timer_alarms ")).unwrap_or_default().to_owned();
        let armed: f64 = last.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(f64::MAX);
        if armed < 10.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("alarms of finished tasks stay armed: {last:?}");
}
