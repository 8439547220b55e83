//! The relay creates `SAGAFLOW_EVENTS` when it is missing, and on an
//! existing stream enforces only what it relies on (the subjects and a
//! duplicate window of at least 10 minutes), keeping an operator's other
//! settings, such as replicas or retention.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::stream;
use common::nats::{NatsServer, free_port, run_quick, wait_until};
use common::{ServerProcess, WorkerProcess, write_test_definitions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_keeps_an_operators_stream_settings() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let nats = NatsServer::start_on(free_port(), &dir.path().join("nats")).await;
    let js = nats.jetstream().await;
    js.create_stream(stream::Config {
        name: "SAGAFLOW_EVENTS".into(),
        subjects: vec!["sagaflow.events.Quick*".into()],
        duplicate_window: Duration::from_secs(60),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();

    let server = ServerProcess::start(
        &dir.path().join("orchestrator"),
        &["--definitions", definitions.to_str().unwrap(), "--nats-url", &nats.url],
    )
    .await;
    let _worker = WorkerProcess::start(&server.url, &["--data-dir", dir.path().join("worker").to_str().unwrap()]).await;
    run_quick(&server.url, "config", 1, "{}").await;
    wait_until(Duration::from_secs(10), "the events reach the stream", || async {
        js.get_stream("SAGAFLOW_EVENTS").await.is_ok_and(|s| s.cached_info().state.messages == 3)
    })
    .await;
    let config = js.get_stream("SAGAFLOW_EVENTS").await.unwrap().cached_info().config.clone();
    assert_eq!(config.subjects, ["sagaflow.events.>"]);
    assert_eq!(config.duplicate_window, Duration::from_secs(600));
    assert_eq!(config.max_age, Duration::from_secs(3600), "the operator's retention stays");
    nats.stop().await;
}
