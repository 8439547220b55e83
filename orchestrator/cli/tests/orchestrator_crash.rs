//! The orchestrator killed mid-saga: after a restart every saga resumes and
//! completes, and no step completes twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, assert_intact, await_end, full_history, start_request, status_of};
use sagaflow_proto::v1::history_event::Attributes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_after_the_orchestrator_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let url = server.url.clone();
    // Slow activities keep every saga mid-flight when the kill comes.
    let _worker = WorkerProcess::start(&url, &["--activity-latency-ms", "150"]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            client
                .start_workflow(start_request("bench", &format!("r-{i}"), "{}"))
                .await
                .unwrap()
                .into_inner()
                .workflow_id,
        );
    }
    common::wait_for_event(
        &mut client,
        &ids[0],
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id == "0.f.1"),
    )
    .await;
    server.kill9().await;

    // Same port: the worker reconnects on its own.
    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    let mut client = server.client().await;
    for id in &ids {
        let end = await_end(&mut client, id).await;
        assert_eq!(status_of(&end), "COMPLETED", "{id}");
        let events = full_history(&mut client, id).await;
        assert_intact(id, &events);
        common::assert_each_step_completed_once(id, &events);
        let completed =
            events.iter().filter(|e| matches!(e.attributes, Some(Attributes::ActivityCompleted(_)))).count();
        assert_eq!(completed, 4, "{id}: four steps, four completions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timers_fire_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = common::write_test_definitions(dir.path());
    let args = ["--definitions", definitions.to_str().unwrap()];
    let server = ServerProcess::start(dir.path(), &args).await;
    let url = server.url.clone();
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("sleepy", "r-nap", "{}")).await.unwrap().into_inner().workflow_id;
    common::wait_for_event(&mut client, &id, Duration::from_secs(10), |e| {
        matches!(e.attributes, Some(Attributes::TimerStarted(_)))
    })
    .await;
    server.kill9().await;
    // The timer lives only on disk now.
    let server = ServerProcess::start_on(dir.path(), &url, &args).await;
    let _worker = WorkerProcess::start(&url, &[]).await;
    let mut client = server.client().await;
    let end = await_end(&mut client, &id).await;
    assert_eq!(status_of(&end), "COMPLETED");
    let names = common::event_names(&full_history(&mut client, &id).await);
    assert!(names.contains(&"TimerFired"), "{names:?}");
}
