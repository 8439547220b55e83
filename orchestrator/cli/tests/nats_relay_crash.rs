//! The relay dies between publish and delete: the broker has the events,
//! the outbox still has them too. After a restart the relay publishes them
//! again under the same `Nats-Msg-Id`, JetStream drops the copies, and no
//! duplicate reaches a consumer.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::nats::{ConsumerProcess, NatsServer, free_port, metric, outbox_len, read_stream, run_quick, wait_until};
use common::{ServerProcess, WorkerProcess, scrape, write_test_definitions};

const WORKFLOWS: usize = 30;
const EVENTS: usize = WORKFLOWS * 3;
/// The crash comes after this many PubAcks, before their outbox records go.
const CRASH_AFTER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_publish_and_delete_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let data = dir.path().join("orchestrator");
    let definitions = definitions.to_str().unwrap();

    // Events pile up first (no broker configured), so that the relay has
    // many to publish when it starts.
    let server = ServerProcess::start(&data, &["--definitions", definitions]).await;
    let worker = WorkerProcess::start(&server.url, &["--data-dir", dir.path().join("worker").to_str().unwrap()]).await;
    run_quick(&server.url, "crash", WORKFLOWS, "{}").await;
    worker.kill9().await;
    server.stop().await;

    let nats = NatsServer::start_on(free_port(), &dir.path().join("nats")).await;
    let crash_after = CRASH_AFTER.to_string();
    let crashing = ServerProcess::start_with_env(
        &data,
        "127.0.0.1:0",
        &["--definitions", definitions, "--nats-url", &nats.url],
        &[("SAGAFLOW_FAULT_RELAY_CRASH_AFTER_PUBLISHED", &crash_after)],
        None,
    )
    .await;
    // The fault aborts the process (no shutdown, no flush) right after the
    // PubAcks of its first windows and before their outbox records go.
    let address = crashing.host_port();
    wait_until(Duration::from_secs(15), "the relay crashes after publishing", || async {
        tokio::net::TcpStream::connect(&address).await.is_err()
    })
    .await;
    drop(crashing);
    let js = nats.jetstream().await;
    let published = read_stream(&js, "SAGAFLOW_EVENTS").await.len();
    assert!(published >= CRASH_AFTER, "only {published} events reached the broker before the crash");

    let server = ServerProcess::start(&data, &["--definitions", definitions, "--nats-url", &nats.url]).await;
    wait_until(Duration::from_secs(20), "the restarted relay drains the outbox", || async {
        metric(&scrape(&server.http).await, "sagaflow_outbox_backlog") == Some(0.0)
    })
    .await;
    assert_eq!(outbox_len(&server.url).await, 0);
    // The restarted relay published what the outbox still held: everything
    // the crashed one had not deleted. The overlap with what the broker
    // already had (the window between publish and delete) came back as
    // duplicates, and only those.
    let metrics = scrape(&server.http).await;
    let relayed = metric(&metrics, "sagaflow_outbox_relayed_total").unwrap() as usize;
    let duplicates = metric(&metrics, "sagaflow_outbox_relay_duplicates_total").unwrap_or(0.0) as usize;
    let overlap = relayed + published - EVENTS;
    assert!(overlap >= 1, "the crash left published events in the outbox");
    assert_eq!(duplicates, overlap, "JetStream dropped exactly the re-published events");

    let stored = read_stream(&js, "SAGAFLOW_EVENTS").await;
    let ids: HashSet<&str> = stored.iter().map(|m| m.header("Sagaflow-Event-Id")).collect();
    assert_eq!(stored.len(), EVENTS, "the stream holds each event once");
    assert_eq!(ids.len(), EVENTS);

    // A consumer reading the whole stream meets no duplicate at all: its
    // idempotency (the second line of defence) never has to act.
    let consumer = ConsumerProcess::start("search", &nats.url, &dir.path().join("consumers")).await;
    wait_until(Duration::from_secs(15), "the consumer reads every event", || async {
        consumer.processed().await == EVENTS as u64
    })
    .await;
    let consumer_metrics = common::nats::http_get(&consumer.http, "/metrics").await;
    let series = |outcome: &str| {
        metric(
            &consumer_metrics,
            &format!("sagaflow_consumer_events_total{{consumer=\"search\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(series("projected"), Some(EVENTS as f64), "{consumer_metrics}");
    assert!(!consumer_metrics.contains("outcome=\"duplicate\""), "{consumer_metrics}");
    assert_eq!(consumer.orders("status=QuickCompleted&limit=1000").await.len(), WORKFLOWS);
    nats.stop().await;
}
