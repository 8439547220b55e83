//! The catalog's price snapshot and the versioned coupon rules it applies.
#![allow(clippy::unwrap_used)]

mod common;

use sagaflow_activities::shop::catalog::{PriceRequest, Product};
use sagaflow_activities::shop::coupons::{CouponTerms, Discount};
use sagaflow_activities::shop::{LineItem, ShopOptions};
use sagaflow_activities::{Faults, Shop};
use serde_json::json;

use common::{items, open, options, restart};

fn request(lines: &[(&str, u32)], coupon: Option<&str>) -> PriceRequest {
    PriceRequest {
        items: lines.iter().map(|(sku, quantity)| LineItem { sku: (*sku).into(), quantity: *quantity }).collect(),
        coupon_code: coupon.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_snapshot_prices_every_line_from_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let snapshot = shop
        .call(
            "catalog.price_snapshot",
            "wf/price",
            json!({"items": items(&[("sku-mug", 2), ("sku-tee", 1)]), "coupon_code": null}),
        )
        .await
        .unwrap();
    assert_eq!(snapshot["lines"][0]["unit_price_cents"], 1299);
    assert_eq!(snapshot["lines"][0]["line_total_cents"], 2598);
    assert_eq!(snapshot["lines"][1]["line_total_cents"], 2499);
    assert_eq!(snapshot["subtotal_cents"], 5097);
    assert_eq!(snapshot["discount_cents"], 0);
    assert_eq!(snapshot["total_cents"], 5097);
    assert_eq!(snapshot["coupon"], serde_json::Value::Null);
    assert_eq!(snapshot["catalog_version"], 1);

    let with_coupon = shop
        .call(
            "catalog.price_snapshot",
            "wf/price",
            json!({"items": items(&[("sku-mug", 2), ("sku-tee", 1)]), "coupon_code": "welcome10"}),
        )
        .await
        .unwrap();
    assert_eq!(with_coupon["discount_cents"], 509);
    assert_eq!(with_coupon["total_cents"], 4588);
    assert_eq!(
        with_coupon["coupon"],
        json!({"code": "WELCOME10", "version": 1, "percent_off": 10, "min_subtotal_cents": 0})
    );

    let flat = shop.catalog().unwrap().price_snapshot(&request(&[("sku-tee", 1)], Some("FLAT5"))).unwrap();
    assert_eq!((flat.subtotal_cents, flat.discount_cents, flat.total_cents), (2499, 500, 1999));
}

#[tokio::test]
async fn bad_lines_and_coupons_are_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    shop.coupons()
        .unwrap()
        .set("OLD", CouponTerms { percent_off: Some(50), expires_at_ms: Some(1), ..CouponTerms::default() })
        .await
        .unwrap();
    shop.coupons()
        .unwrap()
        .set("GONE", CouponTerms { percent_off: Some(50), active: false, ..CouponTerms::default() })
        .await
        .unwrap();
    for (input, error_type) in [
        (json!({"items": items(&[("sku-nope", 1)])}), "UnknownSku"),
        (json!({"items": items(&[("sku-mug", 0)])}), "InvalidQuantity"),
        (json!({"items": items(&[("sku-mug", 10_001)])}), "InvalidQuantity"),
        (json!({"items": []}), "InvalidInput"),
        (json!({"items": items(&[("sku-mug", 1)]), "coupon_code": "NOPE"}), "InvalidCoupon"),
        (json!({"items": items(&[("sku-mug", 1)]), "coupon_code": "OLD"}), "InvalidCoupon"),
        (json!({"items": items(&[("sku-mug", 1)]), "coupon_code": "GONE"}), "InvalidCoupon"),
        // FLAT5 needs a subtotal of 2000; a mug is 1299.
        (json!({"items": items(&[("sku-mug", 1)]), "coupon_code": "FLAT5"}), "InvalidCoupon"),
    ] {
        let error = shop.call("catalog.price_snapshot", "k", input.clone()).await.unwrap_err();
        assert_eq!(error.error_type(), error_type, "{input}");
        assert!(!error.is_retryable());
    }
    // An empty code is no coupon.
    let snapshot = shop
        .call("catalog.price_snapshot", "k", json!({"items": items(&[("sku-mug", 1)]), "coupon_code": ""}))
        .await
        .unwrap();
    assert_eq!(snapshot["coupon"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_snapshot_keeps_the_coupon_version_it_saw() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let catalog = shop.catalog().unwrap();
    let coupons = shop.coupons().unwrap();
    let before = catalog.price_snapshot(&request(&[("sku-hoodie", 1)], Some("WELCOME10"))).unwrap();

    // The rule changes mid-checkout (docs/contract.md, Failure scenarios, scenario 7).
    let v2 = coupons.set("WELCOME10", CouponTerms { percent_off: Some(20), ..CouponTerms::default() }).await.unwrap();
    assert_eq!(v2.version, 2);
    let after = catalog.price_snapshot(&request(&[("sku-hoodie", 1)], Some("WELCOME10"))).unwrap();

    let (before_coupon, after_coupon) = (before.coupon.clone().unwrap(), after.coupon.clone().unwrap());
    assert_eq!((before_coupon.version, before_coupon.discount), (1, Discount::Percent { percent_off: 10 }));
    assert_eq!((after_coupon.version, after_coupon.discount), (2, Discount::Percent { percent_off: 20 }));
    assert_eq!((before.total_cents, after.total_cents), (5499 - 549, 5499 - 1099));

    // The version a snapshot names can still be read, after a restart too.
    let shop = restart(shop, &dir);
    let coupons = shop.coupons().unwrap();
    let v1 = coupons.version("WELCOME10", 1).unwrap().unwrap();
    assert_eq!(v1.discount, Discount::Percent { percent_off: 10 });
    assert_eq!(coupons.current("welcome10").unwrap().unwrap().version, 2);
    assert_eq!(coupons.history("WELCOME10").unwrap().len(), 2);
    assert_eq!(coupons.list().unwrap().len(), 2, "WELCOME10 and FLAT5");

    // A price change bumps the catalog version the snapshot records.
    let catalog = shop.catalog().unwrap();
    let version = catalog
        .set_product(Product { sku: "sku-mug".into(), name: "Sagaflow mug".into(), unit_price_cents: 1_499 })
        .await
        .unwrap();
    assert_eq!(version, 2);
    let repriced = catalog.price_snapshot(&request(&[("sku-mug", 1)], None)).unwrap();
    assert_eq!((repriced.catalog_version, repriced.total_cents), (2, 1_499));
}

#[tokio::test]
async fn coupon_terms_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let coupons = shop.coupons().unwrap();
    assert!(coupons.set("BAD CODE", CouponTerms { percent_off: Some(5), ..CouponTerms::default() }).await.is_err());
    assert!(coupons.set("X", CouponTerms::default()).await.is_err());
    assert!(coupons.set("X", CouponTerms { percent_off: Some(120), ..CouponTerms::default() }).await.is_err());
    assert!(coupons.current("X").unwrap().is_none());
}

#[tokio::test]
async fn the_catalog_brings_its_coupon_rules_along() {
    let dir = tempfile::tempdir().unwrap();
    let only_catalog = ShopOptions { services: vec!["catalog".into()], ..options() };
    let shop = Shop::open(dir.path(), only_catalog, Faults::default()).unwrap();
    assert_eq!(shop.services(), ["catalog"]);
    assert_eq!(shop.activity_types(), ["catalog.price_snapshot"]);
    assert!(shop.coupons().is_some(), "pricing reads the rules");
    let snapshot = shop.catalog().unwrap().price_snapshot(&request(&[("sku-tee", 1)], Some("FLAT5"))).unwrap();
    assert_eq!(snapshot.total_cents, 1_999);
    let error = shop.call("coupons.validate", "k", json!({"code": "FLAT5", "subtotal_cents": 3000})).await.unwrap_err();
    assert_eq!(error.error_type(), "UnknownActivityType");
    assert!(error.is_retryable(), "another worker may host it");
}
