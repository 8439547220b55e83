//! Opening a shop: which services, which activities, and a worker that
//! registers them.
#![allow(clippy::unwrap_used)]

mod common;

use sagaflow_activities::shop::{self, ShopOptions};
use sagaflow_activities::{Faults, SERVICES, Shop};
use sagaflow_worker::Worker;

use common::options;

#[tokio::test]
async fn every_service_registers_its_activities_on_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::open(dir.path(), options(), Faults::default()).unwrap();
    assert_eq!(shop.services(), SERVICES);
    let activity_types = shop.activity_types();
    assert_eq!(activity_types.len(), 18);
    for expected in [
        "catalog.price_snapshot",
        "coupons.validate",
        "inventory.reserve",
        "inventory.release",
        "inventory.commit",
        "payments.capture",
        "payments.refund",
        "orders.create",
        "orders.mark_shipped",
        "orders.record_refund",
        "shipping.create_shipment",
        "notifications.send",
        // The self-healing jobs' steps (ADR 0009).
        "inventory.check_invariants",
        "inventory.release_expired",
        "inventory.held_reservations",
        "payments.check_invariants",
        "payments.captures",
        "orders.reconcile_payments",
    ] {
        assert!(activity_types.contains(&expected), "{expected}");
    }
    let worker = shop.register(Worker::builder("http://127.0.0.1:1")).build().unwrap();
    let shown = format!("{worker:?}");
    for activity_type in &activity_types {
        assert!(shown.contains(activity_type), "{activity_type} registered");
    }
    for service in SERVICES {
        assert!(dir.path().join(service).is_dir(), "{service} keeps its own database");
    }
}

#[test]
fn a_subset_opens_only_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let some = ShopOptions { services: vec!["orders".into(), " payments".into(), "orders".into()], ..options() };
    let shop = Shop::open(dir.path(), some, Faults::default()).unwrap();
    assert_eq!(shop.services(), ["payments", "orders"]);
    assert!(shop.inventory().is_none());
    assert!(!dir.path().join("inventory").exists());

    let unknown = ShopOptions { services: vec!["warehouse".into()], ..options() };
    assert!(
        matches!(Shop::open(dir.path(), unknown, Faults::default()), Err(shop::Error::UnknownService(name)) if name == "warehouse")
    );
    let none = ShopOptions { services: Vec::new(), ..options() };
    assert!(matches!(Shop::open(dir.path(), none, Faults::default()), Err(shop::Error::NoServices)));
}

#[test]
fn a_service_directory_is_held_by_one_shop_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let payments = ShopOptions { services: vec!["payments".into()], ..options() };
    let shop = Shop::open(dir.path(), payments.clone(), Faults::default()).unwrap();
    let second = Shop::open(dir.path(), payments.clone(), Faults::default());
    assert!(matches!(second, Err(shop::Error::Open { service: "payments", .. })), "{second:?}");
    drop(shop);
    Shop::open(dir.path(), payments, Faults::default()).unwrap();
}
