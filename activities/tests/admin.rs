//! The admin API, called in-process through `tower::ServiceExt::oneshot`.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use sagaflow_activities::shop::ShopOptions;
use sagaflow_activities::{Faults, Shop, admin};
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{items, open, options};

async fn send(shop: &Shop, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = admin::router(shop.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

async fn get(shop: &Shop, uri: &str) -> (StatusCode, Value) {
    send(shop, Method::GET, uri, None).await
}

#[tokio::test]
async fn stock_can_be_read_and_restocked() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let (status, stock) = get(&shop, "/stock").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stock.as_array().unwrap().len(), 6);
    let mug = stock.as_array().unwrap().iter().find(|l| l["sku"] == "sku-mug").unwrap();
    assert_eq!(
        *mug,
        json!({"sku": "sku-mug", "available": 100, "reserved": 0, "sold": 0, "initial": 100, "restocked": 0})
    );

    let (status, level) = send(&shop, Method::POST, "/stock/sku-mug/restock", Some(json!({"quantity": 5}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((level["available"].as_u64(), level["restocked"].as_u64()), (Some(105), Some(5)));
    assert_eq!(get(&shop, "/stock/sku-mug").await.1["available"], 105);

    let (status, error) = send(&shop, Method::POST, "/stock/sku-nope/restock", Some(json!({"quantity": 5}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error_type"], "UnknownSku");
    let (status, error) = send(&shop, Method::POST, "/stock/sku-mug/restock", Some(json!({"quantity": -1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].is_string());
    let (status, _) = send(&shop, Method::POST, "/stock/sku-mug/restock", Some(json!({"quantity": 0}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&shop, Method::POST, "/stock/sku-mug/restock", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&shop, "/stock/sku-nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn payments_orders_shipments_and_notifications_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    shop.call(
        "payments.capture",
        "pi-1",
        json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": 2000}),
    )
    .await
    .unwrap();
    shop.call(
        "payments.refund",
        "rf-1",
        json!({"refund_id": "rf-1", "payment_intent_id": "pi-1", "amount_cents": 500}),
    )
    .await
    .unwrap();
    let order = shop
        .call(
            "orders.create",
            "req-1",
            json!({"client_request_id": "req-1", "checkout_id": "co-1", "customer_id": "c",
                   "lines": [{"sku": "sku-tee", "quantity": 1, "unit_price_cents": 2000, "line_total_cents": 2000}],
                   "total_cents": 2000, "payment_intent_id": "pi-1"}),
        )
        .await
        .unwrap();
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    shop.call("shipping.create_shipment", &order_id, json!({"order_id": order_id})).await.unwrap();
    shop.call("notifications.send", "co-1/notify", json!({"customer_id": "c", "template": "order_confirmed"}))
        .await
        .unwrap();

    let (_, payments) = get(&shop, "/payments").await;
    assert_eq!(payments[0]["captured_cents"], 2000);
    assert_eq!(payments[0]["refunded_cents"], 500);
    assert_eq!(payments[0]["refundable_cents"], 1500);
    assert_eq!(get(&shop, "/payments/pi-1").await.1["status"], "captured");
    assert_eq!(get(&shop, "/payments/pi-2").await.0, StatusCode::NOT_FOUND);
    let (_, ledger) = get(&shop, "/payments/ledger").await;
    assert_eq!(ledger.as_array().unwrap().iter().map(|e| e["kind"].clone()).collect::<Vec<_>>(), ["capture", "refund"]);

    assert_eq!(get(&shop, "/orders").await.1.as_array().unwrap().len(), 1);
    let (status, shown) = get(&shop, &format!("/orders/{order_id}")).await;
    assert_eq!((status, shown["status"].clone()), (StatusCode::OK, json!("PAID")));
    let (status, error) = get(&shop, "/orders/ord-none").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error_type"], "UnknownOrder");

    assert_eq!(get(&shop, "/shipments").await.1[0]["order_id"], order_id.as_str());
    assert_eq!(get(&shop, "/notifications?customer=c").await.1.as_array().unwrap().len(), 1);
    assert_eq!(get(&shop, "/notifications?customer=other").await.1.as_array().unwrap().len(), 0);
    assert_eq!(get(&shop, "/notifications").await.1.as_array().unwrap().len(), 1);

    // The order does not know of the refund yet: reconciliation says so.
    let (_, report) = get(&shop, "/reconciliation").await;
    assert_eq!(report["captures_without_order"], json!([]));
    assert_eq!(report["refund_mismatches"][0]["payment_refunded_cents"], 500);
    assert_eq!(report["refund_mismatches"][0]["order_refunded_cents"], 0);
}

#[tokio::test]
async fn coupons_get_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let (_, coupons) = get(&shop, "/coupons").await;
    assert_eq!(coupons.as_array().unwrap().len(), 2);

    let (status, rule) = send(&shop, Method::PUT, "/coupons/welcome10", Some(json!({"percent_off": 15}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (rule["code"].clone(), rule["version"].clone(), rule["percent_off"].clone()),
        (json!("WELCOME10"), json!(2), json!(15))
    );
    let (_, history) = get(&shop, "/coupons/WELCOME10").await;
    assert_eq!(history.as_array().unwrap().len(), 2);

    let (status, _) =
        send(&shop, Method::PUT, "/coupons/NEW", Some(json!({"percent_off": 5, "amount_off_cents": 5}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&shop, Method::PUT, "/coupons/NEW", Some(json!({"percent": 5}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&shop, "/coupons/NEW").await.0, StatusCode::NOT_FOUND);
    let (status, rule) =
        send(&shop, Method::PUT, "/coupons/NEW", Some(json!({"amount_off_cents": 300, "min_subtotal_cents": 1000})))
            .await;
    assert_eq!((status, rule["version"].clone()), (StatusCode::OK, json!(1)));
}

#[tokio::test]
async fn faults_can_be_set_listed_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    assert_eq!(get(&shop, "/faults").await.1, json!([]));
    let (status, active) =
        send(&shop, Method::POST, "/faults", Some(json!({"spec": "inventory.reserve=error:1"}))).await;
    assert_eq!((status, active), (StatusCode::OK, json!(["inventory.reserve=error:1"])));
    send(&shop, Method::POST, "/faults", Some(json!({"spec": "shipping.create_shipment=error"}))).await;
    let (status, error) = send(&shop, Method::POST, "/faults", Some(json!({"spec": "nonsense"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].as_str().unwrap().contains("bad fault spec"));

    // The switch set over HTTP hits the activity.
    let input = json!({"reservation_id": "res-1", "items": items(&[("sku-mug", 1)])});
    assert_eq!(shop.call("inventory.reserve", "res-1", input.clone()).await.unwrap_err().error_type(), "InjectedFault");
    shop.call("inventory.reserve", "res-1", input).await.unwrap();
    assert_eq!(get(&shop, "/faults").await.1, json!(["shipping.create_shipment=error"]));

    let (_, active) = send(&shop, Method::DELETE, "/faults?target=shipping.create_shipment", None).await;
    assert_eq!(active, json!([]));
    send(&shop, Method::POST, "/faults", Some(json!({"spec": "orders.*=fatal"}))).await;
    let (_, active) = send(&shop, Method::DELETE, "/faults", None).await;
    assert_eq!(active, json!([]));
}

#[tokio::test]
async fn invariants_and_reservations_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    shop.call("inventory.reserve", "res-1", json!({"reservation_id": "res-1", "items": items(&[("sku-cap", 2)])}))
        .await
        .unwrap();
    let (status, report) = get(&shop, "/invariants").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report, json!({"ok": true, "violations": []}));
    assert_eq!(get(&shop, "/reservations").await.1[0]["status"], "HELD");
    assert_eq!(get(&shop, "/reservations/res-1").await.1["items"], items(&[("sku-cap", 2)]));
    assert_eq!(get(&shop, "/reservations/res-9").await.0, StatusCode::NOT_FOUND);
    let (status, released) = send(&shop, Method::POST, "/reservations/release-expired", None).await;
    assert_eq!((status, released), (StatusCode::OK, json!({"released": 0})));
    let (_, catalog) = get(&shop, "/catalog").await;
    assert_eq!(catalog["version"], 1);
    assert_eq!(catalog["products"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn unknown_endpoints_and_services_not_hosted_are_404_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let only_inventory = ShopOptions { services: vec!["inventory".into()], ..options() };
    let shop = Shop::open(dir.path(), only_inventory, Faults::default()).unwrap();
    let (status, index) = get(&shop, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index["services"], json!(["inventory"]));
    assert_eq!(
        index["activities"],
        json!([
            "inventory.reserve",
            "inventory.release",
            "inventory.commit",
            "inventory.check_invariants",
            "inventory.release_expired",
            "inventory.held_reservations"
        ])
    );

    let (status, error) = get(&shop, "/payments").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error_type"], "ServiceNotHosted");
    assert_eq!(get(&shop, "/reconciliation").await.0, StatusCode::NOT_FOUND);
    let (status, error) = get(&shop, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error_type"], "UnknownEndpoint");
    let (status, error) = send(&shop, Method::DELETE, "/stock", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(error["error"].is_string());
    // The invariants of what is hosted still hold.
    assert_eq!(get(&shop, "/invariants").await.1["ok"], true);
}
