//! The carrier simulator (one shipment per order) and the notification feed
//! (one message per key).
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;

use common::{open, restart};

#[tokio::test]
async fn an_order_gets_one_shipment_across_retries_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let input = json!({"order_id": "ord-1", "shipping_address": {"line1": "1 Saga St", "city": "Lyon"}, "customer_id": "cust-1"});
    let first = shop.call("shipping.create_shipment", "ord-1", input.clone()).await.unwrap();
    assert_eq!(first["status"], "CREATED");
    assert!(first["shipment_id"].as_str().unwrap().starts_with("shp-"));
    assert!(!first["carrier"].as_str().unwrap().is_empty());
    assert!(!first["tracking_number"].as_str().unwrap().is_empty());
    assert_eq!(shop.call("shipping.create_shipment", "ord-1", input.clone()).await.unwrap(), first);

    let shop = restart(shop, &dir);
    assert_eq!(shop.call("shipping.create_shipment", "ord-1", input).await.unwrap(), first);
    let shipping = shop.shipping().unwrap();
    assert_eq!(shipping.shipments().unwrap().len(), 1);
    let shipment = shipping.shipment_of_order("ord-1").unwrap().unwrap();
    assert_eq!(shipment.shipment_id, first["shipment_id"]);
    assert_eq!(shipment.customer_id.as_deref(), Some("cust-1"));

    // Another address for a shipped order is a conflict.
    let moved = json!({"order_id": "ord-1", "shipping_address": {"city": "Oslo"}, "customer_id": "cust-1"});
    let error = shop.call("shipping.create_shipment", "ord-1", moved).await.unwrap_err();
    assert_eq!(error.error_type(), "IdempotencyKeyReused");
    // No address is accepted: the carrier uses the one on file.
    shop.call("shipping.create_shipment", "ord-2", json!({"order_id": "ord-2"})).await.unwrap();
}

#[tokio::test]
async fn notifications_are_sent_once_per_key_and_kept_per_customer() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let confirmation = json!({"customer_id": "cust-1", "order_id": "ord-1", "template": "order_confirmed"});
    let sent = shop.call("notifications.send", "co-1/notify", confirmation.clone()).await.unwrap();
    assert_eq!(shop.call("notifications.send", "co-1/notify", confirmation.clone()).await.unwrap(), sent);

    // An escalation names its customer inside the workflow input.
    let alert = json!({
        "alert": "ShipmentDelayed", "step": "ship", "attempt": 5,
        "input": {"order_id": "ord-1", "customer_id": "cust-1"},
        "workflow_input": {"customer_id": "cust-1", "items": []}
    });
    let escalation = shop.call("notifications.send", "ord-1/ShipmentDelayed", alert).await.unwrap();
    assert_ne!(escalation, sent);
    shop.call("notifications.send", "co-2/notify", json!({"customer_id": "cust-2", "template": "order_confirmed"}))
        .await
        .unwrap();

    let shop = restart(shop, &dir);
    assert_eq!(shop.call("notifications.send", "co-1/notify", confirmation).await.unwrap(), sent);
    let notifications = shop.notifications().unwrap();
    let feed = notifications.feed("cust-1").unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!(feed[0].notification_id, sent["notification_id"]);
    assert_eq!(feed[0].template.as_deref(), Some("order_confirmed"));
    assert_eq!(feed[1].alert.as_deref(), Some("ShipmentDelayed"));
    assert_eq!(feed[1].order_id.as_deref(), Some("ord-1"));
    assert_eq!(notifications.feed("cust-2").unwrap().len(), 1);
    assert!(notifications.feed("cust-3").unwrap().is_empty());
    assert_eq!(notifications.all().unwrap().len(), 3);

    let error = shop.call("notifications.send", "k", json!("hello")).await.unwrap_err();
    assert_eq!(error.error_type(), "InvalidInput");
    assert!(!error.is_retryable());
}
