//! The workflow archive (`--archive-dir`, ADR 0026): a closed workflow's
//! history is appended here, durably, before its deletion commits (by
//! retention or by `DeleteWorkflow`), and read back by
//! `GetWorkflowHistory{archived}`.
//!
//! One file per UTC day of archival, `DIR/YYYY-MM-DD.jsonl.gz`: gzip, one
//! line of JSON per workflow ([`ArchivedWorkflow`]), each append its own gzip
//! member. Multi-member gzip is plain gzip (`zcat` reads it whole), and an
//! append never rewrites what is there. A member torn by a crash or a full
//! disk is skipped by the reader, which warns and goes on at the next member
//! it finds; a workflow whose archival was torn was not deleted, so it is
//! archived again.
//!
//! Blocking I/O: call it from `spawn_blocking`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flate2::Compression;
use flate2::bufread::GzDecoder;
use flate2::write::GzEncoder;
use sagaflow_proto::v1::{HistoryEvent, WorkflowStatus, WorkflowSummary};
use serde::{Deserialize, Serialize};

use crate::history_json;

/// The name every day file ends with.
pub const SUFFIX: &str = ".jsonl.gz";
/// The first bytes of a gzip member: magic, then deflate. A reader that
/// meets a damaged member looks for the next one by them.
const MEMBER_START: [u8; 3] = [0x1f, 0x8b, 0x08];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the archive directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot archive to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the archive {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the archive record of {workflow_id}: {source}")]
    Encode { workflow_id: String, source: serde_json::Error },
    #[error("the archived history of {workflow_id} does not read back: {source}")]
    Event { workflow_id: String, source: history_json::Error },
    /// The blocking task that did the I/O did not finish (it panicked).
    #[error("the archive task stopped: {0}")]
    Task(String),
}

/// One line of a day file: a closed workflow, as it was when archived.
/// Fields in this order, so that a line starts with its workflow id (a
/// reader looking for one id parses only the lines that start with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedWorkflow {
    pub workflow_id: String,
    pub workflow_type: String,
    /// `COMPLETED`, `COMPENSATED`, … as the CLI names them.
    pub status: String,
    /// When it closed, Unix milliseconds.
    pub closed_ms: i64,
    /// When it was archived, Unix milliseconds; its day names the file.
    pub archived_ms: i64,
    /// The whole history, each event as `workflow history --output json` prints it.
    pub events: Vec<serde_json::Value>,
}

impl ArchivedWorkflow {
    pub fn new(summary: &WorkflowSummary, history: &[HistoryEvent], archived_ms: i64) -> Self {
        Self {
            workflow_id: summary.workflow_id.clone(),
            workflow_type: summary.workflow_type.clone(),
            status: sagaflow_proto::status_name(WorkflowStatus::try_from(summary.status).unwrap_or_default()).into(),
            closed_ms: summary.closed_ms,
            archived_ms,
            events: history.iter().map(history_json::event_json).collect(),
        }
    }

    /// The history, read back from its JSON form.
    pub fn history(&self) -> Result<Vec<HistoryEvent>, Error> {
        self.events
            .iter()
            .map(history_json::event_from_json)
            .collect::<Result<_, _>>()
            .map_err(|source| Error::Event { workflow_id: self.workflow_id.clone(), source })
    }

    /// The file this record goes to: the UTC day of its archival.
    pub fn file_name(&self) -> String {
        format!("{}{SUFFIX}", history_json::day(self.archived_ms))
    }
}

/// What a reader skipped in a day file, for a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// Where the unreadable part starts, in bytes of the (compressed) file.
    pub offset: u64,
    /// What was wrong: a member cut short (the usual crash), a damaged one,
    /// or a line that is not a record.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.path.display(), self.offset, self.reason)
    }
}

/// What a search of the archive found.
#[derive(Debug, Default)]
pub struct Found {
    /// The most recently archived record of the id, if any.
    pub record: Option<ArchivedWorkflow>,
    /// What the search skipped on its way.
    pub damage: Vec<Damage>,
}

/// An archive directory, open for appends and reads.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    /// Serialises appends (a member is written whole, by one writer), and
    /// names the day files whose directory entry this process has synced.
    synced: Mutex<HashSet<String>>,
}

impl Archive {
    /// Creates `dir` if needed, durably: its entry in its parent is synced,
    /// so that an archive written into it survives a power cut.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let create = |source| Error::CreateDir { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(create)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(create)?;
        }
        Ok(Self { dir: dir.to_owned(), synced: Mutex::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `record` as one gzip member of its day's file and returns
    /// once it is on disk: the file is fsynced, and so is the directory the
    /// first time this process writes a file (a file created by a run that
    /// crashed before syncing its entry is synced again). Only then may the
    /// workflow's deletion commit.
    pub fn append(&self, record: &ArchivedWorkflow) -> Result<PathBuf, Error> {
        let mut line = serde_json::to_vec(record)
            .map_err(|source| Error::Encode { workflow_id: record.workflow_id.clone(), source })?;
        line.push(b'\n');
        let name = record.file_name();
        let path = self.dir.join(&name);
        let write = |source| Error::Write { path: path.clone(), source };
        let mut encoder = GzEncoder::new(Vec::with_capacity(line.len() / 4 + 64), Compression::default());
        encoder.write_all(&line).map_err(write)?;
        let member = encoder.finish().map_err(write)?;

        let mut synced = self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(write)?;
        let before = file.metadata().map_err(write)?.len();
        if let Err(e) = file.write_all(&member).and_then(|()| file.sync_all()) {
            // Best effort: a partial member would only be skipped by readers,
            // but the next append need not follow it.
            if file.set_len(before).and_then(|()| file.sync_all()).is_err() {
                tracing::warn!(path = %path.display(), "a failed archive write left a torn member; readers skip it");
            }
            return Err(write(e));
        }
        if !synced.contains(&name) {
            sync_dir(&self.dir).map_err(write)?;
            synced.insert(name);
        }
        Ok(path)
    }

    /// The most recently archived record of `workflow_id`: day files newest
    /// first, and within a file the last record of the id. A workflow
    /// archived twice (a crash between its archival and its deletion) has
    /// two equal histories; an id reused after a deletion has its latest
    /// workflow's.
    pub fn find(&self, workflow_id: &str) -> Result<Found, Error> {
        let mut found = Found::default();
        for path in self.day_files()?.into_iter().rev() {
            let mut last = None;
            let damage = scan(&path, &mut |line| {
                if starts_with_id(line, workflow_id) {
                    last = Some(serde_json::from_slice::<ArchivedWorkflow>(line).map_err(|e| e.to_string()));
                }
            })?;
            found.damage.extend(damage);
            match last {
                Some(Ok(record)) => {
                    found.record = Some(record);
                    return Ok(found);
                }
                Some(Err(reason)) => found.damage.push(Damage {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("the last record of {workflow_id} does not parse: {reason}"),
                }),
                None => {}
            }
        }
        Ok(found)
    }

    /// The day files, oldest first (their names sort by day).
    pub fn day_files(&self) -> Result<Vec<PathBuf>, Error> {
        let read = |source| Error::Read { path: self.dir.clone(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(SUFFIX)) {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Every record of a day file, in the order written, and what was skipped.
pub fn read_day(path: &Path) -> Result<(Vec<ArchivedWorkflow>, Vec<Damage>), Error> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut damage = scan(path, &mut |line| match serde_json::from_slice(line) {
        Ok(record) => records.push(record),
        Err(e) => bad.push(e.to_string()),
    })?;
    damage.extend(bad.into_iter().map(|reason| Damage {
        path: path.to_owned(),
        offset: 0,
        reason: format!("a line is not an archive record: {reason}"),
    }));
    Ok((records, damage))
}

/// Whether a line is the record of `workflow_id`, from its first bytes
/// (`{"workflow_id":"…",`), without parsing the rest.
fn starts_with_id(line: &[u8], workflow_id: &str) -> bool {
    let Ok(id) = serde_json::to_string(workflow_id) else { return false };
    line.strip_prefix(b"{\"workflow_id\":").and_then(|rest| rest.strip_prefix(id.as_bytes())).is_some_and(|rest| {
        // A longer id that begins with this one continues inside the quotes,
        // so the next byte after the closing quote is the field separator.
        rest.first() == Some(&b',')
    })
}

/// Decodes a day file member by member and hands each line to `visit`.
/// A member that does not decode (torn by a crash, or damaged) is reported
/// and skipped: the scan goes on at the next member header after its start,
/// so one bad member costs only its own record.
fn scan(path: &Path, visit: &mut dyn FnMut(&[u8])) -> Result<Vec<Damage>, Error> {
    let read = |source| Error::Read { path: path.to_owned(), source };
    let mut reader = BufReader::new(File::open(path).map_err(read)?);
    let mut damage = Vec::new();
    let mut member = Vec::new();
    loop {
        let start = reader.stream_position().map_err(read)?;
        if reader.fill_buf().map_err(read)?.is_empty() {
            return Ok(damage);
        }
        member.clear();
        // A bufread decoder consumes exactly one member from the reader,
        // leaving it at the next member's first byte.
        match GzDecoder::new(&mut reader).read_to_end(&mut member) {
            Ok(_) => {
                for line in member.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    visit(line);
                }
            }
            Err(e) => {
                let next = next_member(&mut reader, start + 1).map_err(read)?;
                let reason = match (next, e.kind()) {
                    (None, std::io::ErrorKind::UnexpectedEof) => {
                        "the last gzip member is cut short (a crash while archiving); its record is skipped".into()
                    }
                    (None, _) => format!("the last gzip member is damaged ({e}); its record is skipped"),
                    (Some(at), _) => format!("a gzip member is damaged ({e}); skipped {} bytes", at - start),
                };
                damage.push(Damage { path: path.to_owned(), offset: start, reason });
                match next {
                    Some(at) => {
                        reader.seek(SeekFrom::Start(at)).map_err(read)?;
                    }
                    None => return Ok(damage),
                }
            }
        }
    }
}

/// The offset of the next gzip member header at or after `from`, if any.
fn next_member(reader: &mut BufReader<File>, from: u64) -> std::io::Result<Option<u64>> {
    reader.seek(SeekFrom::Start(from))?;
    let mut chunk = vec![0u8; 64 * 1024];
    // Bytes kept from the previous chunk, so that a header across two chunks is found.
    let mut carry: Vec<u8> = Vec::new();
    let mut base = from;
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        let mut window = std::mem::take(&mut carry);
        let window_start = base - window.len() as u64;
        window.extend_from_slice(&chunk[..n]);
        if let Some(at) = window.windows(MEMBER_START.len()).position(|w| w == MEMBER_START) {
            return Ok(Some(window_start + at as u64));
        }
        base += n as u64;
        carry = window[window.len().saturating_sub(MEMBER_START.len() - 1)..].to_vec();
    }
}

/// Makes the names in `dir` durable (a new file's entry).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sagaflow_proto::v1::history_event::Attributes;
    use sagaflow_proto::v1::{WorkflowCompleted, WorkflowStarted};

    use super::*;

    /// 2026-12-02T10:00:00Z
    const DAY: i64 = 1_796_205_600_000;
    const HOUR: i64 = 3_600_000;

    fn record(id: &str, archived_ms: i64, result: &str) -> ArchivedWorkflow {
        let summary = WorkflowSummary {
            workflow_id: id.into(),
            workflow_type: "trip".into(),
            status: WorkflowStatus::Completed.into(),
            closed_ms: archived_ms - 1000,
            ..Default::default()
        };
        let history = [
            HistoryEvent {
                seq: 1,
                time_ms: archived_ms - 2000,
                attributes: Some(Attributes::WorkflowStarted(WorkflowStarted {
                    workflow_type: "trip".into(),
                    input: "{}".into(),
                    ..Default::default()
                })),
            },
            HistoryEvent {
                seq: 2,
                time_ms: archived_ms - 1000,
                attributes: Some(Attributes::WorkflowCompleted(WorkflowCompleted { result: result.into() })),
            },
        ];
        ArchivedWorkflow::new(&summary, &history, archived_ms)
    }

    #[test]
    fn records_go_to_the_file_of_their_day_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(&dir.path().join("archive")).unwrap();
        let a = record("a", DAY, "1");
        assert_eq!(archive.append(&a).unwrap(), dir.path().join("archive/2026-12-02.jsonl.gz"));
        archive.append(&record("b", DAY + HOUR, "2")).unwrap();
        archive.append(&record("c", DAY + 24 * HOUR, "3")).unwrap();
        let files: Vec<String> = archive
            .day_files()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["2026-12-02.jsonl.gz", "2026-12-03.jsonl.gz"]);
        let (records, damage) = read_day(&archive.day_files().unwrap()[0]).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(records.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(records[0], a);
        assert_eq!(records[0].status, "COMPLETED");
        assert_eq!(records[0].history().unwrap()[1].time_ms, DAY - 1000);

        let found = archive.find("a").unwrap();
        assert_eq!(found.record, Some(a));
        assert!(archive.find("nope").unwrap().record.is_none());
        // An id that another begins with is not mistaken for it.
        assert!(archive.find("").unwrap().record.is_none());
    }

    /// Plain gzip: a stock decoder of concatenated members reads every line.
    #[test]
    fn a_day_file_is_plain_multi_member_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        for id in ["a", "b", "c"] {
            archive.append(&record(id, DAY, "1")).unwrap();
        }
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(File::open(dir.path().join("2026-12-02.jsonl.gz")).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.starts_with("{\"workflow_id\":")));
    }

    #[test]
    fn a_duplicate_reads_as_the_last_one_and_the_newest_day_wins() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive.append(&record("a", DAY, "1")).unwrap();
        archive.append(&record("a", DAY + HOUR, "2")).unwrap();
        assert_eq!(archive.find("a").unwrap().record.unwrap().archived_ms, DAY + HOUR);
        archive.append(&record("a", DAY + 24 * HOUR, "3")).unwrap();
        archive.append(&record("b", DAY + HOUR, "4")).unwrap();
        assert_eq!(archive.find("a").unwrap().record.unwrap().archived_ms, DAY + 24 * HOUR);
    }

    #[test]
    fn a_torn_last_member_is_skipped_with_a_warning_and_the_rest_reads() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let path = archive.append(&record("a", DAY, "1")).unwrap();
        archive.append(&record("b", DAY, "2")).unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();
        // Cut anywhere inside the last member: its trailer, or its data.
        for cut in [1, 4, 9, 20] {
            let copy = dir.path().join("copy.gz");
            std::fs::copy(&path, &copy).unwrap();
            OpenOptions::new().write(true).open(&copy).unwrap().set_len(whole - cut).unwrap();
            let (records, damage) = read_day(&copy).unwrap();
            assert_eq!(records.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>(), ["a"], "cut {cut}");
            assert_eq!(damage.len(), 1, "cut {cut}: {damage:?}");
            assert!(damage[0].reason.contains("cut short"), "{}", damage[0]);
        }
    }

    /// A crash tore a member, and the next run appended after it: only the
    /// torn record is lost.
    #[test]
    fn appends_after_a_torn_member_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let path = archive.append(&record("a", DAY, "1")).unwrap();
        let good = std::fs::metadata(&path).unwrap().len();
        archive.append(&record("torn", DAY, "2")).unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(good + (whole - good) / 2).unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        archive.append(&record("c", DAY, "3")).unwrap();
        let (records, damage) = read_day(&path).unwrap();
        assert_eq!(records.iter().map(|r| r.workflow_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].offset, good);
        assert!(archive.find("c").unwrap().record.is_some());
        assert!(archive.find("torn").unwrap().record.is_none());
    }

    #[test]
    fn ids_that_need_escaping_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let odd = "shop:\"quoted\"\\ and ünïcode";
        archive.append(&record(odd, DAY, "1")).unwrap();
        archive.append(&record("shop:", DAY, "2")).unwrap();
        assert_eq!(archive.find(odd).unwrap().record.unwrap().workflow_id, odd);
        assert_eq!(archive.find("shop:").unwrap().record.unwrap().workflow_id, "shop:");
    }
}
