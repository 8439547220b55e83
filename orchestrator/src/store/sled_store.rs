//! The embedded default: one sled tree, one atomic batch per decision, and a
//! group-committed write-ahead log append before any acknowledgement (see
//! [`wal`](super::wal) for why sled's own flush is kept off the hot path).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, mpsc};

use super::group_commit::GroupCommit;
use super::kv_store::{Kv, KvStore, Write};
use super::wal;
use super::{Durable, Error, Result};

pub struct SledKv {
    tree: sled::Tree,
    /// Encoded batches applied to sled and not yet in the log, in the order
    /// they were applied (the lock keeps both orders the same).
    unlogged: std::sync::Arc<Mutex<Vec<u8>>>,
    flusher: GroupCommit,
    /// Declared after the flusher, which holds its sender: dropping the
    /// flusher ends the checkpointer, and joining it releases sled's lock.
    _checkpointer: Checkpointer,
}

struct Checkpointer(Option<std::thread::JoinHandle<()>>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// The [`Store`](super::Store) on disk.
pub type SledStore = KvStore<SledKv>;

fn engine(e: impl std::fmt::Display) -> Error {
    Error::Engine(e.to_string())
}

fn batch_of(writes: Vec<Write>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch
}

/// Makes everything applied to sled durable in sled itself. sled's flush
/// writes its log with `sync_file_range`, which neither empties the disk's
/// write cache nor commits the file's size; an fdatasync on our own handle
/// to the same file does.
fn checkpoint(tree: &sled::Tree, log: &File) -> std::io::Result<()> {
    tree.flush().map_err(std::io::Error::other)?;
    log.sync_data()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, replaying the write-ahead log.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from the write-ahead log; sled's own timer
            // flush would only add syncs.
            .flush_every_ms(None)
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree("sagaflow").map_err(engine)?;
        let log = File::open(dir.join("db")).map_err(engine)?;
        let wal_dir = dir.join("wal");
        let replayed =
            wal::replay(&wal_dir, |writes| tree.apply_batch(batch_of(writes)).map_err(std::io::Error::other))
                .map_err(engine)?;
        if !replayed.is_empty() {
            checkpoint(&tree, &log).map_err(engine)?;
            wal::remove(&wal_dir, &replayed).map_err(engine)?;
        }
        let appender = Mutex::new(wal::Appender::create(&wal_dir).map_err(engine)?);
        let (retire, checkpointer) = start_checkpointer(tree.clone(), log, wal_dir).map_err(engine)?;
        let unlogged = std::sync::Arc::new(Mutex::new(Vec::new()));
        let pending = std::sync::Arc::clone(&unlogged);
        let flusher = GroupCommit::start(Box::new(move || {
            let records = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
            if records.is_empty() {
                return Ok(());
            }
            let mut appender = appender.lock().unwrap_or_else(PoisonError::into_inner);
            appender.append(&records).map_err(|e| e.to_string())?;
            if let Some(full) = appender.rotate_if_full().map_err(|e| e.to_string())? {
                // The checkpointer may be gone only at shutdown; the segment then replays at the next start.
                let _ = retire.send(full);
            }
            Ok(())
        }))
        .map_err(engine)?;
        KvStore::new(SledKv { tree, unlogged, flusher, _checkpointer: checkpointer })
    }
}

/// Retires full segments: flushes sled (which holds every record of a full
/// segment, since records are logged after they are applied), then deletes
/// the segments. Runs on its own thread so that acknowledgements never wait
/// for sled's flush.
fn start_checkpointer(
    tree: sled::Tree,
    log: File,
    wal_dir: PathBuf,
) -> std::io::Result<(mpsc::Sender<u64>, Checkpointer)> {
    let (retire, full) = mpsc::channel::<u64>();
    let thread = std::thread::Builder::new().name("sagaflow-checkpoint".into()).spawn(move || {
        let mut retired = 0;
        while let Ok(upto) = full.recv() {
            match checkpoint(&tree, &log) {
                Ok(()) => {
                    let ids: Vec<u64> = (retired + 1..=upto).collect();
                    match wal::remove(&wal_dir, &ids) {
                        Ok(()) => retired = upto,
                        Err(e) => tracing::error!(error = %e, "retired log segments could not be deleted"),
                    }
                }
                Err(e) => tracing::error!(error = %e, "checkpoint failed; the log segments stay and replay at start"),
            }
        }
    })?;
    Ok((retire, Checkpointer(Some(thread))))
}

impl Kv for SledKv {
    fn apply(&self, writes: Vec<Write>) -> Result<Durable> {
        if let Some(failure) = self.flusher.failure() {
            return Err(Error::FlushFailed(failure));
        }
        let mut record = Vec::new();
        wal::encode(&writes, &mut record);
        let mut unlogged = self.unlogged.lock().unwrap_or_else(PoisonError::into_inner);
        self.tree.apply_batch(batch_of(writes)).map_err(engine)?;
        unlogged.extend_from_slice(&record);
        // Taken under the lock: a ticket covers exactly the records logged before it.
        Ok(self.flusher.applied())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn scan(&self, from: &[u8], prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for item in self.tree.range(from..) {
            let (key, value) = item.map_err(engine)?;
            if !key.starts_with(prefix) || !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.tree.scan_prefix(prefix).next_back() {
            Some(item) => Ok(Some(item.map_err(engine)?.0.to_vec())),
            None => Ok(None),
        }
    }

    fn barrier(&self) -> Durable {
        self.flusher.barrier()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod conformance {
    use std::sync::Arc;

    use crate::store::{SledStore, Store};

    fn open() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Arc::new(SledStore::open(dir.path()).unwrap()) as Arc<dyn Store>, dir)
    }

    crate::store_conformance_suite!(open());

    #[tokio::test]
    async fn a_reopened_store_keeps_what_was_acknowledged() {
        use sagaflow_proto::v1::{HistoryEvent, WorkflowStarted, history_event::Attributes};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let event = HistoryEvent {
                seq: 1,
                time_ms: 7,
                attributes: Some(Attributes::WorkflowStarted(WorkflowStarted {
                    workflow_type: "t".into(),
                    ..Default::default()
                })),
            };
            let commit = crate::store::Commit {
                workflow_id: "wf".into(),
                events: vec![event],
                request_id: Some("r".into()),
                ..Default::default()
            };
            store.commit(commit).unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.history("wf", 1, 10).unwrap()[0].time_ms, 7);
        assert_eq!(store.workflow_for_request("r").unwrap().as_deref(), Some("wf"));
    }

    #[tokio::test]
    async fn full_log_segments_are_checkpointed_away_and_nothing_is_lost() {
        use sagaflow_proto::v1::{ActivityCompleted, HistoryEvent, history_event::Attributes};
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(64 * 1024);
        let commits = 3 * crate::store::wal::SEGMENT_BYTES as usize / big.len();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..commits {
                let event = HistoryEvent {
                    seq: 1,
                    time_ms: i as i64,
                    attributes: Some(Attributes::ActivityCompleted(ActivityCompleted {
                        task_id: i.to_string(),
                        result: big.clone(),
                    })),
                };
                let commit =
                    crate::store::Commit { workflow_id: format!("wf-{i}"), events: vec![event], ..Default::default() };
                store.commit(commit).unwrap().wait().await.unwrap();
            }
            // The checkpointer retires full segments on its own thread.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::fs::read_dir(dir.path().join("wal")).unwrap().count() > 2 {
                assert!(std::time::Instant::now() < deadline, "full segments were never retired");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let store = SledStore::open(dir.path()).unwrap();
        for i in [0, commits / 2, commits - 1] {
            assert_eq!(store.history(&format!("wf-{i}"), 1, 1).unwrap()[0].time_ms, i as i64);
        }
    }

    #[tokio::test]
    async fn outbox_numbers_are_never_reused_after_a_restart() {
        use crate::store::{Commit, OutboxRecord};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let commit =
                Commit { workflow_id: "wf".into(), outbox: vec![OutboxRecord::default(); 2], ..Default::default() };
            store.commit(commit).unwrap().wait().await.unwrap();
            store.delete_outbox(&[1, 2]).unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let commit = Commit { workflow_id: "wf".into(), outbox: vec![OutboxRecord::default()], ..Default::default() };
        store.commit(commit).unwrap().wait().await.unwrap();
        assert_eq!(store.outbox(0, 10).unwrap()[0].seq, 3);
    }
}
