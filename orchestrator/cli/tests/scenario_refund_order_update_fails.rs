//! Scenario 6: the refund succeeds, then recording it on the order fails.
//! The payments ledger has the refund; `reconcile-payments-vs-orders`
//! records it on the order (eventual consistency); the refund saga's own
//! retry then finds it done, and nothing is refunded twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout, ledger_entries};
use common::{status_of, wait_for_event};
use sagaflow_proto::checkout::v1::{CheckoutStatus, RefundCheckoutRequest};
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_is_reconciled_and_nothing_is_refunded_twice() {
    let shop = Shop::start(&[], &[]).await;
    let checkout_id = shop.start_checkout(checkout("s6-refund", "hana", &[("sku-tee", 2)])).await;
    assert_eq!(status_of(&shop.await_end(&checkout_id, Duration::from_secs(60)).await), "COMPLETED");
    let bought = shop.get_checkout(&checkout_id).await;

    // The orders service cannot take the refund's update.
    shop.admin("orders", "POST", "/faults", Some(json!({"spec": "orders.record_refund=error"}))).await;
    let refund = shop
        .checkouts()
        .await
        .refund_checkout(RefundCheckoutRequest {
            checkout_id: checkout_id.clone(),
            refund_id: "s6-rf-1".into(),
            amount_cents: 1_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut workflows = shop.server().client().await;
    wait_for_event(
        &mut workflows,
        &refund.refund_workflow_id,
        Duration::from_secs(30),
        |e| matches!(&e.attributes, Some(Attributes::ActivityFailed(f)) if f.task_id.starts_with("1.f.")),
    )
    .await;
    let ledger = shop.admin("payments", "GET", "/payments/ledger", None).await;
    assert_eq!(ledger_entries(&ledger, "refund", &bought.payment_intent_id).len(), 1, "the ledger has it: {ledger}");
    let order = shop.admin("orders", "GET", &format!("/orders/{}", bought.order_id), None).await;
    assert_eq!(order["refunded_cents"], 0, "the order does not, yet: {order}");

    // The reconciliation records the refund on the order.
    let (report, ok) = shop.job("reconcile-payments-vs-orders", &["--grace", "0s"]).await;
    assert!(ok, "{report}");
    assert_eq!(
        report["steps"]["orders"]["repairs"],
        json!([{"order_id": bought.order_id, "refund_id": "s6-rf-1", "amount_cents": 1000}]),
        "{report}"
    );
    let order = shop.admin("orders", "GET", &format!("/orders/{}", bought.order_id), None).await;
    assert_eq!(order["refunded_cents"], 1_000, "{order}");
    assert_eq!(order["status"], "PARTIALLY_REFUNDED");

    // The orders service recovers; the saga's retry is answered by the same
    // record, and the refund is counted once.
    shop.admin("orders", "DELETE", "/faults", None).await;
    assert_eq!(status_of(&shop.await_end(&refund.refund_workflow_id, Duration::from_secs(90)).await), "COMPLETED");
    let order = shop.admin("orders", "GET", &format!("/orders/{}", bought.order_id), None).await;
    assert_eq!(order["refunded_cents"], 1_000, "not twice: {order}");
    let ledger = shop.admin("payments", "GET", "/payments/ledger", None).await;
    assert_eq!(ledger_entries(&ledger, "refund", &bought.payment_intent_id).len(), 1, "refunded once: {ledger}");
    let checkout = shop.get_checkout(&checkout_id).await;
    assert_eq!(checkout.status, CheckoutStatus::PartiallyRefunded as i32);
    assert_eq!(checkout.refunded_cents, 1_000);

    // A second reconciliation has nothing left to do.
    let (again, ok) = shop.job("reconcile-payments-vs-orders", &["--grace", "0s"]).await;
    assert!(ok, "{again}");
    assert_eq!(again["steps"]["orders"]["repairs"], json!([]), "{again}");
    shop.assert_invariants_hold().await;
}
