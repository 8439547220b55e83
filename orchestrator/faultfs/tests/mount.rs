//! The file system mounted for real: what a process sees, and what a cut leaves.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;

use sagaflow_faultfs::{FaultFs, Matcher, Op, Trap, When};

fn mounted() -> (FaultFs, tempfile::TempDir) {
    assert!(sagaflow_faultfs::available() || std::env::var_os("SAGAFLOW_SKIP_FUSE").is_some(), "no /dev/fuse");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("backing")).unwrap();
    fs::create_dir(dir.path().join("mnt")).unwrap();
    let disk = FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
    (disk, dir)
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept_across_a_cut() {
    let (mut disk, dir) = mounted();
    let mnt = dir.path().join("mnt");
    fs::create_dir(mnt.join("d")).unwrap();
    let synced = fs::File::create(mnt.join("d/synced")).unwrap();
    synced.write_all_at(b"durable", 0).unwrap();
    synced.sync_data().unwrap();
    synced.write_all_at(b" and lost", 7).unwrap();
    fs::write(mnt.join("d/never"), b"gone").unwrap();
    drop(synced);
    assert_eq!(fs::read(mnt.join("d/synced")).unwrap(), b"durable and lost");
    disk.power_cut();
    assert!(fs::read(mnt.join("d/synced")).is_err(), "the power is off");
    let report = disk.restart().unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(fs::read(mnt.join("d/synced")).unwrap(), b"durable");
    // Names are durable at once; the data never synced is not.
    assert_eq!(fs::read(mnt.join("d/never")).unwrap(), b"");
}

/// FUSE passes O_DIRECT through: the open succeeds, and direct writes are
/// unsynced like any other until an fdatasync.
#[test]
fn direct_writes_open_and_are_volatile_until_synced() {
    let (mut disk, dir) = mounted();
    let path = dir.path().join("mnt/seg");
    fs::write(&path, vec![0u8; 8192]).unwrap();
    fs::File::open(&path).unwrap().sync_all().unwrap();
    let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
    let block = vec![7u8; 4096];
    direct.write_all_at(&block, 0).unwrap();
    direct.sync_data().unwrap();
    direct.write_all_at(&block, 4096).unwrap();
    drop(direct);
    disk.power_cut();
    disk.restart().unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[..4096], &block[..]);
    assert!(bytes[4096..].iter().all(|b| *b == 0));
}

#[test]
fn a_trap_cuts_at_the_chosen_operation_and_a_tear_keeps_whole_sectors() {
    let (mut disk, dir) = mounted();
    let path = dir.path().join("mnt/log");
    let file = fs::File::create(&path).unwrap();
    disk.cut_at(Trap { matcher: Matcher::new(Op::Fsync, "log"), skip: 1, when: When::Before });
    disk.tear_last_write(2);
    file.write_all_at(&[1; 100], 0).unwrap();
    file.sync_data().unwrap();
    file.write_all_at(&[2; 2000], 100).unwrap();
    assert!(file.sync_data().is_err(), "the second sync meets the cut");
    assert!(disk.wait_for_cut(Duration::from_secs(1)));
    drop(file);
    disk.restart().unwrap();
    let bytes = fs::read(&path).unwrap();
    let mut want = vec![1; 100];
    want.extend_from_slice(&[2; 1024]);
    assert_eq!(bytes, want);
}

#[test]
fn enospc_after_a_budget_and_eio_on_a_chosen_file() {
    let (disk, dir) = mounted();
    let mnt = dir.path().join("mnt");
    disk.set_enospc_after(Some(10_000));
    let err = fs::write(mnt.join("big"), vec![0u8; 20_000]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    disk.set_enospc_after(None);
    disk.fail_with_eio(Matcher::new(Op::Fsync, "bad"));
    let bad = fs::File::create(mnt.join("bad")).unwrap();
    assert_eq!(bad.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    let good = fs::File::create(mnt.join("good")).unwrap();
    good.sync_all().unwrap();
    // Renames and removals pass through.
    fs::rename(mnt.join("good"), mnt.join("better")).unwrap();
    fs::remove_file(mnt.join("bad")).unwrap();
    let names: Vec<_> = fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.contains(&"better".into()) && !names.contains(&"bad".into()), "{names:?}");
}
