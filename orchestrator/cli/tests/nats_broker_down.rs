//! Scenario 4, the event bus is down: checkouts go on, their events wait in
//! the outbox (the backlog gauge shows them), and once the broker is back
//! every event is delivered exactly once per id, in order per workflow;
//! `check-invariants` then finds the shop's books in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::nats::{NatsServer, free_port, metric, outbox_len, read_stream, run_checkouts, wait_until};
use common::{ServerProcess, WorkerProcess, scrape};

const WORKFLOWS: usize = 50;
/// The checkout's domain events, in the order each checkout emits them.
const CHECKOUT_EVENTS: [&str; 6] =
    ["CheckoutStarted", "InventoryReserved", "PaymentCaptured", "OrderCreated", "ShipmentCreated", "CheckoutCompleted"];
const EVENTS: usize = WORKFLOWS * CHECKOUT_EVENTS.len();

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_wait_for_the_broker_then_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's port is chosen now; nothing listens there yet.
    let port = free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let server = ServerProcess::start(&dir.path().join("orchestrator"), &["--nats-url", &nats_url]).await;
    let shop = "catalog,coupons,inventory,payments,orders,shipping,notifications";
    let worker_dir = dir.path().join("worker");
    let _worker =
        WorkerProcess::start(&server.url, &["--services", shop, "--data-dir", worker_dir.to_str().unwrap()]).await;

    let ids = run_checkouts(&server.url, "down", WORKFLOWS).await;
    wait_until(Duration::from_secs(10), "the backlog gauge counts every waiting event", || async {
        metric(&scrape(&server.http).await, "sagaflow_outbox_backlog") == Some(EVENTS as f64)
    })
    .await;
    assert_eq!(outbox_len(&server.url).await, EVENTS);

    let nats = NatsServer::start_on(port, &dir.path().join("nats")).await;
    wait_until(Duration::from_secs(20), "the relay drains the outbox once the broker is back", || async {
        metric(&scrape(&server.http).await, "sagaflow_outbox_backlog") == Some(0.0)
    })
    .await;
    assert_eq!(outbox_len(&server.url).await, 0, "`sagaflow events tail` has nothing left");
    let metrics = scrape(&server.http).await;
    assert_eq!(metric(&metrics, "sagaflow_outbox_relayed_total"), Some(EVENTS as f64));
    assert!(metric(&metrics, "sagaflow_outbox_relay_failures_total").unwrap_or(0.0) > 0.0, "the relay retried");

    let js = nats.jetstream().await;
    let stored = read_stream(&js, "SAGAFLOW_EVENTS").await;
    assert_eq!(stored.len(), EVENTS, "every event exactly once");
    let msg_ids: HashSet<&str> = stored.iter().map(|m| m.header("Nats-Msg-Id")).collect();
    assert_eq!(msg_ids.len(), EVENTS, "no event id twice");
    let mut per_workflow: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for message in &stored {
        let workflow_id = message.header("Sagaflow-Workflow-Id");
        let seq: u64 = message.header("Sagaflow-Workflow-Seq").parse().unwrap();
        assert_eq!(message.header("Nats-Msg-Id"), format!("{workflow_id}/{seq}"));
        assert_eq!(message.header("Sagaflow-Event-Id"), message.header("Nats-Msg-Id"));
        assert_eq!(message.subject, format!("sagaflow.events.{}", message.header("Sagaflow-Event-Type")));
        assert!(message.header("Sagaflow-Correlation-Id").starts_with("down-"));
        per_workflow.entry(workflow_id).or_default().push((seq, message.header("Sagaflow-Event-Type")));
    }
    assert_eq!(per_workflow.len(), WORKFLOWS);
    for id in &ids {
        // `stored` is in stream order, so this is the order a consumer sees.
        let events = &per_workflow[id.as_str()];
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "{id} out of order: {events:?}");
        let kinds: Vec<&str> = events.iter().map(|e| e.1).collect();
        assert_eq!(kinds, CHECKOUT_EVENTS, "{id}");
    }
    let info = js.get_stream("SAGAFLOW_EVENTS").await.unwrap().cached_info().clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
    assert_eq!(info.config.subjects, ["sagaflow.events.>"]);
    // The shop's books agree after the outage.
    let (report, ok) = common::shop::run_job(&server.url, "check-invariants", &["--grace", "0s"]).await;
    assert!(ok, "check-invariants failed: {report}");
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    nats.stop().await;
}
