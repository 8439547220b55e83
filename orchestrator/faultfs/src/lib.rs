//! A fault-injecting FUSE file system for tests: a passthrough over a backing
//! directory that remembers, per file, every write since its last
//! `fsync`/`fdatasync`, and on command cuts the power (those writes are lost),
//! tears the last write at a sector boundary, runs out of space, or answers
//! `EIO`. Its model, and what it leaves out, are in
//! docs/adr/0018-fault-injecting-file-system.md.
//!
//! ```no_run
//! # fn main() -> Result<(), sagaflow_faultfs::Error> {
//! use sagaflow_faultfs::{FaultFs, Matcher, Op, Trap, When};
//! let mut disk = FaultFs::mount("/tmp/backing".as_ref(), "/tmp/mnt".as_ref())?;
//! // ... a process writes under /tmp/mnt ...
//! disk.cut_at(Trap { matcher: Matcher::new(Op::Fsync, ".log"), skip: 3, when: When::Before });
//! disk.wait_for_cut(std::time::Duration::from_secs(10));
//! // ... kill -9 the process ...
//! disk.restart()?; // the unsynced writes are gone
//! # Ok(()) }
//! ```

mod faults;
mod fs;
mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

pub use faults::{Matcher, Op, Trap, When};
pub use model::{CutReport, Loss, SECTOR, Tear};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no /dev/fuse on this machine: the fault-injecting file system cannot be mounted")]
    NoFuse,
    #[error("mounting the fault-injecting file system on {path}: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("unmounting the fault-injecting file system from {path}: {source}")]
    Unmount { path: PathBuf, source: std::io::Error },
    #[error("undoing unsynced writes in {path}: {source}")]
    Cut { path: PathBuf, source: std::io::Error },
}

/// Whether this machine can mount FUSE file systems at all.
pub fn available() -> bool {
    Path::new("/dev/fuse").exists()
}

/// A mounted fault-injecting file system. Dropping it unmounts it.
#[derive(Debug)]
pub struct FaultFs {
    shared: Arc<fs::Shared>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl FaultFs {
    /// Mounts a passthrough of `backing` (a directory) on `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, Error> {
        if !available() {
            return Err(Error::NoFuse);
        }
        let shared = fs::Shared::new(backing).map_err(|source| Error::Mount { path: backing.to_owned(), source })?;
        let mut disk = Self { shared: Arc::new(shared), mountpoint: mountpoint.to_owned(), session: None };
        disk.attach()?;
        Ok(disk)
    }

    fn attach(&mut self) -> Result<(), Error> {
        let mut config = fuser::Config::default();
        config.mount_options =
            vec![fuser::MountOption::FSName("sagaflow-faultfs".into()), fuser::MountOption::Subtype("faultfs".into())];
        let filesystem = fs::FaultFs(Arc::clone(&self.shared));
        let session = fuser::spawn_mount(filesystem, &self.mountpoint, &config)
            .map_err(|source| Error::Mount { path: self.mountpoint.clone(), source })?;
        self.session = Some(session);
        Ok(())
    }

    /// Unmounts, and returns once no operation can reach the file system.
    /// A lazy unmount: files still open (sled closes its own from background
    /// threads, a moment after its handle is dropped) keep the file system
    /// alive until they close, and the session's end waits for that.
    fn detach(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let failed = |source| Error::Unmount { path: self.mountpoint.clone(), source };
        rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| failed(std::io::Error::from_raw_os_error(e.raw_os_error())))?;
        match session.join() {
            // Our own unmount ended the connection. fuser expects ENODEV for
            // that; under load the kernel may report the same end as an
            // aborted connection (seen once in CI). Either way no operation
            // can reach the file system any more, which is what this promises.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::CONNABORTED.raw_os_error()) => Ok(()),
            other => other.map_err(failed),
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power now: from here on every operation fails with `EIO` and
    /// nothing more reaches the disk. [`restart`](Self::restart) then loses
    /// what was never synced.
    pub fn power_cut(&self) {
        self.shared.lock().faults.dead = true;
        self.shared.cut.notify_all();
    }

    /// Cuts the power when an operation matches `trap` (see [`When`]).
    pub fn cut_at(&self, trap: Trap) {
        self.shared.lock().faults.arm(Some(trap));
    }

    /// Whether the power is off (a trap fired or [`power_cut`](Self::power_cut) was called).
    pub fn is_cut(&self) -> bool {
        self.shared.lock().faults.dead
    }

    /// Waits until the power is off; false if `timeout` passed first.
    pub fn wait_for_cut(&self, timeout: Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .cut
            .wait_timeout_while(state, timeout, |state| !state.faults.dead)
            .unwrap_or_else(PoisonError::into_inner);
        state.faults.dead
    }

    /// At the next cut, the last unsynced write keeps its first
    /// `keep_sectors` sectors of 512 bytes (never all of them).
    pub fn tear_last_write(&self, keep_sectors: u64) {
        self.shared.lock().loss = Some(Loss::Tear(Tear { keep_sectors }));
    }

    /// At the next cut, each unsynced write survives whole, torn at a
    /// sector, or not at all, drawn from `seed`: a disk whose cache reached
    /// the platter in any order. Synced writes are kept, as always.
    pub fn scramble_unsynced(&self, seed: u64) {
        self.shared.lock().loss = Some(Loss::Scramble { seed });
    }

    /// Writes past `bytes` more (in total, from now) fail with `ENOSPC`;
    /// `None` gives the space back.
    pub fn set_enospc_after(&self, bytes: Option<u64>) {
        self.shared.lock().faults.set_enospc_after(bytes);
    }

    /// Operations that match fail with `EIO`, until [`clear_faults`](Self::clear_faults).
    pub fn fail_with_eio(&self, matcher: Matcher) {
        self.shared.lock().faults.fail_with_eio(matcher);
    }

    /// Disarms every error, the space limit and the trap (not a cut).
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// How many operations an armed fault has failed so far.
    pub fn faults_answered(&self) -> u64 {
        self.shared.lock().faults.answered
    }

    /// Files holding unsynced writes now.
    pub fn unsynced_files(&self) -> usize {
        self.shared.lock().unsynced.files()
    }

    /// The reboot after a power cut (or a clean one, if the power is on):
    /// unmounts, loses every unsynced write (tearing the last one if asked),
    /// clears every fault and mounts again. Every process using the mount
    /// must be gone first.
    pub fn restart(&mut self) -> Result<CutReport, Error> {
        self.detach()?;
        let report = {
            let mut state = self.shared.lock();
            let loss = state.loss.take().unwrap_or(Loss::All);
            let fs::State { paths, unsynced, .. } = &mut *state;
            let report = unsynced
                .cut(loss, |ino| paths.get(&ino).cloned())
                .map_err(|source| Error::Cut { path: self.shared.root.clone(), source })?;
            state.faults.clear();
            state.faults.dead = false;
            report
        };
        tracing::info!(?report, "faultfs: power back on");
        self.attach()?;
        Ok(report)
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!(error = %e, "faultfs: unmount failed");
        }
    }
}
