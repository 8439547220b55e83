//! Reservations: all or nothing, released at most once, expired by their
//! TTL, and stock conserved through every path.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use sagaflow_activities::shop::inventory::{ReservationStatus, ReserveRequest};
use sagaflow_activities::shop::{LineItem, ShopOptions};
use sagaflow_activities::{Faults, Shop};
use serde_json::json;

use common::{assert_invariants, items, open, open_with, options, restart, stock};

fn lines(lines: &[(&str, u32)]) -> Vec<LineItem> {
    lines.iter().map(|(sku, quantity)| LineItem { sku: (*sku).into(), quantity: *quantity }).collect()
}

fn request(id: &str, items: &[(&str, u32)]) -> ReserveRequest {
    ReserveRequest { reservation_id: id.into(), items: lines(items) }
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// A shop whose reservations expire after a millisecond (released only when
/// the test calls `release_expired`).
fn short_lived(dir: &tempfile::TempDir) -> Shop {
    open_with(dir, ShopOptions { reservation_ttl: Duration::from_millis(1), ..options() }, Faults::default())
}

#[tokio::test]
async fn a_reservation_holds_every_line_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let inventory = shop.inventory().unwrap();

    let error = inventory.reserve(request("res-1", &[("sku-mug", 2), ("sku-tee", 101)])).await.unwrap_err();
    assert!(
        matches!(error, sagaflow_activities::shop::inventory::Error::OutOfStock { ref sku, requested: 101, available: 100 } if sku == "sku-tee")
    );
    assert_eq!(stock(&shop, "sku-mug"), (100, 0, 0), "the mug line was not held");
    assert!(inventory.reservation("res-1").unwrap().is_none());

    // Lines of one sku add up before they are checked.
    let error = inventory.reserve(request("res-2", &[("sku-mug", 60), ("sku-mug", 41)])).await.unwrap_err();
    assert!(matches!(error, sagaflow_activities::shop::inventory::Error::OutOfStock { requested: 101, .. }));

    // The same rules through the activity: non-retryable, typed.
    for (input, error_type) in [
        (json!({"reservation_id": "r", "items": items(&[("sku-mug", 1000)])}), "OutOfStock"),
        (json!({"reservation_id": "r", "items": items(&[("sku-nope", 1)])}), "UnknownSku"),
        (json!({"reservation_id": "r", "items": items(&[("sku-mug", 0)])}), "InvalidQuantity"),
        (json!({"reservation_id": "r", "items": []}), "InvalidInput"),
        (json!({"reservation_id": "", "items": items(&[("sku-mug", 1)])}), "InvalidInput"),
        (json!({"items": items(&[("sku-mug", 1)])}), "InvalidInput"),
    ] {
        let error = shop.call("inventory.reserve", "r", input).await.unwrap_err();
        assert_eq!(error.error_type(), error_type);
        assert!(!error.is_retryable(), "{error_type}");
    }

    // A refused reservation recorded nothing: it may succeed later.
    inventory.restock("sku-tee", 1).await.unwrap();
    inventory.reserve(request("res-1", &[("sku-mug", 2), ("sku-tee", 101)])).await.unwrap();
    assert_eq!(stock(&shop, "sku-mug"), (98, 2, 0));
    assert_eq!(stock(&shop, "sku-tee"), (0, 101, 0));
    assert_invariants(&shop);
}

#[tokio::test]
async fn release_gives_back_once_and_never_restocks_a_committed_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let inventory = shop.inventory().unwrap();
    inventory.reserve(request("res-1", &[("sku-mug", 3)])).await.unwrap();
    inventory.reserve(request("res-2", &[("sku-mug", 4)])).await.unwrap();
    assert_eq!(stock(&shop, "sku-mug"), (93, 7, 0));

    assert!(inventory.release("res-1").await.unwrap().released);
    assert!(inventory.release("res-1").await.unwrap().released, "a replay answers the first result");
    assert_eq!(stock(&shop, "sku-mug"), (96, 4, 0), "given back once");

    assert!(inventory.commit("res-2").await.unwrap().committed);
    assert!(!inventory.release("res-2").await.unwrap().released);
    assert_eq!(stock(&shop, "sku-mug"), (96, 0, 4), "sold stock stays sold");

    // Releasing an unknown reservation answers false and tombstones it: a
    // reserve arriving after the saga gave up on it holds nothing.
    assert!(!inventory.release("res-late").await.unwrap().released);
    let error = shop
        .call("inventory.reserve", "res-late", json!({"reservation_id": "res-late", "items": items(&[("sku-mug", 1)])}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "ReservationReleased");
    assert_eq!(stock(&shop, "sku-mug"), (96, 0, 4));

    // Committing a released reservation is refused.
    let error = shop.call("inventory.commit", "res-1", json!({"reservation_id": "res-1"})).await.unwrap_err();
    assert_eq!(error.error_type(), "ReservationReleased");
    let error = shop.call("inventory.commit", "res-x", json!({"reservation_id": "res-x"})).await.unwrap_err();
    assert_eq!(error.error_type(), "UnknownReservation");
    assert_invariants(&shop);
}

#[tokio::test]
async fn expired_reservations_are_released_once_and_stock_is_conserved() {
    let dir = tempfile::tempdir().unwrap();
    let shop = short_lived(&dir);
    let inventory = shop.inventory().unwrap();
    let reserved = inventory.reserve(request("res-1", &[("sku-mug", 5), ("sku-cap", 2)])).await.unwrap();
    inventory.reserve(request("res-2", &[("sku-mug", 1)])).await.unwrap();
    inventory.commit("res-2").await.unwrap();

    // Nothing is due before the expiry.
    assert_eq!(inventory.release_expired(reserved.expires_at_ms - 1).await.unwrap(), 0);
    assert_eq!(stock(&shop, "sku-mug"), (94, 5, 1));

    assert_eq!(inventory.release_expired(now_ms() + 1_000).await.unwrap(), 1, "res-2 was committed");
    assert_eq!(inventory.release_expired(now_ms() + 1_000).await.unwrap(), 0);
    assert_eq!(stock(&shop, "sku-mug"), (99, 0, 1));
    assert_eq!(stock(&shop, "sku-cap"), (100, 0, 0));
    assert_eq!(inventory.reservation("res-1").unwrap().unwrap().status, ReservationStatus::Expired);
    assert_invariants(&shop);

    // The compensation that comes after the expiry gives nothing back twice.
    assert!(!inventory.release("res-1").await.unwrap().released);
    assert_eq!(stock(&shop, "sku-mug"), (99, 0, 1));

    // A commit after the expiry takes the stock again when it is there.
    inventory.reserve(request("res-3", &[("sku-tee", 2)])).await.unwrap();
    inventory.release_expired(now_ms() + 1_000).await.unwrap();
    assert_eq!(stock(&shop, "sku-tee"), (100, 0, 0));
    assert!(inventory.commit("res-3").await.unwrap().committed);
    let res3 = inventory.reservation("res-3").unwrap().unwrap();
    assert!(res3.committed_after_expiry);
    assert_eq!(res3.status, ReservationStatus::Committed);
    assert_eq!(stock(&shop, "sku-tee"), (98, 0, 2));
    assert_invariants(&shop);
}

#[tokio::test]
async fn a_commit_after_expiry_fails_when_the_stock_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let shop = short_lived(&dir);
    let inventory = shop.inventory().unwrap();
    inventory.reserve(request("res-1", &[("sku-hoodie", 60)])).await.unwrap();
    inventory.release_expired(now_ms() + 1_000).await.unwrap();
    // Someone else takes the stock in the meantime.
    inventory.reserve(request("res-2", &[("sku-hoodie", 50)])).await.unwrap();

    let error = shop.call("inventory.commit", "res-1", json!({"reservation_id": "res-1"})).await.unwrap_err();
    assert_eq!(error.error_type(), "ReservationExpired");
    assert!(!error.is_retryable());
    assert_eq!(stock(&shop, "sku-hoodie"), (50, 50, 0), "nothing taken");
    assert_eq!(inventory.reservation("res-1").unwrap().unwrap().status, ReservationStatus::Expired);
    assert_invariants(&shop);
}

#[tokio::test]
async fn the_service_releases_expired_reservations_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let options = ShopOptions {
        reservation_ttl: Duration::from_millis(100),
        expiry_sweep_interval: Duration::from_millis(20),
        ..ShopOptions::default()
    };
    let shop = open_with(&dir, options, Faults::default());
    let inventory = shop.inventory().unwrap();
    inventory.reserve(request("res-1", &[("sku-mug", 10)])).await.unwrap();
    assert_eq!(stock(&shop, "sku-mug"), (90, 10, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while inventory.reservation("res-1").unwrap().unwrap().status == ReservationStatus::Held {
        assert!(tokio::time::Instant::now() < deadline, "the reservation was not released in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stock(&shop, "sku-mug"), (100, 0, 0));
    assert_invariants(&shop);
}

#[tokio::test]
async fn stock_is_conserved_through_every_path_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shop = short_lived(&dir);
    let inventory = shop.inventory().unwrap().clone();
    let skus = ["sku-mug", "sku-tee", "sku-cap"];
    for i in 0..30u32 {
        let id = format!("res-{i}");
        let sku = skus[(i % 3) as usize];
        let _ = inventory.reserve(request(&id, &[(sku, 1 + i % 4), ("sku-stickers", 1)])).await;
        match i % 5 {
            0 => {
                inventory.release(&id).await.unwrap();
            }
            1 | 2 => {
                inventory.commit(&id).await.unwrap();
            }
            3 => {
                inventory.release_expired(now_ms() + 1_000).await.unwrap();
            }
            _ => {}
        }
        if i % 7 == 0 {
            inventory.restock(sku, 2).await.unwrap();
        }
        assert_invariants(&shop);
    }
    inventory.release_expired(now_ms() + 1_000).await.unwrap();
    for i in 0..30u32 {
        // Late commits: some find their stock again, some were already done.
        let _ = inventory.commit(&format!("res-{i}")).await;
        assert_invariants(&shop);
    }
    drop(inventory);
    let shop = restart(shop, &dir);
    assert_invariants(&shop);
    let levels = shop.inventory().unwrap().stock().unwrap();
    assert!(levels.iter().all(|level| level.reserved == 0), "{levels:?}");
    assert!(levels.iter().any(|level| level.restocked > 0));
}

#[tokio::test]
async fn restock_adds_to_a_known_sku_only() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let inventory = shop.inventory().unwrap();
    let level = inventory.restock("sku-mug", 25).await.unwrap();
    assert_eq!((level.available, level.initial, level.restocked), (125, 100, 25));
    assert!(inventory.restock("sku-nope", 1).await.is_err());
    assert!(inventory.restock("sku-mug", 0).await.is_err());
    assert_invariants(&shop);
}

#[tokio::test]
async fn a_reservation_survives_a_restart_and_its_key_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let first = shop.inventory().unwrap().reserve(request("res-1", &[("sku-mug", 2)])).await.unwrap();
    let shop = restart(shop, &dir);
    let again = shop.inventory().unwrap().reserve(request("res-1", &[("sku-mug", 2)])).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(stock(&shop, "sku-mug"), (98, 2, 0));
    // The seed is not applied twice either.
    assert_eq!(shop.inventory().unwrap().stock_of("sku-mug").unwrap().unwrap().initial, 100);
    assert_invariants(&shop);
}

#[tokio::test]
async fn the_release_job_reports_each_hold_it_releases_as_a_leak() {
    let dir = tempfile::tempdir().unwrap();
    let shop = short_lived(&dir);
    shop.inventory().unwrap().reserve(request("res-leak", &[("sku-mug", 2)])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The background sweep is slowed right down: the job finds the hold.
    let found = shop.call("inventory.release_expired", "job-1", serde_json::json!({})).await.unwrap();
    assert_eq!(found["released"], 1, "{found}");
    assert_eq!(found["leaks"][0]["subject"], "res-leak", "{found}");
    assert_eq!(found["leaks"][0]["invariant"], "reservation_released_in_time");
    let again = shop.call("inventory.release_expired", "job-2", serde_json::json!({})).await.unwrap();
    assert_eq!(again, serde_json::json!({"released": 0, "leaks": []}));
}
