//! An event a consumer keeps failing goes to `sagaflow.dlq.<consumer>` with
//! its headers, and stops blocking nothing; `sagaflow jobs run
//! replay-failed-events` re-drives it, and the fixed consumer processes it.
//! The poison is the consumer test hook: `data.poison = true` fails until
//! the event comes back marked `Sagaflow-Replayed`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::nats::{ConsumerProcess, NatsServer, free_port, read_stream, run_quick, wait_until};
use common::{BIN, ServerProcess, WorkerProcess, write_test_definitions};

/// Runs the replay job; it uses the broker the server relays to, never one a caller names.
async fn replay(server_url: &str) -> serde_json::Value {
    let output = tokio::process::Command::new(BIN)
        .args(["jobs", "run", "replay-failed-events", "--server", server_url, "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_dead_lettered_then_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let nats = NatsServer::start_on(free_port(), &dir.path().join("nats")).await;
    let server = ServerProcess::start(
        &dir.path().join("orchestrator"),
        &["--definitions", definitions.to_str().unwrap(), "--nats-url", &nats.url],
    )
    .await;
    let _worker = WorkerProcess::start(&server.url, &["--data-dir", dir.path().join("worker").to_str().unwrap()]).await;
    let search = ConsumerProcess::start("search", &nats.url, &dir.path().join("consumers")).await;

    // QuickStarted carries the input, so it is the poisoned event; the
    // workflow's other events are fine and must not wait behind it.
    let poisoned = run_quick(&server.url, "poison", 1, r#"{"customer_id":"pat","poison":true}"#).await.remove(0);
    run_quick(&server.url, "healthy", 3, r#"{"customer_id":"hal"}"#).await;
    let js = nats.jetstream().await;
    wait_until(Duration::from_secs(20), "the poison event is dead-lettered", || async {
        js.get_stream("SAGAFLOW_DLQ").await.is_ok_and(|s| s.cached_info().state.messages == 1)
    })
    .await;
    let dead = read_stream(&js, "SAGAFLOW_DLQ").await.remove(0);
    assert_eq!(dead.subject, "sagaflow.dlq.search");
    assert_eq!(dead.header("Sagaflow-Event-Id"), format!("{poisoned}/1"));
    assert_eq!(dead.header("Sagaflow-Event-Type"), "QuickStarted");
    assert_eq!(dead.header("Sagaflow-Workflow-Id"), poisoned);
    assert_eq!(dead.header("Sagaflow-Correlation-Id"), "poison-0");
    assert_eq!(dead.header("Sagaflow-Original-Subject"), "sagaflow.events.QuickStarted");
    assert_eq!(dead.header("Sagaflow-Deliveries"), "5");
    assert!(dead.header("Sagaflow-Failure").contains("poison"), "{:?}", dead.headers);
    assert!(dead.payload.contains("\"poison\":true"));

    // The rest went on: the healthy workflows, and the poisoned workflow's
    // later events (its row exists, but without the customer that only the
    // dead event carries).
    wait_until(Duration::from_secs(10), "the healthy events are projected", || async {
        search.orders("customer=hal&status=QuickCompleted").await.len() == 3
            && search.orders("status=QuickCompleted").await.len() == 4
    })
    .await;
    assert!(search.orders("customer=pat").await.is_empty());

    let report = replay(&server.url).await;
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(report["by_consumer"]["search"], 1, "{report}");
    wait_until(Duration::from_secs(10), "the replayed event is projected", || async {
        search.orders("customer=pat").await.len() == 1
    })
    .await;
    let row = search.orders("customer=pat").await.remove(0);
    assert_eq!(row["status"], "QuickCompleted", "an older event does not move the status back: {row}");
    assert_eq!(row["events"], 3);
    assert_eq!(search.processed().await, 4 * 3);

    // Each dead letter is re-driven once; the DLQ keeps it for the record.
    assert_eq!(replay(&server.url).await["replayed"], 0);
    assert_eq!(js.get_stream("SAGAFLOW_DLQ").await.unwrap().cached_info().state.messages, 1);
    let replayed: Vec<_> = read_stream(&js, "SAGAFLOW_EVENTS")
        .await
        .into_iter()
        .filter(|m| m.header("Sagaflow-Replayed") == "true")
        .collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].header("Sagaflow-Event-Id"), format!("{poisoned}/1"), "the event keeps its id");
    nats.stop().await;
}

#[tokio::test]
async fn an_unknown_job_is_refused_with_the_known_ones() {
    let output = tokio::process::Command::new(BIN).args(["jobs", "run", "tidy-up"]).output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown job \"tidy-up\"") && stderr.contains("replay-failed-events"), "{stderr}");
}
