//! A violation found by `check-invariants` is an alert: the CLI exits
//! non-zero with the evidence, the server counts it on
//! `sagaflow_invariant_violations_total` (the reconciliation's mismatch on
//! `sagaflow_payment_mismatches_total`), and an `InvariantViolated` domain
//! event carries the evidence. A capture still within the grace period is
//! not a finding, and once the saga catches up the violation is gone.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::nats::metric;
use common::scrape;
use common::shop::{Shop, checkout};
use common::{status_of, wait_until_leased};
use sagaflow_proto::v1::StreamEventsRequest;
use sagaflow_proto::v1::event_service_client::EventServiceClient;

async fn events_of_type(server_url: &str, event_type: &str) -> Vec<sagaflow_proto::v1::DomainEvent> {
    let mut client = EventServiceClient::connect(server_url.to_owned()).await.unwrap();
    let mut stream =
        client.stream_events(StreamEventsRequest { after_seq: 0, follow: false }).await.unwrap().into_inner();
    let mut found = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if event.event_type == event_type {
            found.push(event);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_without_an_order_raises_an_alert() {
    // The order service hangs: the payment is captured, the order never made.
    let mut shop = Shop::start(&[], &[("orders", &["--fault", "orders.create=hang"])]).await;
    let checkout_id = shop.start_checkout(checkout("alert-1", "lena", &[("sku-mug", 1)])).await;
    let mut workflows = shop.server().client().await;
    wait_until_leased(&mut workflows, &checkout_id, "order").await;

    // Within the grace period the capture is only pending.
    let (pending, ok) = shop.job("check-invariants", &["--grace", "10m"]).await;
    assert!(ok, "{pending}");
    assert_eq!(pending["steps"]["orders"]["pending"], 1, "{pending}");

    let (report, ok) = shop.job("check-invariants", &["--grace", "0s"]).await;
    assert!(!ok, "a violation exits non-zero: {report}");
    let violations = report["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{report}");
    assert_eq!(violations[0]["invariant"], "capture_has_order_or_refund");
    let intent = shop.get_checkout(&checkout_id).await.payment_intent_id;
    assert_eq!(violations[0]["subject"], intent.as_str());

    let metrics = scrape(&shop.server().http).await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sagaflow_invariant_violations_total{") && l.contains("capture_has_order_or_refund"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(counted, 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "sagaflow_invariant_violations_total"), Some(1.0), "{metrics}");
    let alerts = events_of_type(&shop.server().url, "InvariantViolated").await;
    assert_eq!(alerts.len(), 1, "one domain event");
    assert!(alerts[0].payload.contains(&intent), "the evidence: {}", alerts[0].payload);

    // The reconciliation reports the same capture as a `PaymentMismatch`,
    // counted on the counter its definition names (FindingsAlert::metric),
    // with the same labels: not on the invariants' counter.
    let (reconciled, ok) = shop.job("reconcile-payments-vs-orders", &["--grace", "0s"]).await;
    assert!(!ok, "a mismatch exits non-zero: {reconciled}");
    let metrics = scrape(&shop.server().http).await;
    let mismatches: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("sagaflow_payment_mismatches_total{")).collect();
    assert_eq!(mismatches.len(), 1, "{metrics}");
    for label in ["job=\"job.reconcile-payments-vs-orders\"", "alert=\"PaymentMismatch\"", "invariant=\""] {
        assert!(mismatches[0].contains(label), "{label} in {}", mismatches[0]);
    }
    assert!(mismatches[0].ends_with(" 1"), "{}", mismatches[0]);
    assert_eq!(metric(&metrics, "sagaflow_invariant_violations_total"), Some(1.0), "{metrics}");

    // The order service recovers; the saga catches up and the books agree.
    shop.kill_worker("orders").await;
    shop.start_worker("orders", &[]).await;
    assert_eq!(status_of(&shop.await_end(&checkout_id, Duration::from_secs(90)).await), "COMPLETED");
    shop.assert_invariants_hold().await;
    assert_eq!(events_of_type(&shop.server().url, "InvariantViolated").await.len(), 1, "no new alert");
}
