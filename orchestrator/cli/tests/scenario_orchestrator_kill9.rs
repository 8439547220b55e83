//! The kill -9 row: the orchestrator is killed at moments spread through a
//! stream of checkouts. Every acknowledged start completes or compensates,
//! no effect is applied twice, and no saga is left stuck without an alert.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::shop::{Shop, checkout};
use common::{assert_each_step_completed_once, assert_intact, full_history, status_of};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::v1::ListWorkflowsRequest;
use serde_json::Value;

/// How many checkouts the load starts, one every 50 ms.
const CHECKOUTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_checkouts_survive_orchestrator_kills() {
    let mut shop = Shop::start(&[], &[]).await;
    let url = shop.server().url.clone();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let load = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..CHECKOUTS {
                let (url, acked) = (url.clone(), Arc::clone(&acked));
                calls.push(tokio::spawn(async move {
                    let request_id = format!("k9-{i}");
                    let sku = ["sku-mug", "sku-tee", "sku-cap"][i % 3];
                    // A start counts only once the server said yes; a refused
                    // or cut call was never promised.
                    let Ok(mut client) = CheckoutServiceClient::connect(url).await else { return };
                    if let Ok(answer) = client.start_checkout(checkout(&request_id, "kim", &[(sku, 1)])).await {
                        acked.lock().unwrap().insert(request_id, answer.into_inner().checkout_id);
                    }
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for call in calls {
                let _ = call.await;
            }
        })
    };
    // Three kills at moments spread over the load, each followed by a restart.
    for pause in [700, 900, 600] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        shop.restart_server().await;
    }
    load.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= CHECKOUTS / 3, "most starts were acknowledged: {}", acked.len());
    let mut workflows = shop.server().client().await;
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    for checkout_id in acked.values() {
        let end = shop.await_end(checkout_id, Duration::from_secs(120)).await;
        let status = status_of(&end);
        assert!(matches!(status, "COMPLETED" | "COMPENSATED"), "{checkout_id} ended {status}");
        *outcomes.entry(status).or_default() += 1;
        let history = full_history(&mut workflows, checkout_id).await;
        assert_intact(checkout_id, &history);
        assert_each_step_completed_once(checkout_id, &history);
    }
    assert!(outcomes.get("COMPLETED").copied().unwrap_or(0) > 0, "{outcomes:?}");
    // Starts whose answer was cut off may have been committed too: let them end.
    let all = workflows
        .list_workflows(ListWorkflowsRequest { workflow_type: "checkout".into(), page_size: 200, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for summary in &all.workflows {
        shop.await_end(&summary.workflow_id, Duration::from_secs(120)).await;
    }

    // Effects once: one capture per intent, one order per checkout request.
    let ledger = shop.admin("payments", "GET", "/payments/ledger", None).await;
    let mut captures: HashMap<&str, usize> = HashMap::new();
    for entry in ledger.as_array().unwrap().iter().filter(|e| e["kind"] == "capture") {
        *captures.entry(entry["payment_intent_id"].as_str().unwrap()).or_default() += 1;
    }
    assert!(captures.values().all(|n| *n == 1), "a payment captured twice: {captures:?}");
    let orders = shop.admin("orders", "GET", "/orders", None).await;
    let mut per_request: HashMap<&str, usize> = HashMap::new();
    for order in orders.as_array().unwrap() {
        *per_request.entry(order["client_request_id"].as_str().unwrap()).or_default() += 1;
    }
    assert!(per_request.values().all(|n| *n == 1), "an order made twice: {per_request:?}");
    // A start cut off after its commit also runs, unacknowledged: at least
    // one order per acknowledged completion.
    assert!(orders.as_array().unwrap().len() >= outcomes.get("COMPLETED").copied().unwrap_or(0));
    let reservations = shop.admin("inventory", "GET", "/reservations", None).await;
    let held: Vec<&Value> = reservations.as_array().unwrap().iter().filter(|r| r["status"] == "HELD").collect();
    assert!(held.is_empty(), "leaked reservations: {held:?}");

    let stuck = workflows
        .list_workflows(ListWorkflowsRequest { stuck_only: true, page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(stuck.workflows.is_empty(), "stuck: {:?}", stuck.workflows);
    shop.assert_invariants_hold().await;
}
