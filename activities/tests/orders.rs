//! Orders: one per request, moved only by legal transitions.
#![allow(clippy::unwrap_used)]

mod common;

use sagaflow_activities::shop::orders::{CreateOrder, MarkShipped, OrderLine, OrderStatus, RecordRefund, order_id_for};
use serde_json::json;

use common::{open, restart};

fn create(request_id: &str, total_cents: u64) -> CreateOrder {
    CreateOrder {
        client_request_id: request_id.into(),
        checkout_id: format!("co-{request_id}"),
        customer_id: "cust-1".into(),
        lines: vec![OrderLine {
            sku: "sku-mug".into(),
            quantity: 1,
            unit_price_cents: total_cents,
            line_total_cents: total_cents,
            name: Some("Sagaflow mug".into()),
        }],
        total_cents,
        payment_intent_id: format!("pi-{request_id}"),
    }
}

fn refund(order_id: &str, refund_id: &str, amount_cents: u64) -> RecordRefund {
    RecordRefund { order_id: order_id.into(), refund_id: refund_id.into(), amount_cents }
}

#[tokio::test]
async fn an_order_is_created_once_per_request_with_a_stable_id() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let created = shop.orders().unwrap().create(create("req-1", 1_000)).await.unwrap();
    assert_eq!(created.order_id, order_id_for("req-1"));
    assert_eq!(created.status, OrderStatus::Paid);
    assert_eq!(shop.orders().unwrap().create(create("req-1", 1_000)).await.unwrap(), created);

    let shop = restart(shop, &dir);
    let orders = shop.orders().unwrap();
    assert_eq!(orders.create(create("req-1", 1_000)).await.unwrap(), created);
    assert_eq!(orders.orders().unwrap().len(), 1);
    let order = orders.order(&created.order_id).unwrap().unwrap();
    assert_eq!((order.checkout_id.as_str(), order.total_cents), ("co-req-1", 1_000));

    // The same request id for another order is refused.
    let error =
        shop.call("orders.create", "req-1", serde_json::to_value(create("req-1", 2_000)).unwrap()).await.unwrap_err();
    assert_eq!(error.error_type(), "IdempotencyKeyReused");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn shipping_and_refunds_follow_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let orders = shop.orders().unwrap();
    let order_id = orders.create(create("req-1", 1_000)).await.unwrap().order_id;

    let shipped = MarkShipped { order_id: order_id.clone(), shipment_id: "shp-1".into() };
    assert_eq!(orders.mark_shipped(shipped.clone()).await.unwrap().status, OrderStatus::Shipped);
    assert_eq!(orders.mark_shipped(shipped).await.unwrap().status, OrderStatus::Shipped);

    let partial = orders.record_refund(refund(&order_id, "rf-1", 400)).await.unwrap();
    assert_eq!((partial.status, partial.refunded_cents), (Some(OrderStatus::PartiallyRefunded), 400));
    assert_eq!(orders.record_refund(refund(&order_id, "rf-1", 400)).await.unwrap(), partial, "counted once");

    let error = shop
        .call("orders.record_refund", "rf-2", json!({"order_id": order_id, "refund_id": "rf-2", "amount_cents": 601}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "RefundExceedsTotal");

    let full = orders.record_refund(refund(&order_id, "rf-2", 600)).await.unwrap();
    assert_eq!((full.status, full.refunded_cents), (Some(OrderStatus::Refunded), 1_000));
    // A refund of a checkout that never got an order has nothing to record on.
    let orderless = orders.record_refund(refund("", "rf-orderless", 700)).await.unwrap();
    assert_eq!((orderless.order_id.as_str(), orderless.status, orderless.refunded_cents), ("", None, 700));
    let error = shop
        .call("orders.record_refund", "rf-3", json!({"order_id": order_id, "refund_id": "rf-3", "amount_cents": 1}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "IllegalTransition");
    assert!(!error.is_retryable());

    // A fully refunded order does not ship.
    let other = orders.create(create("req-2", 500)).await.unwrap().order_id;
    orders.record_refund(refund(&other, "rf-9", 500)).await.unwrap();
    let error =
        shop.call("orders.mark_shipped", &other, json!({"order_id": other, "shipment_id": "shp-2"})).await.unwrap_err();
    assert_eq!(error.error_type(), "IllegalTransition");

    let error = shop
        .call("orders.mark_shipped", "ord-none", json!({"order_id": "ord-none", "shipment_id": "shp-3"}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "UnknownOrder");

    let order = orders.order(&order_id).unwrap().unwrap();
    assert_eq!(order.refunds.len(), 2);
    assert_eq!(order.shipment_id.as_deref(), Some("shp-1"));
}
