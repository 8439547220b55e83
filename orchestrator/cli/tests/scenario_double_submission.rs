//! Scenario 3: Pay clicked twice, and a network that retries. The same
//! checkout request, sent ten times at once, yields one workflow, one
//! capture and one order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout, ledger_entries};
use common::status_of;
use sagaflow_proto::checkout::v1::CheckoutStatus;
use sagaflow_proto::v1::ListWorkflowsRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_submissions_make_one_checkout() {
    let shop = Shop::start(&[], &[]).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = shop.checkouts().await;
        calls.push(tokio::spawn(async move {
            client.start_checkout(checkout("s3-double", "frank", &[("sku-tee", 1)])).await.unwrap().into_inner()
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let checkout_id = answers[0].checkout_id.clone();
    assert!(answers.iter().all(|a| a.checkout_id == checkout_id), "one checkout: {answers:?}");
    assert_eq!(answers.iter().filter(|a| !a.already_started).count(), 1, "exactly one call started it");
    let first = answers.iter().find(|a| !a.already_started).unwrap();
    assert_eq!(first.status, CheckoutStatus::Pending as i32, "a new start has finished no step");

    let done = shop.await_end(&checkout_id, Duration::from_secs(60)).await;
    assert_eq!(status_of(&done), "COMPLETED");
    let finished = shop.get_checkout(&checkout_id).await;
    assert_eq!(finished.status, CheckoutStatus::Shipped as i32);
    // A retry after the end reads where the checkout got to.
    let retried =
        shop.checkouts().await.start_checkout(checkout("s3-double", "frank", &[("sku-tee", 1)])).await.unwrap();
    let retried = retried.into_inner();
    assert!(retried.already_started);
    assert_eq!(retried.status, CheckoutStatus::Shipped as i32);

    let listed = shop
        .server()
        .client()
        .await
        .list_workflows(ListWorkflowsRequest { workflow_type: "checkout".into(), page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.workflows.len(), 1, "one workflow: {:?}", listed.workflows);
    let orders = shop.admin("orders", "GET", "/orders", None).await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "one order: {orders}");
    let ledger = shop.admin("payments", "GET", "/payments/ledger", None).await;
    assert_eq!(ledger_entries(&ledger, "capture", &finished.payment_intent_id).len(), 1, "one capture: {ledger}");
    let shipments = shop.admin("shipping", "GET", "/shipments", None).await;
    assert_eq!(shipments.as_array().unwrap().len(), 1, "one shipment: {shipments}");
    shop.assert_invariants_hold().await;
}
