//! Helpers for the tests that run the server on the fault-injecting file
//! system (power_loss.rs, disk_faults.rs): the mount, the load, and the check
//! of a data directory against what the server acknowledged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;
use sagaflow_faultfs::FaultFs;
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, WorkflowStatus};
use sagaflow_server::store::{ListQuery, SledStore, Store};

use super::{ServerProcess, start_request};

/// The store's test knob for its segment size (`wal::SEGMENT_BYTES_ENV`).
pub const SEGMENT_BYTES_ENV: &str = "SAGAFLOW_TEST_WAL_SEGMENT_BYTES";
/// Small segments, so that rotations and checkpoints come every ~100 commits.
pub const SEGMENT_BYTES: &str = "65536";

/// What the server acknowledged.
#[derive(Default)]
pub struct Acked {
    /// Request id to workflow id, for every start answered.
    pub starts: HashMap<String, String>,
    /// Workflows an await answered COMPLETED.
    pub completed: HashSet<String>,
    /// The first error a client was answered with.
    pub refusal: Option<tonic::Status>,
}

/// The mounted file system, and the data directory under it.
pub struct Disk {
    pub fs: FaultFs,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Mounts the file system; `None` (said on stderr) only when
/// `SAGAFLOW_SKIP_FUSE` says to skip: a missing /dev/fuse fails the test.
pub fn disk() -> Option<Disk> {
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

pub fn seeded() -> (u64, StdRng) {
    let seed: u64 = std::env::var("SAGAFLOW_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (set SAGAFLOW_TEST_SEED to replay)");
    (seed, StdRng::seed_from_u64(seed))
}

pub async fn start_server(data: &Path, listen: &str) -> ServerProcess {
    ServerProcess::start_with_env(data, listen, &[], &[(SEGMENT_BYTES_ENV, SEGMENT_BYTES)], Some("warn")).await
}

/// Load from `clients` tasks until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, round: usize, clients: usize, acked: &Arc<Mutex<Acked>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| tokio::spawn(client(url.to_owned(), round, c, Arc::clone(acked), Arc::clone(&stop))))
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// Starts sagas until the server stops answering; awaits every third one.
async fn client(url: String, round: usize, c: usize, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = WorkflowServiceClient::connect(url).await else { return };
    let refused = |status: tonic::Status| {
        acked.lock().unwrap().refusal.get_or_insert(status);
    };
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let request_id = format!("p{round}-c{c}-n{n}");
        let workflow_id = match client.start_workflow(start_request("bench", &request_id, "{}")).await {
            Ok(started) => started.into_inner().workflow_id,
            Err(status) => return refused(status),
        };
        acked.lock().unwrap().starts.insert(request_id, workflow_id.clone());
        if n % 3 == 0 {
            let request = AwaitWorkflowRequest { workflow_id: workflow_id.clone(), timeout_ms: 2_000 };
            let end = match client.await_workflow(request).await {
                Ok(end) => end.into_inner(),
                Err(status) => return refused(status),
            };
            if end.terminal && end.summary.is_some_and(|s| s.status == WorkflowStatus::Completed as i32) {
                acked.lock().unwrap().completed.insert(workflow_id);
            }
        }
    }
}

/// What earlier checks already proved and need not prove again.
#[derive(Default)]
pub struct Checked {
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
    pub fn verify(&mut self, data: &Path, acked: &Acked, sweep: bool, at: &str) {
        let dir = data.join("orchestrator");
        let store = SledStore::open(&dir).unwrap_or_else(|e| panic!("{at}: the store does not reopen: {e}"));
        for workflow_id in block(store.all_workflows(None, usize::MAX)).unwrap() {
            if !sweep && self.terminal.contains(&workflow_id) {
                continue;
            }
            let history = block(store.history(&workflow_id, 1, usize::MAX))
                .unwrap_or_else(|e| panic!("{at}: {workflow_id}: {e}"));
            for (i, event) in history.iter().enumerate() {
                assert_eq!(event.seq, i as u64 + 1, "{at}: {workflow_id} has a gap or a duplicate at {i}");
            }
            assert!(
                matches!(history.first().and_then(|e| e.attributes.as_ref()), Some(Attributes::WorkflowStarted(_))),
                "{at}: {workflow_id} does not begin with WorkflowStarted"
            );
            let summary = block(store.summary(&workflow_id))
                .unwrap()
                .unwrap_or_else(|| panic!("{at}: {workflow_id} has no index row"));
            assert_eq!(
                summary.history_length,
                history.len() as u64,
                "{at}: {workflow_id}: the index disagrees with the history"
            );
            let by_request = block(store.workflow_for_request(&summary.request_id)).unwrap();
            assert_eq!(
                by_request.as_deref(),
                Some(workflow_id.as_str()),
                "{at}: request {} maps elsewhere",
                summary.request_id
            );
            if sagaflow_proto::is_terminal(summary.status) {
                self.terminal.insert(workflow_id);
            }
        }
        for (request_id, workflow_id) in &acked.starts {
            if sweep || !self.starts.contains(request_id) {
                let found = block(store.workflow_for_request(request_id)).unwrap();
                assert_eq!(found.as_ref(), Some(workflow_id), "{at}: the acknowledged start {request_id} is lost");
                self.starts.insert(request_id.clone());
            }
        }
        for workflow_id in &acked.completed {
            if sweep || !self.completions.contains(workflow_id) {
                let status = block(store.summary(workflow_id)).unwrap().map(|s| s.status);
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
        let rebuilt = std::process::Command::new(super::BIN)
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

/// Waits for a store read. The checks run on a blocking thread
/// (`block_in_place`), where the test's runtime may be entered again.
fn block<T>(read: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(read)
}

type Derived = (Vec<sagaflow_proto::v1::WorkflowSummary>, Vec<String>, Vec<(String, String, i64)>);

/// The records `rebuild-index` derives from the histories.
fn derived(store: &SledStore) -> Derived {
    let summaries =
        block(store.list(&ListQuery { limit: usize::MAX, scan_budget: usize::MAX, ..ListQuery::default() }))
            .unwrap()
            .workflows;
    let mut tasks: Vec<String> =
        block(store.tasks(None, usize::MAX)).unwrap().into_iter().filter_map(|t| t.task.map(|t| t.task_id)).collect();
    tasks.sort();
    let mut timers: Vec<_> = block(store.timers(None, usize::MAX))
        .unwrap()
        .into_iter()
        .map(|t| (t.workflow_id, t.timer_id, t.fire_at_ms))
        .collect();
    timers.sort();
    (summaries, tasks, timers)
}
