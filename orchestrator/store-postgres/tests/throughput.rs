//! Commits per second through group commit on the local PostgreSQL:
//! `cargo test -p sagaflow-store-postgres --release --test throughput -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use sagaflow_proto::v1::{ActivityTask, HistoryEvent, WorkflowStatus, WorkflowSummary};
use sagaflow_store::{Commit, Store, TaskRecord};
use sagaflow_store_postgres::PostgresStore;

/// Writers at once (`SAGAFLOW_BENCH_WRITERS` overrides): each has one
/// commit in flight, so they bound the size of a group commit.
fn writers() -> usize {
    std::env::var("SAGAFLOW_BENCH_WRITERS").ok().and_then(|w| w.parse().ok()).unwrap_or(64)
}

const COMMITS: u64 = 200;

/// One saga decision: an event, the index row, and a task scheduled or done.
fn decision(wf: &str, seq: u64) -> Commit {
    let summary = WorkflowSummary {
        workflow_id: wf.into(),
        workflow_type: "checkout".into(),
        status: WorkflowStatus::Running.into(),
        history_length: seq,
        updated_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap(),
        ..Default::default()
    };
    let task_id = format!("{}-step", seq / 2);
    let mut commit = Commit {
        workflow_id: wf.into(),
        events: vec![HistoryEvent { seq, time_ms: 1_700_000_000_000, ..Default::default() }],
        summary: Some(summary),
        request_id: (seq == 1).then(|| format!("req-{wf}")),
        ..Default::default()
    };
    if seq % 2 == 1 {
        let input = format!("{{\"order\":\"{wf}\",\"items\":[{}]}}", "1,".repeat(59) + "1");
        let task = ActivityTask { workflow_id: wf.into(), task_id, input, ..Default::default() };
        commit.put_tasks.push(TaskRecord { task: Some(task), ..Default::default() });
    } else {
        commit.delete_tasks.push(task_id);
    }
    commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it alone, in release"]
async fn commits_per_second_with_64_writers() {
    let writers_count = writers();
    let (_, db) = common::fresh_store().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    let started = Instant::now();
    let writers: Vec<_> = (0..writers_count)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let wf = format!("wf-{w}");
                for seq in 1..=COMMITS {
                    store.commit(decision(&wf, seq)).await.unwrap().wait().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let elapsed = started.elapsed();
    let commits = writers_count as u64 * COMMITS;
    let transactions = store.write_transactions();
    println!(
        "{commits} commits by {writers_count} writers in {elapsed:.2?}: {:.0} commits/s, {transactions} transactions ({:.1} commits each)",
        commits as f64 / elapsed.as_secs_f64(),
        commits as f64 / transactions as f64,
    );
    assert_eq!(store.last_seq("wf-0").await.unwrap(), COMMITS);
}
