//! The kill -9 row: the orchestrator is killed at moments spread through a
//! stream of checkouts. Every acknowledged start completes or compensates,
//! no effect is applied twice, and no saga is left stuck without an alert.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::shop::{Shop, checkout};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;

/// The load starts a checkout every 50 ms until the last restart is a
/// second behind it, and at most this many.
const MAX_CHECKOUTS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_checkouts_survive_orchestrator_kills() {
    survive_kills(&[]).await;
}

/// The same on PostgreSQL: each restarted node first waits for the killed
/// one's lease on the store to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_checkouts_survive_orchestrator_kills_on_postgres() {
    let db = sagaflow_store_postgres::testing::TestDb::create().await;
    survive_kills(&["--store", &db.url]).await;
}

async fn survive_kills(server_args: &[&str]) {
    let mut shop = Shop::start(server_args, &[]).await;
    let url = shop.server().url.clone();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in (0..MAX_CHECKOUTS).take_while(|_| !done.load(Ordering::Relaxed)) {
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "starts were acknowledged between the kills: {}", acked.len());
    shop.assert_acknowledged_checkouts_ended_once(&acked).await;
}
