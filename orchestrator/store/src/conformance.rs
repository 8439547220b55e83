//! The storage conformance suite: every `Store` backend must pass it.
//! `conformance_suite!(name, factory)` expands to one test per case.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use sagaflow_proto::v1::{
    ActivityTask, HistoryEvent, TimerFired, WorkflowStatus, WorkflowSummary, history_event::Attributes,
};

use super::{Commit, DefinitionRecord, Error, Lease, OutboxRecord, QueuePauseRecord, Store, TaskRecord, TimerRecord};

fn event(seq: u64) -> HistoryEvent {
    HistoryEvent {
        seq,
        time_ms: 1,
        attributes: Some(Attributes::TimerFired(TimerFired { timer_id: format!("t{seq}") })),
    }
}

fn summary(id: &str, status: WorkflowStatus, kind: &str) -> WorkflowSummary {
    WorkflowSummary { workflow_id: id.into(), workflow_type: kind.into(), status: status.into(), ..Default::default() }
}

fn append(id: &str, seqs: std::ops::RangeInclusive<u64>) -> Commit {
    Commit { workflow_id: id.into(), events: seqs.map(event).collect(), ..Default::default() }
}

fn task(wf: &str, task_id: &str) -> TaskRecord {
    TaskRecord {
        task: Some(ActivityTask { workflow_id: wf.into(), task_id: task_id.into(), ..Default::default() }),
        scheduled_ms: 5,
        ..Default::default()
    }
}

pub async fn history_reads_back_in_order_and_pages(store: &dyn Store) {
    store.commit(append("wf-a", 1..=3)).unwrap().wait().await.unwrap();
    store.commit(append("wf-a", 4..=10)).unwrap().wait().await.unwrap();
    store.commit(append("wf-ab", 1..=2)).unwrap().wait().await.unwrap();
    let all: Vec<u64> = store.history("wf-a", 1, 100).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    let page: Vec<u64> = store.history("wf-a", 4, 3).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![4, 5, 6]);
    // Pages that start inside one commit's events and run into the next.
    let page: Vec<u64> = store.history("wf-a", 2, 3).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![2, 3, 4]);
    let tail: Vec<u64> = store.history("wf-a", 9, 100).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(tail, vec![9, 10]);
    assert!(store.history("wf-a", 11, 100).unwrap().is_empty());
    // Single events: at a commit's end (a point read), inside one, past the end.
    for seq in [3, 2, 10] {
        let one: Vec<u64> = store.history("wf-a", seq, 1).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(one, vec![seq]);
    }
    assert!(store.history("wf-a", 11, 1).unwrap().is_empty());
    assert_eq!(store.last_seq("wf-a").unwrap(), 10);
    assert_eq!(store.last_seq("wf-ab").unwrap(), 2);
    assert_eq!(store.last_seq("missing").unwrap(), 0);
    assert_eq!(store.all_workflows().unwrap(), vec!["wf-a".to_string(), "wf-ab".to_string()]);
}

pub async fn a_gap_or_overlap_is_refused_and_writes_nothing(store: &dyn Store) {
    store.commit(append("wf", 1..=2)).unwrap().wait().await.unwrap();
    let mut gap = append("wf", 4..=4);
    gap.summary = Some(summary("wf", WorkflowStatus::Running, "t"));
    gap.request_id = Some("req".into());
    assert!(matches!(store.commit(gap), Err(Error::SequenceConflict { stored: 2, requested: 4, .. })));
    assert!(matches!(store.commit(append("wf", 2..=3)), Err(Error::SequenceConflict { .. })));
    let mut torn = append("wf", 3..=3);
    torn.events.push(event(5));
    assert!(matches!(store.commit(torn), Err(Error::SequenceConflict { .. })));
    // Nothing of the refused commits is visible.
    assert_eq!(store.last_seq("wf").unwrap(), 2);
    assert!(store.summary("wf").unwrap().is_none());
    assert!(store.workflow_for_request("req").unwrap().is_none());
}

pub async fn an_id_too_long_for_a_key_is_refused_not_truncated(store: &dyn Store) {
    let longest = "a".repeat(crate::MAX_WORKFLOW_ID_BYTES);
    store.commit(append(&longest, 1..=1)).unwrap().wait().await.unwrap();
    // One byte more would have shared the longest id's keys had it been cut.
    let longer = format!("{longest}b");
    let mut commit = append(&longer, 1..=1);
    commit.request_id = Some("req-long".into());
    assert!(matches!(store.commit(commit), Err(Error::IdTooLong { len, .. }) if len == longest.len() + 1));
    let mut task_of_longer = append("wf-short", 1..=1);
    task_of_longer.put_tasks.push(task(&longer, "t1"));
    assert!(matches!(store.commit(task_of_longer), Err(Error::IdTooLong { .. })));
    let lease_of_longer = Commit::leases(&longer, vec![("t1".into(), Lease::default())]);
    assert!(matches!(store.commit(lease_of_longer), Err(Error::IdTooLong { .. })));
    assert_eq!(store.last_seq(&longer).unwrap(), 0);
    assert!(store.history(&longer, 1, 10).unwrap().is_empty());
    assert!(store.workflow_for_request("req-long").unwrap().is_none());
    assert_eq!(store.last_seq("wf-short").unwrap(), 0);
    assert_eq!(store.history(&longest, 1, 10).unwrap().len(), 1);
}

pub async fn index_filters_pages_and_tracks_open_workflows(store: &dyn Store) {
    for (i, status) in
        [WorkflowStatus::Running, WorkflowStatus::Completed, WorkflowStatus::Running].into_iter().enumerate()
    {
        let id = format!("wf-{i}");
        let mut commit = append(&id, 1..=1);
        commit.summary = Some(summary(&id, status, if i == 2 { "refund" } else { "checkout" }));
        commit.request_id = Some(format!("req-{i}"));
        store.commit(commit).unwrap().wait().await.unwrap();
    }
    let running = store.list("", None, 10, usize::MAX, &|s| s.status == WorkflowStatus::Running as i32).unwrap();
    let ids: Vec<_> = running.workflows.iter().map(|s| s.workflow_id.as_str()).collect();
    assert_eq!(ids, vec!["wf-0", "wf-2"]);
    assert!(running.next_after.is_none());
    let first = store.list("", None, 2, usize::MAX, &|_| true).unwrap();
    assert_eq!(first.workflows.len(), 2);
    let rest = store.list("", first.next_after.as_deref(), 2, usize::MAX, &|_| true).unwrap();
    assert_eq!(rest.workflows.iter().map(|s| s.workflow_id.clone()).collect::<Vec<_>>(), vec!["wf-2"]);
    assert_eq!(store.open_workflows().unwrap(), vec!["wf-0".to_string(), "wf-2".to_string()]);
    let prefixed = store.list("wf-1", None, 10, usize::MAX, &|_| true).unwrap();
    assert_eq!(prefixed.workflows.iter().map(|s| s.workflow_id.clone()).collect::<Vec<_>>(), vec!["wf-1"]);
    assert_eq!(store.workflow_for_request("req-1").unwrap().as_deref(), Some("wf-1"));

    // Closing a workflow removes it from the open set.
    let mut close = append("wf-0", 2..=2);
    close.summary = Some(summary("wf-0", WorkflowStatus::Compensated, "checkout"));
    store.commit(close).unwrap().wait().await.unwrap();
    assert_eq!(store.open_workflows().unwrap(), vec!["wf-2".to_string()]);
}

pub async fn tasks_leases_and_timers_come_and_go_with_commits(store: &dyn Store) {
    let mut commit = append("wf", 1..=1);
    commit.put_tasks = vec![task("wf", "0-f-1"), task("wf", "1-f-1")];
    commit.put_timers = vec![
        TimerRecord { fire_at_ms: 200, workflow_id: "wf".into(), timer_id: "late".into() },
        TimerRecord { fire_at_ms: 100, workflow_id: "wf".into(), timer_id: "early".into() },
    ];
    store.commit(commit).unwrap().wait().await.unwrap();
    let lease = Lease { worker_id: "w1".into(), started_ms: 1, expires_ms: 2 };
    // A lease alone is not waited on: the commit is ready at once.
    store.commit(Commit::leases("wf", vec![("0-f-1".into(), lease)])).unwrap().wait().await.unwrap();
    assert_eq!(store.tasks().unwrap().len(), 2);
    assert_eq!(
        store.leases().unwrap(),
        vec![("wf".into(), "0-f-1".into(), Lease { worker_id: "w1".into(), started_ms: 1, expires_ms: 2 })]
    );
    let timers: Vec<_> = store.timers().unwrap().into_iter().map(|t| t.timer_id).collect();
    assert_eq!(timers, vec!["early", "late"], "timers scan in firing order");

    let mut done = append("wf", 2..=2);
    done.delete_tasks = vec!["0-f-1".into()];
    done.delete_timers = vec![TimerRecord { fire_at_ms: 100, workflow_id: "wf".into(), timer_id: "early".into() }];
    store.commit(done).unwrap().wait().await.unwrap();
    let left: Vec<_> = store.tasks().unwrap().iter().map(|t| t.task_id().to_owned()).collect();
    assert_eq!(left, vec!["1-f-1"]);
    assert!(store.leases().unwrap().is_empty(), "deleting a task drops its lease");
    assert_eq!(store.timers().unwrap().len(), 1);
}

pub async fn outbox_sequence_increases_across_commits(store: &dyn Store) {
    for i in 1..=3u64 {
        let mut commit = append("wf", i..=i);
        commit.outbox = vec![OutboxRecord { event_id: format!("e{i}"), workflow_seq: i, ..Default::default() }];
        store.commit(commit).unwrap().wait().await.unwrap();
    }
    let seqs: Vec<u64> = store.outbox(0, 10).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(store.outbox(2, 10).unwrap()[0].event_id, "e3");
    store.delete_outbox(&[1, 2]).unwrap().wait().await.unwrap();
    let left: Vec<u64> = store.outbox(0, 10).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(left, vec![3]);
}

pub async fn pruning_the_outbox_raises_a_durable_floor(store: &dyn Store) {
    assert_eq!(store.outbox_floor().unwrap(), 0);
    let mut commit = append("wf", 1..=1);
    commit.outbox = vec![OutboxRecord::default(); 5];
    store.commit(commit).unwrap().wait().await.unwrap();
    store.prune_outbox(&[1, 2]).unwrap().wait().await.unwrap();
    assert_eq!(store.outbox_floor().unwrap(), 2);
    let left = |store: &dyn Store| -> Vec<u64> { store.outbox(0, 10).unwrap().iter().map(|r| r.seq).collect() };
    assert_eq!(left(store), vec![3, 4, 5]);
    // A relay's deletion (acknowledged by a broker) leaves the floor where it is.
    store.delete_outbox(&[3]).unwrap().wait().await.unwrap();
    assert_eq!(store.outbox_floor().unwrap(), 2);
    // It never goes down, and a rebuild keeps it: it is not derived.
    store.prune_outbox(&[4]).unwrap().wait().await.unwrap();
    store.prune_outbox(&[1]).unwrap().wait().await.unwrap();
    store.prune_outbox(&[]).unwrap().wait().await.unwrap();
    store.clear_derived().unwrap();
    assert_eq!(store.outbox_floor().unwrap(), 4);
    assert_eq!(left(store), vec![5]);
}

pub async fn clearing_derived_records_keeps_histories(store: &dyn Store) {
    let mut commit = append("wf", 1..=2);
    commit.summary = Some(summary("wf", WorkflowStatus::Running, "t"));
    commit.request_id = Some("req".into());
    commit.put_tasks = vec![task("wf", "0-f-1")];
    commit.put_timers = vec![TimerRecord { fire_at_ms: 1, workflow_id: "wf".into(), timer_id: "x".into() }];
    store.commit(commit).unwrap().wait().await.unwrap();
    store.clear_derived().unwrap();
    assert_eq!(store.history("wf", 1, 10).unwrap().len(), 2);
    assert!(store.summary("wf").unwrap().is_none());
    assert!(store.open_workflows().unwrap().is_empty());
    assert!(store.workflow_for_request("req").unwrap().is_none());
    assert!(store.tasks().unwrap().is_empty());
    assert!(store.timers().unwrap().is_empty());
}

fn definition(kind: &str, version: u32, json: &str) -> DefinitionRecord {
    DefinitionRecord {
        workflow_type: kind.into(),
        version,
        content_hash: format!("hash-of-{json}"),
        json: json.into(),
        deprecated: false,
        registered_ms: 3,
    }
}

pub async fn definitions_are_stored_in_one_commit_and_survive_a_rebuild(store: &dyn Store) {
    assert!(store.definitions().unwrap().is_empty());
    let several = vec![definition("trip", 10, "{}"), definition("trip", 2, "{}"), definition("a", 1, "{}")];
    store.commit(Commit::definitions(several)).unwrap().wait().await.unwrap();
    let keys = |store: &dyn Store| -> Vec<(String, u32, bool)> {
        store.definitions().unwrap().into_iter().map(|d| (d.workflow_type, d.version, d.deprecated)).collect()
    };
    // By type, then version numerically (10 after 2).
    assert_eq!(keys(store), vec![("a".into(), 1, false), ("trip".into(), 2, false), ("trip".into(), 10, false)]);
    // A record replaces its type and version: deprecation is a put.
    let mut deprecated = definition("trip", 2, "{}");
    deprecated.deprecated = true;
    store.commit(Commit::definitions(vec![deprecated.clone()])).unwrap().wait().await.unwrap();
    assert_eq!(keys(store)[1], ("trip".into(), 2, true));
    assert_eq!(store.definitions().unwrap()[1], deprecated);
    // Definitions are source data, not derived: a rebuild keeps them.
    store.clear_derived().unwrap();
    assert_eq!(keys(store).len(), 3);
    // A type name too long for a key is refused, whole commit and all.
    let long = vec![definition("b", 1, "{}"), definition(&"t".repeat(256), 1, "{}")];
    assert!(matches!(store.commit(Commit::definitions(long)), Err(Error::IdTooLong { .. })));
    assert_eq!(keys(store).len(), 3);
}

pub async fn queue_pauses_are_stored_replaced_deleted_and_survive_a_rebuild(store: &dyn Store) {
    assert!(store.queue_pauses().unwrap().is_empty());
    let pause = |queue: &str, reason: &str| QueuePauseRecord {
        queue: queue.into(),
        reason: reason.into(),
        identity: "ops".into(),
        paused_ms: 5,
    };
    store.commit(Commit::queue_pause(Some(pause("payments.capture", "incident")), None)).unwrap().wait().await.unwrap();
    store.commit(Commit::queue_pause(Some(pause("carrier.ship", "500s")), None)).unwrap().wait().await.unwrap();
    let queues = |store: &dyn Store| -> Vec<(String, String)> {
        store.queue_pauses().unwrap().into_iter().map(|p| (p.queue, p.reason)).collect()
    };
    assert_eq!(queues(store), [("carrier.ship".into(), "500s".into()), ("payments.capture".into(), "incident".into())]);
    // Pausing again replaces the record; a rebuild keeps them: they are an operator's decision.
    store.commit(Commit::queue_pause(Some(pause("carrier.ship", "still 500s")), None)).unwrap().wait().await.unwrap();
    store.clear_derived().unwrap();
    assert_eq!(queues(store)[0], ("carrier.ship".into(), "still 500s".into()));
    store.commit(Commit::queue_pause(None, Some("carrier.ship".into()))).unwrap().wait().await.unwrap();
    assert_eq!(queues(store), [("payments.capture".into(), "incident".into())]);
    let long = Commit::queue_pause(Some(pause(&"q".repeat(256), "x")), None);
    assert!(matches!(store.commit(long), Err(Error::IdTooLong { .. })));
}

pub async fn a_closed_workflow_is_deleted_whole_and_an_open_one_refused(store: &dyn Store) {
    let closed = |id: &str, request: &str, status: WorkflowStatus| Commit {
        summary: Some(summary(id, status, "t")),
        request_id: Some(request.into()),
        ..append(id, 1..=3)
    };
    store.commit(closed("done", "req-done", WorkflowStatus::Completed)).unwrap().wait().await.unwrap();
    store.commit(closed("open", "req-open", WorkflowStatus::Running)).unwrap().wait().await.unwrap();
    assert!(matches!(store.commit(Commit::delete("open", "req-open")), Err(Error::StillOpen(_))));
    assert_eq!(store.history("open", 1, 10).unwrap().len(), 3, "a refused deletion removes nothing");

    store.commit(Commit::delete("done", "req-done")).unwrap().wait().await.unwrap();
    assert!(store.history("done", 1, 10).unwrap().is_empty());
    assert_eq!(store.last_seq("done").unwrap(), 0);
    assert!(store.summary("done").unwrap().is_none());
    assert!(store.workflow_for_request("req-done").unwrap().is_none(), "the request id may start anew");
    assert!(!store.all_workflows().unwrap().contains(&"done".to_owned()));
    // The id can hold a new history from 1, as a fresh workflow's.
    store.commit(closed("done", "req-again", WorkflowStatus::Completed)).unwrap().wait().await.unwrap();
    assert_eq!(store.history("done", 1, 10).unwrap().len(), 3);
}

/// 64 writers commit at once; every commit resolves and every event is there.
pub async fn concurrent_commits_all_become_durable(store: Arc<dyn Store>) {
    let mut writers = Vec::new();
    for w in 0..64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let id = format!("wf-{w}");
            for seq in 1..=20 {
                store.commit(append(&id, seq..=seq)).unwrap().wait().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.barrier().wait().await.unwrap();
    let ids: HashSet<String> = store.all_workflows().unwrap().into_iter().collect();
    assert_eq!(ids.len(), 64);
    for id in ids {
        let seqs: Vec<u64> = store.history(&id, 1, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }
}

/// Expands to one `#[tokio::test]` per conformance case for a backend.
/// `$make` is an expression producing `(Arc<dyn Store>, guard)`; the guard
/// (a temp dir, say) lives as long as the test.
#[macro_export]
#[doc(hidden)]
macro_rules! store_conformance_suite {
    ($make:expr) => {
        $crate::store_conformance_suite!(@case $make,
            history_reads_back_in_order_and_pages,
            a_gap_or_overlap_is_refused_and_writes_nothing,
            an_id_too_long_for_a_key_is_refused_not_truncated,
            index_filters_pages_and_tracks_open_workflows,
            tasks_leases_and_timers_come_and_go_with_commits,
            outbox_sequence_increases_across_commits,
            pruning_the_outbox_raises_a_durable_floor,
            clearing_derived_records_keeps_histories,
            definitions_are_stored_in_one_commit_and_survive_a_rebuild,
            queue_pauses_are_stored_replaced_deleted_and_survive_a_rebuild,
            a_closed_workflow_is_deleted_whole_and_an_open_one_refused);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_commits_all_become_durable() {
            let (store, _guard) = $make;
            $crate::conformance::concurrent_commits_all_become_durable(store).await;
        }
    };
    (@case $make:expr, $($case:ident),+) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (store, _guard) = $make;
                $crate::conformance::$case(&*store).await;
            }
        )+
    };
}
