//! Scenario 1: the payment is captured, then the order service dies in the
//! middle of CreateOrder (`kill -9`). CreateOrder is retried until the
//! service returns, the payment is captured exactly once, a replayed start
//! changes nothing, and the reconciliation finds no mismatch.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout, ledger_entries};
use common::{status_of, wait_for_event, wait_until_leased};
use sagaflow_proto::checkout::v1::CheckoutStatus;
use sagaflow_proto::v1::history_event::Attributes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_order_is_retried_until_the_order_service_returns() {
    // The first CreateOrder never answers: the orders worker is killed while it hangs.
    let mut shop = Shop::start(&[], &[("orders", &["--fault", "orders.create=hang:1"])]).await;
    let checkout_id = shop.start_checkout(checkout("s1-pay", "olivia", &[("sku-mug", 1)])).await;
    let mut workflows = shop.server().client().await;
    wait_for_event(
        &mut workflows,
        &checkout_id,
        Duration::from_secs(30),
        |e| matches!(&e.attributes, Some(Attributes::ActivityCompleted(c)) if c.task_id.starts_with("2.f.")),
    )
    .await;
    wait_until_leased(&mut workflows, &checkout_id, "order").await;
    shop.kill_worker("orders").await;

    // Without an order service the attempt times out and is retried, and the
    // saga stays open, the payment captured.
    wait_for_event(
        &mut workflows,
        &checkout_id,
        Duration::from_secs(40),
        |e| matches!(&e.attributes, Some(Attributes::ActivityTimedOut(t)) if t.task_id.starts_with("4.f.")),
    )
    .await;
    let pending = shop.get_checkout(&checkout_id).await;
    assert_eq!(pending.status, CheckoutStatus::Paid as i32, "captured, not yet ordered");

    shop.start_worker("orders", &[]).await;
    let done = shop.await_end(&checkout_id, Duration::from_secs(60)).await;
    assert_eq!(status_of(&done), "COMPLETED");
    let finished = shop.get_checkout(&checkout_id).await;
    assert_eq!(finished.status, CheckoutStatus::Shipped as i32);

    // Pay clicked again after the outage: the same checkout, nothing new.
    let again = shop.checkouts().await.start_checkout(checkout("s1-pay", "olivia", &[("sku-mug", 1)])).await.unwrap();
    assert!(again.get_ref().already_started);
    assert_eq!(again.into_inner().checkout_id, checkout_id);

    let ledger = shop.admin("payments", "GET", "/payments/ledger", None).await;
    assert_eq!(ledger_entries(&ledger, "capture", &finished.payment_intent_id).len(), 1, "captured once: {ledger}");
    let orders = shop.admin("orders", "GET", "/orders", None).await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "one order: {orders}");

    let (reconciled, ok) = shop.job("reconcile-payments-vs-orders", &["--grace", "0s"]).await;
    assert!(ok, "{reconciled}");
    assert_eq!(reconciled["violations"], serde_json::json!([]), "{reconciled}");
    assert_eq!(reconciled["steps"]["orders"]["repairs"], serde_json::json!([]), "nothing to repair: {reconciled}");
    shop.assert_invariants_hold().await;
}
