//! Every mutating shop activity, called again with the same key, answers the
//! first call's result and applies nothing twice, also after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use sagaflow_activities::shop::orders::order_id_for;
use serde_json::{Value, json};

use common::{assert_invariants, items, open, restart, stock};

#[tokio::test]
async fn each_mutating_activity_applies_once_per_key_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let order_id = order_id_for("req-1");

    // A whole checkout and a refund, then a released reservation. Inputs that
    // depend on an earlier result are built from the first run's results.
    let mut calls: Vec<(&str, String, Value)> = vec![
        (
            "inventory.reserve",
            "res-1".into(),
            json!({"reservation_id": "res-1", "items": items(&[("sku-mug", 2), ("sku-tee", 1)])}),
        ),
        (
            "payments.capture",
            "pi-1".into(),
            json!({"payment_intent_id": "pi-1", "customer_id": "cust-1", "payment_method": "card", "amount_cents": 5097}),
        ),
        ("inventory.commit", "res-1".into(), json!({"reservation_id": "res-1"})),
        (
            "orders.create",
            "req-1".into(),
            json!({
                "client_request_id": "req-1", "checkout_id": "co-1", "customer_id": "cust-1",
                "lines": [{"sku": "sku-mug", "quantity": 2, "unit_price_cents": 1299, "line_total_cents": 2598}],
                "total_cents": 5097, "payment_intent_id": "pi-1"
            }),
        ),
        (
            "shipping.create_shipment",
            order_id.clone(),
            json!({"order_id": order_id, "shipping_address": {"city": "Lyon"}, "customer_id": "cust-1"}),
        ),
        (
            "payments.refund",
            "rf-1".into(),
            json!({"refund_id": "rf-1", "payment_intent_id": "pi-1", "amount_cents": 1000}),
        ),
        (
            "orders.record_refund",
            "rf-1".into(),
            json!({"order_id": order_id, "refund_id": "rf-1", "amount_cents": 1000}),
        ),
        (
            "notifications.send",
            "co-1/notify".into(),
            json!({"customer_id": "cust-1", "order_id": order_id, "template": "order_confirmed"}),
        ),
        ("inventory.reserve", "res-2".into(), json!({"reservation_id": "res-2", "items": items(&[("sku-cap", 3)])})),
        ("inventory.release", "res-2/compensate".into(), json!({"reservation_id": "res-2"})),
    ];

    let mut first = Vec::new();
    for (activity_type, key, input) in &calls {
        first.push(shop.call(activity_type, key, input.clone()).await.unwrap());
        if *activity_type == "shipping.create_shipment" {
            let shipment_id = first.last().unwrap()["shipment_id"].clone();
            let mark = json!({"order_id": order_id, "shipment_id": shipment_id});
            first.push(shop.call("orders.mark_shipped", &order_id, mark.clone()).await.unwrap());
        }
    }
    // Put the mark_shipped call in the list for the replays.
    let ship_at = calls.iter().position(|(t, _, _)| *t == "shipping.create_shipment").unwrap();
    let mark = json!({"order_id": order_id, "shipment_id": first[ship_at]["shipment_id"]});
    calls.insert(ship_at + 1, ("orders.mark_shipped", order_id.clone(), mark));
    assert_eq!(first[ship_at + 1]["status"], "SHIPPED");
    assert_eq!(first[1], json!({"payment_intent_id": "pi-1", "captured_cents": 5097, "status": "captured"}));
    assert_eq!(first[3], json!({"order_id": order_id, "status": "PAID"}));
    assert_eq!(first.last().unwrap(), &json!({"reservation_id": "res-2", "released": true}));

    let check_effects = |shop: &sagaflow_activities::Shop| {
        assert_eq!(stock(shop, "sku-mug"), (98, 0, 2));
        assert_eq!(stock(shop, "sku-tee"), (99, 0, 1));
        assert_eq!(stock(shop, "sku-cap"), (100, 0, 0));
        let payments = shop.payments().unwrap();
        assert_eq!(payments.ledger().unwrap().len(), 2, "one capture, one refund");
        assert_eq!(payments.refunded_cents("pi-1").unwrap(), 1000);
        let orders = shop.orders().unwrap().orders().unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].refunded_cents, 1000);
        assert_eq!(orders[0].shipment_id.as_deref(), first[ship_at]["shipment_id"].as_str());
        assert_eq!(shop.shipping().unwrap().shipments().unwrap().len(), 1);
        assert_eq!(shop.notifications().unwrap().feed("cust-1").unwrap().len(), 1);
        assert_invariants(shop);
    };
    check_effects(&shop);

    for (index, (activity_type, key, input)) in calls.iter().enumerate() {
        let again = shop.call(activity_type, key, input.clone()).await.unwrap();
        assert_eq!(again, first[index], "{activity_type} replayed");
    }
    check_effects(&shop);

    let shop = restart(shop, &dir);
    for (index, (activity_type, key, input)) in calls.iter().enumerate() {
        let again = shop.call(activity_type, key, input.clone()).await.unwrap();
        assert_eq!(again, first[index], "{activity_type} replayed after a restart");
    }
    check_effects(&shop);
}

#[tokio::test]
async fn a_key_reused_with_another_input_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let reserve = |quantity: u32| json!({"reservation_id": "res-1", "items": items(&[("sku-mug", quantity)])});
    shop.call("inventory.reserve", "res-1", reserve(1)).await.unwrap();
    let error = shop.call("inventory.reserve", "res-1", reserve(2)).await.unwrap_err();
    assert_eq!(error.error_type(), "IdempotencyKeyReused");
    assert!(!error.is_retryable());
    assert_eq!(stock(&shop, "sku-mug"), (99, 1, 0));
}

#[tokio::test]
async fn concurrent_duplicates_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let capture = json!({"payment_intent_id": "pi-9", "customer_id": "c", "amount_cents": 1299});
    let order = json!({
        "client_request_id": "req-9", "checkout_id": "co-9", "customer_id": "c",
        "lines": [{"sku": "sku-mug", "quantity": 1, "unit_price_cents": 1299, "line_total_cents": 1299}],
        "total_cents": 1299, "payment_intent_id": "pi-9"
    });
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (shop, capture, order) = (shop.clone(), capture.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let captured = shop.call("payments.capture", "pi-9", capture).await.unwrap();
            let created = shop.call("orders.create", "req-9", order).await.unwrap();
            (captured, created)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(shop.payments().unwrap().ledger().unwrap().len(), 1);
    assert_eq!(shop.orders().unwrap().orders().unwrap().len(), 1);
    assert_invariants(&shop);
}
