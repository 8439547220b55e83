//! The embedded default: sled holds the data, a write-ahead log makes each
//! commit durable, and an in-memory overlay keeps sled off the commit path.
//!
//! A commit is applied to the [`overlay`](super::overlay) (visible at once),
//! appended to the [`wal`](super::wal) by the group-commit flusher, and
//! acknowledged after that append's `fdatasync`. When a log segment fills,
//! its writes are checkpointed into sled on their own thread.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};

use prost::Message;
use sagaflow_proto::v1::HistoryEvent;

use super::group_commit::GroupCommit;
use super::kv_store::{Kv, KvStore, Write};
use super::overlay::{Layer, Overlay};
use super::records::HistoryBatch;
use super::{Durable, Error, Result};
use super::{keys, wal};

pub struct SledKv {
    tree: sled::Tree,
    /// Why a checkpoint failed, once one has: the store then refuses writes.
    checkpoint_failure: Arc<OnceLock<String>>,
    overlay: Arc<Overlay>,
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
fn flush_sled(tree: &sled::Tree, log: &File) -> std::io::Result<()> {
    tree.flush().map_err(std::io::Error::other)?;
    log.sync_data()
}

/// Hands a full segment's id and its frozen layer to the checkpointer.
type RetireSender = mpsc::SyncSender<(u64, Arc<Layer>)>;

/// Frozen layers the checkpointer may lag behind before commits wait for it.
const CHECKPOINTS_QUEUED: usize = 2;

impl SledStore {
    /// Opens (or creates) the store in `dir`, replaying the write-ahead log.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            // Durability comes from the write-ahead log; sled's own timer
            // flush would only add syncs.
            .flush_every_ms(None)
            .cache_capacity(256 * 1024 * 1024);
        let db = open_when_unlocked(&config, dir)?;
        sync_sled_config(dir).map_err(engine)?;
        let tree = db.open_tree("sagaflow").map_err(engine)?;
        let log = File::open(dir.join("db")).map_err(engine)?;
        let wal_dir = dir.join("wal");
        let replayed =
            wal::replay(&wal_dir, |writes| tree.apply_batch(batch_of(writes)).map_err(std::io::Error::other))
                .map_err(engine)?;
        let migrated = migrate(&tree)?;
        if !replayed.is_empty() || migrated {
            flush_sled(&tree, &log).map_err(engine)?;
            wal::remove(&wal_dir, &replayed).map_err(engine)?;
        }
        let overlay = Arc::new(Overlay::default());
        let mut appender = wal::Appender::create(&wal_dir).map_err(engine)?;
        let checkpoint_failure = Arc::new(OnceLock::new());
        let (retire, checkpointer) =
            start_checkpointer(tree.clone(), log, wal_dir, Arc::clone(&overlay), Arc::clone(&checkpoint_failure))
                .map_err(engine)?;
        let unlogged = Arc::clone(&overlay);
        let flusher = GroupCommit::start(Box::new(move || {
            let (records, frozen) = unlogged.take_unlogged(|len| appender.fills(len));
            if records.is_empty() {
                return Ok(false);
            }
            appender.append(&records).map_err(|e| e.to_string())?;
            if let Some(layer) = frozen {
                let full = appender.rotate().map_err(|e| e.to_string())?;
                // Blocks while the checkpointer lags, which bounds the memory
                // held in frozen layers. It is gone only at shutdown; the
                // segment then replays at the next start.
                let _ = retire.send((full, layer));
            }
            Ok(true)
        }))
        .map_err(engine)?;
        KvStore::new(SledKv { tree, checkpoint_failure, overlay, flusher, _checkpointer: checkpointer })
    }
}

/// Makes sled's `conf` file durable. sled writes it once, when it creates
/// the store, and never syncs it; a power cut that keeps part of it (its
/// bytes but not its checksum) makes sled refuse to open the store
/// ("Read corrupted data"), found by tests/power_loss.rs. The directory is
/// synced too, for the names of the files sled created.
fn sync_sled_config(dir: &Path) -> std::io::Result<()> {
    File::open(dir.join("conf"))?.sync_all()?;
    File::open(dir)?.sync_all()
}

/// How long an open waits for a previous handle's file lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting briefly while the directory's lock is still held:
/// sled 0.34 releases it from its I/O threads a moment after the last handle
/// is dropped, so an open right after a close in the same process can find
/// it taken. A lock held longer (another process) is [`Error::Locked`].
fn open_when_unlocked(config: &sled::Config, dir: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled reports a taken lock as a generic I/O error whose text
            // is all it says; asking the lock directly tells it apart.
            Err(sled::Error::Io(e)) if is_locked(&dir.join("db")) => {
                if std::time::Instant::now() >= deadline {
                    tracing::debug!(error = %e, "sled could not take its lock");
                    return Err(Error::Locked { dir: dir.display().to_string(), holder: lock_holder(&dir.join("db")) });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.map_err(engine),
        }
    }
}

/// Whether another open file holds the exclusive lock on `file` (sled takes
/// it with `flock`, as `File::try_lock` does).
fn is_locked(file: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

/// Which process holds the lock on `file`, as "pid N (command line)", when
/// the system says (Linux's /proc/locks names the holder's pid and inode).
fn lock_holder(file: &Path) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(file).ok()?.ino();
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let pid = locks.lines().find_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1311 0 EOF"
            let fields: Vec<&str> = line.split_whitespace().collect();
            let device_inode = fields.get(5)?;
            (device_inode.rsplit(':').next()? == inode.to_string()).then(|| fields.get(4).copied())?
        })?;
        let command = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned())
            .unwrap_or_default();
        Some(if command.is_empty() { format!("pid {pid}") } else { format!("pid {pid}: {command}") })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Brings a store written by an older build to the current layout (see
/// `keys.rs`), in one atomic batch; returns whether anything changed.
fn migrate(tree: &sled::Tree) -> Result<bool> {
    match tree.get(keys::FORMAT).map_err(engine)? {
        Some(version) if version.as_ref() == [keys::FORMAT_VERSION] => return Ok(false),
        Some(version) => {
            return Err(Error::Corrupt {
                key: String::from_utf8_lossy(keys::FORMAT).into_owned(),
                reason: format!("layout version {version:?} is newer than this build reads"),
            });
        }
        None => {}
    }
    // Version 1 kept each event under its own key, which is the key of a batch of one.
    let mut batch = sled::Batch::default();
    let mut events = 0usize;
    for item in tree.scan_prefix([keys::HISTORY]) {
        let (key, value) = item.map_err(engine)?;
        let event = HistoryEvent::decode(value.as_ref())
            .map_err(|e| Error::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), reason: e.to_string() })?;
        batch.insert(key, HistoryBatch { events: vec![event] }.encode_to_vec());
        events += 1;
    }
    batch.insert(keys::FORMAT, vec![keys::FORMAT_VERSION]);
    tree.apply_batch(batch).map_err(engine)?;
    if events > 0 {
        tracing::info!(events, version = keys::FORMAT_VERSION, "migrated the store's history layout");
    }
    Ok(true)
}

/// Moves frozen layers into sled, oldest first: applies one, flushes sled,
/// deletes the log segments it covers, then drops it from the overlay. Runs
/// on its own thread so that acknowledgements never wait for sled.
///
/// A failed checkpoint is final: after a failed write or sync of sled's file
/// nothing says what sled holds (Linux drops the dirty pages of a failed
/// writeback, so a retried sync can succeed without writing them), and a
/// later flush that succeeds must not retire segments on sled's word. The
/// segments stay, the layers stay in memory, `failure` makes the store refuse
/// writes, and the next start replays the log (tests/disk_faults.rs).
fn start_checkpointer(
    tree: sled::Tree,
    log: File,
    wal_dir: PathBuf,
    overlay: Arc<Overlay>,
    failure: Arc<OnceLock<String>>,
) -> std::io::Result<(RetireSender, Checkpointer)> {
    let (retire, full) = mpsc::sync_channel::<(u64, Arc<Layer>)>(CHECKPOINTS_QUEUED);
    let thread = std::thread::Builder::new().name("sagaflow-checkpoint".into()).spawn(move || {
        yield_to_commits();
        let mut retired = 0;
        let mut pending = VecDeque::new();
        while let Ok(next) = full.recv() {
            if failure.get().is_some() {
                // Kept, never retired: readers find the layers in memory until
                // the process ends, and the log replays them at the next start.
                pending.push_back(next);
                continue;
            }
            pending.push_back(next);
            while let Some((upto, layer)) = pending.front() {
                let started = std::time::Instant::now();
                let written = match apply_layer(&tree, layer).and_then(|n| flush_sled(&tree, &log).map(|()| n)) {
                    Ok(written) => written,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint into sled failed; refusing further writes, the log segments stay and replay at the next start");
                        let _ = failure.set(format!("a checkpoint into sled failed: {e}"));
                        break;
                    }
                };
                let ids: Vec<u64> = (retired + 1..=*upto).collect();
                match wal::remove(&wal_dir, &ids) {
                    Ok(()) => retired = *upto,
                    Err(e) => tracing::error!(error = %e, "retired log segments could not be deleted"),
                }
                crate::metrics::record_checkpoint(started.elapsed());
                tracing::debug!(written, layer = layer.len(), elapsed = ?started.elapsed(), "checkpointed a log segment into sled");
                overlay.retire(layer);
                pending.pop_front();
            }
        }
    })?;
    Ok((retire, Checkpointer(Some(thread))))
}

/// Nice value of the checkpointer thread: a checkpoint is bulk work off the
/// commit path, and on a busy machine it should give way to the threads that
/// acknowledge commits. It still runs in idle time, and `CHECKPOINTS_QUEUED`
/// bounds how far it may lag. (Measured: bench phase c +5% with it.)
const CHECKPOINT_NICE: i32 = 10;

fn yield_to_commits() {
    // Linux keeps the nice value per thread; raising one's own needs no privilege.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), CHECKPOINT_NICE) {
        tracing::debug!(error = %e, "the checkpointer keeps its priority");
    }
}

/// Writes a frozen layer into sled and returns how many writes it made. Key
/// by key, not in batches: sled takes a lock over every read for the whole
/// of a batch, and in phase c readers then stalled for tens of milliseconds
/// (the checkpointer runs at a low priority, and held the lock while
/// preempted). A single insert or removal takes no such lock. Atomicity is
/// not needed here: every write is in the log, and a crash part-way replays
/// it all.
fn apply_layer(tree: &sled::Tree, layer: &Layer) -> std::io::Result<usize> {
    let mut written = 0;
    let mut entries = layer.iter().peekable();
    while let Some((key, value)) = entries.next() {
        let applied = match value {
            Some(value) if key.first() == Some(&keys::HISTORY) => {
                // A workflow's batches in this layer are adjacent and
                // consecutive: stored as one, under the last one's key.
                let (mut last, mut merged) = (key, None::<Vec<u8>>);
                while let Some((next, Some(more))) =
                    entries.next_if(|(next, v)| v.is_some() && keys::same_history(key, next))
                {
                    merged.get_or_insert_with(|| value.clone()).extend_from_slice(more);
                    last = next;
                }
                match merged {
                    Some(merged) => tree.insert(last.as_slice(), merged),
                    None => tree.insert(key.as_slice(), value.as_slice()),
                }
            }
            Some(value) => tree.insert(key.as_slice(), value.as_slice()),
            // Most deletions are of keys that lived and died within the
            // layer (tasks, leases, timers); a lookup is cheaper than a removal.
            None if tree.contains_key(key).map_err(std::io::Error::other)? => tree.remove(key.as_slice()),
            None => continue,
        };
        applied.map_err(std::io::Error::other)?;
        written += 1;
    }
    Ok(written)
}

/// Entries a scan visits under one hold of the overlay's read lock.
const SCAN_CHUNK: usize = 512;

impl Kv for SledKv {
    fn apply(&self, writes: Vec<Write>) -> Result<Durable> {
        self.apply_unflushed(writes)?;
        // Taken after the record is queued: a flush that covers the ticket logs the record.
        Ok(self.flusher.applied())
    }

    fn write_failure(&self) -> Option<String> {
        self.flusher.failure().or_else(|| self.checkpoint_failure.get().cloned())
    }

    fn apply_unflushed(&self, writes: Vec<Write>) -> Result<()> {
        if let Some(failure) = self.write_failure() {
            return Err(Error::FlushFailed(failure));
        }
        let mut record = Vec::new();
        wal::encode(&writes, &mut record);
        self.overlay.apply(writes, &record);
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.overlay.get(key, |key| Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec())))
    }

    fn scan(&self, from: &[u8], prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        // In chunks, each under its own hold of the overlay's read lock: a long
        // scan (a listing reads up to 100,000 summaries) would otherwise hold
        // up every commit, which needs the write lock, for its whole length.
        // A chunk resumes at the first key the last one did not visit, so keys
        // are still visited once each, in order; a write between chunks is seen
        // if it lands ahead of the scan, as with any iterator over live data.
        let mut from = from.to_vec();
        loop {
            let base = self
                .tree
                .range(from.as_slice()..)
                .map(|item| item.map_err(engine))
                .take_while(|item| item.as_ref().map_or(true, |(key, _)| key.starts_with(prefix)));
            // Set only when the chunk is full; a visitor that stops leaves it unset.
            let (mut visited, mut resume) = (0, None);
            self.overlay.scan(&from, prefix, base, &mut |key, value| {
                if visited == SCAN_CHUNK {
                    resume = Some(key.to_vec());
                    return false;
                }
                visited += 1;
                visit(key, value)
            })?;
            match resume {
                Some(key) => from = key,
                None => return Ok(()),
            }
        }
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        let base = self.tree.scan_prefix(prefix).rev().map(|item| item.map_err(engine));
        self.overlay.last_with_prefix(prefix, base)
    }

    fn last_appended(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        // Recent workflows are answered from memory, without a sled read
        // (which would wait for a checkpoint's batch in progress).
        match self.overlay.last_appended(prefix) {
            crate::overlay::Appended::Live(key) => return Ok(Some(key)),
            // A deleted workflow (rare): the merge weighs the deletions.
            crate::overlay::Appended::Deleted => return self.last_with_prefix(prefix),
            crate::overlay::Appended::Absent => {}
        }
        // Most misses are new workflows, with nothing in sled either. A
        // forward probe answers those several times cheaper than the
        // backward scan that finds the last key.
        if self.tree.scan_prefix(prefix).next().transpose().map_err(engine)?.is_none() {
            return Ok(None);
        }
        self.last_with_prefix(prefix)
    }

    fn barrier(&self) -> Durable {
        self.flusher.barrier()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod conformance {
    use std::sync::Arc;

    use crate::{SledStore, Store};

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
            let commit = crate::Commit {
                workflow_id: "wf".into(),
                events: vec![event],
                request_id: Some("r".into()),
                ..Default::default()
            };
            store.commit(commit).await.unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.history("wf", 1, 10).await.unwrap()[0].time_ms, 7);
        assert_eq!(store.workflow_for_request("r").await.unwrap().as_deref(), Some("wf"));
        // Nothing is in memory now: the history's length comes from sled.
        assert_eq!(store.last_seq("wf").await.unwrap(), 1);
        assert_eq!(store.last_seq("w").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reopened_store_keeps_its_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let record = crate::DefinitionRecord {
            workflow_type: "trip".into(),
            version: 3,
            content_hash: "h".into(),
            json: "{}".into(),
            deprecated: false,
            registered_ms: 1,
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.commit(crate::Commit::definitions(vec![record.clone()])).await.unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.definitions().await.unwrap(), vec![record]);
    }

    /// A lease is written without a flush of its own. On a server with no
    /// commit after it, the idle flush still puts it in the log.
    #[tokio::test]
    async fn a_lease_reaches_the_log_with_no_commit_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let lease = crate::Lease { worker_id: "w".into(), started_ms: 1, expires_ms: 2 };
        store.record_leases("wf", vec![("t1".into(), lease)]).unwrap();
        let key = crate::keys::task(crate::keys::LEASE, "wf", "t1");
        let logged = || {
            let mut found = false;
            crate::wal::replay(&dir.path().join("wal"), |writes| {
                found |= writes.iter().any(|(k, v)| *k == key && v.is_some());
                Ok(())
            })
            .unwrap();
            found
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !logged() {
            assert!(std::time::Instant::now() < deadline, "the lease never reached the log");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_scan_longer_than_a_chunk_visits_each_live_key_once_in_order() {
        use crate::kv_store::Kv;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let kv = store.kv();
        let key = |i: usize| format!("s{i:05}").into_bytes();
        let n = 3 * super::SCAN_CHUNK + 7;
        drop(kv.apply((0..n).map(|i| (key(i), Some(i.to_string().into_bytes()))).collect()).unwrap());
        // Deletions on and around the chunk boundaries.
        let gone: Vec<usize> = (0..n).filter(|i| i % super::SCAN_CHUNK < 2 || i % 7 == 0).collect();
        drop(kv.apply(gone.iter().map(|&i| (key(i), None)).collect()).unwrap());
        let live: Vec<Vec<u8>> = (0..n).filter(|i| !gone.contains(i)).map(key).collect();

        let mut seen = Vec::new();
        kv.scan(b"s", b"s", &mut |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, live);

        // From the middle, stopping past the next chunk boundary.
        let start = super::SCAN_CHUNK + 3;
        let mut seen = Vec::new();
        kv.scan(&key(start), b"s", &mut |k, _| {
            seen.push(k.to_vec());
            seen.len() < super::SCAN_CHUNK + 10
        })
        .unwrap();
        let expected: Vec<Vec<u8>> =
            live.iter().filter(|k| **k >= key(start)).take(super::SCAN_CHUNK + 10).cloned().collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn full_log_segments_are_checkpointed_away_and_nothing_is_lost() {
        use sagaflow_proto::v1::{ActivityCompleted, HistoryEvent, history_event::Attributes};
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(64 * 1024);
        let commits = 3 * crate::wal::SEGMENT_BYTES as usize / big.len();
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
                    crate::Commit { workflow_id: format!("wf-{i}"), events: vec![event], ..Default::default() };
                store.commit(commit).await.unwrap().wait().await.unwrap();
            }
            // The checkpointer retires full segments on its own thread.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while crate::wal::segments(&dir.path().join("wal")).unwrap().len() > 2 {
                assert!(std::time::Instant::now() < deadline, "full segments were never retired");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Retired writes are read from sled now, and later ones from memory.
            for i in [0, commits / 2, commits - 1] {
                assert_eq!(store.history(&format!("wf-{i}"), 1, 1).await.unwrap()[0].time_ms, i as i64);
            }
        }
        let store = SledStore::open(dir.path()).unwrap();
        for i in [0, commits / 2, commits - 1] {
            assert_eq!(store.history(&format!("wf-{i}"), 1, 1).await.unwrap()[0].time_ms, i as i64);
        }
    }

    #[tokio::test]
    async fn a_store_of_the_first_layout_is_migrated_and_reads_the_same() {
        use prost::Message;
        use sagaflow_proto::v1::{HistoryEvent, TimerFired, history_event::Attributes};
        let dir = tempfile::tempdir().unwrap();
        let event = |seq| HistoryEvent {
            seq,
            time_ms: seq as i64,
            attributes: Some(Attributes::TimerFired(TimerFired { timer_id: format!("t{seq}") })),
        };
        {
            // Version 1 wrote one key per event and no layout version.
            let tree = sled::open(dir.path()).unwrap().open_tree("sagaflow").unwrap();
            for seq in 1..=3 {
                tree.insert(crate::keys::history("old", seq), event(seq).encode_to_vec()).unwrap();
            }
            tree.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.history("old", 1, 10).await.unwrap(), vec![event(1), event(2), event(3)]);
        assert_eq!(store.history("old", 2, 1).await.unwrap(), vec![event(2)]);
        assert_eq!(store.last_seq("old").await.unwrap(), 3);
        drop(store);
        // Opening again finds the current version and changes nothing.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.history("old", 1, 10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_checkpoint_stores_a_workflows_batches_as_one_and_reads_stay_whole() {
        use sagaflow_proto::v1::{ActivityCompleted, HistoryEvent, history_event::Attributes};
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(64 * 1024);
        let commits = 2 * crate::wal::SEGMENT_BYTES / big.len() as u64;
        {
            let store = SledStore::open(dir.path()).unwrap();
            for seq in 1..=commits {
                let event = HistoryEvent {
                    seq,
                    time_ms: seq as i64,
                    attributes: Some(Attributes::ActivityCompleted(ActivityCompleted {
                        task_id: seq.to_string(),
                        result: big.clone(),
                    })),
                };
                let commit = crate::Commit { workflow_id: "long".into(), events: vec![event], ..Default::default() };
                store.commit(commit).await.unwrap().wait().await.unwrap();
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while crate::wal::segments(&dir.path().join("wal")).unwrap().len() > 1 {
                assert!(std::time::Instant::now() < deadline, "full segments were never retired");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let seqs: Vec<u64> = store.history("long", 1, usize::MAX).await.unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=commits).collect::<Vec<_>>());
            assert_eq!(store.history("long", commits / 2, 2).await.unwrap()[0].seq, commits / 2);
        }
        let tree = sled::open(dir.path()).unwrap().open_tree("sagaflow").unwrap();
        let keys = tree.scan_prefix(crate::keys::history_prefix("long")).count() as u64;
        assert!(keys < commits / 4, "{keys} history keys in sled for {commits} commits");
    }

    #[tokio::test]
    async fn overlapping_batches_read_each_event_once() {
        use prost::Message;
        use sagaflow_proto::v1::HistoryEvent;
        let dir = tempfile::tempdir().unwrap();
        let batch = |seqs: std::ops::RangeInclusive<u64>| {
            let events = seqs.map(|seq| HistoryEvent { seq, ..Default::default() }).collect();
            crate::records::HistoryBatch { events }.encode_to_vec()
        };
        {
            // A checkpoint stored 1..=4 as one batch, then a replay wrote 1..=2 and 3..=4 again.
            let tree = sled::open(dir.path()).unwrap().open_tree("sagaflow").unwrap();
            tree.insert(crate::keys::FORMAT, vec![crate::keys::FORMAT_VERSION]).unwrap();
            tree.insert(crate::keys::history("wf", 2), batch(1..=2)).unwrap();
            tree.insert(crate::keys::history("wf", 4), batch(1..=4)).unwrap();
            tree.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        for (from, limit, want) in [(1, 100, vec![1, 2, 3, 4]), (2, 2, vec![2, 3]), (3, 100, vec![3, 4])] {
            let seqs: Vec<u64> = store.history("wf", from, limit).await.unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(seqs, want);
        }
        assert_eq!(store.last_seq("wf").await.unwrap(), 4);
    }

    #[test]
    fn a_store_of_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let tree = sled::open(dir.path()).unwrap().open_tree("sagaflow").unwrap();
            tree.insert(crate::keys::FORMAT, vec![crate::keys::FORMAT_VERSION + 1]).unwrap();
            tree.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[tokio::test]
    async fn outbox_numbers_are_never_reused_after_a_restart() {
        use crate::{Commit, OutboxRecord};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let commit =
                Commit { workflow_id: "wf".into(), outbox: vec![OutboxRecord::default(); 2], ..Default::default() };
            store.commit(commit).await.unwrap().wait().await.unwrap();
            store.delete_outbox(&[1, 2]).await.unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let commit = Commit { workflow_id: "wf".into(), outbox: vec![OutboxRecord::default()], ..Default::default() };
        store.commit(commit).await.unwrap().wait().await.unwrap();
        assert_eq!(store.outbox(0, 10).await.unwrap()[0].seq, 3);
    }

    #[tokio::test]
    async fn the_pruned_floor_survives_a_restart() {
        use crate::{Commit, OutboxRecord};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let commit =
                Commit { workflow_id: "wf".into(), outbox: vec![OutboxRecord::default(); 3], ..Default::default() };
            store.commit(commit).await.unwrap().wait().await.unwrap();
            store.prune_outbox(&[1, 2]).await.unwrap().wait().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.outbox_floor().await.unwrap(), 2);
        assert_eq!(store.outbox(0, 10).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }
}
