//! What the conformance suite cannot see: migrations, reopening, several
//! nodes on one database, group commit, a broken connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{TestDb, connect};
use sagaflow_proto::v1::{HistoryEvent, WorkflowStatus, WorkflowSummary};
use sagaflow_store::{
    Commit, DefinitionRecord, Error, Fence, ListQuery, OutboxRecord, Placement, Store, TimerRecord, WorkflowFilter,
};
use sagaflow_store_postgres::{DEFAULT_SHARDS, LATEST_VERSION, PostgresStore};

fn event(seq: u64) -> HistoryEvent {
    HistoryEvent { seq, time_ms: 1, ..Default::default() }
}

fn append(wf: &str, seqs: std::ops::RangeInclusive<u64>) -> Commit {
    Commit { workflow_id: wf.into(), events: seqs.map(event).collect(), ..Default::default() }
}

fn summary(wf: &str, status: WorkflowStatus) -> WorkflowSummary {
    WorkflowSummary { workflow_id: wf.into(), workflow_type: "t".into(), status: status.into(), ..Default::default() }
}

async fn store(db: &TestDb) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(&db.url).await.unwrap())
}

async fn migrations(db: &TestDb) -> Vec<(i32, String, String)> {
    let rows = connect(&db.url)
        .await
        .query("SELECT version, name, applied_at::text FROM sagaflow_schema_migrations ORDER BY version", &[])
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

#[tokio::test]
async fn migrations_apply_once_and_a_second_connect_changes_nothing() {
    let db = TestDb::create().await;
    drop(store(&db).await);
    let first = migrations(&db).await;
    assert_eq!(
        first.iter().map(|(v, n, _)| (*v, n.as_str())).collect::<Vec<_>>(),
        [
            (1, "initial"),
            (2, "shard_leases"),
            (3, "assertions"),
            (4, "cluster_secrets"),
            (5, "cluster_nodes"),
            (6, "cluster_config"),
            (7, "cluster_placement")
        ]
    );
    assert_eq!(first.last().map(|(v, _, _)| *v), Some(LATEST_VERSION));
    drop(store(&db).await);
    assert_eq!(migrations(&db).await, first, "the second connect applied nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { PostgresStore::connect(&url).await.map(drop) }
            })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let versions: Vec<i32> = migrations(&db).await.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(versions, (1..=LATEST_VERSION).collect::<Vec<_>>(), "each migration ran once");
}

#[tokio::test]
async fn a_database_a_newer_build_migrated_is_refused() {
    let db = TestDb::create().await;
    drop(store(&db).await);
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO sagaflow_schema_migrations (version, name) VALUES ($1, 'from the future')",
            &[&(LATEST_VERSION + 1)],
        )
        .await
        .unwrap();
    let refused = PostgresStore::connect(&db.url).await.map(drop);
    assert!(
        matches!(&refused, Err(Error::Corrupt { reason, .. }) if reason.contains("newer than this build")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_reopened_store_keeps_every_acknowledged_commit() {
    let db = TestDb::create().await;
    let first = store(&db).await;
    let mut start = append("wf", 1..=2);
    start.summary = Some(summary("wf", WorkflowStatus::Running));
    start.request_id = Some("req".into());
    start.put_timers = vec![TimerRecord { fire_at_ms: 9, workflow_id: "wf".into(), timer_id: "t".into() }];
    start.outbox = vec![OutboxRecord { event_id: "e1".into(), ..Default::default() }; 2];
    start.put_definitions = vec![DefinitionRecord { workflow_type: "t".into(), version: 1, ..Default::default() }];
    first.commit(start).await.unwrap().wait().await.unwrap();
    first.commit(append("wf", 3..=3)).await.unwrap().wait().await.unwrap();
    first.delete_outbox(&[1, 2]).await.unwrap().wait().await.unwrap();
    drop(first);

    let second = store(&db).await;
    let seqs: Vec<u64> = second.history("wf", 1, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(second.summary("wf").await.unwrap().unwrap().status, WorkflowStatus::Running as i32);
    assert_eq!(second.workflow_for_request("req").await.unwrap().as_deref(), Some("wf"));
    assert_eq!(second.timers(None, 10).await.unwrap().len(), 1);
    assert_eq!(second.definitions().await.unwrap().len(), 1);
    assert_eq!(second.open_workflows(None, 10).await.unwrap(), ["wf"]);
    // Numbers are never reused, though the records that had them are gone.
    let mut more = append("wf", 4..=4);
    more.outbox = vec![OutboxRecord::default()];
    second.commit(more).await.unwrap().wait().await.unwrap();
    assert_eq!(second.outbox(0, 10).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
}

/// Two nodes (two stores on one database) append at the same positions:
/// each position is won once, and the loser is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_one_history_each_win_a_position_once() {
    let db = TestDb::create().await;
    let nodes = [store(&db).await, store(&db).await];
    for seq in 1..=40u64 {
        let racers: Vec<_> = nodes
            .iter()
            .map(|node| {
                let node = Arc::clone(node);
                tokio::spawn(async move { node.commit(append("wf", seq..=seq)).await.map(drop) })
            })
            .collect();
        let mut wins = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(()) => wins += 1,
                Err(Error::SequenceConflict { stored, requested, .. }) => assert_eq!((stored, requested), (seq, seq)),
                Err(e) => panic!("a lost race must be a conflict, got {e}"),
            }
        }
        assert_eq!(wins, 1, "exactly one node appends {seq}");
    }
    let seqs: Vec<u64> = nodes[1].history("wf", 1, 100).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
}

/// A batch that finds what it assumed commits in one round trip; one whose
/// assumption another node broke, or whose commit is refused, goes the read
/// path and is answered as the read path alone would answer it.
#[tokio::test]
async fn batches_take_the_read_path_only_when_an_assumption_fails() {
    let db = TestDb::create().await;
    let (a, b) = (store(&db).await, store(&db).await);
    let with_record = |mut commit: Commit, id: &str| {
        commit.outbox = vec![OutboxRecord { event_id: id.into(), ..Default::default() }];
        commit
    };
    let started = Commit { request_id: Some("req".into()), ..append("wf", 1..=1) };
    a.commit(with_record(started, "a1")).await.unwrap().wait().await.unwrap();
    assert_eq!(a.read_path_batches(), 1, "the first outbox number is read: the writer does not know it yet");
    for seq in 2..=20 {
        a.commit(with_record(append("wf", seq..=seq), &format!("a{seq}"))).await.unwrap().wait().await.unwrap();
    }
    a.commit(Commit { request_id: Some("req".into()), ..append("wf", 21..=21) }).await.unwrap().wait().await.unwrap();
    assert_eq!(a.read_path_batches(), 1, "appends, outbox numbers and a request id it owns all as assumed");

    // Another node moves the outbox high water mark and the history on.
    b.commit(with_record(append("wf", 22..=22), "b22")).await.unwrap().wait().await.unwrap();
    a.commit(with_record(append("other", 1..=1), "a-other")).await.unwrap().wait().await.unwrap();
    assert_eq!(a.read_path_batches(), 2, "a stale high water mark sends the batch the read path");
    match a.commit(append("wf", 22..=22)).await.map(drop) {
        Err(Error::SequenceConflict { stored, requested, .. }) => assert_eq!((stored, requested), (22, 22)),
        other => panic!("a position another node took must be a conflict, got {other:?}"),
    }
    match a.commit(Commit { request_id: Some("req".into()), ..append("third", 1..=1) }).await.map(drop) {
        Err(Error::RequestIdTaken { workflow_id, .. }) => assert_eq!(workflow_id, "wf"),
        other => panic!("a request id another workflow owns must be refused, got {other:?}"),
    }
    assert_eq!(a.read_path_batches(), 4);
    assert_eq!(a.last_seq("third").await.unwrap(), 0, "the refused start wrote nothing");
    let seqs: Vec<u64> = a.outbox(0, 100).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=22).collect::<Vec<_>>(), "outbox numbers without gaps or repeats");
    a.commit(append("wf", 23..=23)).await.unwrap().wait().await.unwrap();
    assert_eq!(a.read_path_batches(), 4, "back on the asserted path");
}

/// Two nodes start different workflows with one request id: one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_one_request_id_start_one_workflow() {
    let db = TestDb::create().await;
    let nodes = [store(&db).await, store(&db).await];
    for round in 0..20 {
        let request = format!("req-{round}");
        let racers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let node = Arc::clone(node);
                let commit = Commit { request_id: Some(request.clone()), ..append(&format!("wf-{round}-{i}"), 1..=1) };
                tokio::spawn(async move { node.commit(commit).await.map(drop) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let owner = nodes[0].workflow_for_request(&request).await.unwrap().unwrap();
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(wins, 1, "{outcomes:?}");
        for outcome in outcomes {
            match outcome {
                Ok(()) => {}
                Err(Error::RequestIdTaken { workflow_id, .. }) => assert_eq!(workflow_id, owner),
                Err(e) => panic!("a lost start must be RequestIdTaken, got {e}"),
            }
        }
        let loser = if owner.ends_with("-0") { format!("wf-{round}-1") } else { format!("wf-{round}-0") };
        assert_eq!(nodes[1].last_seq(&loser).await.unwrap(), 0, "the lost start wrote nothing");
    }
}

/// Two nodes write outbox records at once: every number is handed out
/// once, and none is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_number_the_outbox_without_gaps_or_repeats() {
    let db = TestDb::create().await;
    let nodes = [store(&db).await, store(&db).await];
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let node = Arc::clone(&nodes[w % 2]);
            tokio::spawn(async move {
                for seq in 1..=10 {
                    let mut commit = append(&format!("wf-{w}"), seq..=seq);
                    commit.outbox = vec![OutboxRecord { event_id: format!("{w}-{seq}"), ..Default::default() }];
                    node.commit(commit).await.unwrap().wait().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let seqs: Vec<u64> = nodes[0].outbox(0, 1000).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=160).collect::<Vec<_>>());
}

/// Many commits at once share few transactions (one WAL flush each), and a
/// refused commit does not fail the others of its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_transactions_and_refuses_commit_by_commit() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let before = store.write_transactions();
    let commits: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            // Every third commit leaves a gap and must be refused alone.
            let commit = if i % 3 == 0 { append(&format!("wf-{i}"), 2..=2) } else { append(&format!("wf-{i}"), 1..=1) };
            tokio::spawn(async move { (i, store.commit(commit).await.map(drop)) })
        })
        .collect();
    for commit in commits {
        match commit.await.unwrap() {
            (i, Ok(())) => assert_ne!(i % 3, 0),
            (i, Err(Error::SequenceConflict { stored: 0, requested: 2, .. })) => assert_eq!(i % 3, 0),
            (_, Err(e)) => panic!("{e}"),
        }
    }
    let transactions = store.write_transactions() - before;
    println!("200 concurrent commits in {transactions} transactions");
    assert!(transactions <= 50, "{transactions} transactions for 200 commits");
    assert_eq!(store.all_workflows(None, usize::MAX).await.unwrap().len(), 133);
    let stats = connect(&db.url).await;
    let leftover: i64 = stats.query_one("SELECT count(*) FROM histories WHERE last_seq = 0", &[]).await.unwrap().get(0);
    assert_eq!(leftover, 0, "the rows that locked refused starts are gone");
}

/// Paging runs in byte order whatever the database's collation, and a
/// prefix's `_` and `%` are no wildcards.
#[tokio::test]
async fn ids_page_in_byte_order_and_prefixes_match_literally() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let ids = ["a_1", "ab", "B", "_", "a", "a%2", "é"];
    for id in ids {
        let commit = Commit { summary: Some(summary(id, WorkflowStatus::Running)), ..append(id, 1..=1) };
        store.commit(commit).await.unwrap().wait().await.unwrap();
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    assert_eq!(store.all_workflows(None, 100).await.unwrap(), sorted);
    assert_eq!(store.open_workflows(Some("_"), 100).await.unwrap(), sorted[2..]);
    let listed = |prefix: &str| {
        let query = ListQuery {
            id_prefix: prefix.into(),
            limit: 100,
            scan_budget: usize::MAX,
            filter: WorkflowFilter::default(),
            after: None,
        };
        let store = Arc::clone(&store);
        async move { store.list(&query).await.unwrap().workflows.into_iter().map(|s| s.workflow_id).collect::<Vec<_>>() }
    };
    assert_eq!(listed("a_").await, ["a_1"]);
    assert_eq!(listed("a%").await, ["a%2"]);
    assert_eq!(listed("a").await, ["a", "a%2", "a_1", "ab"]);
}

/// A value PostgreSQL's text cannot hold refuses its commit alone.
#[tokio::test]
async fn a_nul_in_an_id_refuses_only_its_commit() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    assert!(matches!(store.commit(append("a\0b", 1..=1)).await, Err(Error::Engine(_))));
    store.commit(append("ab", 1..=1)).await.unwrap().wait().await.unwrap();
    assert_eq!(store.last_seq("a\0b").await.unwrap(), 0);
    assert!(store.summary("a\0b").await.unwrap().is_none());
}

/// The writer's connection breaks: the batch is not acknowledged, health
/// says why, and later writes are refused rather than lost.
/// A connection of the store's that the database ends (a restart, a
/// failover, an operator's `pg_terminate_backend`) fails the store at once,
/// before any write tries it: it refuses writes from then on and says why,
/// so that the node holding it steps down (ADR 0031). The writer's
/// connection, then one of the readers'.
#[tokio::test]
async fn a_broken_connection_fails_the_store_and_says_why() {
    for role in ["writer", "reader"] {
        let db = TestDb::create().await;
        let store = store(&db).await;
        store.commit(append("wf", 1..=1)).await.unwrap().wait().await.unwrap();
        assert!(store.write_failure().is_none());
        let admin = connect(&db.url).await;
        let ended: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1 LIMIT 1) AS one",
                &[&format!("sagaflow {role}")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ended, 1, "{role}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let failure = loop {
            if let Some(failure) = store.write_failure() {
                break failure;
            }
            assert!(std::time::Instant::now() < deadline, "the store did not notice its {role} connection broke");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(failure.contains(&format!("the {role} connection to PostgreSQL broke")), "{failure}");
        let refused = store.commit(append("wf", 2..=2)).await.map(drop);
        assert!(matches!(refused, Err(Error::FlushFailed(_))), "{role}: {refused:?}");
        // Nothing was written after the break.
        let reopened = PostgresStore::connect(&db.url).await.unwrap();
        assert_eq!(reopened.last_seq("wf").await.unwrap(), 1, "{role}");
    }
}

/// Two nodes on one database: after the second takes the shards over, the
/// first (paused past its leases, then awake) can write nothing, while the
/// new owner writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_shards_is_fenced_off_by_the_database() {
    let db = TestDb::create().await;
    let (a, b) = (store(&db).await, store(&db).await);
    let all: Vec<u32> = (0..a.shard_count()).collect();
    let fences = |leases: Vec<sagaflow_store::ShardLease>| -> Vec<Fence> {
        leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect()
    };
    let old = fences(a.acquire_shards(&all, "node-a", 60_000).await.unwrap());
    assert_eq!(old.len(), all.len());
    a.fence(&old);
    a.commit(append("wf", 1..=1)).await.unwrap().wait().await.unwrap();
    let refused = b.acquire_shards(&all, "node-b", 60_000).await.unwrap();
    assert!(refused.iter().all(|l| l.owner == "node-a"), "live leases are not taken: {refused:?}");

    a.renew_shards(&old, "node-a", -1).await.unwrap();
    let new = fences(b.acquire_shards(&all, "node-b", 60_000).await.unwrap());
    assert!(new.iter().zip(&old).all(|(n, o)| n.epoch == o.epoch + 1), "{new:?}");
    b.fence(&new);

    let refused = a.commit(append("wf", 2..=2)).await;
    assert!(matches!(refused, Err(Error::Fenced { epoch: 1, current: 2, .. })), "{refused:?}");
    assert!(matches!(a.renew_shards(&old, "node-a", 60_000).await, Err(Error::Fenced { .. })));
    b.commit(append("wf", 2..=2)).await.unwrap().wait().await.unwrap();
    assert_eq!(b.last_seq("wf").await.unwrap(), 2);
    let seqs: Vec<u64> = a.history("wf", 1, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2], "only the new owner's append is there");
}

/// Nodes that ask for every shard at the same moment, on connections of
/// their own, never split them: each round one node takes them all and
/// every other takes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_never_split_the_shards() {
    let db = TestDb::create().await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        nodes.push(store(&db).await);
    }
    let all: Vec<u32> = (0..DEFAULT_SHARDS).collect();
    for round in 0..15 {
        let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len()));
        let asks: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let (node, all, barrier) = (Arc::clone(node), all.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let owner = format!("node-{i}");
                    barrier.wait().await;
                    let leases = node.acquire_shards(&all, &owner, 60_000).await.unwrap();
                    let mine = leases.iter().filter(|l| l.owner == owner).count();
                    (i, mine, leases)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for ask in asks {
            let (i, mine, leases) = ask.await.unwrap();
            assert!(mine == 0 || mine == all.len(), "round {round}: node-{i} took {mine} of {}", all.len());
            if mine > 0 {
                winners.push((i, leases));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one node takes the shards");
        let (winner, leases) = winners.remove(0);
        assert!(leases.iter().all(|l| l.epoch == round + 1), "round {round}: each change of hands raises each epoch");
        let fences: Vec<Fence> = leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect();
        nodes[winner].release_shards(&fences).await.unwrap();
    }
}

/// The first node sets the cluster's shard count and every shard gets a
/// lease row; a node asking for another count is refused; a cluster from
/// before shard counts were stored is one shard.
#[tokio::test]
async fn the_shard_count_is_set_once_by_the_first_node() {
    let db = TestDb::create().await;
    let first = PostgresStore::connect_to_cluster(&db.url, Some(4), None).await.unwrap();
    assert_eq!(first.shard_count(), 4);
    assert_eq!(store(&db).await.shard_count(), 4, "a node without --shards takes the cluster's");
    assert_eq!(PostgresStore::connect_to_cluster(&db.url, Some(4), None).await.unwrap().shard_count(), 4);
    let refused = PostgresStore::connect_to_cluster(&db.url, Some(16), None).await.map(drop);
    assert!(matches!(refused, Err(Error::ShardCount { cluster: 4, requested: 16 })), "{refused:?}");
    let leases = sagaflow_store_postgres::cluster_view(&db.url).await.unwrap().leases;
    assert_eq!(leases.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>(), [(0, 0), (1, 0), (2, 0), (3, 0)]);

    let fresh = TestDb::create().await;
    assert_eq!(store(&fresh).await.shard_count(), DEFAULT_SHARDS);

    // A database of schema version 5 whose node held shard 0.
    let old = TestDb::create().await;
    drop(PostgresStore::connect_to_cluster(&old.url, Some(1), None).await.unwrap());
    connect(&old.url)
        .await
        .batch_execute(
            "DROP TABLE cluster_config; DELETE FROM sagaflow_schema_migrations WHERE version >= 6;
             UPDATE shard_leases SET owner = 'node-a', epoch = 3",
        )
        .await
        .unwrap();
    let upgraded = store(&old).await;
    assert_eq!(upgraded.shard_count(), 1, "it stays one shard");
    let refused = PostgresStore::connect_to_cluster(&old.url, Some(8), None).await.map(drop);
    assert!(matches!(refused, Err(Error::ShardCount { cluster: 1, .. })), "{refused:?}");
}

/// A new cluster spreads its shards unless its first node says otherwise; a
/// node that asks for another placement than the cluster's is refused while
/// any node of the cluster runs (holds a lease, or was seen lately) or the
/// placement was set a moment ago, and changes it once none of that holds; a cluster from before placements were stored
/// keeps one node serving.
#[tokio::test]
async fn the_placement_is_the_clusters_and_changes_only_when_no_node_runs() {
    const QUIET: std::time::Duration = std::time::Duration::from_secs(5);
    let db = TestDb::create().await;
    let cluster = |placement: Option<Placement>| {
        let url = db.url.clone();
        async move { PostgresStore::connect_to_cluster(&url, None, placement.map(|p| (p, QUIET))).await }
    };
    // As if `QUIET` had passed since the placement was last set.
    let settle = || async {
        let sql = "UPDATE cluster_config SET placement_set_at = now() - interval '1 hour'";
        connect(&db.url).await.batch_execute(sql).await.unwrap();
    };
    assert_eq!(cluster(None).await.unwrap().placement(), Placement::Spread, "a new cluster spreads");
    // Set a moment ago by a node not seen yet, which another starting at
    // once must not undo.
    let refused = cluster(Some(Placement::OneNode)).await.map(drop);
    assert!(matches!(refused, Err(Error::Placement { cluster: Placement::Spread, .. })), "{refused:?}");
    settle().await;
    // No node ran since: the placement is anyone's to set.
    assert_eq!(cluster(Some(Placement::OneNode)).await.unwrap().placement(), Placement::OneNode);
    assert_eq!(cluster(None).await.unwrap().placement(), Placement::OneNode, "a node without one takes the cluster's");

    let running = cluster(None).await.unwrap();
    let leases = running.acquire_shards(&(0..DEFAULT_SHARDS).collect::<Vec<_>>(), "node-a", 5_000).await.unwrap();
    let refused = cluster(Some(Placement::Spread)).await.map(drop);
    assert!(
        matches!(refused, Err(Error::Placement { cluster: Placement::OneNode, requested: Placement::Spread })),
        "{refused:?}"
    );
    assert_eq!(cluster(Some(Placement::OneNode)).await.unwrap().placement(), Placement::OneNode);

    // Released, but seen a moment ago: it may be about to take them again.
    let fences: Vec<Fence> = leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect();
    running.release_shards(&fences).await.unwrap();
    assert!(matches!(cluster(Some(Placement::Spread)).await.map(drop), Err(Error::Placement { .. })));
    running.leave("node-a").await.unwrap();
    settle().await;
    assert_eq!(cluster(Some(Placement::Spread)).await.unwrap().placement(), Placement::Spread, "none runs now");

    // A database of schema version 6: its cluster ran with one node serving.
    let old = TestDb::create().await;
    drop(PostgresStore::connect(&old.url).await.unwrap());
    connect(&old.url)
        .await
        .batch_execute(
            "ALTER TABLE cluster_config DROP COLUMN placement, DROP COLUMN placement_set_at;
             DELETE FROM sagaflow_schema_migrations WHERE version = 7",
        )
        .await
        .unwrap();
    assert_eq!(store(&old).await.placement(), Placement::OneNode, "it keeps one node serving");
}

/// Nodes that ask for a cluster secret at once all get the one that landed
/// first, and it outlives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_cluster_secret() {
    let db = TestDb::create().await;
    let nodes = [store(&db).await, store(&db).await, store(&db).await];
    let asks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let node = Arc::clone(node);
            tokio::spawn(async move { node.shared_secret("lease_key", || vec![u8::try_from(i).unwrap(); 32]).await })
        })
        .collect();
    let mut secrets = Vec::new();
    for ask in asks {
        secrets.push(ask.await.unwrap().unwrap());
    }
    assert!(secrets.iter().all(|s| *s == secrets[0] && s.len() == 32), "{secrets:?}");
    drop(nodes);
    let later = store(&db).await.shared_secret("lease_key", || vec![9; 32]).await.unwrap();
    assert_eq!(later, secrets[0], "a node started later finds the same secret");
    let other = store(&db).await.shared_secret("another", || vec![7; 4]).await.unwrap();
    assert_eq!(other, [7; 4], "each name its own secret");
}
