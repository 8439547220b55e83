//! Power loss under load, with real processes: the server's data directory is
//! on the fault-injecting file system (orchestrator/faultfs), a worker
//! completes the sagas' activities, and clients start sagas and await some of
//! them. At each cut point the power goes off (everything not yet synced is
//! lost, or the last write is torn at a sector, or a random subset of the
//! unsynced writes survives, whole or torn), the server is `kill -9`ed,
//! the file system "reboots", and the store must hold everything it
//! acknowledged, with every history whole.
//!
//! `SAGAFLOW_POWER_CUTS=N` sets the number of cuts (200 by default, what CI
//! runs), `SAGAFLOW_TEST_SEED` replays a run. Without /dev/fuse the test
//! fails, unless `SAGAFLOW_SKIP_FUSE=1` says to skip it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::WorkerProcess;
use common::durability::{Acked, Checked, Load, disk, seeded, start_server};
use rand::Rng;
use rand::rngs::StdRng;
use sagaflow_faultfs::{Matcher, Op, Trap, When};

const CUTS_IN_CI: usize = 200;
const CLIENTS: usize = 6;
/// A full sweep of every workflow, and a rebuild of the index, every so many cuts.
const SWEEP_EVERY: usize = 20;

/// Where the power goes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CutPoint {
    /// After a random time under load.
    Anytime,
    /// At a write or sync of the log segment being appended to.
    Append,
    /// While the next segment is put in place (the rename of the spare) or filled with zeros.
    Rotation,
    /// While a checkpoint writes or syncs sled's file.
    Checkpoint,
    /// Just after a checkpoint deleted the segments it covered.
    AfterRetire,
}

const POINTS: [CutPoint; 5] =
    [CutPoint::Anytime, CutPoint::Append, CutPoint::Rotation, CutPoint::Checkpoint, CutPoint::AfterRetire];

fn trap(point: CutPoint, rng: &mut StdRng) -> Option<Trap> {
    let when = if rng.random_bool(0.5) { When::Before } else { When::After };
    let (op, path, skip) = match point {
        CutPoint::Anytime => return None,
        CutPoint::Append => (if rng.random_bool(0.5) { Op::Write } else { Op::Fsync }, ".log", rng.random_range(0..40)),
        CutPoint::Rotation => {
            if rng.random_bool(0.5) {
                (Op::Rename, "wal/spare", 0)
            } else {
                (Op::Write, "wal/spare", 0)
            }
        }
        CutPoint::Checkpoint => {
            (if rng.random_bool(0.7) { Op::Write } else { Op::Fsync }, "orchestrator/db", rng.random_range(0..6))
        }
        CutPoint::AfterRetire => {
            return Some(Trap { matcher: Matcher::new(Op::Unlink, ".log"), skip: 0, when: When::After });
        }
    };
    Some(Trap { matcher: Matcher::new(op, path), skip, when })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_power_cuts_at_every_kind_of_moment() {
    let Some(mut disk) = disk() else { return };
    let (seed, mut rng) = seeded();
    let cuts: usize = std::env::var("SAGAFLOW_POWER_CUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(CUTS_IN_CI);
    let began = Instant::now();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut checked = Checked::default();
    let mut counts: BTreeMap<CutPoint, usize> = BTreeMap::new();

    let first = start_server(&disk.data, "127.0.0.1:0").await;
    let url = first.url.clone();
    // Logged into memory: its reconnection warnings after each cut are expected.
    let _worker = WorkerProcess::start_logged(&url, &["--activity-latency-ms", "1"], "warn").await;
    let mut first = Some(first);
    for cut in 0..cuts {
        let server = match first.take() {
            Some(server) => server,
            None => start_server(&disk.data, &url).await,
        };
        let point = POINTS[rng.random_range(0..POINTS.len())];
        let trap = trap(point, &mut rng);
        if let Some(trap) = &trap {
            disk.fs.cut_at(trap.clone());
        }
        // What survives of the unsynced writes: nothing, a torn last write,
        // or any subset (a disk cache written back in any order).
        match rng.random_range(0..3) {
            0 => {}
            1 => disk.fs.tear_last_write(rng.random_range(1..8)),
            _ => disk.fs.scramble_unsynced(rng.random()),
        }
        let load = Load::start(&url, cut, CLIENTS, &acked);
        match &trap {
            Some(trap) => {
                let fired = tokio::task::block_in_place(|| disk.fs.wait_for_cut(Duration::from_secs(60)));
                assert!(fired, "cut {cut} ({point:?}, seed {seed}): {trap:?} never fired under load");
            }
            None => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..300))).await;
                disk.fs.power_cut();
            }
        }
        server.kill9().await;
        load.stop().await;
        tokio::task::block_in_place(|| disk.fs.restart()).unwrap();
        *counts.entry(point).or_default() += 1;
        let sweep = cut % SWEEP_EVERY == SWEEP_EVERY - 1 || cut + 1 == cuts;
        // The check opens the store in this process, which replays the log
        // and retires it. Every other cut it is left to the server's own
        // start to replay what the cut left; what it lost would still be
        // missing at the next check.
        if cut % 2 == 1 && !sweep {
            continue;
        }
        let acked = acked.lock().unwrap();
        tokio::task::block_in_place(|| {
            checked.verify(&disk.data, &acked, sweep, &format!("cut {cut} ({point:?}, seed {seed})"))
        });
    }
    let acked = acked.lock().unwrap();
    println!(
        "{cuts} power cuts {counts:?} in {:.0?}: {} acknowledged starts and {} acknowledged completions survived",
        began.elapsed(),
        acked.starts.len(),
        acked.completed.len()
    );
    assert!(acked.starts.len() > cuts, "the load was too light to mean anything");
    assert!(!acked.completed.is_empty(), "no completion was acknowledged");
}

/// Regression: sled writes its `conf` file once, at creation, and never
/// syncs it. A cut that kept its bytes but not its checksum made sled refuse
/// to open the store ("Read corrupted data"). The store now syncs it at open.
#[test]
fn a_new_store_opens_after_any_cut() {
    let Some(mut disk) = disk() else { return };
    for seed in 0..24 {
        let dir = disk.data.join(format!("store-{seed}"));
        drop(sagaflow_server::store::SledStore::open(&dir).unwrap());
        disk.fs.scramble_unsynced(seed);
        disk.fs.power_cut();
        disk.fs.restart().unwrap();
        if let Err(e) = sagaflow_server::store::SledStore::open(&dir) {
            panic!("seed {seed}: a new store does not open after a cut: {e}");
        }
    }
}
