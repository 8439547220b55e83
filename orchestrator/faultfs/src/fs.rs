//! The FUSE side: a passthrough to the backing directory that records each
//! write's undo entry ([`model`](crate::model)) and consults the armed
//! [`faults`](crate::faults) before each operation.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::faults::{Faults, Op, Verdict};
use crate::model::{self, Loss, Unsynced};

/// Attributes and entries are not cached by the kernel: a cut changes files
/// behind its back, and every size must come from the backing file.
const TTL: Duration = Duration::ZERO;

/// State shared by the mounted file system and the test's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub root: PathBuf,
    root_ino: u64,
    pub state: Mutex<State>,
    /// Signalled when a trap cuts the power.
    pub cut: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// FUSE inode (the backing file's, the root's being 1) to backing path.
    pub paths: HashMap<u64, PathBuf>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    pub unsynced: Unsynced,
    pub faults: Faults,
    /// What the next cut lets survive.
    pub loss: Option<Loss>,
}

#[derive(Debug)]
struct Handle {
    file: File,
    ino: u64,
    /// Opened `O_SYNC`/`O_DSYNC`: each write is on the disk when it returns.
    durable: bool,
}

impl Shared {
    pub fn new(root: &Path) -> io::Result<Self> {
        let root_ino = fs::metadata(root)?.ino();
        let mut state = State::default();
        state.paths.insert(INodeNo::ROOT.0, root.to_owned());
        Ok(Self { root: root.to_owned(), root_ino, state: Mutex::new(state), cut: Condvar::new() })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ino_of(&self, meta: &fs::Metadata) -> u64 {
        if meta.ino() == self.root_ino { INodeNo::ROOT.0 } else { meta.ino() }
    }

    fn attr(&self, meta: &fs::Metadata) -> FileAttr {
        let time = |secs: i64, nanos: i64| {
            let secs = u64::try_from(secs).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).unwrap_or(0))
        };
        FileAttr {
            ino: INodeNo(self.ino_of(meta)),
            size: meta.len(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: kind(meta.file_type()),
            perm: u16::try_from(meta.mode() & 0o7777).unwrap_or(0o644),
            nlink: u32::try_from(meta.nlink()).unwrap_or(1),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: u32::try_from(meta.rdev()).unwrap_or(0),
            blksize: 4096,
            flags: 0,
        }
    }

    /// Runs the fault check for `op` on `path`; on a cut, wakes the waiters.
    fn check(&self, state: &mut State, op: Op, path: &Path, bytes: u64) -> Result<bool, Errno> {
        match state.faults.check(op, &model::relative(&self.root, path), bytes) {
            Verdict::Proceed { cut_after } => Ok(cut_after),
            Verdict::Fail(errno) => Err(Errno::from_i32(errno)),
            Verdict::CutBefore => {
                tracing::info!(?op, path = %path.display(), "power cut before the operation");
                self.cut.notify_all();
                Err(Errno::EIO)
            }
        }
    }

    /// After an operation that a trap chose to cut just after.
    fn cut_now(&self, state: &mut State, op: Op, path: &Path) {
        tracing::info!(?op, path = %path.display(), "power cut after the operation");
        state.faults.dead = true;
        self.cut.notify_all();
    }
}

fn kind(file_type: fs::FileType) -> FileType {
    FileType::from_std(file_type).unwrap_or(FileType::RegularFile)
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

/// Flags a backing file is opened with: the kernel already applied the
/// rest, and the backing directory need not allow `O_DIRECT` (tmpfs does not).
fn backing_flags(flags: i32) -> i32 {
    flags & !(libc::O_DIRECT | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_ACCMODE)
}

fn open_backing(path: &Path, flags: i32, create: Option<u32>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    // Read access too: an undo entry reads the bytes a write replaces.
    options.read(true).write(flags & libc::O_ACCMODE != libc::O_RDONLY).custom_flags(backing_flags(flags));
    if let Some(mode) = create {
        options.write(true).mode(mode);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true)
        } else {
            options.create(true)
        };
    }
    options.open(path)
}

fn is_durable(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

/// The mounted file system.
#[derive(Debug)]
pub(crate) struct FaultFs(pub Arc<Shared>);

impl FaultFs {
    fn path(&self, state: &State, ino: INodeNo) -> Result<PathBuf, Errno> {
        state.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, state: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(state, parent)?.join(name))
    }

    /// Registers `path`'s inode and returns its attributes.
    fn entry(&self, state: &mut State, path: PathBuf) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        let attr = self.0.attr(&meta);
        state.paths.insert(attr.ino.0, path);
        Ok(attr)
    }

    /// The inode whose last name `path` is, if it is one: removing or
    /// replacing that name ends the file.
    fn last_name(&self, path: &Path) -> Option<u64> {
        let meta = fs::symlink_metadata(path).ok()?;
        (meta.nlink() <= 1 || meta.is_dir()).then(|| self.0.ino_of(&meta))
    }

    /// Drops what the model holds for a file that no longer has a name.
    fn gone(state: &mut State, ino: Option<u64>) {
        if let Some(ino) = ino {
            state.unsynced.forget(ino);
            state.paths.remove(&ino);
        }
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.0.lock();
        match self.child(&state, parent, name).and_then(|path| self.entry(&mut state, path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.0.lock();
        let attr = self.path(&state, ino).and_then(|p| fs::symlink_metadata(p).map_err(errno));
        match attr {
            Ok(meta) => reply.attr(&TTL, &self.0.attr(&meta)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.path(&state, ino)?;
            if let Some(size) = size {
                let grows = size.saturating_sub(fs::metadata(&path).map_err(errno)?.len());
                let cut_after = self.0.check(&mut state, Op::Resize, &path, grows)?;
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(errno)?;
                state.unsynced.resize(ino.0, &file, size).map_err(errno)?;
                if cut_after {
                    self.0.cut_now(&mut state, Op::Resize, &path);
                }
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
            }
            fs::symlink_metadata(&path).map_err(errno)
        })();
        match result {
            Ok(meta) => reply.attr(&TTL, &self.0.attr(&meta)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.child(&state, parent, name)?;
            self.0.check(&mut state, Op::Mkdir, &path, 0)?;
            fs::create_dir(&path).map_err(errno)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777)).map_err(errno)?;
            self.entry(&mut state, path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let from = self.child(&state, parent, name)?;
            let to = self.child(&state, newparent, newname)?;
            let cut_after = self.0.check(&mut state, Op::Rename, &from, 0)?;
            let replaced = self.last_name(&to);
            fs::rename(&from, &to).map_err(errno)?;
            Self::gone(&mut state, replaced);
            // Every path under the old name (a directory's files) moves with it.
            for path in state.paths.values_mut() {
                if let Ok(rest) = path.strip_prefix(&from) {
                    *path = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                }
            }
            if cut_after {
                self.0.cut_now(&mut state, Op::Rename, &to);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.0.lock();
        let result = self.path(&state, ino).and_then(|path| open_backing(&path, flags.0, None).map_err(errno));
        match result {
            Ok(file) => {
                let fh = state.next_fh;
                state.next_fh += 1;
                state.handles.insert(fh, Handle { file, ino: ino.0, durable: is_durable(flags.0) });
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.child(&state, parent, name)?;
            let cut_after = self.0.check(&mut state, Op::Create, &path, 0)?;
            let file = open_backing(&path, flags, Some(mode & !umask & 0o7777)).map_err(errno)?;
            let attr = self.entry(&mut state, path.clone())?;
            if cut_after {
                self.0.cut_now(&mut state, Op::Create, &path);
            }
            Ok((file, attr))
        })();
        match result {
            Ok((file, attr)) => {
                let fh = state.next_fh;
                state.next_fh += 1;
                state.handles.insert(fh, Handle { file, ino: attr.ino.0, durable: is_durable(flags) });
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.path(&state, ino).unwrap_or_default();
            self.0.check(&mut state, Op::Read, &path, 0)?;
            let handle = state.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            let mut buffer = vec![0; size as usize];
            let mut filled = 0;
            while filled < buffer.len() {
                match handle.file.read_at(&mut buffer[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buffer.truncate(filled);
            Ok(buffer)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.path(&state, ino).unwrap_or_default();
            let cut_after = self.0.check(&mut state, Op::Write, &path, data.len() as u64)?;
            let State { handles, unsynced, .. } = &mut *state;
            let handle = handles.get(&fh.0).ok_or(Errno::EBADF)?;
            if handle.durable {
                handle.file.write_all_at(data, offset).map_err(errno)?;
            } else {
                unsynced.write(handle.ino, &handle.file, offset, data).map_err(errno)?;
            }
            if cut_after {
                self.0.cut_now(&mut state, Op::Write, &path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a sync: nothing reaches the disk here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.path(&state, ino).unwrap_or_default();
            let cut_after = self.0.check(&mut state, Op::Fsync, &path, 0).inspect_err(|e| {
                if *e == Errno::EIO {
                    state.unsynced.sync_failed(ino.0);
                }
            })?;
            // Data and size alike: fdatasync also writes the size when it changed.
            state.unsynced.synced(ino.0);
            if cut_after {
                self.0.cut_now(&mut state, Op::Fsync, &path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.0.lock();
        let listed = (|| {
            let path = self.path(&state, ino)?;
            let mut entries = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
            for entry in fs::read_dir(&path).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let meta = entry.metadata().map_err(errno)?;
                entries.push((self.0.ino_of(&meta), kind(meta.file_type()), entry.file_name()));
            }
            Ok::<_, Errno>(entries)
        })();
        match listed {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Names are durable as soon as they change (see the ADR), so there is
        // nothing to sync; a dead disk still fails it.
        if self.0.lock().faults.dead { reply.error(Errno::EIO) } else { reply.ok() }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.0.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.path(&state, ino).unwrap_or_default();
            let cut_after = self.0.check(&mut state, Op::Resize, &path, length)?;
            let State { handles, unsynced, .. } = &mut *state;
            let handle = handles.get(&fh.0).ok_or(Errno::EBADF)?;
            let old_len = handle.file.metadata().map_err(errno)?.len();
            let flags = rustix::fs::FallocateFlags::from_bits_retain(u32::try_from(mode).unwrap_or(0));
            rustix::fs::fallocate(&handle.file, flags, offset, length)
                .map_err(|e| Errno::from_i32(e.raw_os_error()))?;
            let new_len = handle.file.metadata().map_err(errno)?.len();
            unsynced.grown(handle.ino, old_len, new_len);
            if cut_after {
                self.0.cut_now(&mut state, Op::Resize, &path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl FaultFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut state = self.0.lock();
        let result = (|| {
            let path = self.child(&state, parent, name)?;
            let cut_after = self.0.check(&mut state, Op::Unlink, &path, 0)?;
            let removed = self.last_name(&path);
            if dir { fs::remove_dir(&path) } else { fs::remove_file(&path) }.map_err(errno)?;
            Self::gone(&mut state, removed);
            if cut_after {
                self.0.cut_now(&mut state, Op::Unlink, &path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
