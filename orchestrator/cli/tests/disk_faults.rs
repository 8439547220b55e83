//! A full disk and failing disks under load, with real processes, on the
//! fault-injecting file system: the server stops acknowledging, says why
//! (the refusal, gRPC health, `/healthz`, the metric), loses nothing it
//! acknowledged, and a restart once the disk is fine serves everything.
//!
//! Like power_loss.rs, these fail without /dev/fuse unless `SAGAFLOW_SKIP_FUSE=1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::durability::{Acked, Checked, Disk, Load, disk, start_server};
use common::{ServerProcess, WorkerProcess, start_request};
use rand::Rng;
use sagaflow_faultfs::{Matcher, Op, Trap, When};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CLIENTS: usize = 4;

/// Runs load until the server refuses a write, and returns the refusal.
async fn load_until_refused(server: &ServerProcess, acked: &Arc<Mutex<Acked>>, round: usize) -> tonic::Status {
    let load = Load::start(&server.url, round, CLIENTS, acked);
    common::shop::eventually(Duration::from_secs(60), "a write refused", || {
        let refused = acked.lock().unwrap().refusal.is_some();
        async move { refused }
    })
    .await;
    load.stop().await;
    acked.lock().unwrap().refusal.take().unwrap()
}

/// Some acknowledged work before the fault: starts and completions.
async fn some_work(server: &ServerProcess, acked: &Arc<Mutex<Acked>>, round: usize) {
    let load = Load::start(&server.url, round, CLIENTS, acked);
    common::shop::eventually(Duration::from_secs(60), "some acknowledged work", || {
        let acked = acked.lock().unwrap();
        let enough = acked.starts.len() >= 40 && !acked.completed.is_empty();
        async move { enough }
    })
    .await;
    load.stop().await;
}

/// Health, `/healthz` and the metric all say the store refuses writes.
async fn assert_reported(server: &ServerProcess) {
    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let health = HealthClient::new(channel);
    // Health is refreshed on a timer, not on the failure itself.
    common::shop::eventually(Duration::from_secs(5), "gRPC health NOT_SERVING", || {
        let mut health = health.clone();
        async move { health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status == 2 }
    })
    .await;
    let healthz = common::http(&server.http, "GET", "/healthz", "").await;
    assert!(healthz.starts_with("HTTP/1.1 503") && healthz.contains("refuses writes"), "{healthz}");
    let metrics = common::scrape(&server.http).await;
    assert!(metrics.contains("sagaflow_store_writable 0"), "{metrics}");
}

/// After the fault is gone: the data directory holds every acknowledgement,
/// and a new server serves old and new work.
async fn assert_restart_serves_everything(disk: &Disk, url: &str, acked: &Arc<Mutex<Acked>>, what: &str) {
    tokio::task::block_in_place(|| Checked::default().verify(&disk.data, &acked.lock().unwrap(), true, what));
    let server = start_server(&disk.data, url).await;
    let mut client = server.client().await;
    let known: Vec<(String, String)> =
        acked.lock().unwrap().starts.iter().take(20).map(|(r, w)| (r.clone(), w.clone())).collect();
    for (request_id, workflow_id) in known {
        let again = client.start_workflow(start_request("bench", &request_id, "{}")).await.unwrap().into_inner();
        assert_eq!(again.workflow_id, workflow_id, "{what}: {request_id}");
    }
    client.start_workflow(start_request("bench", "after-the-fault", "{}")).await.unwrap();
    server.kill9().await;
}

async fn started(disk: &Disk) -> (ServerProcess, WorkerProcess, Arc<Mutex<Acked>>) {
    let server = start_server(&disk.data, "127.0.0.1:0").await;
    let worker = WorkerProcess::start_logged(&server.url, &["--activity-latency-ms", "1"], "warn").await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    (server, worker, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_a_clear_error_and_a_restart_serves_everything() {
    let Some(disk) = disk() else { return };
    let (_, mut rng) = common::durability::seeded();
    let (server, _worker, acked) = started(&disk).await;
    // Some work first, then the disk fills part-way into whatever is being written.
    some_work(&server, &acked, 0).await;
    disk.fs.set_enospc_after(Some(rng.random_range(0..512 * 1024)));
    let refused = load_until_refused(&server, &acked, 1).await;
    // The first refusal names the cause: as the flush's failure ("…; the
    // store is read-only until restarted") or, when the disk filled under
    // one of sled's own writes during a read, as that read's I/O error.
    // Either way the store refuses writes from then on (reported below).
    assert!(refused.message().contains("No space left"), "the refusal says why: {refused:?}");
    assert_reported(&server).await;
    let url = server.url.clone();
    server.kill9().await;
    // Space freed; no power cut: a restart keeps what the page cache held.
    disk.fs.set_enospc_after(None);
    assert_restart_serves_everything(&disk, &url, &acked, "after a full disk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_the_log_stops_acknowledgements_and_a_restart_replays() {
    let Some(mut disk) = disk() else { return };
    let (server, _worker, acked) = started(&disk).await;
    some_work(&server, &acked, 0).await;
    disk.fs.fail_with_eio(Matcher::new(Op::Fsync, ".log"));
    let refused = load_until_refused(&server, &acked, 1).await;
    assert!(refused.message().contains("read-only"), "{refused:?}");
    assert_reported(&server).await;
    let url = server.url.clone();
    server.kill9().await;
    // A failing disk is replaced by a power cycle: what was never synced is gone.
    disk.fs.power_cut();
    disk.fs.restart().unwrap();
    assert_restart_serves_everything(&disk, &url, &acked, "after EIO on the log").await;
}

/// A failed sync of sled's file leaves sled's state unknown: Linux drops the
/// dirty pages of a failed writeback, so a retried flush may succeed without
/// writing them ("fsyncgate"). The store must stop acknowledging and keep the
/// log segments, never retire them on a later flush that claims success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_sled_stops_acknowledgements_keeps_the_log_and_a_restart_replays() {
    let Some(mut disk) = disk() else { return };
    let (server, _worker, acked) = started(&disk).await;
    some_work(&server, &acked, 0).await;
    let retired = Trap { matcher: Matcher::new(Op::Unlink, ".log"), skip: 0, when: When::After };
    disk.fs.fail_with_eio(Matcher::new(Op::Fsync, "orchestrator/db"));
    let load = Load::start(&server.url, 1, CLIENTS, &acked);
    common::shop::eventually(Duration::from_secs(60), "a checkpoint meets the failing sync", || {
        let failed = disk.fs.faults_answered() > 0;
        async move { failed }
    })
    .await;
    // The disk seems fine again. A store that retried its checkpoint now
    // would retire segments whose writes sled lost: the power goes off then.
    disk.fs.clear_faults();
    disk.fs.cut_at(retired);
    common::shop::eventually(Duration::from_secs(60), "a refusal", || {
        let refused = acked.lock().unwrap().refusal.is_some() || disk.fs.is_cut();
        async move { refused }
    })
    .await;
    load.stop().await;
    assert!(!disk.fs.is_cut(), "a log segment was retired after sled's sync failed");
    let refused = acked.lock().unwrap().refusal.take().unwrap();
    assert!(refused.message().contains("read-only"), "{refused:?}");
    assert_reported(&server).await;
    let url = server.url.clone();
    server.kill9().await;
    disk.fs.power_cut();
    disk.fs.restart().unwrap();
    assert_restart_serves_everything(&disk, &url, &acked, "after EIO on sled").await;
}
