//! The write-ahead log that makes sled's writes durable.
//!
//! sled's own flush costs two syncs and a round of its I/O threads, and it was
//! most of the server's CPU under load (docs/performance.md). So a commit is
//! made durable here instead: each batch is appended to a log segment, and
//! one `write` plus one `fdatasync` covers every batch that arrived while the
//! previous one ran. Until a checkpoint, the batches live in memory
//! ([`overlay`](super::overlay)); sled sees them only then, off the hot path.
//!
//! Layout: `wal/NNNNNNNNNNNNNNNNNNNN.log` segments, each a run of records
//! `[len: u32 LE][crc32 of payload: u32 LE][payload]`, the payload a list of
//! key writes (see [`encode`]). Replaying a record is idempotent: it sets
//! keys to values, so a record that sled already has changes nothing.
//! `wal/spare` is the next segment, being filled with zeros ahead of time.
//!
//! Recovery replays every segment in order and stops at the first torn or
//! corrupt record of the last segment: that record was never acknowledged,
//! since acknowledgements wait for the `fdatasync` that follows a whole write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::kv_store::Write;

/// A segment is retired (checkpointed into sled, then deleted) past this
/// size. Its writes are held in memory until then, and replayed at a start.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Overrides [`SEGMENT_BYTES`] (rounded up to whole blocks). For
/// tests only: the power-loss tests (orchestrator/cli/tests/power_loss.rs) need
/// rotations and checkpoints every few hundred commits, not every ten thousand.
pub const SEGMENT_BYTES_ENV: &str = "SAGAFLOW_TEST_WAL_SEGMENT_BYTES";

/// The segment size in force: [`SEGMENT_BYTES`] unless a test set [`SEGMENT_BYTES_ENV`].
fn segment_bytes() -> u64 {
    std::env::var(SEGMENT_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(SEGMENT_BYTES, |n| n.max(1).div_ceil(BLOCK as u64) * BLOCK as u64)
}

const HEADER: usize = 8;
/// No single decision comes near this; a larger length is a torn header.
const MAX_RECORD: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("write-ahead log segment {path} is corrupt at byte {offset}, and later segments exist")]
    Corrupt { path: PathBuf, offset: usize },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// Appends `writes` as one record to `buffer`.
pub fn encode(writes: &[Write], buffer: &mut Vec<u8>) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER]);
    put_u32(buffer, writes.len());
    for (key, value) in writes {
        put_u32(buffer, key.len());
        buffer.extend_from_slice(key);
        match value {
            Some(value) => {
                buffer.push(1);
                put_u32(buffer, value.len());
                buffer.extend_from_slice(value);
            }
            None => buffer.push(0),
        }
    }
    let payload = &buffer[start + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    buffer[start..start + 4].copy_from_slice(&len);
    buffer[start + 4..start + HEADER].copy_from_slice(&crc);
}

fn put_u32(buffer: &mut Vec<u8>, n: usize) {
    buffer.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// Reads one payload's writes; `None` if it does not parse.
fn decode(mut payload: &[u8]) -> Option<Vec<Write>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    fn u32_of(input: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 4] = take(input, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }
    let count = u32_of(&mut payload)?;
    let mut writes = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let key_len = u32_of(&mut payload)?;
        let key = take(&mut payload, key_len)?.to_vec();
        let value = match take(&mut payload, 1)?[0] {
            0 => None,
            1 => {
                let len = u32_of(&mut payload)?;
                Some(take(&mut payload, len)?.to_vec())
            }
            _ => return None,
        };
        writes.push((key, value));
    }
    payload.is_empty().then_some(writes)
}

/// The records of one segment, and where its valid part ends.
fn records(bytes: &[u8]) -> (Vec<Vec<Write>>, usize) {
    let mut records = Vec::new();
    let mut offset = 0;
    while let Some(header) = bytes.get(offset..offset + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            // The preallocated, never written part of the segment.
            break;
        }
        let Some(payload) = (len <= MAX_RECORD).then(|| bytes.get(offset + HEADER..offset + HEADER + len)).flatten()
        else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(writes) = decode(payload) else { break };
        records.push(writes);
        offset += HEADER + len;
    }
    (records, offset)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

/// The segment ids in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Replays every record in `dir` through `apply`, oldest first. Returns the
/// ids of the segments read (to delete once the replayed state is durable).
pub fn replay(dir: &Path, mut apply: impl FnMut(Vec<Write>) -> io::Result<()>) -> Result<Vec<u64>, Error> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let ids = segments(dir)?;
    for (i, id) in ids.iter().enumerate() {
        let path = segment_path(dir, *id);
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_error(&path))?;
        let (records, valid) = records(&bytes);
        // Segments are preallocated, so a clean end is followed by zeros.
        let torn = bytes[valid..].iter().any(|b| *b != 0);
        if torn && i + 1 < ids.len() {
            // Only the newest segment can end in a torn write.
            return Err(Error::Corrupt { path, offset: valid });
        }
        if torn {
            tracing::warn!(path = %path.display(), valid, len = bytes.len(), "dropping the torn tail of the write-ahead log");
        }
        for writes in records {
            apply(writes).map_err(io_error(&path))?;
        }
    }
    Ok(ids)
}

/// Deletes segments by id (their records are durable elsewhere now).
pub fn remove(dir: &Path, ids: &[u64]) -> Result<(), Error> {
    for id in ids {
        remove_if_present(&segment_path(dir, *id))?;
    }
    sync_dir(dir)
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// A segment whose blocks are all written, with zeros, before the first
/// append. Appends are then overwrites: their `fdatasync` writes the data
/// alone. Into a segment merely allocated (`fallocate`) each one would also
/// convert an extent and write the inode, a second device write per sync
/// (docs/performance.md).
///
/// Synced a chunk at a time: the log's syncs queue behind whatever the disk
/// is writing, and 4 MiB in one go held some of them up ~4 ms.
fn zero_filled(path: &Path, size: u64) -> Result<File, Error> {
    let file = OpenOptions::new().create_new(true).write(true).open(path).map_err(io_error(path))?;
    let zeros = vec![0; ZERO_CHUNK];
    for offset in (0..size).step_by(ZERO_CHUNK) {
        let chunk = usize::try_from(size - offset).map_or(ZERO_CHUNK, |left| left.min(ZERO_CHUNK));
        file.write_all_at(&zeros[..chunk], offset).map_err(io_error(path))?;
        // Also makes the size and the allocation durable: both are needed
        // to read the data back.
        file.sync_data().map_err(io_error(path))?;
    }
    Ok(file)
}

const ZERO_CHUNK: usize = 256 * 1024;

/// The next segment, zero-filled ahead of time so that a rotation does not
/// hold up commits. Only a spare made (and synced) by this process is used:
/// after a crash, an unsynced file may hold stale blocks that read as records.
fn spare_path(dir: &Path) -> PathBuf {
    dir.join("spare")
}

fn prepare_spare(dir: &Path, size: u64) -> Option<JoinHandle<Result<File, Error>>> {
    let path = spare_path(dir);
    let spawned = std::thread::Builder::new().name("sagaflow-wal-spare".into()).spawn(move || {
        // What an earlier run or a failed attempt left behind.
        remove_if_present(&path)?;
        zero_filled(&path, size)
    });
    spawned.inspect_err(|e| tracing::warn!(error = %e, "no thread to prepare a log segment")).ok()
}

/// The segment being appended to.
pub struct Appender {
    dir: PathBuf,
    id: u64,
    file: Segment,
    len: u64,
    /// [`SEGMENT_BYTES`], or a test's smaller size.
    size: u64,
    spare: Option<JoinHandle<Result<File, Error>>>,
}

/// Direct writes go in whole blocks of this size, at offsets that are multiples of it.
const BLOCK: usize = 4096;

/// A segment's file, written around the page cache when the file system
/// allows it (`O_DIRECT`). The sync after a direct write then finds no dirty
/// pages to write back and only flushes the disk's cache: 10–16 µs less CPU a
/// sync here (docs/performance.md). Direct writes are whole aligned blocks,
/// so the segment's last, partial block is kept in memory and written again,
/// with the records that follow it, by the next append. Its bytes on disk
/// are rewritten unchanged: a rewrite torn by a crash cannot damage them.
/// A file system without `O_DIRECT` (tmpfs) gets plain writes.
enum Segment {
    Direct { file: File, staging: Vec<u8>, tail: Vec<u8> },
    Buffered(File),
}

impl Segment {
    /// `file` (zero-filled, at `path`) reopened for direct writes if it can be.
    fn open(path: &Path, file: File) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = rustix::fs::OFlags::DIRECT.bits();
        match OpenOptions::new().write(true).custom_flags(direct as i32).open(path) {
            Ok(direct) => Self::Direct { file: direct, staging: Vec::new(), tail: Vec::new() },
            Err(e) => {
                tracing::debug!(error = %e, "no direct writes to the log; writing through the page cache");
                Self::Buffered(file)
            }
        }
    }

    /// Writes `records` at `offset` (the segment's length so far) and syncs.
    fn append(&mut self, records: &[u8], offset: u64, path: &Path) -> Result<(), Error> {
        match self {
            Self::Buffered(file) => file.write_all_at(records, offset).map_err(io_error(path))?,
            Self::Direct { file, staging, tail } => {
                let start = offset - tail.len() as u64;
                debug_assert_eq!(start % BLOCK as u64, 0);
                let len = tail.len() + records.len();
                let padded = len.div_ceil(BLOCK) * BLOCK;
                let blocks = aligned(staging, padded);
                blocks[..tail.len()].copy_from_slice(tail);
                blocks[tail.len()..len].copy_from_slice(records);
                blocks[len..].fill(0);
                file.write_all_at(blocks, start).map_err(io_error(path))?;
                tail.clear();
                tail.extend_from_slice(&blocks[len - len % BLOCK..len]);
            }
        }
        self.file().sync_data().map_err(io_error(path))
    }

    fn file(&self) -> &File {
        match self {
            Self::Direct { file, .. } | Self::Buffered(file) => file,
        }
    }
}

/// `len` bytes of `buffer` that start on a block boundary, as direct writes
/// need; the buffer grows (and realigns) when it is too small.
fn aligned(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len + BLOCK {
        *buffer = vec![0; (len + BLOCK).next_power_of_two()];
    }
    // Always below BLOCK for a byte buffer; the min only keeps the slice in bounds.
    let offset = buffer.as_ptr().align_offset(BLOCK).min(BLOCK);
    &mut buffer[offset..offset + len]
}

impl Appender {
    /// Starts a new, empty segment after every existing one.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        let id = segments(dir)?.last().map_or(1, |last| last + 1);
        let path = segment_path(dir, id);
        let size = segment_bytes();
        let file = Segment::open(&path, zero_filled(&path, size)?);
        // The new file's directory entry must survive a crash, or its records would.
        sync_dir(dir)?;
        Ok(Self { dir: dir.to_owned(), id, file, len: 0, size, spare: prepare_spare(dir, size) })
    }

    /// Writes whole records and waits until they are on disk.
    pub fn append(&mut self, records: &[u8]) -> Result<(), Error> {
        self.file.append(records, self.len, &segment_path(&self.dir, self.id))?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Whether appends bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        matches!(self.file, Segment::Direct { .. })
    }

    /// Whether `more` bytes fill the segment.
    pub fn fills(&self, more: usize) -> bool {
        self.len + more as u64 >= self.size
    }

    /// Starts the next segment and returns the id of the current one, whose
    /// records may be retired once a checkpoint holds them.
    pub fn rotate(&mut self) -> Result<u64, Error> {
        let full = self.id;
        let path = segment_path(&self.dir, full + 1);
        // The spare was started a whole segment ago and takes milliseconds,
        // so the join rarely waits.
        let spare = self.spare.take().map(|thread| thread.join());
        let file = match spare {
            Some(Ok(Ok(file))) => {
                let from = spare_path(&self.dir);
                fs::rename(&from, &path).map_err(io_error(&from))?;
                file
            }
            failed => {
                if let Some(Ok(Err(e))) = failed {
                    tracing::warn!(error = %e, "the spare log segment failed; making one in place");
                }
                zero_filled(&path, self.size)?
            }
        };
        self.file = Segment::open(&path, file);
        sync_dir(&self.dir)?;
        self.id = full + 1;
        self.len = 0;
        self.spare = prepare_spare(&self.dir, self.size);
        Ok(full)
    }
}

impl Drop for Appender {
    /// A spare still being written must not outlive the store (a test's
    /// temporary directory, a data directory about to be reopened).
    fn drop(&mut self) {
        if let Some(thread) = self.spare.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Vec<Write> {
        vec![(vec![b'k', n], Some(vec![n; usize::from(n)])), (vec![b'd', n], None)]
    }

    fn replayed(dir: &Path) -> Vec<Vec<Write>> {
        let mut seen = Vec::new();
        replay(dir, |w| {
            seen.push(w);
            Ok(())
        })
        .unwrap();
        seen
    }

    /// The records of `batch(n)` for each `n`, back to back.
    fn encoded(ns: impl IntoIterator<Item = u8>) -> Vec<u8> {
        let mut buffer = Vec::new();
        for n in ns {
            encode(&batch(n), &mut buffer);
        }
        buffer
    }

    /// Starts a segment (after every existing one) and appends `bytes` to it.
    fn new_segment(dir: &Path, bytes: &[u8]) {
        Appender::create(dir).unwrap().append(bytes).unwrap();
    }

    #[test]
    fn records_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        new_segment(dir.path(), &encoded(0..5));
        assert_eq!(replayed(dir.path()), (0..5).map(batch).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_dropped_and_what_came_before_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let whole = encoded(1..=2).len();
        // A crash in the middle of the third record's write.
        new_segment(dir.path(), &encoded(1..=3)[..whole + 11]);
        assert_eq!(replayed(dir.path()), vec![batch(1), batch(2)]);
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let first = encoded([1]).len();
        let mut buffer = encoded(1..=2);
        buffer[first + HEADER + 3] ^= 0x40;
        new_segment(dir.path(), &buffer);
        assert_eq!(replayed(dir.path()), vec![batch(1)]);
    }

    #[test]
    fn a_segment_left_part_empty_by_a_restart_is_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        new_segment(dir.path(), &encoded([1]));
        // A restart begins a new segment; the old one ends in preallocated zeros.
        new_segment(dir.path(), &encoded([1]));
        assert_eq!(replayed(dir.path()), vec![batch(1), batch(1)]);
    }

    #[test]
    fn corruption_before_the_newest_segment_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = encoded([1]);
        damaged[HEADER + 5] ^= 0x40;
        new_segment(dir.path(), &damaged);
        new_segment(dir.path(), &encoded([1]));
        let err = replay(dir.path(), |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn rotations_continue_the_log_in_zero_filled_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = Appender::create(dir.path()).unwrap();
        for n in 1..=2 {
            appender.append(&encoded([n])).unwrap();
            assert_eq!(appender.rotate().unwrap(), u64::from(n));
        }
        appender.append(&encoded([3])).unwrap();
        drop(appender);
        assert_eq!(replayed(dir.path()), vec![batch(1), batch(2), batch(3)]);
        assert_eq!(fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), SEGMENT_BYTES);
        assert_eq!(fs::metadata(spare_path(dir.path())).unwrap().len(), SEGMENT_BYTES, "the next spare is ready");
    }

    /// Appends of every size, across block boundaries and a rotation: the
    /// segment holds exactly the records, and a partial block rewritten by
    /// the next append keeps what it held.
    #[test]
    fn appends_of_any_size_land_byte_for_byte() {
        // Under the build's target directory, on the disk that holds the
        // checkout (a temporary directory may be tmpfs, which refuses
        // O_DIRECT): this keeps the direct path tested.
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(&target).unwrap();
        let mut appender = Appender::create(dir.path()).unwrap();
        assert!(appender.is_direct(), "no O_DIRECT on {}", dir.path().display());
        let sizes = [1_u8, 200, 7, 255, 90, 255, 255, 13];
        let mut expected = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let records = encoded(std::iter::repeat_n(size, i % 3 * 20 + 1));
            appender.append(&records).unwrap();
            expected.extend_from_slice(&records);
            let on_disk = fs::read(segment_path(dir.path(), 1)).unwrap();
            assert_eq!(&on_disk[..expected.len()], expected.as_slice(), "after append {i}");
            assert!(on_disk[expected.len()..].iter().all(|b| *b == 0), "after append {i}");
        }
        assert!(expected.len() > 3 * BLOCK, "the appends must cross several blocks");
        appender.rotate().unwrap();
        appender.append(&encoded([9])).unwrap();
        drop(appender);
        let mut want: Vec<_> =
            sizes.into_iter().enumerate().flat_map(|(i, n)| vec![batch(n); i % 3 * 20 + 1]).collect();
        want.push(batch(9));
        assert_eq!(replayed(dir.path()), want);
    }

    #[test]
    fn a_spare_left_by_an_earlier_run_is_never_used() {
        let dir = tempfile::tempdir().unwrap();
        // Unsynced before a crash, a spare may hold stale blocks that parse.
        fs::write(spare_path(dir.path()), encoded([9])).unwrap();
        let mut appender = Appender::create(dir.path()).unwrap();
        appender.append(&encoded([1])).unwrap();
        appender.rotate().unwrap();
        appender.append(&encoded([2])).unwrap();
        drop(appender);
        assert_eq!(replayed(dir.path()), vec![batch(1), batch(2)]);
    }

    #[test]
    fn segments_replay_oldest_first_and_removed_ones_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        for n in 1..=3 {
            new_segment(dir.path(), &encoded([n]));
        }
        assert_eq!(replayed(dir.path()), vec![batch(1), batch(2), batch(3)]);
        remove(dir.path(), &[1, 2]).unwrap();
        assert_eq!(replayed(dir.path()), vec![batch(3)]);
    }

    proptest::proptest! {
        #[test]
        fn any_batch_decodes_to_itself(
            writes in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                 proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..200))),
                0..20,
            )
        ) {
            let mut buffer = Vec::new();
            encode(&writes, &mut buffer);
            let (records, valid) = records(&buffer);
            proptest::prop_assert_eq!(valid, buffer.len());
            proptest::prop_assert_eq!(records, vec![writes]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let (_, valid) = records(&bytes);
            proptest::prop_assert!(valid <= bytes.len());
        }
    }
}
