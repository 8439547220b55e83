//! Durable appends through `SledStore` with group commit, against the raw
//! fsync rate of the disk underneath.
//!
//! `store_append/writers/N`: N writers, each a closed loop over its own
//! workflow (commit one `ActivityCompleted` event, wait until it is durable,
//! repeat). One criterion iteration is one durable event, so the reported
//! throughput is events/s across all writers.
//!
//! `raw_fsync/*`: a loop of `write 4 KiB + sync_data()` on a file in the same
//! filesystem as the sled directories (both under the system temp dir). One
//! iteration is one fsync. `append` grows the file like a log does;
//! `overwrite` rewrites one block that is already allocated, the cheapest
//! fsync the filesystem can do.
//!
//! After criterion's own report the run prints `SUMMARY` lines for the README:
//! events/s per writer count, the raw fsync rate, the events per fsync that
//! those two imply, and the events per flush actually measured (counted
//! through the store's `sagaflow_store_flush_seconds` metric).
//!
//! Run: `cargo bench -p sagaflow-store --bench store_append`

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{ActivityCompleted, HistoryEvent};
use sagaflow_store::{Commit, SledStore, Store};

const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
const BLOCK: usize = 4096;
/// The histogram the group-commit flusher records once per flush.
const FLUSH_METRIC: &str = "sagaflow_store_flush_seconds";

// ---------------------------------------------------------------------------
// Flush counting: a global metrics recorder that only watches the flush
// histogram, so the run can report how many events each flush carried.

#[derive(Default)]
struct FlushStats {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl HistogramFn for FlushStats {
    fn record(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

impl FlushStats {
    fn snapshot(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.nanos.load(Ordering::Relaxed))
    }
}

struct FlushRecorder(Arc<FlushStats>);

impl metrics::Recorder for FlushRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == FLUSH_METRIC { Histogram::from_arc(Arc::clone(&self.0)) } else { Histogram::noop() }
    }
}

// ---------------------------------------------------------------------------
// Totals over every timed call of one benchmark (warm-up included), for the
// summary. Criterion's own estimate is printed above it.

#[derive(Default, Clone, Copy)]
struct Totals {
    elements: u64,
    elapsed: Duration,
    flushes: u64,
    flush_time: Duration,
}

impl Totals {
    fn per_second(&self) -> f64 {
        self.elements as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

#[derive(Default)]
struct Summary {
    appends: BTreeMap<usize, Totals>,
    fsync_append: Option<Totals>,
    fsync_overwrite: Option<Totals>,
}

// ---------------------------------------------------------------------------
// Durable appends.

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A realistic event: an activity result of about 100 bytes of JSON.
fn activity_completed(seq: u64) -> HistoryEvent {
    HistoryEvent {
        seq,
        time_ms: now_ms(),
        attributes: Some(Attributes::ActivityCompleted(ActivityCompleted {
            task_id: format!("charge-card/{seq}"),
            result: format!(
                r#"{{"payment_id":"pay_{seq:012}","status":"captured","amount_cents":12999,"currency":"EUR","attempt":1}}"#
            ),
        })),
    }
}

/// One writer: `n` durable appends to its own workflow, one event per commit,
/// each waited on before the next (a workflow's next decision needs the
/// previous one acknowledged).
async fn writer(store: Arc<SledStore>, workflow_id: String, next_seq: Arc<AtomicU64>, n: u64) {
    for _ in 0..n {
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        let commit =
            Commit { workflow_id: workflow_id.clone(), events: vec![activity_completed(seq)], ..Default::default() };
        store.commit(commit).await.expect("commit").wait().await.expect("durable");
    }
}

fn bench_appends(c: &mut Criterion, rt: &tokio::runtime::Runtime, flush_stats: &FlushStats, summary: &mut Summary) {
    let mut group = c.benchmark_group("store_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));

    for writers in WRITER_COUNTS {
        // One store per writer count, opened outside the timed loop.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("open sled"));
        let seqs: Vec<Arc<AtomicU64>> = (0..writers).map(|_| Arc::new(AtomicU64::new(1))).collect();
        let totals = Mutex::new(Totals::default());

        group.bench_with_input(BenchmarkId::new("writers", writers), &writers, |b, &writers| {
            b.to_async(rt).iter_custom(|iters| {
                let store = Arc::clone(&store);
                let seqs = seqs.clone();
                let totals = &totals;
                async move {
                    // Spread `iters` events over the writers.
                    let n = writers as u64;
                    let (base, extra) = (iters / n, iters % n);
                    let flushes_before = flush_stats.snapshot();
                    let start = Instant::now();
                    let tasks: Vec<_> = seqs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, seq)| {
                            let count = base + u64::from((i as u64) < extra);
                            (count > 0).then(|| {
                                tokio::spawn(writer(
                                    Arc::clone(&store),
                                    format!("bench-{writers}w-{i}"),
                                    Arc::clone(seq),
                                    count,
                                ))
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("writer task");
                    }
                    let elapsed = start.elapsed();
                    let flushes_after = flush_stats.snapshot();
                    let mut t = totals.lock().unwrap();
                    t.elements += iters;
                    t.elapsed += elapsed;
                    t.flushes += flushes_after.0 - flushes_before.0;
                    t.flush_time += Duration::from_nanos(flushes_after.1 - flushes_before.1);
                    elapsed
                }
            });
        });

        // Close the store (and stop its flusher) before the next one opens.
        drop(store);
        let totals = *totals.lock().unwrap();
        if totals.elements > 0 {
            summary.appends.insert(writers, totals);
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Raw fsync rate.

fn write_and_sync(file: &File, block: &[u8], offset: u64) {
    file.write_all_at(block, offset).expect("write");
    file.sync_data().expect("sync_data");
}

/// `iters` fsyncs on a fresh file that grows by one block each time.
fn fsync_append(dir: &Path, block: &[u8], iters: u64) -> Duration {
    let file = tempfile::tempfile_in(dir).expect("temp file");
    let start = Instant::now();
    for i in 0..iters {
        write_and_sync(&file, block, i * BLOCK as u64);
    }
    start.elapsed()
}

/// `iters` fsyncs rewriting one block that is already on disk.
fn fsync_overwrite(dir: &Path, block: &[u8], iters: u64) -> Duration {
    let mut file = tempfile::tempfile_in(dir).expect("temp file");
    file.write_all(block).expect("write");
    file.sync_all().expect("sync_all");
    let start = Instant::now();
    for _ in 0..iters {
        write_and_sync(&file, block, 0);
    }
    start.elapsed()
}

fn bench_raw_fsync(c: &mut Criterion, summary: &mut Summary) {
    // The same filesystem as the sled directories: both under the temp dir.
    let dir = tempfile::tempdir().expect("tempdir");
    let block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();

    let mut group = c.benchmark_group("raw_fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    type Variant = fn(&Path, &[u8], u64) -> Duration;
    let variants: [(&str, Variant); 2] = [("append", fsync_append), ("overwrite", fsync_overwrite)];
    for (name, run) in variants {
        let mut totals = Totals::default();
        group.bench_function(BenchmarkId::new("write_4k_sync_data", name), |b| {
            b.iter_custom(|iters| {
                let elapsed = run(dir.path(), &block, iters);
                totals.elements += iters;
                totals.elapsed += elapsed;
                elapsed
            });
        });
        if totals.elements > 0 {
            match name {
                "append" => summary.fsync_append = Some(totals),
                _ => summary.fsync_overwrite = Some(totals),
            }
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------

fn print_summary(summary: &Summary) {
    let raw = summary.fsync_append.map(|t| t.per_second());
    println!();
    for (writers, t) in &summary.appends {
        let events_per_s = t.per_second();
        let mut line = format!("SUMMARY writers={writers} events_per_s={events_per_s:.0}");
        if let Some(raw) = raw {
            line += &format!(" implied_events_per_fsync={:.2}", events_per_s / raw);
        }
        if t.flushes > 0 {
            line += &format!(
                " measured_events_per_flush={:.2} flushes_per_s={:.0} mean_flush_us={:.0}",
                t.elements as f64 / t.flushes as f64,
                t.flushes as f64 / t.elapsed.as_secs_f64(),
                t.flush_time.as_secs_f64() * 1e6 / t.flushes as f64,
            );
        }
        println!("{line}");
    }
    if let Some(raw) = raw {
        println!("SUMMARY raw_fsync_per_s={raw:.0}");
    }
    if let Some(t) = summary.fsync_overwrite {
        println!("SUMMARY raw_fsync_overwrite_per_s={:.0}", t.per_second());
    }
}

fn main() {
    let flush_stats = Arc::new(FlushStats::default());
    // Only fails if a recorder is already installed; the counts then stay 0
    // and the summary leaves the measured columns out.
    let _ = metrics::set_global_recorder(FlushRecorder(Arc::clone(&flush_stats)));

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");

    let mut criterion = Criterion::default().configure_from_args();
    let mut summary = Summary::default();
    bench_appends(&mut criterion, &rt, &flush_stats, &mut summary);
    bench_raw_fsync(&mut criterion, &mut summary);
    criterion.final_summary();
    print_summary(&summary);
}
