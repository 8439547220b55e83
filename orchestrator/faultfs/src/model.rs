//! What the disk holds, as opposed to what processes see: the power-cut model.
//!
//! Every write goes through to the backing directory at once, so reads need
//! no overlay. What makes it "unsynced" is an undo entry: the bytes the write
//! replaced and the file's size before it. An `fsync`/`fdatasync` of the file
//! drops its undo entries (they are on the disk now); a power cut applies
//! them, newest first, which brings every file back to what its last sync
//! left. See docs/adr/0018-fault-injecting-file-system.md for what this
//! models and what it does not.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sectors are the unit a disk writes atomically; a torn write keeps whole ones.
pub const SECTOR: u64 = 512;

/// How to put back what one unsynced write (or resize) changed.
#[derive(Debug)]
struct Undo {
    /// Orders writes across files, so that "the last write" has a meaning.
    seq: u64,
    offset: u64,
    /// The bytes at `offset` before the change, within the old size only.
    old: Vec<u8>,
    old_len: u64,
    /// How many bytes the change wrote at `offset` (0 for a resize).
    written: u64,
    /// What it wrote, to put back if the write survives a cut in part.
    new: Vec<u8>,
    /// The size it left the file with.
    new_len: u64,
}

/// The unsynced changes of every file, by inode.
#[derive(Debug, Default)]
pub struct Unsynced {
    pending: HashMap<u64, Vec<Undo>>,
    /// Writes a failed `fsync` covered. Linux marks their pages clean after a
    /// writeback error, so a later `fsync` succeeds without writing them:
    /// they are lost at the next cut whatever syncs follow ("fsyncgate").
    doomed: HashMap<u64, Vec<Undo>>,
    seq: u64,
}

/// Which sectors of the last unsynced write survive a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tear {
    /// Whole sectors from the start of the write that reach the disk; always
    /// fewer than the write covers, so the write is torn, never whole.
    pub keep_sectors: u64,
}

impl Unsynced {
    /// Writes `data` at `offset` into `file` (whose size is `len`), keeping
    /// what it replaces so that a cut can put it back.
    pub fn write(&mut self, ino: u64, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let old_len = file.metadata()?.len();
        let old = read_within(file, offset, data.len() as u64, old_len)?;
        file.write_all_at(data, offset)?;
        let new_len = old_len.max(offset + data.len() as u64);
        self.push(ino, Undo { seq: 0, offset, old, old_len, written: data.len() as u64, new: data.to_vec(), new_len });
        Ok(())
    }

    /// Sets the size of `file`, keeping the bytes a shrink cuts off.
    pub fn resize(&mut self, ino: u64, file: &File, new_len: u64) -> io::Result<()> {
        let old_len = file.metadata()?.len();
        let old = read_within(file, new_len, old_len.saturating_sub(new_len), old_len)?;
        file.set_len(new_len)?;
        self.push(ino, Undo { seq: 0, offset: new_len, old, old_len, written: 0, new: Vec::new(), new_len });
        Ok(())
    }

    /// Records a size change made by someone else (`fallocate`).
    pub fn grown(&mut self, ino: u64, old_len: u64, new_len: u64) {
        self.push(
            ino,
            Undo { seq: 0, offset: old_len, old: Vec::new(), old_len, written: 0, new: Vec::new(), new_len },
        );
    }

    fn push(&mut self, ino: u64, mut undo: Undo) {
        self.seq += 1;
        undo.seq = self.seq;
        self.pending.entry(ino).or_default().push(undo);
    }

    /// The file reached the disk: its data and size survive any later cut.
    pub fn synced(&mut self, ino: u64) {
        self.pending.remove(&ino);
    }

    /// An `fsync` of the file failed: what it covered never reaches the disk.
    pub fn sync_failed(&mut self, ino: u64) {
        if let Some(undos) = self.pending.remove(&ino) {
            self.doomed.entry(ino).or_default().extend(undos);
        }
    }

    /// The file is gone from the namespace (its last name was removed).
    pub fn forget(&mut self, ino: u64) {
        self.pending.remove(&ino);
        self.doomed.remove(&ino);
    }

    /// Bytes held for unsynced writes, for tests and logs.
    pub fn files(&self) -> usize {
        self.pending.len() + self.doomed.keys().filter(|ino| !self.pending.contains_key(ino)).count()
    }

    /// The power cut: every file goes back to its last sync, then what
    /// `loss` lets survive of the unsynced writes is put back, in the order
    /// it was written. `path_of` finds a file's backing path (`None`: it has
    /// no name left, nothing to undo).
    pub fn cut(&mut self, loss: Loss, path_of: impl Fn(u64) -> Option<PathBuf>) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        // Doomed writes are older than any pending write of the same file.
        let mut files: BTreeMap<u64, Vec<Undo>> = std::mem::take(&mut self.doomed).into_iter().collect();
        for (ino, undos) in self.pending.drain() {
            files.entry(ino).or_default().extend(undos);
        }
        let last = files.values().filter_map(|undos| undos.last().map(|u| u.seq)).max();
        let mut rng = SplitMix(match loss {
            Loss::Scramble { seed } => seed,
            _ => 0,
        });
        for (ino, undos) in files {
            let Some(path) = path_of(ino) else { continue };
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for undo in undos.iter().rev() {
                file.write_all_at(&undo.old, undo.offset)?;
                file.set_len(undo.old_len)?;
            }
            for undo in &undos {
                let keep = match loss {
                    Loss::All => Keep::None,
                    Loss::Tear(tear) if Some(undo.seq) == last => Keep::Sectors(tear.keep_sectors),
                    Loss::Tear(_) => Keep::None,
                    Loss::Scramble { .. } => match rng.next() % 4 {
                        0 | 1 => Keep::None,
                        2 => Keep::Whole,
                        n => Keep::Sectors(n.wrapping_mul(rng.next()) % 64),
                    },
                };
                let kept = match keep {
                    Keep::None => continue,
                    Keep::Whole if undo.written == 0 => {
                        file.set_len(undo.new_len)?;
                        report.writes_kept += 1;
                        continue;
                    }
                    Keep::Whole => undo.written,
                    // Torn: fewer sectors than the write covers, never all of it.
                    Keep::Sectors(n) => {
                        (n.min(undo.written.div_ceil(SECTOR).saturating_sub(1)) * SECTOR).min(undo.written)
                    }
                };
                if kept == 0 {
                    continue;
                }
                file.write_all_at(&undo.new[..usize::try_from(kept).unwrap_or(0)], undo.offset)?;
                report.writes_kept += 1;
                if kept < undo.written {
                    report.torn = Some((path.clone(), undo.offset, kept));
                }
            }
            report.writes_lost += undos.len();
            report.files += 1;
        }
        report.writes_lost -= report.writes_kept;
        Ok(report)
    }
}

/// What a cut lets survive of the writes never synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Nothing.
    All,
    /// The last write of all keeps some of its first sectors; nothing else.
    Tear(Tear),
    /// Each write survives whole, torn at a sector, or not at all, at random:
    /// a disk whose cache reached the platter in any order.
    Scramble { seed: u64 },
}

enum Keep {
    None,
    Whole,
    Sectors(u64),
}

/// A small, seeded generator (splitmix64): a cut is replayable from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What a cut undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    pub files: usize,
    pub writes_lost: usize,
    /// Unsynced writes (and resizes) that survived, whole or torn.
    pub writes_kept: usize,
    /// The torn write's file, offset and the bytes of it that were kept.
    pub torn: Option<(PathBuf, u64, u64)>,
}

/// The bytes of `file` in `[offset, offset + len)` that lie below `size`.
fn read_within(file: &File, offset: u64, len: u64, size: u64) -> io::Result<Vec<u8>> {
    let end = offset.saturating_add(len).min(size);
    let n = usize::try_from(end.saturating_sub(offset)).map_err(io::Error::other)?;
    let mut old = vec![0; n];
    file.read_exact_at(&mut old, offset)?;
    Ok(old)
}

/// A path relative to the mount's root, as faults and traps match it.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, File) {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn a_cut_restores_the_last_synced_content_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = file(dir.path(), "a", b"hello");
        let mut model = Unsynced::default();
        model.write(7, &f, 3, b"XYZW").unwrap();
        model.resize(7, &f, 2).unwrap();
        model.write(7, &f, 10, b"tail").unwrap();
        let report = model.cut(Loss::All, |_| Some(path.clone())).unwrap();
        assert_eq!(report.writes_lost, 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    }

    #[test]
    fn a_synced_file_keeps_everything_and_later_writes_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = file(dir.path(), "a", b"");
        let mut model = Unsynced::default();
        model.write(1, &f, 0, b"kept").unwrap();
        model.synced(1);
        model.write(1, &f, 4, b"lost").unwrap();
        model.cut(Loss::All, |_| Some(path.clone())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn writes_under_a_failed_sync_are_lost_even_after_a_later_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = file(dir.path(), "a", b"");
        let mut model = Unsynced::default();
        model.write(1, &f, 0, b"kept").unwrap();
        model.synced(1);
        model.write(1, &f, 4, b"doomed").unwrap();
        model.sync_failed(1);
        model.write(1, &f, 10, b"!").unwrap();
        model.synced(1);
        model.cut(Loss::All, |_| Some(path.clone())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn a_torn_write_keeps_whole_sectors_of_the_last_write_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, fa) = file(dir.path(), "a", &[0; 2048]);
        let (b, fb) = file(dir.path(), "b", b"");
        let mut model = Unsynced::default();
        model.write(1, &fa, 0, &[1; 2048]).unwrap();
        model.write(2, &fb, 0, &[2; 1300]).unwrap();
        let paths = |ino| Some(if ino == 1 { a.clone() } else { b.clone() });
        let report = model.cut(Loss::Tear(Tear { keep_sectors: 9 }), paths).unwrap();
        // The last write was b's: 1,300 bytes are 3 sectors, so at most 2 survive.
        assert_eq!(report.torn, Some((b.clone(), 0, 1024)));
        assert_eq!(std::fs::read(&b).unwrap(), vec![2; 1024]);
        assert_eq!(std::fs::read(&a).unwrap(), vec![0; 2048]);
    }

    /// Whatever subset survives, each byte is one that was written there,
    /// and a file synced last keeps exactly what it had.
    #[test]
    fn a_scrambled_cut_keeps_only_bytes_that_were_written() {
        for seed in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let (a, fa) = file(dir.path(), "a", &[0; 4096]);
            let (b, fb) = file(dir.path(), "b", b"synced");
            let mut model = Unsynced::default();
            for i in 1..=8u8 {
                model.write(1, &fa, u64::from(i) * 300, &[i; 700]).unwrap();
            }
            model.write(2, &fb, 0, b"xx").unwrap();
            model.synced(2);
            let paths = |ino| Some(if ino == 1 { a.clone() } else { b.clone() });
            model.cut(Loss::Scramble { seed }, paths).unwrap();
            let bytes = std::fs::read(&a).unwrap();
            assert!(bytes.len() >= 4096, "seed {seed}: the synced size is kept");
            for (at, byte) in bytes.iter().enumerate() {
                let possible =
                    (1..=8u8).any(|i| *byte == i && (usize::from(i) * 300..usize::from(i) * 300 + 700).contains(&at));
                assert!(*byte == 0 || possible, "seed {seed}: byte {at} is {byte}");
            }
            assert_eq!(std::fs::read(&b).unwrap(), b"xxnced");
        }
    }

    #[test]
    fn an_overwrite_under_a_torn_write_does_not_resurface() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = file(dir.path(), "a", &[0; 1024]);
        let mut model = Unsynced::default();
        model.write(1, &f, 0, &[1; 1024]).unwrap();
        model.write(1, &f, 0, &[2; 1024]).unwrap();
        model.cut(Loss::Tear(Tear { keep_sectors: 1 }), |_| Some(path.clone())).unwrap();
        let mut want = vec![2; 512];
        want.extend_from_slice(&[0; 512]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
