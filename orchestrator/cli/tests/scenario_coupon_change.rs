//! Scenario 7: the coupon rules change while a checkout is in flight. The
//! order's total, and the capture, equal the price snapshot taken at the
//! start; a checkout started after the change gets the new rule.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout};
use common::{status_of, wait_for_event};
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::json;

/// sku-hoodie's catalog price.
const HOODIE: i64 = 5499;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_is_the_snapshot_taken_at_the_start() {
    // The capture fails twice (retried), which holds the checkout mid-flight.
    let shop = Shop::start(&[], &[("payments", &["--fault", "payments.capture=error:2"])]).await;
    let mut request = checkout("s7-coupon", "ivan", &[("sku-hoodie", 1)]);
    request.coupon_code = "WELCOME10".into();
    let checkout_id = shop.start_checkout(request).await;
    let mut workflows = shop.server().client().await;
    wait_for_event(
        &mut workflows,
        &checkout_id,
        Duration::from_secs(30),
        |e| matches!(&e.attributes, Some(Attributes::ActivityFailed(f)) if f.task_id.starts_with("2.f.")),
    )
    .await;
    let changed = shop.admin("catalog,coupons", "PUT", "/coupons/WELCOME10", Some(json!({"percent_off": 50}))).await;
    assert!(changed.get("error").is_none(), "the rule changed: {changed}");

    assert_eq!(status_of(&shop.await_end(&checkout_id, Duration::from_secs(60)).await), "COMPLETED");
    let done = shop.get_checkout(&checkout_id).await;
    assert_eq!(done.total_cents, HOODIE - HOODIE / 10, "10% off, as when the checkout started");
    let payment = shop.admin("payments", "GET", &format!("/payments/{}", done.payment_intent_id), None).await;
    assert_eq!(payment["captured_cents"], done.total_cents);
    let order = shop.admin("orders", "GET", &format!("/orders/{}", done.order_id), None).await;
    assert_eq!(order["total_cents"], done.total_cents);

    // The new rule applies to the next checkout only.
    let mut later = checkout("s7-later", "ivan", &[("sku-hoodie", 1)]);
    later.coupon_code = "WELCOME10".into();
    let later_id = shop.start_checkout(later).await;
    assert_eq!(status_of(&shop.await_end(&later_id, Duration::from_secs(60)).await), "COMPLETED");
    assert_eq!(shop.get_checkout(&later_id).await.total_cents, HOODIE - HOODIE / 2);
    shop.assert_invariants_hold().await;
}
