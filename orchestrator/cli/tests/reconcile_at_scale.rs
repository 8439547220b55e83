//! `reconcile-payments-vs-orders` at 100,000 captures (issue 26): the job
//! pages through the captures, so each activity result stays under the
//! server's default payload limit (256 KiB; one snapshot of every capture
//! passed it at about 2,000), and it still finds what one snapshot found.
//!
//! The payments and orders stores (real on-disk sled, in the worker's data
//! directory) are seeded directly, in bulk, with the services' own record
//! types: a checkout per capture would take hours. Everything after that is
//! the production path: a `sagaflow server` with its defaults, a `sagaflow
//! worker` hosting payments and orders, and `sagaflow jobs run`.
//!
//! `SAGAFLOW_RECONCILE_CAPTURES` sets the size (100,000 by default; about
//! 25 s in debug on 2 cores: 10 s to seed, 8 s for the job's 103 pages).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::{BIN, ServerProcess, WorkerProcess};
use sagaflow_activities::shop::orders::{Order, OrderLine, OrderRefund, OrderStatus};
use sagaflow_activities::shop::payments::{IntentStatus, PaymentIntent, RefundRecord};
use serde_json::{Value, json};

fn intent_id(i: usize) -> String {
    // The shape (and size) of the ids a checkout derives: `pi-` and a uuid.
    format!("pi-00000000-0000-5000-8000-{i:012}")
}

fn order_id(i: usize) -> String {
    format!("ord-{i:016x}")
}

/// Writes `records` (key, JSON value) into the sled database in `dir`, in
/// batches, and flushes it: the layout the services read
/// (`intent/ID`, `refund/INTENT/REFUND`, `order/ID`).
fn seed(dir: &Path, records: impl Iterator<Item = (String, Value)>) {
    let db = sled::Config::new().path(dir).open().unwrap();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for (key, value) in records {
        batch.insert(key.as_bytes(), serde_json::to_vec(&value).unwrap());
        in_batch += 1;
        if in_batch == 10_000 {
            db.apply_batch(std::mem::take(&mut batch)).unwrap();
            in_batch = 0;
        }
    }
    db.apply_batch(batch).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_pages_through_100k_captures_and_finds_the_mismatches() {
    let n: usize = std::env::var("SAGAFLOW_RECONCILE_CAPTURES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    assert!(n >= 10, "SAGAFLOW_RECONCILE_CAPTURES is at least 10");
    let dir = tempfile::tempdir().unwrap();
    let workers = dir.path().join("workers");
    let an_hour_ago =
        u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap() - 3_600_000;

    // Three discrepancies, spread over the pages: a capture with no order,
    // an order whose intent was never captured, a refund the order lacks.
    let no_order = n / 2;
    let never_captured = n * 7 / 9;
    let refund_missing = n / 8;
    let started = Instant::now();
    let intents = (0..n).map(|i| {
        let captured = i != never_captured;
        let refunded = if i == refund_missing { 500 } else { 0 };
        let intent = PaymentIntent {
            payment_intent_id: intent_id(i),
            customer_id: format!("customer-{}", i % 1_000),
            payment_method: "card".into(),
            amount_cents: 4_588,
            status: if captured { IntentStatus::Captured } else { IntentStatus::RequiresCapture },
            captured_cents: if captured { 4_588 } else { 0 },
            refunded_cents: refunded,
            created_at_ms: an_hour_ago,
            captured_at_ms: captured.then_some(an_hour_ago),
            voided_at_ms: None,
        };
        (format!("intent/{}", intent_id(i)), serde_json::to_value(intent).unwrap())
    });
    let refund = RefundRecord {
        refund_id: "rf-1".into(),
        payment_intent_id: intent_id(refund_missing),
        amount_cents: 500,
        at_ms: an_hour_ago,
    };
    let refunds =
        std::iter::once((format!("refund/{}/rf-1", intent_id(refund_missing)), serde_json::to_value(refund).unwrap()));
    seed(&workers.join("shop/payments"), intents.chain(refunds));
    let orders = (0..n).filter(|&i| i != no_order).map(|i| {
        let order = Order {
            order_id: order_id(i),
            client_request_id: format!("seed:{i}"),
            checkout_id: format!("chk-{i}"),
            customer_id: format!("customer-{}", i % 1_000),
            lines: vec![OrderLine {
                sku: "sku-tee".into(),
                quantity: 1,
                unit_price_cents: 4_588,
                line_total_cents: 4_588,
                name: None,
            }],
            total_cents: 4_588,
            payment_intent_id: intent_id(i),
            status: OrderStatus::Shipped,
            shipment_id: Some(format!("shp-{i}")),
            refunded_cents: 0,
            refunds: Vec::<OrderRefund>::new(),
            created_at_ms: an_hour_ago,
            updated_at_ms: an_hour_ago,
        };
        (format!("order/{}", order_id(i)), serde_json::to_value(order).unwrap())
    });
    seed(&workers.join("shop/orders"), orders);
    eprintln!("seeded {n} intents and {} orders in {:?}", n - 1, started.elapsed());

    // The server with its default payload limit, and the services' worker.
    let server = ServerProcess::start(&dir.path().join("orchestrator"), &["--jobs-interval", "0s"]).await;
    let _worker =
        WorkerProcess::start(&server.url, &["--services", "payments,orders", "--data-dir", workers.to_str().unwrap()])
            .await;

    let started = Instant::now();
    let output = tokio::process::Command::new(BIN)
        .args(["jobs", "run", "reconcile-payments-vs-orders", "--server", &server.url])
        .args(["--output", "json", "--grace", "0s", "--timeout", "300s"])
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("the job printed no report: {stdout} / {}", String::from_utf8_lossy(&output.stderr))
    });
    eprintln!("the job ran in {took:?}: {}", report["steps"]["next"]);

    // It found exactly the mismatches, and exits non-zero for them.
    assert!(!output.status.success(), "violations are a failure: {report}");
    let mut found: Vec<(String, String)> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["invariant"].as_str().unwrap().to_owned(), v["subject"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("capture_has_order_or_refund".to_owned(), intent_id(no_order)),
            ("order_has_capture".to_owned(), order_id(never_captured)),
        ],
        "{}",
        report["violations"]
    );
    let orders = &report["steps"]["orders"];
    assert_eq!(
        orders["repairs"],
        json!([{"order_id": order_id(refund_missing), "refund_id": "rf-1", "amount_cents": 500}]),
        "the refund the order lacked is recorded"
    );
    // Every capture and every order was compared, once.
    assert_eq!(orders["checked_captures"], n - 1, "{orders}");
    assert_eq!(orders["checked_orders"], n - 1, "{orders}");
    assert_eq!(report["steps"]["captures"]["captures"], n - 1);
    // In pages: at most 1,000 intents each by default.
    let pages = report["steps"]["next"]["pages"].as_u64().unwrap();
    assert!(pages >= u64::try_from(n.div_ceil(1_000)).unwrap(), "{pages} pages");
}
