//! Scenario 5: the carrier API answers 500. The order stays `PAID`, the
//! shipment is retried with backoff, `ShipmentDelayed` is raised and the
//! customer told, and nothing is compensated; the shipment goes out once
//! the carrier recovers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout};
use common::{event_names, full_history, status_of, wait_for_event};
use sagaflow_proto::checkout::v1::CheckoutStatus;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_carrier_delays_the_shipment_and_compensates_nothing() {
    let shop = Shop::start(&[], &[]).await;
    // The carrier starts failing, as an operator would see it: through the admin API.
    let faults =
        shop.admin("shipping", "POST", "/faults", Some(json!({"spec": "shipping.create_shipment=error"}))).await;
    assert_eq!(faults, json!(["shipping.create_shipment=error"]));
    let checkout_id = shop.start_checkout(checkout("s5-carrier", "gina", &[("sku-notebook", 1)])).await;
    let mut workflows = shop.server().client().await;
    wait_for_event(
        &mut workflows,
        &checkout_id,
        Duration::from_secs(60),
        |e| matches!(&e.attributes, Some(Attributes::StepEscalated(s)) if s.alert == "ShipmentDelayed"),
    )
    .await;
    let delayed = shop.get_checkout(&checkout_id).await;
    assert_eq!(delayed.shipment_status, "DELAYED");
    let order = shop.admin("orders", "GET", &format!("/orders/{}", delayed.order_id), None).await;
    assert_eq!(order["status"], "PAID", "the order stays PAID while the carrier fails");
    // The notification follows the escalation through the outbox: await it.
    common::nats::wait_until(Duration::from_secs(15), "the customer is told of the delay", || async {
        let feed = shop.admin("notifications", "GET", "/notifications?customer=gina", None).await;
        feed.to_string().contains("ShipmentDelayed")
    })
    .await;

    // Backoff: the attempts are spaced further and further apart.
    let history = full_history(&mut workflows, &checkout_id).await;
    let scheduled: Vec<i64> = history
        .iter()
        .filter(|e| matches!(&e.attributes, Some(Attributes::ActivityScheduled(s)) if s.task_id.starts_with("5.f.")))
        .map(|e| e.time_ms)
        .collect();
    assert!(scheduled.len() >= 5, "{scheduled:?}");
    let gaps: Vec<i64> = scheduled.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.last() > gaps.first(), "retries back off: gaps {gaps:?}");

    // The carrier recovers: the shipment goes out, once.
    shop.admin("shipping", "DELETE", "/faults", None).await;
    let done = shop.await_end(&checkout_id, Duration::from_secs(60)).await;
    assert_eq!(status_of(&done), "COMPLETED");
    assert_eq!(shop.get_checkout(&checkout_id).await.status, CheckoutStatus::Shipped as i32);
    let names = event_names(&full_history(&mut workflows, &checkout_id).await);
    assert!(!names.contains(&"CompensationStarted"), "nothing is compensated: {names:?}");
    let shipments = shop.admin("shipping", "GET", "/shipments", None).await;
    assert_eq!(shipments.as_array().unwrap().len(), 1, "{shipments}");
    shop.assert_invariants_hold().await;
}
