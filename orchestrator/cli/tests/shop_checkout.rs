//! The reference shop end to end, with real server and worker processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, admin, event_names, full_history, wait_for_event};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{
    CheckoutStatus, GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest,
};
use sagaflow_proto::v1::AwaitWorkflowRequest;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const ALL: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";

struct Shop {
    server: ServerProcess,
    worker: WorkerProcess,
    _dir: tempfile::TempDir,
}

impl Shop {
    async fn start(worker_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), &[]).await;
        let worker = shop_worker(&server, dir.path(), ALL, worker_args).await;
        Self { server, worker, _dir: dir }
    }

    async fn checkouts(&self) -> CheckoutServiceClient<Channel> {
        CheckoutServiceClient::connect(self.server.url.clone()).await.unwrap()
    }

    fn admin_url(&self) -> String {
        self.worker.admin.clone().unwrap()
    }
}

async fn shop_worker(server: &ServerProcess, dir: &std::path::Path, services: &str, extra: &[&str]) -> WorkerProcess {
    let data_dir = dir.to_str().unwrap();
    let mut args = vec!["--services", services, "--data-dir", data_dir, "--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    WorkerProcess::start(&server.url, &args).await
}

fn checkout(request_id: &str, items: &[(&str, u32)]) -> StartCheckoutRequest {
    StartCheckoutRequest {
        client_request_id: request_id.into(),
        customer_id: "alice".into(),
        items: items.iter().map(|(sku, quantity)| Item { sku: (*sku).into(), quantity: *quantity }).collect(),
        shipping_address: "1 Test Street".into(),
        ..Default::default()
    }
}

async fn await_end(shop: &Shop, workflow_id: &str) {
    let mut workflows = shop.server.client().await;
    let done = workflows
        .await_workflow(AwaitWorkflowRequest { workflow_id: workflow_id.into(), timeout_ms: 30_000 })
        .await
        .unwrap()
        .into_inner();
    assert!(done.terminal, "{workflow_id} did not end: {:?}", done.summary);
}

async fn finish(shop: &Shop, checkout_id: &str) -> sagaflow_proto::checkout::v1::Checkout {
    await_end(shop, checkout_id).await;
    shop.checkouts()
        .await
        .get_checkout(GetCheckoutRequest { checkout_id: checkout_id.into() })
        .await
        .unwrap()
        .into_inner()
}

fn stock_of(stock: &Value, sku: &str) -> Value {
    stock.as_array().unwrap().iter().find(|s| s["sku"] == sku).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_ships_and_the_ledgers_agree() {
    let shop = Shop::start(&[]).await;
    let started = shop
        .checkouts()
        .await
        .start_checkout(checkout("r-1", &[("sku-mug", 2), ("sku-tee", 1)]))
        .await
        .unwrap()
        .into_inner();
    let done = finish(&shop, &started.checkout_id).await;
    assert_eq!(done.status, CheckoutStatus::Shipped as i32);
    assert_eq!(done.total_cents, 2 * 1299 + 2499, "prices come from the catalog");
    let payment = admin(&shop.admin_url(), "GET", &format!("/payments/{}", done.payment_intent_id), None).await;
    assert_eq!(payment["captured_cents"], done.total_cents);
    let order = admin(&shop.admin_url(), "GET", &format!("/orders/{}", done.order_id), None).await;
    assert_eq!(order["status"], "SHIPPED");
    assert_eq!(order["total_cents"], done.total_cents);
    let stock = admin(&shop.admin_url(), "GET", "/stock", None).await;
    assert_eq!(stock_of(&stock, "sku-mug")["sold"], 2);
    assert_eq!(admin(&shop.admin_url(), "GET", "/invariants", None).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_compensates_and_returns_the_stock() {
    let shop = Shop::start(&[]).await;
    let before = stock_of(&admin(&shop.admin_url(), "GET", "/stock", None).await, "sku-hoodie");
    let mut request = checkout("r-declined", &[("sku-hoodie", 3)]);
    request.payment_method = "card_declined".into();
    let started = shop.checkouts().await.start_checkout(request).await.unwrap().into_inner();
    let done = finish(&shop, &started.checkout_id).await;
    assert_eq!(done.status, CheckoutStatus::Cancelled as i32);
    assert_eq!(done.workflow_status, "COMPENSATED");
    let after = stock_of(&admin(&shop.admin_url(), "GET", "/stock", None).await, "sku-hoodie");
    assert_eq!(after["available"], before["available"]);
    assert_eq!(after["reserved"], 0);
    assert_eq!(admin(&shop.admin_url(), "GET", "/invariants", None).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_clicked_ten_times_captures_once() {
    let shop = Shop::start(&[]).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = shop.checkouts().await;
        calls.push(tokio::spawn(async move {
            client.start_checkout(checkout("double-click", &[("sku-cap", 1)])).await.unwrap().into_inner()
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().checkout_id);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one checkout: {ids:?}");
    let done = finish(&shop, &ids[0]).await;
    assert_eq!(done.status, CheckoutStatus::Shipped as i32);
    let orders = admin(&shop.admin_url(), "GET", "/orders", None).await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "one order");
    let ledger = admin(&shop.admin_url(), "GET", "/payments/ledger", None).await;
    let captures = ledger.as_array().unwrap().iter().filter(|e| e["kind"] == "capture").count();
    assert_eq!(captures, 1, "one capture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_changed_mid_checkout_leaves_the_snapshot_total() {
    // The capture fails twice (retried), which keeps the checkout mid-flight.
    let shop = Shop::start(&["--fault", "payments.capture=error:2"]).await;
    let mut request = checkout("r-coupon", &[("sku-hoodie", 1)]);
    request.coupon_code = "WELCOME10".into();
    let started = shop.checkouts().await.start_checkout(request).await.unwrap().into_inner();
    let mut workflows = shop.server.client().await;
    wait_for_event(
        &mut workflows,
        &started.checkout_id,
        Duration::from_secs(10),
        |e| matches!(&e.attributes, Some(Attributes::ActivityFailed(f)) if f.task_id.starts_with("2.f.")),
    )
    .await;
    admin(&shop.admin_url(), "PUT", "/coupons/WELCOME10", Some(json!({"percent_off": 50}))).await;
    let done = finish(&shop, &started.checkout_id).await;
    assert_eq!(done.status, CheckoutStatus::Shipped as i32);
    assert_eq!(done.total_cents, 5499 - 549, "10% off, as when the checkout started");
    let payment = admin(&shop.admin_url(), "GET", &format!("/payments/{}", done.payment_intent_id), None).await;
    assert_eq!(payment["captured_cents"], done.total_cents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_errors_delay_the_shipment_without_compensating() {
    // The carrier fails until the test has seen the delay, however slow the machine.
    let shop = Shop::start(&["--fault", "shipping.create_shipment=error"]).await;
    let started = shop
        .checkouts()
        .await
        .start_checkout(checkout("r-carrier", &[("sku-notebook", 1)]))
        .await
        .unwrap()
        .into_inner();
    let mut workflows = shop.server.client().await;
    wait_for_event(
        &mut workflows,
        &started.checkout_id,
        Duration::from_secs(20),
        |e| matches!(&e.attributes, Some(Attributes::StepEscalated(s)) if s.alert == "ShipmentDelayed"),
    )
    .await;
    let delayed = shop
        .checkouts()
        .await
        .get_checkout(GetCheckoutRequest { checkout_id: started.checkout_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delayed.shipment_status, "DELAYED");
    let order = admin(&shop.admin_url(), "GET", &format!("/orders/{}", delayed.order_id), None).await;
    assert_eq!(order["status"], "PAID", "the order stays PAID while the carrier fails");
    admin(&shop.admin_url(), "DELETE", "/faults", None).await;
    let done = finish(&shop, &started.checkout_id).await;
    assert_eq!(done.status, CheckoutStatus::Shipped as i32);
    let names = event_names(&full_history(&mut workflows, &started.checkout_id).await);
    assert!(!names.contains(&"CompensationStarted"), "{names:?}");
    // The notification follows the escalation through the outbox: await it.
    common::nats::wait_until(Duration::from_secs(15), "the customer is told of the delay", || async {
        let feed = admin(&shop.admin_url(), "GET", "/notifications?customer=alice", None).await;
        feed.to_string().contains("ShipmentDelayed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_then_full_refund_and_an_over_refund_is_refused() {
    let shop = Shop::start(&[]).await;
    let started =
        shop.checkouts().await.start_checkout(checkout("r-refund", &[("sku-tee", 2)])).await.unwrap().into_inner();
    let done = finish(&shop, &started.checkout_id).await;
    let total = done.total_cents;
    let mut checkouts = shop.checkouts().await;
    let refund = |refund_id: &str, amount_cents: i64| RefundCheckoutRequest {
        checkout_id: started.checkout_id.clone(),
        refund_id: refund_id.into(),
        amount_cents,
    };
    let partial = checkouts.refund_checkout(refund("rf-1", 1000)).await.unwrap().into_inner();
    await_end(&shop, &partial.refund_workflow_id).await;
    let after_partial = finish(&shop, &started.checkout_id).await;
    assert_eq!(after_partial.status, CheckoutStatus::PartiallyRefunded as i32);
    assert_eq!(after_partial.refunded_cents, 1000);
    let over = checkouts.refund_checkout(refund("rf-over", total)).await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(over.message().contains("exceed"), "{}", over.message());
    let rest = checkouts.refund_checkout(refund("rf-2", total - 1000)).await.unwrap().into_inner();
    await_end(&shop, &rest.refund_workflow_id).await;
    let refunded = finish(&shop, &started.checkout_id).await;
    assert_eq!(refunded.status, CheckoutStatus::Refunded as i32);
    // Retrying a refund request is not a second refund.
    let again = checkouts.refund_checkout(refund("rf-2", total - 1000)).await.unwrap().into_inner();
    assert!(again.already_started);
    let payment = admin(&shop.admin_url(), "GET", &format!("/payments/{}", done.payment_intent_id), None).await;
    assert_eq!(payment["refunded_cents"], total);
    assert_eq!(admin(&shop.admin_url(), "GET", "/invariants", None).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crashing_after_the_charge_captures_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let _rest = shop_worker(&server, dir.path(), "catalog,coupons,inventory,orders,shipping,notifications", &[]).await;
    // This payments worker charges, then dies before it can answer.
    let doomed =
        shop_worker(&server, dir.path(), "payments", &["--fault", "payments.capture=crash-after-effect:1"]).await;
    let mut checkouts = CheckoutServiceClient::connect(server.url.clone()).await.unwrap();
    let started = checkouts.start_checkout(checkout("r-crash", &[("sku-stickers", 4)])).await.unwrap().into_inner();
    let status = doomed.exited().await;
    assert!(!status.success(), "the payments worker crashed: {status}");
    // A fresh payments worker takes the retry; the capture is already there.
    let payments = shop_worker(&server, dir.path(), "payments", &[]).await;
    let shop = Shop { server, worker: payments, _dir: dir };
    let done = finish(&shop, &started.checkout_id).await;
    assert_eq!(done.status, CheckoutStatus::Shipped as i32);
    let ledger = admin(&shop.admin_url(), "GET", "/payments/ledger", None).await;
    let captures: Vec<&Value> = ledger.as_array().unwrap().iter().filter(|e| e["kind"] == "capture").collect();
    assert_eq!(captures.len(), 1, "money captured once: {ledger}");
    assert_eq!(captures[0]["amount_cents"], done.total_cents);
}
