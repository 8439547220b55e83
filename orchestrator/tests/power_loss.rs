//! Power loss under load, with real processes: the server's data directory is
//! on the fault-injecting file system (orchestrator/faultfs), a worker
//! completes the sagas' activities, and clients start sagas and await some of
//! them. At each cut point the power goes off (everything not yet synced is
//! lost, the last write perhaps torn at a sector), the server is `kill -9`ed,
//! the file system "reboots", and the store must hold everything it
//! acknowledged, with every history whole.
//!
//! `SAGAFLOW_POWER_CUTS=N` sets the number of cuts (200 by default, what CI
//! runs), `SAGAFLOW_TEST_SEED` replays a run. Without /dev/fuse the test
//! fails, unless `SAGAFLOW_SKIP_FUSE=1` says to skip it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServerProcess, WorkerProcess, start_request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sagaflow_faultfs::{FaultFs, Matcher, Op, Trap, When};
use sagaflow_orchestrator::store::{SledStore, Store};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, WorkflowStatus};

const CUTS_IN_CI: usize = 200;
const CLIENTS: usize = 6;
/// Small segments, so that rotations and checkpoints come every ~100 commits.
const SEGMENT_BYTES: &str = "65536";
/// The store's test knob for its segment size (`wal::SEGMENT_BYTES_ENV`).
const SEGMENT_BYTES_ENV: &str = "SAGAFLOW_TEST_WAL_SEGMENT_BYTES";
/// A full sweep of every workflow, and a rebuild of the index, every so many cuts.
const SWEEP_EVERY: usize = 20;

/// Where the power goes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CutPoint {
    /// After a random time under load.
    Anytime,
    /// At a write or sync of the log segment being appended to.
    Append,
    /// While the next segment is put in place (the rename of the spare) or filled with zeros.
    Rotation,
    /// While a checkpoint writes or syncs sled's file.
    Checkpoint,
    /// Just after a checkpoint deleted the segments it covered.
    AfterRetire,
}

const POINTS: [CutPoint; 5] =
    [CutPoint::Anytime, CutPoint::Append, CutPoint::Rotation, CutPoint::Checkpoint, CutPoint::AfterRetire];

fn trap(point: CutPoint, rng: &mut StdRng) -> Option<Trap> {
    let when = if rng.random_bool(0.5) { When::Before } else { When::After };
    let (op, path, skip) = match point {
        CutPoint::Anytime => return None,
        CutPoint::Append => (if rng.random_bool(0.5) { Op::Write } else { Op::Fsync }, ".log", rng.random_range(0..40)),
        CutPoint::Rotation => {
            if rng.random_bool(0.5) {
                (Op::Rename, "wal/spare", 0)
            } else {
                (Op::Write, "wal/spare", 0)
            }
        }
        CutPoint::Checkpoint => {
            (if rng.random_bool(0.7) { Op::Write } else { Op::Fsync }, "orchestrator/db", rng.random_range(0..6))
        }
        CutPoint::AfterRetire => {
            return Some(Trap { matcher: Matcher::new(Op::Unlink, ".log"), skip: 0, when: When::After });
        }
    };
    Some(Trap { matcher: Matcher::new(op, path), skip, when })
}

/// What the server acknowledged.
#[derive(Default)]
struct Acked {
    /// Request id to workflow id, for every start answered.
    starts: HashMap<String, String>,
    /// Workflows an await answered COMPLETED.
    completed: HashSet<String>,
}

/// The mounted file system, and the directories under it.
struct Disk {
    fs: FaultFs,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Mounts the file system; `None` (said on stderr) only when told to skip.
fn disk() -> Option<Disk> {
    if !sagaflow_faultfs::available() {
        assert!(
            std::env::var_os("SAGAFLOW_SKIP_FUSE").is_some(),
            "no /dev/fuse: the power-loss tests need FUSE (set SAGAFLOW_SKIP_FUSE=1 to skip them)"
        );
        eprintln!("SKIPPED: no /dev/fuse and SAGAFLOW_SKIP_FUSE is set");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let fs = FaultFs::mount(&backing, &mnt).unwrap();
    Some(Disk { fs, data: mnt.join("data"), _dir: dir })
}

fn seeded() -> (u64, StdRng) {
    let seed: u64 = std::env::var("SAGAFLOW_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (set SAGAFLOW_TEST_SEED to replay)");
    (seed, StdRng::seed_from_u64(seed))
}

async fn start_server(data: &Path, listen: &str) -> ServerProcess {
    let env = [(SEGMENT_BYTES_ENV, SEGMENT_BYTES)];
    ServerProcess::start_with_env(data, listen, &env, "warn").await
}

/// Starts sagas until the server stops answering; awaits every third one.
async fn client(url: String, round: usize, c: usize, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = WorkflowServiceClient::connect(url).await else { return };
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let request_id = format!("p{round}-c{c}-n{n}");
        let Ok(started) = client.start_workflow(start_request("bench", &request_id, "{}")).await else { return };
        let workflow_id = started.into_inner().workflow_id;
        acked.lock().unwrap().starts.insert(request_id, workflow_id.clone());
        if n % 3 == 0 {
            let request = AwaitWorkflowRequest { workflow_id: workflow_id.clone(), timeout_ms: 2_000 };
            let Ok(end) = client.await_workflow(request).await else { return };
            let end = end.into_inner();
            if end.terminal && end.summary.is_some_and(|s| s.status == WorkflowStatus::Completed as i32) {
                acked.lock().unwrap().completed.insert(workflow_id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_power_cuts_at_every_kind_of_moment() {
    let Some(mut disk) = disk() else { return };
    let (seed, mut rng) = seeded();
    let cuts: usize = std::env::var("SAGAFLOW_POWER_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(CUTS_IN_CI);
    let began = Instant::now();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut checked = Checked::default();
    let mut counts: BTreeMap<CutPoint, usize> = BTreeMap::new();

    let first = start_server(&disk.data, "127.0.0.1:0").await;
    let url = first.url.clone();
    // Logged into memory: its reconnection warnings after each cut are expected.
    let _worker = WorkerProcess::start_logged(&url, &["--activity-latency-ms", "1"], "warn").await;
    let mut first = Some(first);
    for cut in 0..cuts {
        let server = match first.take() {
            Some(server) => server,
            None => start_server(&disk.data, &url).await,
        };
        let point = POINTS[rng.random_range(0..POINTS.len())];
        let trap = trap(point, &mut rng);
        if let Some(trap) = &trap {
            disk.fs.cut_at(trap.clone());
        }
        if rng.random_bool(0.5) {
            disk.fs.tear_last_write(rng.random_range(1..8));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client(url.clone(), cut, c, Arc::clone(&acked), Arc::clone(&stop))))
            .collect();
        match &trap {
            Some(trap) => {
                let fired = tokio::task::block_in_place(|| disk.fs.wait_for_cut(Duration::from_secs(60)));
                assert!(fired, "cut {cut} ({point:?}, seed {seed}): {trap:?} never fired under load");
            }
            None => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..300))).await;
                disk.fs.power_cut();
            }
        }
        server.kill9().await;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }
        tokio::task::block_in_place(|| disk.fs.restart()).unwrap();
        *counts.entry(point).or_default() += 1;
        let sweep = cut % SWEEP_EVERY == SWEEP_EVERY - 1 || cut + 1 == cuts;
        let acked = acked.lock().unwrap();
        tokio::task::block_in_place(|| {
            checked.verify(&disk.data, &acked, sweep, &format!("cut {cut} ({point:?}, seed {seed})"))
        });
    }
    let acked = acked.lock().unwrap();
    println!(
        "{cuts} power cuts {counts:?} in {:.0?}: {} acknowledged starts and {} acknowledged completions survived",
        began.elapsed(),
        acked.starts.len(),
        acked.completed.len()
    );
    assert!(acked.starts.len() > cuts, "the load was too light to mean anything");
    assert!(!acked.completed.is_empty(), "no completion was acknowledged");
}

/// What earlier checks already proved and need not prove again.
#[derive(Default)]
struct Checked {
    /// Terminal workflows found whole: they no longer change.
    terminal: HashSet<String>,
    starts: HashSet<String>,
    completions: HashSet<String>,
}

impl Checked {
    /// Opens the store as a restart would, and checks it against `acked`:
    /// every workflow's history whole and matching its index row, every
    /// acknowledged start and completion there. With `sweep`, every workflow
    /// again, and `sagaflow admin rebuild-index` must rebuild the same index.
    fn verify(&mut self, data: &Path, acked: &Acked, sweep: bool, at: &str) {
        let dir = data.join("orchestrator");
        let store = SledStore::open(&dir).unwrap_or_else(|e| panic!("{at}: the store does not reopen: {e}"));
        for workflow_id in store.all_workflows().unwrap() {
            if !sweep && self.terminal.contains(&workflow_id) {
                continue;
            }
            let history =
                store.history(&workflow_id, 1, usize::MAX).unwrap_or_else(|e| panic!("{at}: {workflow_id}: {e}"));
            for (i, event) in history.iter().enumerate() {
                assert_eq!(event.seq, i as u64 + 1, "{at}: {workflow_id} has a gap or a duplicate at {i}");
            }
            assert!(
                matches!(history.first().and_then(|e| e.attributes.as_ref()), Some(Attributes::WorkflowStarted(_))),
                "{at}: {workflow_id} does not begin with WorkflowStarted"
            );
            let summary =
                store.summary(&workflow_id).unwrap().unwrap_or_else(|| panic!("{at}: {workflow_id} has no index row"));
            assert_eq!(
                summary.history_length,
                history.len() as u64,
                "{at}: {workflow_id}: the index disagrees with the history"
            );
            let by_request = store.workflow_for_request(&summary.request_id).unwrap();
            assert_eq!(
                by_request.as_deref(),
                Some(workflow_id.as_str()),
                "{at}: request {} maps elsewhere",
                summary.request_id
            );
            if sagaflow_orchestrator::store::is_terminal(summary.status) {
                self.terminal.insert(workflow_id);
            }
        }
        for (request_id, workflow_id) in &acked.starts {
            if sweep || !self.starts.contains(request_id) {
                let found = store.workflow_for_request(request_id).unwrap();
                assert_eq!(found.as_ref(), Some(workflow_id), "{at}: the acknowledged start {request_id} is lost");
                self.starts.insert(request_id.clone());
            }
        }
        for workflow_id in &acked.completed {
            if sweep || !self.completions.contains(workflow_id) {
                let status = store.summary(workflow_id).unwrap().map(|s| s.status);
                assert_eq!(
                    status,
                    Some(WorkflowStatus::Completed as i32),
                    "{at}: the acknowledged completion of {workflow_id} is lost"
                );
                self.completions.insert(workflow_id.clone());
            }
        }
        if !sweep {
            return;
        }
        let before = derived(&store);
        drop(store);
        let rebuilt = std::process::Command::new(common::BIN)
            .args(["admin", "rebuild-index", "--output", "json", "--data-dir"])
            .arg(data)
            .env(SEGMENT_BYTES_ENV, SEGMENT_BYTES)
            .output()
            .unwrap();
        assert!(rebuilt.status.success(), "{at}: rebuild-index failed: {}", String::from_utf8_lossy(&rebuilt.stderr));
        let store =
            SledStore::open(&dir).unwrap_or_else(|e| panic!("{at}: the store does not reopen after a rebuild: {e}"));
        assert!(before == derived(&store), "{at}: the rebuilt index differs from the one written along the way");
    }
}

/// The records `rebuild-index` derives from the histories.
fn derived(store: &SledStore) -> (Vec<sagaflow_proto::v1::WorkflowSummary>, Vec<String>, Vec<(String, String, i64)>) {
    let summaries = store.list("", None, usize::MAX, usize::MAX, &|_| true).unwrap().workflows;
    let mut tasks: Vec<String> = store.tasks().unwrap().into_iter().filter_map(|t| t.task.map(|t| t.task_id)).collect();
    tasks.sort();
    let mut timers: Vec<_> =
        store.timers().unwrap().into_iter().map(|t| (t.workflow_id, t.timer_id, t.fire_at_ms)).collect();
    timers.sort();
    (summaries, tasks, timers)
}
