//! What the shop's integration tests share: a shop in a temporary directory
//! that can be closed and opened again, as a restarted worker would.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use sagaflow_activities::{Faults, Shop, ShopOptions};
use serde_json::{Value, json};

/// Options for tests: the background expiry sweep is slowed right down, so
/// that a test decides when reservations expire (through `release_expired`).
pub fn options() -> ShopOptions {
    ShopOptions { expiry_sweep_interval: Duration::from_secs(3_600), ..ShopOptions::default() }
}

pub fn open(dir: &tempfile::TempDir) -> Shop {
    Shop::open(dir.path(), options(), Faults::default()).unwrap()
}

pub fn open_with(dir: &tempfile::TempDir, options: ShopOptions, faults: Faults) -> Shop {
    Shop::open(dir.path(), options, faults).unwrap()
}

/// Drops `shop` (closing its databases) and opens the directory again.
pub fn restart(shop: Shop, dir: &tempfile::TempDir) -> Shop {
    let options = options();
    drop(shop);
    Shop::open(dir.path(), options, Faults::default()).unwrap()
}

pub fn items(lines: &[(&str, u32)]) -> Value {
    Value::Array(lines.iter().map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity })).collect())
}

/// `(available, reserved, sold)` of a sku.
pub fn stock(shop: &Shop, sku: &str) -> (u64, u64, u64) {
    let level = shop.inventory().unwrap().stock_of(sku).unwrap().unwrap();
    (level.available, level.reserved, level.sold)
}

pub fn assert_invariants(shop: &Shop) {
    let violations = shop.check_invariants().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
}
