//! How every shop service keeps its state: one sled database per service, one
//! atomic batch per operation, and a flush before the operation returns.
//!
//! An operation reads what it needs, decides, and writes its effect *and* its
//! idempotency record (`idem/<activity type>/<key>` → the input and the
//! result) in the same batch. So a retry either finds the record and gets the
//! first call's result back, or finds no effect at all: there is no moment at
//! which the effect is on disk and the record is not. Keys are
//! `<kind>/<id>`, one tree per service, so that one `apply_batch` covers every
//! record an operation touches (sled's batches are atomic within one tree).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The longest id (sku, reservation id, order id, …) a service accepts, in
/// UTF-8 bytes (docs/contract.md, Limits). Ids become parts of keys; an unbounded id is an
/// unbounded key.
pub const MAX_ID_BYTES: usize = 255;

/// A storage failure. Only I/O failures are worth retrying; a record that does
/// not decode will not decode on the next attempt either.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("record {key} is unreadable: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("cannot encode record {key}: {source}")]
    Encode { key: String, source: serde_json::Error },
    #[error("idempotency key {key:?} of {operation} was first used with a different input")]
    KeyReused { operation: String, key: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

super::service_error!(Error {
    Self::Storage(_) | Self::Io { .. } | Self::Flush(_) => "StorageUnavailable", Unavailable;
    Self::Corrupt { .. } | Self::Encode { .. } => "CorruptRecord", Internal;
    Self::KeyReused { .. } => "IdempotencyKeyReused", Conflict;
});

/// What an idempotency record holds: the input the key was first used with
/// (a different input under the same key is refused, not silently answered
/// with someone else's result) and the result to replay.
#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    input: serde_json::Value,
    result: serde_json::Value,
    at_ms: u64,
}

/// One service's database.
pub(crate) struct ServiceDb {
    dir: PathBuf,
    db: sled::Db,
    /// Our own handle on sled's log file, to `fdatasync` it after a flush:
    /// sled's flush uses `sync_file_range`, which neither empties the disk's
    /// write cache nor commits the file's size.
    log: Arc<File>,
    /// Serialises read-decide-write. Two reservations deciding at once could
    /// both see the same available stock; sled locks the directory to one
    /// process, so an in-process lock is enough. It is never held across an
    /// `.await`: the flush happens after it is released.
    writer: Mutex<()>,
}

impl std::fmt::Debug for ServiceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not sled's own Debug: it prints every record of the database.
        f.debug_struct("ServiceDb").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl ServiceDb {
    /// Opens (or creates) the database in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
        let db = sled::Config::new()
            .path(dir)
            // Every operation flushes before it returns; sled's timer flush
            // would only add fsyncs.
            .flush_every_ms(None)
            // A shop service holds little; sled's 1 GiB default is a cap, but
            // seven services in one process should not each claim it.
            .cache_capacity(32 * 1024 * 1024)
            .open()?;
        // sled writes its conf file once, at creation, and never syncs it: a
        // power cut that kept part of it made the store unopenable ("Read
        // corrupted data"; orchestrator/cli/tests/shop_power_loss.rs).
        let conf = dir.join("conf");
        let synced = File::open(&conf).and_then(|f| f.sync_all()).and_then(|()| File::open(dir)?.sync_all());
        synced.map_err(|source| Error::Io { path: conf, source })?;
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(|source| Error::Io { path: log_path, source })?;
        Ok(Self { dir: dir.to_owned(), db, log: Arc::new(log), writer: Mutex::new(()) })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it leaves nothing
        // half-updated in memory, and sled's batch either applied or did not.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One record, decoded.
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.db.get(key)?.map(|bytes| decode(key, &bytes)).transpose()
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub(crate) fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        self.db
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// The records of `kind` whose id sorts after `after` (from the first
    /// when `None`) and at most `until` (to the last when `None`), in id
    /// order, each with its id: the bounded reads of the reconciliation's
    /// pages. Lazy, so that a caller that stops early reads no further.
    pub(crate) fn range<T: DeserializeOwned>(
        &self,
        kind: &str,
        after: Option<&str>,
        until: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T)>> + '_ {
        use std::ops::Bound;
        let start = after.map_or_else(|| Bound::Included(prefix(kind)), |id| Bound::Excluded(key(kind, id)));
        // `kind0` is the first key past every `kind/…`: `0` follows `/` in ASCII.
        let end =
            until.map_or_else(|| Bound::Excluded(format!("{kind}0").into_bytes()), |id| Bound::Included(key(kind, id)));
        let skip = kind.len() + 1;
        self.db.range::<Vec<u8>, _>((start, end)).map(move |item| {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(key.get(skip..).unwrap_or_default()).into_owned();
            Ok((id, decode(&key, &value)?))
        })
    }

    /// Runs `read` under the writer lock: no write of this process lands
    /// while it reads, so several reads see one state.
    pub(crate) fn locked_read<R>(&self, read: impl FnOnce(&Self) -> R) -> R {
        let _writer = self.lock();
        read(self)
    }

    /// Runs `decide` under the writer lock and applies what it wrote as one
    /// atomic batch, without flushing. A `decide` that fails writes nothing.
    pub(crate) fn apply<R, E>(&self, decide: impl FnOnce(&mut Tx<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        let _writer = self.lock();
        let mut tx = Tx { db: &self.db, writes: BTreeMap::new() };
        let result = decide(&mut tx)?;
        tx.commit()?;
        Ok(result)
    }

    /// [`apply`](Self::apply), then a flush: once this returns `Ok`, the
    /// effect survives a crash.
    pub(crate) async fn commit<R, E>(&self, decide: impl FnOnce(&mut Tx<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        let result = self.apply(decide)?;
        self.flush().await?;
        Ok(result)
    }

    /// Runs `decide` at most once per `(operation, key)`.
    ///
    /// The first call applies `decide`'s writes together with a record of
    /// `input` and the result, in one batch. A later call with the same key
    /// and input gets that result back and applies nothing; with a different
    /// input it fails with [`Error::KeyReused`]. A `decide` that fails records
    /// nothing, so a rejected call (out of stock, say) may be retried later.
    pub(crate) async fn idempotent<I, R, E>(
        &self,
        operation: &str,
        key: &str,
        input: &I,
        decide: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E>
    where
        I: Serialize,
        R: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let record_key = idempotency_key(operation, key);
        let input = to_value(&record_key, input)?;
        let result = self.apply(|tx| -> Result<R, E> {
            if let Some(record) = tx.get::<IdempotencyRecord>(&record_key)? {
                if record.input != input {
                    return Err(Error::KeyReused { operation: operation.to_owned(), key: key.to_owned() }.into());
                }
                let replayed = serde_json::from_value(record.result)
                    .map_err(|source| Error::Corrupt { key: lossy(&record_key), source })?;
                return Ok(replayed);
            }
            let result = decide(tx)?;
            let record = IdempotencyRecord { input, result: to_value(&record_key, &result)?, at_ms: now_ms() };
            tx.put(&record_key, &record)?;
            Ok(result)
        })?;
        // Also on a replay: the first call may have applied its batch and not
        // yet flushed it when this one read the record.
        self.flush().await?;
        Ok(result)
    }

    /// The result recorded for `(operation, key)` when it was recorded for
    /// this same `input`; `None` when there is no record, or one for another
    /// input. For a key whose scheme changed: a retry of a call made under
    /// the old key is answered from its record.
    pub(crate) async fn replayed<I, R>(&self, operation: &str, key: &str, input: &I) -> Result<Option<R>>
    where
        I: Serialize,
        R: DeserializeOwned,
    {
        let record_key = idempotency_key(operation, key);
        let input = to_value(&record_key, input)?;
        let Some(record) = self.get::<IdempotencyRecord>(&record_key)? else { return Ok(None) };
        if record.input != input {
            return Ok(None);
        }
        let replayed = serde_json::from_value(record.result)
            .map_err(|source| Error::Corrupt { key: lossy(&record_key), source })?;
        self.flush().await?;
        Ok(Some(replayed))
    }

    /// Makes everything applied so far durable. Runs on the blocking pool:
    /// sled 0.34's `flush_async` can deadlock when awaited concurrently
    /// (spacejam/sled#1308).
    pub(crate) async fn flush(&self) -> Result<()> {
        let db = self.db.clone();
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || flush(&db, &log))
            .await
            .map_err(|join| Error::Flush(format!("the flush task failed: {join}")))?
    }

    /// [`flush`](Self::flush) for code that runs outside the runtime (opening
    /// and seeding).
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        flush(&self.db, &self.log)
    }
}

fn flush(db: &sled::Db, log: &File) -> Result<()> {
    db.flush()?;
    log.sync_data().map_err(|e| Error::Flush(e.to_string()))
}

/// The reads and writes of one operation. Reads see the operation's own
/// writes first, then the committed state.
pub(crate) struct Tx<'a> {
    db: &'a sled::Db,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx<'_> {
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.writes.get(key) {
            Some(Some(bytes)) => decode(key, bytes).map(Some),
            Some(None) => Ok(None),
            None => self.db.get(key)?.map(|bytes| decode(key, &bytes)).transpose(),
        }
    }

    pub(crate) fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode { key: lossy(key), source })?;
        self.writes.insert(key.to_vec(), Some(bytes));
        Ok(())
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    /// Up to `limit` committed keys starting with `prefix`, in order. It does
    /// not see this operation's own writes.
    pub(crate) fn committed_keys(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        self.db.scan_prefix(prefix).keys().take(limit).map(|key| Ok(key?.to_vec())).collect()
    }

    fn commit(self) -> Result<()> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { key: lossy(key), source })
}

fn to_value<T: Serialize>(key: &[u8], value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| Error::Encode { key: lossy(key), source })
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// `<kind>/<id>`. Only used for exact lookups and for scans of a whole kind,
/// so an id that contains `/` cannot be confused with another record.
pub(crate) fn key(kind: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(kind.len() + 1 + id.len());
    key.extend_from_slice(kind.as_bytes());
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// The prefix of every record of `kind`.
pub(crate) fn prefix(kind: &str) -> Vec<u8> {
    key(kind, "")
}

fn idempotency_key(operation: &str, key: &str) -> Vec<u8> {
    self::key(&format!("idem/{operation}"), key)
}

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A short, stable digest of `text` (FNV-1a, 64 bits, as 16 hex digits).
///
/// Ids derived from idempotency keys (order ids, shipment ids) are stored and
/// shown to people, so the digest must never change between builds or
/// platforms, which `std`'s `DefaultHasher` does not promise.
pub(crate) fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Checks an id: not empty, at most [`MAX_ID_BYTES`]. Returns why not.
pub(crate) fn check_id(field: &str, value: &str) -> std::result::Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!("{field} is longer than {MAX_ID_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_fnv1a() {
        // Published FNV-1a 64 test vectors: the ids derived from it are stored.
        assert_eq!(short_hash(""), "cbf29ce484222325");
        assert_eq!(short_hash("a"), "af63dc4c8601ec8c");
        assert_eq!(short_hash("foobar"), "85944171f73967e8");
    }

    #[test]
    fn ids_are_bounded() {
        assert!(check_id("sku", "sku-mug").is_ok());
        assert!(check_id("sku", "").is_err());
        assert!(check_id("sku", &"x".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[tokio::test]
    async fn a_key_applies_once_and_replays_its_first_result_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        async fn run(db: &ServiceDb, calls: &std::sync::atomic::AtomicU32, input: u32) -> Result<u32> {
            db.idempotent("test.count", "k-1", &input, |tx| {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                tx.put(b"count", &n)?;
                Ok::<_, Error>(n * 10)
            })
            .await
        }
        {
            let db = ServiceDb::open(dir.path()).unwrap();
            assert_eq!(run(&db, &calls, 7).await.unwrap(), 10);
            assert_eq!(run(&db, &calls, 7).await.unwrap(), 10);
            assert!(matches!(run(&db, &calls, 8).await, Err(Error::KeyReused { .. })));
        }
        let db = ServiceDb::open(dir.path()).unwrap();
        assert_eq!(run(&db, &calls, 7).await.unwrap(), 10);
        assert_eq!(db.get::<u32>(b"count").unwrap(), Some(1));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn replayed_answers_only_for_the_same_input() {
        let dir = tempfile::tempdir().unwrap();
        let db = ServiceDb::open(dir.path()).unwrap();
        assert_eq!(db.replayed::<_, u32>("test.op", "k", &1u32).await.unwrap(), None);
        db.idempotent("test.op", "k", &1u32, |_| Ok::<_, Error>(42u32)).await.unwrap();
        assert_eq!(db.replayed::<_, u32>("test.op", "k", &1u32).await.unwrap(), Some(42));
        assert_eq!(db.replayed::<_, u32>("test.op", "k", &2u32).await.unwrap(), None);
    }

    #[test]
    fn a_failed_decision_writes_nothing_and_reads_see_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = ServiceDb::open(dir.path()).unwrap();
        let failed: Result<(), Error> = db.apply(|tx| {
            tx.put(b"a", &1)?;
            assert_eq!(tx.get::<u32>(b"a")?, Some(1));
            tx.remove(b"a");
            assert_eq!(tx.get::<u32>(b"a")?, None);
            tx.put(b"a", &2)?;
            Err(Error::Flush("no".into()))
        });
        assert!(failed.is_err());
        assert_eq!(db.get::<u32>(b"a").unwrap(), None);
    }
}
