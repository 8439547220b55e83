//! The embedded default: one sled tree, one atomic batch per decision, and a
//! group-committed flush before any acknowledgement.

use std::path::Path;

use super::group_commit::GroupCommit;
use super::kv_store::{Kv, KvStore, Write};
use super::{Durable, Error, Result};

pub struct SledKv {
    tree: sled::Tree,
    flusher: GroupCommit,
}

/// The [`Store`](super::Store) on disk.
pub type SledStore = KvStore<SledKv>;

fn engine(e: impl std::fmt::Display) -> Error {
    Error::Engine(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // We flush before every acknowledgement; sled's own timer flush
            // would only add fsyncs.
            .flush_every_ms(None)
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree("sagaflow").map_err(engine)?;
        // sled's flush writes its log with `sync_file_range`, which neither
        // empties the disk's write cache nor commits the file's size: not
        // durable across a power loss. An fdatasync on our own handle to the
        // same file is.
        let log = std::fs::File::open(dir.join("db")).map_err(engine)?;
        let flush_tree = tree.clone();
        let flusher = GroupCommit::start(Box::new(move || {
            flush_tree.flush().map_err(|e| e.to_string())?;
            log.sync_data().map_err(|e| e.to_string())
        }))
        .map_err(engine)?;
        KvStore::new(SledKv { tree, flusher })
    }
}

impl Kv for SledKv {
    fn apply(&self, writes: Vec<Write>) -> Result<Durable> {
        if let Some(failure) = self.flusher.failure() {
            return Err(Error::FlushFailed(failure));
        }
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch).map_err(engine)?;
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
