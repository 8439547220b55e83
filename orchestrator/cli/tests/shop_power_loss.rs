//! Power loss under the shop's own stores (sled, one per service), with real
//! processes: a server and a shop worker, both with their data on the
//! fault-injecting file system, run checkouts; the power goes off at random
//! moments or at a write or sync of a service's store; both are `kill -9`ed
//! and restarted. Every checkout the server reported completed still has its
//! capture and its order in the shop's stores, each service's invariants hold
//! (stock conserved, no capture twice, refunds within the capture), and the
//! orchestrator's own store passes the checks of power_loss.rs.
//!
//! `SAGAFLOW_SHOP_POWER_CUTS=N` sets the number of cuts (20 by default),
//! `SAGAFLOW_TEST_SEED` replays a run; without /dev/fuse it fails unless
//! `SAGAFLOW_SKIP_FUSE=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::durability::{Acked, Checked, disk, seeded, start_server};
use common::{ServerProcess, WorkerProcess};
use rand::Rng;
use sagaflow_activities::{Faults, Shop, ShopOptions};
use sagaflow_faultfs::{Matcher, Op, Trap, When};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{GetCheckoutRequest, Item, StartCheckoutRequest};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, WorkflowStatus};

const CUTS_IN_CI: usize = 20;
const CLIENTS: usize = 3;
const ALL: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";

/// A checkout the server reported COMPLETED.
#[derive(Clone, Debug)]
struct Completed {
    payment_intent_id: String,
    order_id: String,
}

async fn shop_worker(url: &str, shop_dir: &Path) -> WorkerProcess {
    let args = ["--services", ALL, "--data-dir", shop_dir.to_str().unwrap(), "--activity-latency-ms", "1"];
    WorkerProcess::start_logged(url, &args, "warn").await
}

/// Checkouts until the server stops answering; each one awaited.
async fn checkouts(url: String, round: usize, c: usize, done: Arc<Mutex<Vec<Completed>>>) {
    let (Ok(mut checkouts), Ok(mut workflows)) =
        (CheckoutServiceClient::connect(url.clone()).await, WorkflowServiceClient::connect(url).await)
    else {
        return;
    };
    for n in 0.. {
        let request = StartCheckoutRequest {
            client_request_id: format!("s{round}-c{c}-n{n}"),
            customer_id: format!("cust-{c}"),
            items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
            shipping_address: "1 Test Street".into(),
            ..Default::default()
        };
        let Ok(started) = checkouts.start_checkout(request).await else { return };
        let checkout_id = started.into_inner().checkout_id;
        let request = AwaitWorkflowRequest { workflow_id: checkout_id.clone(), timeout_ms: 5_000 };
        let Ok(end) = workflows.await_workflow(request).await else { return };
        let completed = end.into_inner().summary.is_some_and(|s| s.status == WorkflowStatus::Completed as i32);
        if !completed {
            continue;
        }
        let Ok(checkout) = checkouts.get_checkout(GetCheckoutRequest { checkout_id }).await else { return };
        let checkout = checkout.into_inner();
        done.lock()
            .unwrap()
            .push(Completed { payment_intent_id: checkout.payment_intent_id, order_id: checkout.order_id });
    }
}

/// Opens the shop's stores (no process holds them) and checks them.
fn verify_shop(shop_dir: PathBuf, done: Vec<Completed>, at: String) {
    // On a thread of its own: outside a tokio runtime the shop starts no
    // background sweep that would write while the check reads.
    std::thread::spawn(move || {
        let shop = Shop::open(shop_dir.join("shop"), ShopOptions::default(), Faults::default())
            .unwrap_or_else(|e| panic!("{at}: the shop's stores do not reopen: {e}"));
        let violations = shop.check_invariants().unwrap();
        assert!(violations.is_empty(), "{at}: {violations:?}");
        for completed in done {
            let captured = shop.payments().unwrap().captured_cents(&completed.payment_intent_id).unwrap();
            assert!(captured > 0, "{at}: the capture of a completed checkout is lost: {completed:?}");
            let order = shop.orders().unwrap().order(&completed.order_id).unwrap();
            assert!(order.is_some(), "{at}: the order of a completed checkout is lost: {completed:?}");
        }
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shops_stores_keep_what_they_acknowledged_across_power_cuts() {
    let Some(mut disk) = disk() else { return };
    let (seed, mut rng) = seeded();
    let cuts: usize = std::env::var("SAGAFLOW_SHOP_POWER_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(CUTS_IN_CI);
    let shop_dir = disk.data.parent().unwrap().join("workers");
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut checked = Checked::default();
    let mut url = "127.0.0.1:0".to_owned();
    for cut in 0..cuts {
        let server: ServerProcess = start_server(&disk.data, &url).await;
        url.clone_from(&server.url);
        let worker = shop_worker(&url, &shop_dir).await;
        let trap = rng.random_bool(0.6).then(|| {
            let op = if rng.random_bool(0.5) { Op::Write } else { Op::Fsync };
            let when = if rng.random_bool(0.5) { When::Before } else { When::After };
            Trap { matcher: Matcher::new(op, "workers/shop/"), skip: rng.random_range(0..40), when }
        });
        if let Some(trap) = &trap {
            disk.fs.cut_at(trap.clone());
        }
        match rng.random_range(0..3) {
            0 => {}
            1 => disk.fs.tear_last_write(rng.random_range(1..8)),
            _ => disk.fs.scramble_unsynced(rng.random()),
        }
        let load: Vec<_> =
            (0..CLIENTS).map(|c| tokio::spawn(checkouts(url.clone(), cut, c, Arc::clone(&done)))).collect();
        match &trap {
            Some(trap) => {
                let fired = tokio::task::block_in_place(|| disk.fs.wait_for_cut(Duration::from_secs(60)));
                assert!(fired, "cut {cut} (seed {seed}): {trap:?} never fired under load");
            }
            None => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
                disk.fs.power_cut();
            }
        }
        worker.kill9().await;
        server.kill9().await;
        for task in load {
            task.await.unwrap();
        }
        tokio::task::block_in_place(|| disk.fs.restart()).unwrap();
        let at = format!("cut {cut} (seed {seed})");
        let completed = done.lock().unwrap().clone();
        tokio::task::block_in_place(|| {
            checked.verify(&disk.data, &Acked::default(), cut + 1 == cuts, &at);
            verify_shop(shop_dir.clone(), completed, at.clone());
        });
    }
    let completed = done.lock().unwrap().len();
    println!("{cuts} power cuts under the shop: {completed} completed checkouts kept their capture and order");
    assert!(completed > 0, "no checkout completed: the test proved nothing");
}

/// Regression: as the orchestrator's store, each service's sled never synced
/// its `conf` file, and a cut that kept part of it left the service unable
/// to open its store.
#[test]
fn new_service_stores_open_after_any_cut() {
    let Some(mut disk) = disk() else { return };
    for seed in 0..24 {
        let dir = disk.data.join(format!("shop-{seed}"));
        drop(Shop::open(&dir, ShopOptions::default(), Faults::default()).unwrap());
        disk.fs.scramble_unsynced(seed);
        disk.fs.power_cut();
        disk.fs.restart().unwrap();
        if let Err(e) = Shop::open(&dir, ShopOptions::default(), Faults::default()) {
            panic!("seed {seed}: a new shop does not open after a cut: {e}");
        }
    }
}
