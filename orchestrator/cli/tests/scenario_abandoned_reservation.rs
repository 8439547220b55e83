//! Scenario 2: stock is reserved, then the checkout fails. A declined card
//! runs the compensation, which releases the stock; and when everything died
//! before anyone could compensate, the reservation's TTL frees the stock on
//! its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::shop::{Shop, checkout, eventually};
use common::{status_of, wait_until_leased};
use sagaflow_proto::checkout::v1::CheckoutStatus;
use serde_json::Value;

fn stock_of(stock: &Value, sku: &str) -> Value {
    stock.as_array().unwrap().iter().find(|s| s["sku"] == sku).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_releases_the_reservation() {
    let shop = Shop::start(&[], &[]).await;
    let before = stock_of(&shop.admin("inventory", "GET", "/stock", None).await, "sku-hoodie");
    let mut request = checkout("s2-declined", "dana", &[("sku-hoodie", 2)]);
    request.payment_method = "card_declined".into();
    let checkout_id = shop.start_checkout(request).await;
    let done = shop.await_end(&checkout_id, Duration::from_secs(60)).await;
    assert_eq!(status_of(&done), "COMPENSATED");
    let cancelled = shop.get_checkout(&checkout_id).await;
    assert_eq!(cancelled.status, CheckoutStatus::Cancelled as i32);
    let reservation =
        shop.admin("inventory", "GET", &format!("/reservations/{}", cancelled.reservation_id), None).await;
    assert_eq!(reservation["status"], "RELEASED", "{reservation}");
    let after = stock_of(&shop.admin("inventory", "GET", "/stock", None).await, "sku-hoodie");
    assert_eq!(after["available"], before["available"], "the stock is back");
    assert_eq!(after["reserved"], 0);
    shop.assert_invariants_hold().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_frees_the_stock_when_everything_died() {
    // The capture never answers: the saga sits between reserve and pay.
    let ttl: &[&str] = &["--reservation-ttl", "3s"];
    let mut shop = Shop::start(&[], &[("payments", &["--fault", "payments.capture=hang"]), ("inventory", ttl)]).await;
    let checkout_id = shop.start_checkout(checkout("s2-abandoned", "erin", &[("sku-cap", 3)])).await;
    let mut workflows = shop.server().client().await;
    wait_until_leased(&mut workflows, &checkout_id, "capture").await;
    let held = shop.get_checkout(&checkout_id).await;
    let reservation_path = format!("/reservations/{}", held.reservation_id);
    assert_eq!(shop.admin("inventory", "GET", &reservation_path, None).await["status"], "HELD");

    // Everything dies: nobody is left to compensate.
    shop.kill_server().await;
    for group in common::shop::GROUPS {
        shop.kill_worker(group).await;
    }
    // Only the inventory service comes back; its TTL sweep frees the stock.
    shop.start_worker("inventory", ttl).await;
    eventually(Duration::from_secs(30), "the reservation expires", || async {
        shop.admin("inventory", "GET", &reservation_path, None).await["status"] == "EXPIRED"
    })
    .await;
    let stock = stock_of(&shop.admin("inventory", "GET", "/stock", None).await, "sku-cap");
    assert_eq!(stock["reserved"], 0, "no stock is held: {stock}");
    assert_eq!(stock["sold"], 0);

    // The rest returns; the card is now declined for good, so the saga
    // compensates, and releasing an expired reservation changes nothing.
    shop.start_server_again().await;
    for group in common::shop::GROUPS.iter().filter(|g| **g != "inventory") {
        let extra: &[&str] = if *group == "payments" { &["--fault", "payments.capture=fatal"] } else { &[] };
        shop.start_worker(group, extra).await;
    }
    let done = shop.await_end(&checkout_id, Duration::from_secs(90)).await;
    assert_eq!(status_of(&done), "COMPENSATED");
    assert_eq!(shop.admin("inventory", "GET", &reservation_path, None).await["status"], "EXPIRED");
    let after = stock_of(&shop.admin("inventory", "GET", "/stock", None).await, "sku-cap");
    assert_eq!(after["available"], stock["available"], "released once, by the TTL");
    shop.assert_invariants_hold().await;
}
