//! Fault switches on the shop's activities: failures before the effect apply
//! nothing, and an effect applied before a hang or a crash is found again by
//! the retry, without being applied twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use sagaflow_activities::{FaultSpec, Faults, Shop};
use serde_json::json;

use common::{assert_invariants, items, open_with, options, stock};

fn reserve_input() -> serde_json::Value {
    json!({"reservation_id": "res-1", "items": items(&[("sku-mug", 2)])})
}

fn faults(specs: &[&str]) -> Faults {
    Faults::new(specs.iter().map(|spec| spec.parse::<FaultSpec>().unwrap()))
}

#[tokio::test]
async fn injected_errors_fail_before_the_effect() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open_with(&dir, options(), faults(&["inventory.reserve=error:2", "payments.*=fatal:1"]));
    for _ in 0..2 {
        let error = shop.call("inventory.reserve", "res-1", reserve_input()).await.unwrap_err();
        assert_eq!(error.error_type(), "InjectedFault");
        assert!(error.is_retryable());
        assert_eq!(stock(&shop, "sku-mug"), (100, 0, 0), "nothing applied");
    }
    let reserved = shop.call("inventory.reserve", "res-1", reserve_input()).await.unwrap();
    assert_eq!(reserved["reservation_id"], "res-1");
    assert_eq!(stock(&shop, "sku-mug"), (98, 2, 0));

    let capture = json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": 2598});
    let error = shop.call("payments.capture", "pi-1", capture.clone()).await.unwrap_err();
    assert!(!error.is_retryable());
    assert!(shop.payments().unwrap().intent("pi-1").unwrap().is_none());
    shop.call("payments.capture", "pi-1", capture).await.unwrap();
    assert!(shop.faults().list().is_empty(), "counted switches run out");
}

#[tokio::test]
async fn a_hang_after_the_effect_leaves_the_effect_for_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open_with(&dir, options(), faults(&["inventory.reserve=hang-after-effect:1"]));
    let attempt =
        tokio::time::timeout(Duration::from_millis(300), shop.call("inventory.reserve", "res-1", reserve_input()));
    assert!(attempt.await.is_err(), "the first attempt never answers");
    assert_eq!(stock(&shop, "sku-mug"), (98, 2, 0), "but its effect is applied");

    let retry = shop.call("inventory.reserve", "res-1", reserve_input()).await.unwrap();
    assert_eq!(retry["reservation_id"], "res-1");
    assert_eq!(stock(&shop, "sku-mug"), (98, 2, 0), "and not applied twice");
    assert_invariants(&shop);
}

#[tokio::test]
async fn a_hang_before_the_effect_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open_with(&dir, options(), faults(&["shipping.create_shipment=hang:1"]));
    let attempt = tokio::time::timeout(
        Duration::from_millis(200),
        shop.call("shipping.create_shipment", "ord-1", json!({"order_id": "ord-1"})),
    );
    assert!(attempt.await.is_err());
    assert!(shop.shipping().unwrap().shipments().unwrap().is_empty());
}

const CRASH_DIR: &str = "SAGAFLOW_TEST_CRASH_DIR";

/// The child half of the crash test: captures under a crash-after-effect
/// switch, and so aborts. Does nothing when run as an ordinary test.
#[tokio::test]
async fn crash_child_process() {
    let Ok(dir) = std::env::var(CRASH_DIR) else { return };
    let shop = Shop::open(&dir, options(), faults(&["payments.capture=crash-after-effect"])).unwrap();
    let capture = json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": 1299});
    let _ = shop.call("payments.capture", "pi-1", capture).await;
    // Only reached if the switch did not fire.
    std::process::exit(3);
}

#[tokio::test]
async fn a_crash_after_the_effect_finds_the_effect_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_process", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborted");
    assert_ne!(status.code(), Some(3), "the crash switch fired after the effect");

    let shop = Shop::open(dir.path(), options(), Faults::default()).unwrap();
    let payments = shop.payments().unwrap();
    assert_eq!(payments.captured_cents("pi-1").unwrap(), 1299, "the capture was durable before the crash");
    let capture = json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": 1299});
    let retry = shop.call("payments.capture", "pi-1", capture).await.unwrap();
    assert_eq!(retry["captured_cents"], 1299);
    assert_eq!(payments.ledger().unwrap().len(), 1, "captured once");
    assert_invariants(&shop);
}
