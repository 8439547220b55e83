//! A worker killed mid-activity: its attempt times out (start-to-close) and
//! the retry runs on another worker, with the same idempotency key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    ServerProcess, WorkerProcess, await_end, full_history, start_request, status_of, wait_for_event,
    write_test_definitions,
};
use sagaflow_proto::v1::history_event::Attributes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_after_start_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(dir.path(), &["--definitions", definitions.to_str().unwrap()]).await;
    let mut client = server.client().await;
    // The first worker takes the order step and never answers.
    let doomed = WorkerProcess::start(&server.url, &["--fault", "bench.order=hang"]).await;
    let workflow_id =
        client.start_workflow(start_request("quick", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    wait_for_event(
        &mut client,
        &workflow_id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityScheduled(s)) if s.step == "order"),
    )
    .await;
    // The doomed worker must hold the order task when it dies.
    common::wait_until_leased(&mut client, &workflow_id, "order").await;
    doomed.kill9().await;
    let rescuer = WorkerProcess::start(&server.url, &[]).await;

    let end = await_end(&mut client, &workflow_id).await;
    assert_eq!(status_of(&end), "COMPLETED");
    let events = full_history(&mut client, &workflow_id).await;
    let timed_out = events.iter().any(|e| {
        matches!(&e.attributes, Some(Attributes::ActivityTimedOut(t)) if t.task_id == "2.f.1" && t.timeout_type == "START_TO_CLOSE")
    });
    assert!(timed_out, "the first order attempt timed out: {:?}", common::event_names(&events));
    let keys: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.step == "order" => Some(s.idempotency_key.clone()),
            _ => None,
        })
        .collect();
    assert!(keys.len() >= 2 && keys.iter().all(|k| *k == keys[0]), "every order attempt reuses one key: {keys:?}");
    let finished_by = events.iter().find_map(|e| match &e.attributes {
        Some(Attributes::ActivityStarted(s)) if s.task_id.starts_with("2.f.") => Some(s.worker_id.clone()),
        _ => None,
    });
    assert_eq!(finished_by.as_deref(), Some(rescuer.worker_id.as_str()));
}
