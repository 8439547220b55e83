//! Scenario 8, the search read model is down: workflows complete as if
//! nothing happened (JetStream decouples them), and the read model catches
//! up from its durable consumer when it returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::nats::{ConsumerProcess, NatsServer, free_port, metric, run_quick, wait_until};
use common::{BIN, ServerProcess, WorkerProcess, scrape, write_test_definitions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_search_model_catches_up_after_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let nats = NatsServer::start_on(free_port(), &dir.path().join("nats")).await;
    let server = ServerProcess::start(
        &dir.path().join("orchestrator"),
        &["--definitions", definitions.to_str().unwrap(), "--nats-url", &nats.url],
    )
    .await;
    let _worker = WorkerProcess::start(&server.url, &["--data-dir", dir.path().join("worker").to_str().unwrap()]).await;
    let consumers = dir.path().join("consumers");
    let search = ConsumerProcess::start("search", &nats.url, &consumers).await;
    // The notifications consumer runs throughout, on its own store: the
    // search consumer's outage is not its concern.
    let notifications = ConsumerProcess::start("notifications", &nats.url, &consumers).await;

    run_quick(&server.url, "early", 10, r#"{"customer_id":"early"}"#).await;
    wait_until(Duration::from_secs(15), "the search model has the early workflows", || async {
        search.orders("customer=early&status=QuickCompleted").await.len() == 10
    })
    .await;

    search.kill9().await;
    let started = Instant::now();
    let late = run_quick(&server.url, "late", 30, r#"{"customer_id":"late"}"#).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "30 workflows took {elapsed:?} with the consumer down");
    // The relay is not held back either: the events reached the broker.
    wait_until(Duration::from_secs(10), "the outbox drains while the consumer is down", || async {
        metric(&scrape(&server.http).await, "sagaflow_outbox_backlog") == Some(0.0)
    })
    .await;

    let search = ConsumerProcess::start("search", &nats.url, &consumers).await;
    wait_until(Duration::from_secs(15), "the search model catches up", || async {
        search.orders("customer=late&status=QuickCompleted").await.len() == 30
    })
    .await;
    assert_eq!(search.processed().await, 40 * 3, "each event once, across the outage");
    let rows = search.orders("customer=late").await;
    for row in &rows {
        assert!(late.iter().any(|id| row["checkout_id"] == id.as_str()), "{row}");
        assert_eq!(row["last_event"], "QuickCompleted");
        assert_eq!(row["events"], 3);
    }
    // Quick workflows tell customers nothing, but the notifications model
    // kept up on its own: one recipient record per workflow.
    wait_until(Duration::from_secs(10), "the notifications model kept up", || async {
        notifications.processed().await == 40
    })
    .await;
    assert_eq!(notifications.get("/feed?customer=late").await["messages"], serde_json::json!([]));

    // The operator's view of the same read model.
    let search_url = search.http.clone();
    let output = tokio::process::Command::new(BIN)
        .args(["search", "orders", "--customer", "late", "--search-url", &search_url, "--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.len(), 30);
    let output = tokio::process::Command::new(BIN)
        .args(["search", "orders", "--status", "quickcompleted", "--limit", "5", "--search-url", &search_url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("CHECKOUT"), "{text}");
    assert_eq!(text.lines().count(), 6, "a header and five rows: {text}");
    nats.stop().await;
}
