//! The storage conformance suite: every `Store` backend must pass it.
//! `conformance_suite!(name, factory)` expands to one test per case.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use sagaflow_proto::v1::{
    ActivityTask, HistoryEvent, TimerFired, WorkflowStatus, WorkflowSummary, history_event::Attributes,
};

use super::{
    Commit, DefinitionRecord, Error, Fence, Lease, ListQuery, OutboxRecord, QueuePauseRecord, Store, TaskRecord,
    TimerRecord, WorkflowFilter,
};

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

fn query(id_prefix: &str, after: Option<&str>, limit: usize, filter: WorkflowFilter) -> ListQuery {
    ListQuery { id_prefix: id_prefix.into(), after: after.map(str::to_owned), limit, scan_budget: usize::MAX, filter }
}

fn task(wf: &str, task_id: &str) -> TaskRecord {
    TaskRecord {
        task: Some(ActivityTask { workflow_id: wf.into(), task_id: task_id.into(), ..Default::default() }),
        scheduled_ms: 5,
        ..Default::default()
    }
}

async fn outbox_seqs(store: &dyn Store) -> Vec<u64> {
    store.outbox(0, 10).await.unwrap().iter().map(|r| r.seq).collect()
}

async fn definition_keys(store: &dyn Store) -> Vec<(String, u32, bool)> {
    store.definitions().await.unwrap().into_iter().map(|d| (d.workflow_type, d.version, d.deprecated)).collect()
}

async fn paused_queues(store: &dyn Store) -> Vec<(String, String)> {
    store.queue_pauses().await.unwrap().into_iter().map(|p| (p.queue, p.reason)).collect()
}

pub async fn history_reads_back_in_order_and_pages(store: &dyn Store) {
    store.commit(append("wf-a", 1..=3)).await.unwrap().wait().await.unwrap();
    store.commit(append("wf-a", 4..=10)).await.unwrap().wait().await.unwrap();
    store.commit(append("wf-ab", 1..=2)).await.unwrap().wait().await.unwrap();
    let all: Vec<u64> = store.history("wf-a", 1, 100).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    let page: Vec<u64> = store.history("wf-a", 4, 3).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![4, 5, 6]);
    // Pages that start inside one commit's events and run into the next.
    let page: Vec<u64> = store.history("wf-a", 2, 3).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(page, vec![2, 3, 4]);
    let tail: Vec<u64> = store.history("wf-a", 9, 100).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(tail, vec![9, 10]);
    assert!(store.history("wf-a", 11, 100).await.unwrap().is_empty());
    // Single events: at a commit's end (a point read), inside one, past the end.
    for seq in [3, 2, 10] {
        let one: Vec<u64> = store.history("wf-a", seq, 1).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(one, vec![seq]);
    }
    assert!(store.history("wf-a", 11, 1).await.unwrap().is_empty());
    assert_eq!(store.last_seq("wf-a").await.unwrap(), 10);
    assert_eq!(store.last_seq("wf-ab").await.unwrap(), 2);
    assert_eq!(store.last_seq("missing").await.unwrap(), 0);
    assert_eq!(store.all_workflows(None, usize::MAX).await.unwrap(), vec!["wf-a".to_string(), "wf-ab".to_string()]);
}

pub async fn a_gap_or_overlap_is_refused_and_writes_nothing(store: &dyn Store) {
    store.commit(append("wf", 1..=2)).await.unwrap().wait().await.unwrap();
    let mut gap = append("wf", 4..=4);
    gap.summary = Some(summary("wf", WorkflowStatus::Running, "t"));
    gap.request_id = Some("req".into());
    assert!(matches!(store.commit(gap).await, Err(Error::SequenceConflict { stored: 2, requested: 4, .. })));
    assert!(matches!(store.commit(append("wf", 2..=3)).await, Err(Error::SequenceConflict { .. })));
    let mut torn = append("wf", 3..=3);
    torn.events.push(event(5));
    assert!(matches!(store.commit(torn).await, Err(Error::SequenceConflict { .. })));
    // Nothing of the refused commits is visible.
    assert_eq!(store.last_seq("wf").await.unwrap(), 2);
    assert!(store.summary("wf").await.unwrap().is_none());
    assert!(store.workflow_for_request("req").await.unwrap().is_none());
}

pub async fn an_id_too_long_for_a_key_is_refused_not_truncated(store: &dyn Store) {
    let longest = "a".repeat(crate::MAX_WORKFLOW_ID_BYTES);
    store.commit(append(&longest, 1..=1)).await.unwrap().wait().await.unwrap();
    // One byte more would have shared the longest id's keys had it been cut.
    let longer = format!("{longest}b");
    let mut commit = append(&longer, 1..=1);
    commit.request_id = Some("req-long".into());
    assert!(matches!(store.commit(commit).await, Err(Error::IdTooLong { len, .. }) if len == longest.len() + 1));
    let mut task_of_longer = append("wf-short", 1..=1);
    task_of_longer.put_tasks.push(task(&longer, "t1"));
    assert!(matches!(store.commit(task_of_longer).await, Err(Error::IdTooLong { .. })));
    assert!(matches!(
        store.record_leases(&longer, vec![("t1".into(), Lease::default())]),
        Err(Error::IdTooLong { .. })
    ));
    assert_eq!(store.last_seq(&longer).await.unwrap(), 0);
    assert!(store.history(&longer, 1, 10).await.unwrap().is_empty());
    assert!(store.workflow_for_request("req-long").await.unwrap().is_none());
    assert_eq!(store.last_seq("wf-short").await.unwrap(), 0);
    assert_eq!(store.history(&longest, 1, 10).await.unwrap().len(), 1);
}

pub async fn index_filters_pages_and_tracks_open_workflows(store: &dyn Store) {
    for (i, status) in
        [WorkflowStatus::Running, WorkflowStatus::Completed, WorkflowStatus::Running].into_iter().enumerate()
    {
        let id = format!("wf-{i}");
        let mut commit = append(&id, 1..=1);
        commit.summary = Some(summary(&id, status, if i == 2 { "refund" } else { "checkout" }));
        commit.request_id = Some(format!("req-{i}"));
        store.commit(commit).await.unwrap().wait().await.unwrap();
    }
    let running_only = WorkflowFilter { statuses: vec![WorkflowStatus::Running as i32], ..Default::default() };
    let running = store.list(&query("", None, 10, running_only)).await.unwrap();
    let ids: Vec<_> = running.workflows.iter().map(|s| s.workflow_id.as_str()).collect();
    assert_eq!(ids, vec!["wf-0", "wf-2"]);
    assert!(running.next_after.is_none());
    let first = store.list(&query("", None, 2, WorkflowFilter::default())).await.unwrap();
    assert_eq!(first.workflows.len(), 2);
    let rest = store.list(&query("", first.next_after.as_deref(), 2, WorkflowFilter::default())).await.unwrap();
    assert_eq!(rest.workflows.iter().map(|s| s.workflow_id.clone()).collect::<Vec<_>>(), vec!["wf-2"]);
    assert_eq!(store.open_workflows(None, usize::MAX).await.unwrap(), vec!["wf-0".to_string(), "wf-2".to_string()]);
    let prefixed = store.list(&query("wf-1", None, 10, WorkflowFilter::default())).await.unwrap();
    assert_eq!(prefixed.workflows.iter().map(|s| s.workflow_id.clone()).collect::<Vec<_>>(), vec!["wf-1"]);
    assert_eq!(store.workflow_for_request("req-1").await.unwrap().as_deref(), Some("wf-1"));

    // Closing a workflow removes it from the open set.
    let mut close = append("wf-0", 2..=2);
    close.summary = Some(summary("wf-0", WorkflowStatus::Compensated, "checkout"));
    store.commit(close).await.unwrap().wait().await.unwrap();
    assert_eq!(store.open_workflows(None, usize::MAX).await.unwrap(), vec!["wf-2".to_string()]);
}

pub async fn tasks_leases_and_timers_come_and_go_with_commits(store: &dyn Store) {
    let mut commit = append("wf", 1..=1);
    commit.put_tasks = vec![task("wf", "0-f-1"), task("wf", "1-f-1")];
    commit.put_timers = vec![
        TimerRecord { fire_at_ms: 200, workflow_id: "wf".into(), timer_id: "late".into() },
        TimerRecord { fire_at_ms: 100, workflow_id: "wf".into(), timer_id: "early".into() },
    ];
    store.commit(commit).await.unwrap().wait().await.unwrap();
    let lease = Lease { worker_id: "w1".into(), started_ms: 1, expires_ms: 2 };
    store.record_leases("wf", vec![("0-f-1".into(), lease)]).unwrap();
    assert_eq!(store.tasks(None, usize::MAX).await.unwrap().len(), 2);
    assert_eq!(
        store.leases(None, usize::MAX).await.unwrap(),
        vec![("wf".into(), "0-f-1".into(), Lease { worker_id: "w1".into(), started_ms: 1, expires_ms: 2 })]
    );
    let timers: Vec<_> = store.timers(None, usize::MAX).await.unwrap().into_iter().map(|t| t.timer_id).collect();
    assert_eq!(timers, vec!["early", "late"], "timers scan in firing order");

    let mut done = append("wf", 2..=2);
    done.delete_tasks = vec!["0-f-1".into()];
    done.delete_timers = vec![TimerRecord { fire_at_ms: 100, workflow_id: "wf".into(), timer_id: "early".into() }];
    store.commit(done).await.unwrap().wait().await.unwrap();
    let left: Vec<_> = store.tasks(None, usize::MAX).await.unwrap().iter().map(|t| t.task_id().to_owned()).collect();
    assert_eq!(left, vec!["1-f-1"]);
    assert!(store.leases(None, usize::MAX).await.unwrap().is_empty(), "deleting a task drops its lease");
    assert_eq!(store.timers(None, usize::MAX).await.unwrap().len(), 1);
}

pub async fn outbox_sequence_increases_across_commits(store: &dyn Store) {
    for i in 1..=3u64 {
        let mut commit = append("wf", i..=i);
        commit.outbox = vec![OutboxRecord { event_id: format!("e{i}"), workflow_seq: i, ..Default::default() }];
        store.commit(commit).await.unwrap().wait().await.unwrap();
    }
    let seqs: Vec<u64> = store.outbox(0, 10).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(store.outbox(2, 10).await.unwrap()[0].event_id, "e3");
    store.delete_outbox(&[1, 2]).await.unwrap().wait().await.unwrap();
    let left: Vec<u64> = store.outbox(0, 10).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(left, vec![3]);
}

pub async fn pruning_the_outbox_raises_a_durable_floor(store: &dyn Store) {
    assert_eq!(store.outbox_floor().await.unwrap(), 0);
    let mut commit = append("wf", 1..=1);
    commit.outbox = vec![OutboxRecord::default(); 5];
    store.commit(commit).await.unwrap().wait().await.unwrap();
    store.prune_outbox(&[1, 2]).await.unwrap().wait().await.unwrap();
    assert_eq!(store.outbox_floor().await.unwrap(), 2);
    assert_eq!(outbox_seqs(store).await, vec![3, 4, 5]);
    // A relay's deletion (acknowledged by a broker) leaves the floor where it is.
    store.delete_outbox(&[3]).await.unwrap().wait().await.unwrap();
    assert_eq!(store.outbox_floor().await.unwrap(), 2);
    // It never goes down, and a rebuild keeps it: it is not derived.
    store.prune_outbox(&[4]).await.unwrap().wait().await.unwrap();
    store.prune_outbox(&[1]).await.unwrap().wait().await.unwrap();
    store.prune_outbox(&[]).await.unwrap().wait().await.unwrap();
    store.clear_derived().await.unwrap();
    assert_eq!(store.outbox_floor().await.unwrap(), 4);
    assert_eq!(outbox_seqs(store).await, vec![5]);
}

pub async fn clearing_derived_records_keeps_histories(store: &dyn Store) {
    let mut commit = append("wf", 1..=2);
    commit.summary = Some(summary("wf", WorkflowStatus::Running, "t"));
    commit.request_id = Some("req".into());
    commit.put_tasks = vec![task("wf", "0-f-1")];
    commit.put_timers = vec![TimerRecord { fire_at_ms: 1, workflow_id: "wf".into(), timer_id: "x".into() }];
    store.commit(commit).await.unwrap().wait().await.unwrap();
    store.clear_derived().await.unwrap();
    assert_eq!(store.history("wf", 1, 10).await.unwrap().len(), 2);
    assert!(store.summary("wf").await.unwrap().is_none());
    assert!(store.open_workflows(None, usize::MAX).await.unwrap().is_empty());
    assert!(store.workflow_for_request("req").await.unwrap().is_none());
    assert!(store.tasks(None, usize::MAX).await.unwrap().is_empty());
    assert!(store.timers(None, usize::MAX).await.unwrap().is_empty());
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
    assert!(store.definitions().await.unwrap().is_empty());
    let several = vec![definition("trip", 10, "{}"), definition("trip", 2, "{}"), definition("a", 1, "{}")];
    store.commit(Commit::definitions(several)).await.unwrap().wait().await.unwrap();
    // By type, then version numerically (10 after 2).
    assert_eq!(
        definition_keys(store).await,
        vec![("a".into(), 1, false), ("trip".into(), 2, false), ("trip".into(), 10, false)]
    );
    // A record replaces its type and version: deprecation is a put.
    let mut deprecated = definition("trip", 2, "{}");
    deprecated.deprecated = true;
    store.commit(Commit::definitions(vec![deprecated.clone()])).await.unwrap().wait().await.unwrap();
    assert_eq!(definition_keys(store).await[1], ("trip".into(), 2, true));
    assert_eq!(store.definitions().await.unwrap()[1], deprecated);
    // Definitions are source data, not derived: a rebuild keeps them.
    store.clear_derived().await.unwrap();
    assert_eq!(definition_keys(store).await.len(), 3);
    // A type name too long for a key is refused, whole commit and all.
    let long = vec![definition("b", 1, "{}"), definition(&"t".repeat(256), 1, "{}")];
    assert!(matches!(store.commit(Commit::definitions(long)).await, Err(Error::IdTooLong { .. })));
    assert_eq!(definition_keys(store).await.len(), 3);
}

pub async fn queue_pauses_are_stored_replaced_deleted_and_survive_a_rebuild(store: &dyn Store) {
    assert!(store.queue_pauses().await.unwrap().is_empty());
    let pause = |queue: &str, reason: &str| QueuePauseRecord {
        queue: queue.into(),
        reason: reason.into(),
        identity: "ops".into(),
        paused_ms: 5,
    };
    store
        .commit(Commit::queue_pause(Some(pause("payments.capture", "incident")), None))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    store.commit(Commit::queue_pause(Some(pause("carrier.ship", "500s")), None)).await.unwrap().wait().await.unwrap();
    assert_eq!(
        paused_queues(store).await,
        [("carrier.ship".into(), "500s".into()), ("payments.capture".into(), "incident".into())]
    );
    // Pausing again replaces the record; a rebuild keeps them: they are an operator's decision.
    store
        .commit(Commit::queue_pause(Some(pause("carrier.ship", "still 500s")), None))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    store.clear_derived().await.unwrap();
    assert_eq!(paused_queues(store).await[0], ("carrier.ship".into(), "still 500s".into()));
    store.commit(Commit::queue_pause(None, Some("carrier.ship".into()))).await.unwrap().wait().await.unwrap();
    assert_eq!(paused_queues(store).await, [("payments.capture".into(), "incident".into())]);
    let long = Commit::queue_pause(Some(pause(&"q".repeat(256), "x")), None);
    assert!(matches!(store.commit(long).await, Err(Error::IdTooLong { .. })));
}

pub async fn a_closed_workflow_is_deleted_whole_and_an_open_one_refused(store: &dyn Store) {
    let closed = |id: &str, request: &str, status: WorkflowStatus| Commit {
        summary: Some(summary(id, status, "t")),
        request_id: Some(request.into()),
        ..append(id, 1..=3)
    };
    store.commit(closed("done", "req-done", WorkflowStatus::Completed)).await.unwrap().wait().await.unwrap();
    store.commit(closed("open", "req-open", WorkflowStatus::Running)).await.unwrap().wait().await.unwrap();
    assert!(matches!(store.commit(Commit::delete("open", "req-open")).await, Err(Error::StillOpen(_))));
    assert_eq!(store.history("open", 1, 10).await.unwrap().len(), 3, "a refused deletion removes nothing");

    store.commit(Commit::delete("done", "req-done")).await.unwrap().wait().await.unwrap();
    assert!(store.history("done", 1, 10).await.unwrap().is_empty());
    assert_eq!(store.last_seq("done").await.unwrap(), 0);
    assert!(store.summary("done").await.unwrap().is_none());
    assert!(store.workflow_for_request("req-done").await.unwrap().is_none(), "the request id may start anew");
    assert!(!store.all_workflows(None, usize::MAX).await.unwrap().contains(&"done".to_owned()));
    // The id can hold a new history from 1, as a fresh workflow's.
    store.commit(closed("done", "req-again", WorkflowStatus::Completed)).await.unwrap().wait().await.unwrap();
    assert_eq!(store.history("done", 1, 10).await.unwrap().len(), 3);
}

/// 64 writers commit at once; every commit resolves and every event is there.
pub async fn concurrent_commits_all_become_durable(store: Arc<dyn Store>) {
    let mut writers = Vec::new();
    for w in 0..64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let id = format!("wf-{w}");
            for seq in 1..=20 {
                store.commit(append(&id, seq..=seq)).await.unwrap().wait().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.barrier().wait().await.unwrap();
    let ids: HashSet<String> = store.all_workflows(None, usize::MAX).await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), 64);
    for id in ids {
        let seqs: Vec<u64> = store.history(&id, 1, 100).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }
}

/// Writers released together append at the same position of one history:
/// one wins each round, the others are refused with a conflict, and nothing
/// of theirs is stored.
pub async fn racing_appends_to_one_history_conflict(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    const ROUNDS: u64 = 100;
    store.commit(append("wf", 1..=1)).await.unwrap().wait().await.unwrap();
    for seq in 2..=ROUNDS + 1 {
        let gate = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (store, gate) = (Arc::clone(&store), Arc::clone(&gate));
                tokio::spawn(async move {
                    gate.wait().await;
                    store.commit(append("wf", seq..=seq)).await
                })
            })
            .collect();
        let mut wins = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(durable) => {
                    durable.wait().await.unwrap();
                    wins += 1;
                }
                Err(Error::SequenceConflict { stored, requested, .. }) => assert_eq!((stored, requested), (seq, seq)),
                Err(e) => panic!("a lost race must be a conflict, got {e}"),
            }
        }
        assert_eq!(wins, 1, "exactly one append at {seq} wins");
    }
    let seqs: Vec<u64> = store.history("wf", 1, usize::MAX).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=ROUNDS + 1).collect::<Vec<_>>());
}

/// Starts of different workflows released together carry one request id:
/// the store lets one through and refuses the rest, naming the winner.
pub async fn one_request_id_starts_one_workflow(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    for round in 0..50 {
        let request_id = format!("req-{round}");
        let gate = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, gate, request_id) = (Arc::clone(&store), Arc::clone(&gate), request_id.clone());
                tokio::spawn(async move {
                    let id = format!("wf-{round}-{i}");
                    let commit = Commit { request_id: Some(request_id), new_history: true, ..append(&id, 1..=1) };
                    gate.wait().await;
                    (id, store.commit(commit).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut named = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                (id, Ok(durable)) => {
                    durable.wait().await.unwrap();
                    winners.push(id);
                }
                (id, Err(Error::RequestIdTaken { request_id: taken, workflow_id })) => {
                    assert_eq!(taken, request_id);
                    assert_eq!(store.last_seq(&id).await.unwrap(), 0, "a refused start writes nothing");
                    named.push(workflow_id);
                }
                (_, Err(e)) => panic!("a lost start must be RequestIdTaken, got {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one start of {request_id} wins");
        assert!(named.iter().all(|w| *w == winners[0]), "every loser names the winner");
        assert_eq!(store.workflow_for_request(&request_id).await.unwrap().as_ref(), Some(&winners[0]));
        // The winner's own later commits may name it again.
        let again = Commit { request_id: Some(request_id), ..append(&winners[0], 2..=2) };
        store.commit(again).await.unwrap().wait().await.unwrap();
    }
}

/// Recovery reads tasks, leases, timers and workflow ids in pages: pages
/// of three over seven records return each record exactly once.
pub async fn recovery_reads_every_record_once_in_partial_pages(store: &dyn Store) {
    const N: usize = 7;
    const PAGE: usize = 3;
    for i in 0..N {
        let id = format!("wf-{i}");
        let mut commit = append(&id, 1..=1);
        commit.summary = Some(summary(&id, WorkflowStatus::Running, "t"));
        commit.put_tasks = vec![task(&id, "t1")];
        let fire_at_ms = 100 - i64::try_from(i % 3).unwrap();
        commit.put_timers = vec![TimerRecord { fire_at_ms, workflow_id: id.clone(), timer_id: "x".into() }];
        store.commit(commit).await.unwrap().wait().await.unwrap();
        store.record_leases(&id, vec![("t1".into(), Lease { worker_id: id.clone(), ..Default::default() })]).unwrap();
    }
    let expected: Vec<String> = (0..N).map(|i| format!("wf-{i}")).collect();
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    let mut sizes = Vec::new();

    let (mut open, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = store.open_workflows(after.as_deref(), PAGE).await.unwrap();
        sizes.push(page.len());
        after = page.last().cloned();
        open.extend(page);
        if sizes.last() < Some(&PAGE) {
            break;
        }
    }
    assert_eq!(sorted(open), expected);
    assert_eq!(sizes, [3, 3, 1]);

    let (mut all, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = store.all_workflows(after.as_deref(), PAGE).await.unwrap();
        let last_page = page.len() < PAGE;
        after = page.last().cloned();
        all.extend(page);
        if last_page {
            break;
        }
    }
    assert_eq!(sorted(all), expected);

    let (mut tasks, mut after) = (Vec::new(), None);
    loop {
        let page = store.tasks(after.as_ref(), PAGE).await.unwrap();
        let last_page = page.len() < PAGE;
        after = page.last().map(|t| (t.workflow_id().to_owned(), t.task_id().to_owned()));
        tasks.extend(page.iter().map(|t| t.workflow_id().to_owned()));
        if last_page {
            break;
        }
    }
    assert_eq!(sorted(tasks), expected);

    let (mut leases, mut after) = (Vec::new(), None);
    loop {
        let page = store.leases(after.as_ref(), PAGE).await.unwrap();
        let last_page = page.len() < PAGE;
        after = page.last().map(|(wf, task_id, _)| (wf.clone(), task_id.clone()));
        leases.extend(page.into_iter().map(|(wf, _, lease)| {
            assert_eq!(wf, lease.worker_id, "each lease reads back under its own task");
            wf
        }));
        if last_page {
            break;
        }
    }
    assert_eq!(sorted(leases), expected);

    let (mut timers, mut after) = (Vec::new(), None::<TimerRecord>);
    loop {
        let page = store.timers(after.as_ref(), PAGE).await.unwrap();
        let last_page = page.len() < PAGE;
        after = page.last().cloned();
        timers.extend(page);
        if last_page {
            break;
        }
    }
    let fire_times: Vec<i64> = timers.iter().map(|t| t.fire_at_ms).collect();
    assert!(fire_times.is_sorted(), "timers come in firing order across pages: {fire_times:?}");
    assert_eq!(sorted(timers.into_iter().map(|t| t.workflow_id).collect()), expected);
}

/// The filter a store pushes down answers as [`WorkflowFilter::matches`] does.
pub async fn pushed_down_filters_agree_with_the_reference(store: &dyn Store) {
    let mut rows = Vec::new();
    for i in 0..12u32 {
        let id = format!("wf-{i:02}");
        let status = [WorkflowStatus::Running, WorkflowStatus::Completed, WorkflowStatus::Compensated][i as usize % 3];
        let mut row = summary(&id, status, if i % 2 == 0 { "checkout" } else { "refund" });
        row.labels.insert("tenant".into(), if i % 4 == 0 { "a" } else { "b" }.into());
        if i % 5 == 0 {
            row.stuck_reason = "no worker".into();
        }
        if i == 7 {
            row.paused_reason = "operator".into();
        }
        if sagaflow_proto::is_terminal(row.status) {
            row.closed_ms = i64::from(i) * 10;
        }
        rows.push(row.clone());
        store.commit(Commit { summary: Some(row), ..append(&id, 1..=1) }).await.unwrap().wait().await.unwrap();
    }
    let filters = [
        WorkflowFilter::default(),
        WorkflowFilter { statuses: vec![WorkflowStatus::Running as i32], ..Default::default() },
        WorkflowFilter {
            statuses: vec![WorkflowStatus::Completed as i32, WorkflowStatus::Compensated as i32],
            workflow_type: "refund".into(),
            ..Default::default()
        },
        WorkflowFilter { labels: vec![("tenant".into(), "a".into())], ..Default::default() },
        WorkflowFilter { labels: vec![("tenant".into(), "c".into())], ..Default::default() },
        WorkflowFilter { stuck_only: true, ..Default::default() },
        WorkflowFilter { paused_only: true, ..Default::default() },
        WorkflowFilter { closed_at_or_before_ms: Some(50), ..Default::default() },
    ];
    for filter in filters {
        let want: Vec<&str> = rows.iter().filter(|r| filter.matches(r)).map(|r| r.workflow_id.as_str()).collect();
        // Pages of two, so that a page boundary falls inside the matches.
        let (mut got, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = store.list(&query("", after.as_deref(), 2, filter.clone())).await.unwrap();
            got.extend(page.workflows.into_iter().map(|s| s.workflow_id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(got, want, "{filter:?}");
    }
}

/// One shard's lease, taken alone.
async fn take(store: &dyn Store, shard: u32, owner: &str) -> crate::ShardLease {
    let mut leases = store.acquire_shards(&[shard], owner, 60_000).await.unwrap();
    assert_eq!(leases.len(), 1, "one lease per shard asked for");
    leases.remove(0)
}

/// A shard changes hands only when its lease is free or expired, each
/// change raises its epoch, and a write fenced at an old epoch is refused
/// whole: commits, lease hints and outbox deletions alike.
pub async fn a_fenced_off_owner_cannot_write(store: &dyn Store) {
    let a = take(store, 0, "node-a").await;
    assert_eq!((a.owner.as_str(), a.epoch), ("node-a", 1));
    let old = [Fence { shard: 0, epoch: a.epoch }];
    store.fence(&old);
    let mut first = append("wf", 1..=1);
    first.outbox = vec![OutboxRecord::default()];
    store.commit(first).await.unwrap().wait().await.unwrap();
    // Held and alive: another node is told who holds it, and nothing changes.
    let refused = take(store, 0, "node-b").await;
    assert_eq!((refused.owner.as_str(), refused.epoch), ("node-a", 1));
    // Renewing one's own lease keeps the epoch.
    assert_eq!(take(store, 0, "node-a").await.epoch, 1);
    // node-a stops renewing (a pause, a partition): its lease runs out.
    store.renew_shards(&old, "node-a", -1).await.unwrap();
    let b = take(store, 0, "node-b").await;
    assert_eq!((b.owner.as_str(), b.epoch), ("node-b", 2));

    let fenced = |r: Result<(), Error>| matches!(r, Err(Error::Fenced { shard: 0, epoch: 1, current: 2 }));
    assert!(fenced(store.commit(append("wf", 2..=2)).await.map(drop)));
    // A lease hint is not waited on: a backend may refuse it at once or drop
    // it with its batch. Either way it is not stored (checked below).
    if let Err(e) = store.record_leases("wf", vec![("t".into(), Lease::default())]) {
        assert!(matches!(e, Error::Fenced { .. }), "{e}");
    }
    assert!(fenced(store.delete_outbox(&[1]).await.map(drop)));
    assert!(fenced(store.prune_outbox(&[1]).await.map(drop)));
    assert!(fenced(store.renew_shards(&old, "node-a", 60_000).await.map(drop)));
    assert_eq!(store.last_seq("wf").await.unwrap(), 1, "the zombie's append is not there");
    assert_eq!(outbox_seqs(store).await, [1], "nor its outbox deletion");
    assert!(store.leases(None, usize::MAX).await.unwrap().is_empty(), "nor its lease hint");
    // A stale release gives nothing up.
    store.release_shards(&old).await.unwrap();
    assert_eq!(take(store, 0, "node-c").await.owner, "node-b");

    // The new owner writes; a graceful release lets the next take over at once.
    let new = [Fence { shard: 0, epoch: 2 }];
    store.fence(&new);
    store.commit(append("wf", 2..=2)).await.unwrap().wait().await.unwrap();
    store.release_shards(&new).await.unwrap();
    let c = take(store, 0, "node-c").await;
    assert_eq!((c.owner.as_str(), c.epoch), ("node-c", 3));
    // Shards are independent.
    assert_eq!(take(store, 1, "node-a").await.epoch, 1);
}

/// Several shards are taken together or not at all, so that two nodes
/// racing for them never split them; each keeps its own epoch. A write of a
/// workflow checks its shard's epoch, and a write of the store as a whole
/// (the outbox) checks every one the node holds.
pub async fn shards_are_taken_together_and_each_fences(store: &dyn Store) {
    assert_eq!(store.fences(), None, "a store never fenced is its process's alone");
    let held = store.acquire_shards(&[0, 1], "node-a", 60_000).await.unwrap();
    let held: Vec<(u32, &str, u64)> = held.iter().map(|l| (l.shard, l.owner.as_str(), l.epoch)).collect();
    assert_eq!(held, [(0, "node-a", 1), (1, "node-a", 1)]);
    // Shard 1 is held, so node-b gets neither 1 nor the free shard 2.
    let refused = store.acquire_shards(&[2, 1], "node-b", 60_000).await.unwrap();
    assert_eq!(refused.iter().map(|l| l.shard).collect::<Vec<_>>(), [1, 2], "as they stand, in shard order");
    assert_eq!(refused[0].owner, "node-a");
    assert_ne!(refused[1].owner, "node-b", "the free shard was not taken alone");
    assert_eq!(take(store, 2, "node-c").await.epoch, 1, "shard 2 never changed hands");
    let owners: Vec<(u32, String)> =
        store.shard_leases().await.unwrap().into_iter().map(|l| (l.shard, l.owner)).filter(|(s, _)| *s < 3).collect();
    assert_eq!(owners, [(0, "node-a".into()), (1, "node-a".into()), (2, "node-c".into())], "who serves each");

    // A workflow of each shard; in a store of one shard both are shard 0's.
    let count = store.shard_count();
    let in_shard = |shard: u32| {
        let id = (0..).map(|i| format!("wf-{i}")).find(|id| crate::shard_of(id, count) == shard.min(count - 1));
        id.unwrap()
    };
    let (first, second) = (in_shard(0), in_shard(1));
    let fences = [Fence { shard: 0, epoch: 1 }, Fence { shard: 1, epoch: 1 }];
    store.fence(&fences);
    let mut start = append(&first, 1..=1);
    start.outbox = vec![OutboxRecord::default()];
    store.commit(start).await.unwrap().wait().await.unwrap();
    // Shard 1 alone runs out and changes hands.
    store.renew_shards(&fences[1..], "node-a", -1).await.unwrap();
    assert_eq!(take(store, 1, "node-b").await.epoch, 2);
    let refusal = store.delete_outbox(&[1]).await.map(drop);
    assert!(matches!(refusal, Err(Error::Fenced { shard: 1, epoch: 1, current: 2 })), "{refusal:?}");
    if count > 1 {
        let refusal = store.commit(append(&second, 1..=1)).await.map(drop);
        assert!(matches!(refusal, Err(Error::Fenced { shard: 1, epoch: 1, current: 2 })), "{refusal:?}");
        store.commit(append(&first, 2..=2)).await.unwrap().wait().await.unwrap();
        assert_eq!(store.last_seq(&second).await.unwrap(), 0, "the moved shard's write is not there");
    }
    // Renewing names the shard that moved on, and still extends the other.
    let renewal = store.renew_shards(&fences, "node-a", 60_000).await.map(drop);
    assert!(matches!(renewal, Err(Error::Fenced { shard: 1, .. })), "{renewal:?}");
    assert_eq!(take(store, 0, "node-b").await.owner, "node-a", "shard 0 is still node-a's");
    // Fenced at shard 0 alone, node-a writes the store as a whole again, and
    // is refused what belongs to a shard it does not hold.
    store.fence(&fences[..1]);
    store.delete_outbox(&[1]).await.unwrap().wait().await.unwrap();
    if count > 1 {
        let refusal = store.commit(append(&second, 1..=1)).await.map(drop);
        assert!(matches!(refusal, Err(Error::ShardNotHeld { shard: 1 })), "{refusal:?}");
    }
    assert_eq!(store.fences(), Some(fences[..1].to_vec()));
    // Having given every shard up, it writes nothing: no fence is not no check.
    store.fence(&[]);
    let last = store.last_seq(&first).await.unwrap();
    let refusal = store.commit(append(&first, last + 1..=last + 1)).await.map(drop);
    assert!(matches!(refusal, Err(Error::ShardNotHeld { shard: 0 })), "{refusal:?}");
    let refusal = store.delete_outbox(&[1]).await.map(drop);
    assert!(matches!(refusal, Err(Error::NoShardHeld)), "{refusal:?}");
    assert_eq!(store.last_seq(&first).await.unwrap(), last);
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
            a_closed_workflow_is_deleted_whole_and_an_open_one_refused,
            recovery_reads_every_record_once_in_partial_pages,
            pushed_down_filters_agree_with_the_reference,
            a_fenced_off_owner_cannot_write,
            shards_are_taken_together_and_each_fences);
        $crate::store_conformance_suite!(@shared $make,
            concurrent_commits_all_become_durable,
            racing_appends_to_one_history_conflict,
            one_request_id_starts_one_workflow);
    };
    (@shared $make:expr, $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make;
                $crate::conformance::$case(store).await;
            }
        )+
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
