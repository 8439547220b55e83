//! Group commit: one writer task, one connection, one transaction per batch.
//!
//! Callers queue their writes and wait. The writer takes everything queued
//! (up to [`MAX_BATCH`]) and applies it in one transaction, by one of two
//! paths:
//!
//! - **Asserted, one round trip** (the usual one). The writer assumes what
//!   it expects to find: each history where the batch's first event says it
//!   ends, request ids free or already the workflow's, the outbox high water
//!   mark where its last batch left it, the shard's epoch its own. It works
//!   the plan out in memory ([`Plan`]) and sends `BEGIN`, the writes and
//!   `COMMIT` in one pipeline, every assumption written as a conditional
//!   statement that fails the transaction when it does not hold
//!   (`sagaflow_assert`, migration 3). When one fails, the `COMMIT` rolls
//!   back and the batch goes the other way.
//! - **Read under lock, two round trips**, when an assumption failed or the
//!   batch deletes workflows: `BEGIN` and lock what the checks read (the
//!   `histories` rows of the batch's workflows, a row inserted first for a
//!   new history so that a start locks too; the request ids, by advisory
//!   locks on their hashes; the open flags of workflows being deleted; the
//!   outbox high water mark), then the checks run in memory, and the
//!   admitted commits' rows go out with the `COMMIT`. A refused commit is
//!   left out of its batch and answered with its error; the rest commit.
//!
//! Either way each table gets one statement per kind of change (`unnest` of
//! arrays). While one batch commits, the next one queues: under load one
//! WAL flush covers many commits. The locks are taken in one order (sorted
//! ids) by every node, and a deadlock or serialization failure the server
//! reports anyway is retried, so another node's traffic never fails a batch.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::future::join_all;
use sagaflow_store::{Error, Fence, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::plan::{Op, Plan, Stored};
use crate::shards::fence_columns;
use crate::{describe, engine};

/// At most this many writes share one transaction, so that one batch's
/// statements stay a few megabytes and its locks are held briefly.
const MAX_BATCH: usize = 512;

/// Attempts at a batch the server aborted for a deadlock or a serialization
/// failure (another node's transaction in the way), before giving up.
const ATTEMPTS: usize = 5;

/// The first key of the writer's advisory locks on request ids (the second
/// is the id's hash): "SF" in ASCII, apart from every other lock.
const REQUEST_LOCK: i32 = 0x5346;

/// A write and who waits for it (no one for a lease).
pub(crate) struct Request {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<()>>>,
}

/// What the writer and the store's handles share.
pub(crate) struct Shared {
    failure: Mutex<Option<String>>,
    transactions: AtomicU64,
    read_path_batches: AtomicU64,
    /// Lease hints handed to the writer, and those it has processed
    /// (committed, or lost with a failed batch): a read of the leases waits
    /// for the hints recorded before it, as it would see them at once in the
    /// key-value backends, while the caller of `record_leases` never waits.
    leases_sent: AtomicU64,
    leases_done: watch::Sender<u64>,
    /// The shard epochs batches must find before they write (Store::fence).
    fences: Mutex<Option<Vec<Fence>>>,
    /// The cluster's shard count, which places each workflow in its shard.
    shard_count: u32,
}

impl Shared {
    pub(crate) fn new(shard_count: u32) -> Self {
        Self {
            failure: Mutex::default(),
            transactions: AtomicU64::default(),
            read_path_batches: AtomicU64::default(),
            leases_sent: AtomicU64::default(),
            leases_done: watch::Sender::new(0),
            fences: Mutex::default(),
            shard_count,
        }
    }

    pub(crate) fn set_fences(&self, fences: &[Fence]) {
        let sorted = sagaflow_store::in_shard_order(fences);
        *self.fences.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sorted);
    }

    pub(crate) fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub(crate) fn fences(&self) -> Option<Vec<Fence>> {
        self.fences.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(%reason, "the PostgreSQL store refuses writes from now on");
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(reason);
    }

    pub(crate) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    pub(crate) fn read_path_batches(&self) -> u64 {
        self.read_path_batches.load(Ordering::Relaxed)
    }

    /// Counts a lease hint before it is queued. Counting first is what makes
    /// [`leases_settled`](Self::leases_settled) sound: every hint queued
    /// before a read began is among the first `leases_sent` the writer takes.
    pub(crate) fn lease_sent(&self) {
        self.leases_sent.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves once the writer processed every lease hint sent so far.
    pub(crate) async fn leases_settled(&self) {
        let sent = self.leases_sent.load(Ordering::SeqCst);
        let mut done = self.leases_done.subscribe();
        // An error: the writer is gone, and nothing more will settle.
        let _ = done.wait_for(|done| *done >= sent).await;
    }

    fn leases_processed(&self, count: u64) {
        if count > 0 {
            self.leases_done.send_modify(|done| *done = done.saturating_add(count));
        }
    }
}

/// Ends the writer's part on any exit, a panic included: the store refuses
/// writes and no read waits for hints that will never be processed.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        // Quietly: this is also how the writer ends when the store is dropped.
        let mut failure = self.0.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failure.get_or_insert_with(|| "the PostgreSQL writer task stopped".into());
        drop(failure);
        self.0.leases_done.send_replace(u64::MAX);
    }
}

/// The writer's statements, prepared once.
struct Statements {
    lock_new: Statement,
    lock_histories: Statement,
    lock_requests: Statement,
    owners: Statement,
    open: Statement,
    high_water: Statement,
    fence: Statement,
    wipe_batches: Statement,
    insert_batches: Statement,
    update_histories: Statement,
    delete_histories: Statement,
    upsert_summaries: Statement,
    delete_summaries: Statement,
    upsert_requests: Statement,
    delete_requests: Statement,
    upsert_tasks: Statement,
    delete_tasks: Statement,
    upsert_leases: Statement,
    delete_leases: Statement,
    insert_timers: Statement,
    delete_timers: Statement,
    insert_outbox: Statement,
    delete_outbox: Statement,
    store_high_water: Statement,
    raise_floor: Statement,
    upsert_definitions: Statement,
    upsert_queue_pauses: Statement,
    delete_queue_pauses: Statement,
    // The asserted path's conditional writes (see the module's comment).
    assert_fence: Statement,
    assert_histories: Statement,
    assert_new_histories: Statement,
    assert_requests: Statement,
    assert_high_water: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self> {
        let p = |sql: &'static str| async move { client.prepare(sql).await.map_err(engine(sql)) };
        Ok(Self {
            // Sorted, as every lock here, so that two nodes' batches wait on
            // each other in one order instead of deadlocking.
            lock_new: p("INSERT INTO histories (workflow_id, last_seq)
                SELECT id, 0 FROM unnest($1::text[]) AS id ORDER BY id ON CONFLICT DO NOTHING")
            .await?,
            lock_histories: p("SELECT workflow_id, last_seq FROM histories WHERE workflow_id = ANY($1::text[])
                ORDER BY workflow_id FOR UPDATE")
            .await?,
            lock_requests: p("SELECT pg_advisory_xact_lock($1::int4, h)
                FROM (SELECT DISTINCT hashtext(id) AS h FROM unnest($2::text[]) AS id ORDER BY h) AS hashes")
            .await?,
            owners: p("SELECT request_id, workflow_id FROM requests WHERE request_id = ANY($1::text[])").await?,
            open: p("SELECT workflow_id FROM summaries WHERE workflow_id = ANY($1::text[]) AND open").await?,
            high_water: p("SELECT value FROM sagaflow_meta WHERE name = 'outbox_high_water' FOR UPDATE").await?,
            // FOR SHARE: a takeover's update of the row waits for this
            // batch, and a batch after it reads the new epoch.
            fence: p("SELECT shard, epoch FROM shard_leases WHERE shard = ANY($1::int4[]) ORDER BY shard FOR SHARE")
                .await?,
            wipe_batches: p("DELETE FROM history_batches WHERE workflow_id = ANY($1::text[])").await?,
            insert_batches: p("INSERT INTO history_batches (workflow_id, first_seq, last_seq, events)
                SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])")
            .await?,
            update_histories: p(
                "UPDATE histories AS h SET last_seq = u.last_seq
                FROM unnest($1::text[], $2::bigint[]) AS u (workflow_id, last_seq) WHERE h.workflow_id = u.workflow_id",
            )
            .await?,
            delete_histories: p("DELETE FROM histories WHERE workflow_id = ANY($1::text[])").await?,
            upsert_summaries: p("INSERT INTO summaries
                (workflow_id, summary, status, workflow_type, labels, stuck, paused, closed_ms, open)
                SELECT * FROM unnest($1::text[], $2::bytea[], $3::int4[], $4::text[], $5::jsonb[], $6::bool[],
                    $7::bool[], $8::bigint[], $9::bool[])
                ON CONFLICT (workflow_id) DO UPDATE SET summary = excluded.summary, status = excluded.status,
                    workflow_type = excluded.workflow_type, labels = excluded.labels, stuck = excluded.stuck,
                    paused = excluded.paused, closed_ms = excluded.closed_ms, open = excluded.open")
            .await?,
            delete_summaries: p("DELETE FROM summaries WHERE workflow_id = ANY($1::text[])").await?,
            upsert_requests: p("INSERT INTO requests (request_id, workflow_id)
                SELECT * FROM unnest($1::text[], $2::text[])
                ON CONFLICT (request_id) DO UPDATE SET workflow_id = excluded.workflow_id")
            .await?,
            delete_requests: p("DELETE FROM requests WHERE request_id = ANY($1::text[])").await?,
            upsert_tasks: p("INSERT INTO tasks (workflow_id, task_id, record)
                SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
                ON CONFLICT (workflow_id, task_id) DO UPDATE SET record = excluded.record")
            .await?,
            // Through sub-selects, as the fence check below: one generic plan.
            delete_tasks: p("DELETE FROM tasks AS t
                USING unnest((SELECT $1::text[]), (SELECT $2::text[])) AS d (workflow_id, task_id)
                WHERE t.workflow_id = d.workflow_id AND t.task_id = d.task_id")
            .await?,
            upsert_leases: p("INSERT INTO leases (workflow_id, task_id, lease)
                SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
                ON CONFLICT (workflow_id, task_id) DO UPDATE SET lease = excluded.lease")
            .await?,
            delete_leases: p("DELETE FROM leases AS l
                USING unnest((SELECT $1::text[]), (SELECT $2::text[])) AS d (workflow_id, task_id)
                WHERE l.workflow_id = d.workflow_id AND l.task_id = d.task_id")
            .await?,
            insert_timers: p("INSERT INTO timers (fire_at_ms, workflow_id, timer_id)
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING")
            .await?,
            delete_timers: p("DELETE FROM timers AS t
                USING unnest($1::bigint[], $2::text[], $3::text[]) AS d (fire_at_ms, workflow_id, timer_id)
                WHERE t.fire_at_ms = d.fire_at_ms AND t.workflow_id = d.workflow_id AND t.timer_id = d.timer_id")
            .await?,
            insert_outbox: p("INSERT INTO outbox (seq, record) SELECT * FROM unnest($1::bigint[], $2::bytea[])")
                .await?,
            delete_outbox: p("DELETE FROM outbox WHERE seq = ANY($1::bigint[])").await?,
            store_high_water: p("UPDATE sagaflow_meta SET value = $1 WHERE name = 'outbox_high_water'").await?,
            raise_floor: p("UPDATE sagaflow_meta SET value = greatest(value, $1) WHERE name = 'outbox_floor'").await?,
            upsert_definitions: p("INSERT INTO definitions (workflow_type, version, record)
                SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                ON CONFLICT (workflow_type, version) DO UPDATE SET record = excluded.record")
            .await?,
            upsert_queue_pauses: p("INSERT INTO queue_pauses (queue, record)
                SELECT * FROM unnest($1::text[], $2::bytea[])
                ON CONFLICT (queue) DO UPDATE SET record = excluded.record")
            .await?,
            delete_queue_pauses: p("DELETE FROM queue_pauses WHERE queue = ANY($1::text[])").await?,
            // The shards come through a sub-select, which hides their
            // number from the planner: a plan made for one shard would
            // look cheaper than the generic plan, and PostgreSQL would then
            // plan the statement afresh at every call (measured: 45 µs a
            // call, 0.3 ms of a lone saga). The generic plans of these
            // statements are index lookups, on tables of 300,000 rows too.
            assert_fence: p("SELECT sagaflow_assert(coalesce((SELECT array_agg(epoch ORDER BY shard) FROM (
                    SELECT shard, epoch FROM shard_leases WHERE shard = ANY((SELECT $1::int4[])::int4[])
                    ORDER BY shard FOR SHARE) AS held) = $2::bigint[], false), 'the shard epochs')")
            .await?,
            assert_histories: p("WITH moved AS (UPDATE histories AS h SET last_seq = w.last_seq
                FROM unnest((SELECT $1::text[]), (SELECT $2::bigint[]), (SELECT $3::bigint[]))
                    AS w (workflow_id, expected, last_seq)
                WHERE h.workflow_id = w.workflow_id AND h.last_seq = w.expected RETURNING 1)
                SELECT sagaflow_assert((SELECT count(*) FROM moved) = cardinality($1::text[]), 'history positions')")
            .await?,
            // A row at 0 is one a refused start left behind: as good as none.
            assert_new_histories: p("WITH started AS (INSERT INTO histories (workflow_id, last_seq)
                SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1
                ON CONFLICT (workflow_id) DO UPDATE SET last_seq = excluded.last_seq WHERE histories.last_seq = 0
                RETURNING 1)
                SELECT sagaflow_assert((SELECT count(*) FROM started) = cardinality($1::text[]), 'new histories')")
            .await?,
            // A concurrent claim of the same id waits on its unique index
            // entry, then finds it taken.
            assert_requests: p("WITH claimed AS (INSERT INTO requests (request_id, workflow_id)
                SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1
                ON CONFLICT (request_id) DO UPDATE SET workflow_id = excluded.workflow_id
                WHERE requests.workflow_id = excluded.workflow_id RETURNING 1)
                SELECT sagaflow_assert((SELECT count(*) FROM claimed) = cardinality($1::text[]), 'request ids')")
            .await?,
            assert_high_water: p("WITH moved AS (UPDATE sagaflow_meta SET value = $2
                WHERE name = 'outbox_high_water' AND value = $1 RETURNING 1)
                SELECT sagaflow_assert((SELECT count(*) FROM moved) = 1, 'the outbox high water mark')")
            .await?,
        })
    }
}

/// Why a batch's transaction did not commit.
enum Failed {
    /// Another transaction was in the way (deadlock, serialization failure,
    /// a history row deleted under the batch): nothing was written, try again.
    Retry(String),
    /// Nothing was written: the batch is answered with the error.
    Abort(String),
    /// An asserted path's assumption did not hold (SQLSTATE SF001): nothing
    /// was written, and the batch goes the path that reads under lock.
    Assumption(String),
    /// The connection broke: nothing was written, or the outcome of its
    /// `COMMIT` is unknown. Either way nothing may be acknowledged, and
    /// nothing more can commit on it.
    Lost(String),
}

type Pipelined<'a> = Pin<Box<dyn Future<Output = std::result::Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// Statements sent back to back on one connection and answered in order:
/// one round trip for all of them.
struct Pipeline<'a> {
    client: &'a Client,
    steps: Vec<(&'static str, Pipelined<'a>)>,
}

impl<'a> Pipeline<'a> {
    fn new(client: &'a Client) -> Self {
        Self { client, steps: Vec::new() }
    }

    fn simple(&mut self, sql: &'static str) {
        let client = self.client;
        self.steps.push((sql, Box::pin(async move { client.batch_execute(sql).await.map(|()| Vec::new()) })));
    }

    fn query(&mut self, what: &'static str, statement: &'a Statement, params: &'a [&'a (dyn ToSql + Sync)]) {
        self.steps.push((what, Box::pin(self.client.query(statement, params))));
    }

    /// Runs every step; the rows of each, or the first failure.
    async fn run(self) -> std::result::Result<Vec<Vec<Row>>, Failed> {
        let (names, futures): (Vec<_>, Vec<_>) = self.steps.into_iter().unzip();
        // All of them, not up to the first error: dropping the rest unread
        // could leave their answers to be mistaken for the next batch's.
        let results = join_all(futures).await;
        let mut rows = Vec::with_capacity(results.len());
        for (what, result) in names.into_iter().zip(results) {
            rows.push(result.map_err(|e| classify(what, &e))?);
        }
        Ok(rows)
    }
}

fn classify(what: &str, e: &tokio_postgres::Error) -> Failed {
    let message = format!("PostgreSQL, {what}: {}", describe(e));
    match e.code() {
        _ if e.is_closed() => Failed::Lost(message),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE => {
            Failed::Retry(message)
        }
        // Class 08 (connection exception) and the server ending the
        // session (57P01..57P03: shutdown, crash, cannot connect now).
        Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => Failed::Lost(message),
        Some(code) if code.code() == ASSUMPTION_FAILED => Failed::Assumption(message),
        _ => Failed::Abort(message),
    }
}

/// The SQLSTATE of `sagaflow_assert` (migration 3).
const ASSUMPTION_FAILED: &str = "SF001";

/// How long lease hints alone wait for a commit to share a transaction.
const LEASE_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Moves what is queued into `batch`, up to [`MAX_BATCH`].
fn drain_into(batch: &mut Vec<Request>, queue: &mut mpsc::UnboundedReceiver<Request>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

pub(crate) struct Writer {
    client: Client,
    st: Statements,
    shared: std::sync::Arc<Shared>,
    /// The outbox high water mark as this writer's last committed batch left
    /// it: what the asserted path assumes. Unknown until a batch read it.
    high_water: Mutex<Option<u64>>,
}

/// How a batch's transaction checks what its plan relied on.
#[derive(Clone, Copy)]
enum Checks<'a> {
    /// `lock_and_read` began the transaction, and the plan was checked
    /// against what it read.
    ReadUnderLock,
    /// Nothing was read: the write pipeline begins the transaction, and
    /// asserts these fences and each assumption as it writes.
    Asserted(&'a [Fence]),
}

impl Writer {
    pub(crate) async fn start(client: Client, shared: std::sync::Arc<Shared>) -> Result<Self> {
        let st = Statements::prepare(&client).await?;
        Ok(Self { client, st, shared, high_water: Mutex::default() })
    }

    /// Applies batches until every handle of the store is dropped.
    pub(crate) async fn run(self, mut queue: mpsc::UnboundedReceiver<Request>) {
        let shared = std::sync::Arc::clone(&self.shared);
        let _stopped = Stopped(&shared);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queue.recv().await {
            batch.push(first);
            drain_into(&mut batch, &mut queue);
            // Lease hints alone wait a little for a commit to ride with: no
            // one waits on a hint, while a transaction of its own would hold
            // up the commits queued behind it (dispatch records one per task).
            if batch.iter().all(|r| matches!(r.op, Op::Leases { .. }))
                && let Ok(Some(next)) = tokio::time::timeout(LEASE_LINGER, queue.recv()).await
            {
                batch.push(next);
                drain_into(&mut batch, &mut queue);
            }
            // A clearing runs alone, between the writes queued before and after it.
            while let Some(at) = batch.iter().position(|r| matches!(r.op, Op::ClearDerived)) {
                let rest = batch.split_off(at + 1);
                let clear = batch.pop();
                self.apply(std::mem::take(&mut batch)).await;
                self.apply(clear.into_iter().collect()).await;
                batch = rest;
            }
            self.apply(std::mem::take(&mut batch)).await;
        }
    }

    async fn apply(&self, batch: Vec<Request>) {
        let leases = batch.iter().filter(|r| matches!(r.op, Op::Leases { .. })).count();
        self.apply_batch(batch).await;
        self.shared.leases_processed(leases as u64);
    }

    async fn apply_batch(&self, batch: Vec<Request>) {
        let batch = self.refuse_unheld(batch);
        if batch.is_empty() {
            return;
        }
        if let Some(failure) = self.shared.failure() {
            return answer_all(batch, || Error::FlushFailed(failure.clone()));
        }
        let started = Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let outcome = if matches!(batch[0].op, Op::ClearDerived) {
                self.clear_derived().await.map(|()| vec![Ok(())])
            } else {
                self.transact(&batch).await
            };
            match outcome {
                Err(Failed::Retry(reason)) if attempt < ATTEMPTS => {
                    tracing::debug!(%reason, attempt, "retrying a PostgreSQL write batch");
                    self.rollback().await;
                }
                // An assumption is only made, and its failure handled, in `transact`.
                Err(Failed::Retry(reason) | Failed::Abort(reason) | Failed::Assumption(reason)) => {
                    self.rollback().await;
                    break Err((reason, false));
                }
                Err(Failed::Lost(reason)) => break Err((reason, true)),
                Ok(verdicts) => break Ok(verdicts),
            }
        };
        match outcome {
            Ok(verdicts) => {
                self.shared.transactions.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!("sagaflow_store_flush_seconds").record(started.elapsed().as_secs_f64());
                for (request, verdict) in batch.into_iter().zip(verdicts) {
                    if let Some(reply) = request.reply {
                        // A caller that stopped waiting is no longer interested.
                        let _ = reply.send(verdict);
                    }
                }
            }
            Err((reason, lost)) => {
                // Without a connection nothing more can commit, and
                // reconnecting is not implemented: say so from now on.
                if lost || self.client.is_closed() {
                    self.shared.fail(reason.clone());
                }
                tracing::warn!(%reason, writes = batch.len(), "a PostgreSQL write batch failed");
                answer_all(batch, || Error::Engine(reason.clone()));
            }
        }
    }

    /// Answers the writes of workflows whose shard this node does not hold
    /// (and, once it holds none, every write), and returns the others.
    fn refuse_unheld(&self, batch: Vec<Request>) -> Vec<Request> {
        let held = self.shared.fences();
        let unheld = |op: &Op| {
            let workflows = op.workflow().map(|workflow| [workflow]);
            sagaflow_store::fences_for(held.as_deref(), self.shared.shard_count, workflows).err()
        };
        batch
            .into_iter()
            .filter_map(|request| match unheld(&request.op) {
                None => Some(request),
                Some(error) => {
                    if let Some(reply) = request.reply {
                        let _ = reply.send(Err(error));
                    }
                    None
                }
            })
            .collect()
    }

    /// The fences `batch` must pass: those of its workflows' shards, or
    /// every one held when it also writes the store as a whole.
    fn fences_for(&self, batch: &[Request]) -> std::result::Result<Vec<Fence>, Failed> {
        let workflows: Option<Vec<&str>> = batch.iter().map(|r| r.op.workflow()).collect();
        sagaflow_store::fences_for(self.shared.fences().as_deref(), self.shared.shard_count, workflows)
            // The fences changed since `refuse_unheld`: nothing of the batch may land.
            .map_err(|e| Failed::Abort(e.to_string()))
    }

    /// Ends a transaction a failed step left open; a connection that broke
    /// has none left.
    async fn rollback(&self) {
        if !self.client.is_closed()
            && let Err(e) = self.client.batch_execute("ROLLBACK").await
        {
            tracing::warn!(error = %describe(&e), "PostgreSQL: rolling back a failed write batch");
        }
    }

    async fn clear_derived(&self) -> std::result::Result<(), Failed> {
        let mut pipeline = Pipeline::new(&self.client);
        pipeline.simple(
            "BEGIN; DELETE FROM summaries; DELETE FROM requests; DELETE FROM tasks; DELETE FROM leases; \
             DELETE FROM timers; COMMIT",
        );
        pipeline.run().await.map(drop)
    }

    /// One attempt at a batch: its verdicts once the transaction committed.
    async fn transact(&self, batch: &[Request]) -> std::result::Result<Vec<Result<()>>, Failed> {
        if let Some(assumed) = self.assume(batch) {
            let (plan, verdicts) = Plan::build(batch.iter().map(|r| &r.op), &assumed);
            // A refusal must name its reason, which only the read path knows.
            if verdicts.iter().all(Result::is_ok) {
                match self.write(&plan, &assumed, Checks::Asserted(&self.fences_for(batch)?)).await {
                    Ok(()) => {
                        self.remember_high_water(plan.outbox_high_water);
                        return Ok(verdicts);
                    }
                    Err(Failed::Assumption(reason)) => {
                        tracing::debug!(%reason, "an asserted write batch goes the read path");
                        metrics::counter!("sagaflow_store_assumptions_failed_total").increment(1);
                        self.rollback().await;
                    }
                    Err(failed) => return Err(failed),
                }
            }
        }
        self.shared.read_path_batches.fetch_add(1, Ordering::Relaxed);
        let stored = self.lock_and_read(batch).await?;
        if let Some((fence, current)) = stored.fenced_off {
            // Nothing of a fenced-off node's batch may land.
            self.rollback().await;
            let refusal = || Err(Error::Fenced { shard: fence.shard, epoch: fence.epoch, current });
            return Ok(batch.iter().map(|_| refusal()).collect());
        }
        let (plan, verdicts) = Plan::build(batch.iter().map(|r| &r.op), &stored);
        // Every admitted append has its locked row: a row another node
        // deleted between the insert and the lock would leave one unlocked.
        if plan.last_seq.iter().any(|(wf, last)| *last > 0 && !stored.last_seq.contains_key(wf)) {
            return Err(Failed::Retry("a history row was deleted while the batch locked it".into()));
        }
        self.write(&plan, &stored, Checks::ReadUnderLock).await?;
        self.remember_high_water(plan.outbox_high_water.or(stored.outbox_high_water));
        Ok(verdicts)
    }

    /// What the asserted path assumes the database holds for `batch`; `None`
    /// when it cannot assume: a deletion (whose check reads an open flag), or
    /// outbox records before this writer knows the high water mark.
    fn assume(&self, batch: &[Request]) -> Option<Stored> {
        let mut assumed = Stored::default();
        for commit in batch.iter().filter_map(|r| r.op.as_commit()) {
            if commit.delete.is_some() {
                return None;
            }
            if let Some(first) = commit.events.first() {
                // A first event at 0 is refused by the plan's own check.
                assumed.last_seq.entry(commit.workflow_id.clone()).or_insert(first.seq.saturating_sub(1));
            }
            if !commit.outbox.is_empty() && assumed.outbox_high_water.is_none() {
                assumed.outbox_high_water =
                    Some((*self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner))?);
            }
        }
        Some(assumed)
    }

    fn remember_high_water(&self, high_water: Option<u64>) {
        if let Some(high_water) = high_water {
            *self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(high_water);
        }
    }

    /// `BEGIN`, then the locks and reads the checks need, in one round trip.
    async fn lock_and_read(&self, batch: &[Request]) -> std::result::Result<Stored, Failed> {
        let commits = || batch.iter().filter_map(|r| r.op.as_commit());
        let appended: BTreeSet<&str> =
            commits().filter(|c| !c.events.is_empty()).map(|c| c.workflow_id.as_str()).collect();
        let touched: BTreeSet<&str> = commits()
            .filter(|c| !c.events.is_empty() || c.summary.is_some() || c.delete.is_some() || c.request_id.is_some())
            .map(|c| c.workflow_id.as_str())
            .collect();
        let request_ids: BTreeSet<&str> = commits()
            .flat_map(|c| c.request_id.iter().chain(c.delete.iter().map(|d| &d.request_id)))
            .map(String::as_str)
            .collect();
        let deleted: BTreeSet<&str> =
            commits().filter(|c| c.delete.is_some()).map(|c| c.workflow_id.as_str()).collect();
        let has_outbox = commits().any(|c| !c.outbox.is_empty());

        let appended: Vec<&str> = appended.into_iter().collect();
        let touched: Vec<&str> = touched.into_iter().collect();
        let request_ids: Vec<&str> = request_ids.into_iter().collect();
        let deleted: Vec<&str> = deleted.into_iter().collect();
        let p_appended: [&(dyn ToSql + Sync); 1] = [&appended];
        let p_touched: [&(dyn ToSql + Sync); 1] = [&touched];
        let p_lock_requests: [&(dyn ToSql + Sync); 2] = [&REQUEST_LOCK, &request_ids];
        let p_request_ids: [&(dyn ToSql + Sync); 1] = [&request_ids];
        let p_deleted: [&(dyn ToSql + Sync); 1] = [&deleted];
        let fences = self.fences_for(batch)?;
        let (fenced_shards, _) = fence_columns(&fences);
        let p_fence: [&(dyn ToSql + Sync); 1] = [&fenced_shards];

        let mut pipeline = Pipeline::new(&self.client);
        pipeline.simple("BEGIN");
        let fence_step = pipeline.steps.len();
        if !fences.is_empty() {
            pipeline.query("checking the shards' epochs", &self.st.fence, &p_fence);
        }
        if !appended.is_empty() {
            pipeline.query("inserting the rows of new histories", &self.st.lock_new, &p_appended);
        }
        let histories = pipeline.steps.len();
        if !touched.is_empty() {
            pipeline.query("locking histories", &self.st.lock_histories, &p_touched);
        }
        let owners = pipeline.steps.len() + 1;
        if !request_ids.is_empty() {
            pipeline.query("locking request ids", &self.st.lock_requests, &p_lock_requests);
            pipeline.query("reading request ids", &self.st.owners, &p_request_ids);
        }
        let open = pipeline.steps.len();
        if !deleted.is_empty() {
            pipeline.query("reading open flags", &self.st.open, &p_deleted);
        }
        let high_water = pipeline.steps.len();
        if has_outbox {
            pipeline.query("locking the outbox high water mark", &self.st.high_water, &[]);
        }
        let results = pipeline.run().await?;

        let corrupt = |what: &str, e: &dyn std::fmt::Display| Failed::Abort(format!("PostgreSQL, reading {what}: {e}"));
        let mut stored = Stored::default();
        if !fences.is_empty() {
            let mut current = std::collections::BTreeMap::new();
            for row in &results[fence_step] {
                let shard: i32 = row.try_get(0).map_err(|e| corrupt("shard_leases", &e))?;
                let epoch: i64 = row.try_get(1).map_err(|e| corrupt("shard_leases", &e))?;
                current.insert(shard, u64::try_from(epoch).unwrap_or(0));
            }
            stored.fenced_off = fences.iter().find_map(|fence| {
                let now = i32::try_from(fence.shard).ok().and_then(|s| current.get(&s).copied()).unwrap_or(0);
                (now != fence.epoch).then_some((*fence, now))
            });
        }
        if !touched.is_empty() {
            for row in &results[histories] {
                let wf: String = row.try_get(0).map_err(|e| corrupt("histories", &e))?;
                let last: i64 = row.try_get(1).map_err(|e| corrupt("histories", &e))?;
                let last = u64::try_from(last).map_err(|e| corrupt("histories", &e))?;
                stored.last_seq.insert(wf, last);
            }
        }
        if !request_ids.is_empty() {
            for row in &results[owners] {
                let request_id: String = row.try_get(0).map_err(|e| corrupt("requests", &e))?;
                let wf: String = row.try_get(1).map_err(|e| corrupt("requests", &e))?;
                stored.owners.insert(request_id, wf);
            }
        }
        if !deleted.is_empty() {
            for row in &results[open] {
                stored.open.insert(row.try_get(0).map_err(|e| corrupt("summaries", &e))?);
            }
        }
        if has_outbox {
            let row =
                results[high_water].first().ok_or_else(|| corrupt("sagaflow_meta", &"no outbox_high_water row"))?;
            let value: i64 = row.try_get(0).map_err(|e| corrupt("sagaflow_meta", &e))?;
            stored.outbox_high_water = Some(u64::try_from(value).map_err(|e| corrupt("sagaflow_meta", &e))?);
        }
        Ok(stored)
    }

    /// The plan's rows, then `COMMIT`, in one round trip; on the asserted
    /// path, `BEGIN` and the assertions too.
    async fn write(&self, plan: &Plan, stored: &Stored, checks: Checks<'_>) -> std::result::Result<(), Failed> {
        let too_big = |what: &str| Failed::Abort(format!("a {what} past the largest bigint cannot be stored"));
        let seq = |n: u64| i64::try_from(n).map_err(|_| too_big("sequence number"));

        let wiped: Vec<&str> = plan.wiped.iter().map(String::as_str).collect();
        let batch_ids: Vec<&str> = plan.batches.iter().map(|b| b.workflow_id.as_str()).collect();
        let batch_firsts = plan.batches.iter().map(|b| seq(b.first_seq)).collect::<std::result::Result<Vec<_>, _>>()?;
        let batch_lasts = plan.batches.iter().map(|b| seq(b.last_seq)).collect::<std::result::Result<Vec<_>, _>>()?;
        let batch_events: Vec<&[u8]> = plan.batches.iter().map(|b| b.events.as_slice()).collect();

        let (updates, history_deletes) = plan.history_rows(stored);
        let update_ids: Vec<&str> = updates.iter().map(|(wf, _)| wf.as_str()).collect();
        let update_seqs = updates.iter().map(|(_, last)| seq(*last)).collect::<std::result::Result<Vec<_>, _>>()?;
        // The asserted path's expected positions; 0: a new history.
        let expected = updates
            .iter()
            .map(|(wf, _)| seq(stored.last_seq.get(wf).copied().unwrap_or(0)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (mut new_ids, mut new_seqs, mut moved_ids, mut moved_expected, mut moved_seqs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((wf, last), was) in update_ids.iter().zip(&update_seqs).zip(&expected) {
            if *was == 0 {
                new_ids.push(*wf);
                new_seqs.push(*last);
            } else {
                moved_ids.push(*wf);
                moved_expected.push(*was);
                moved_seqs.push(*last);
            }
        }

        let (summary_puts, summary_deletes) = split(&plan.summaries);
        let s_ids: Vec<&str> = summary_puts.iter().map(|(wf, _)| wf.as_str()).collect();
        let s_bytes: Vec<&[u8]> = summary_puts.iter().map(|(_, s)| s.bytes.as_slice()).collect();
        let s_status: Vec<i32> = summary_puts.iter().map(|(_, s)| s.status).collect();
        let s_type: Vec<&str> = summary_puts.iter().map(|(_, s)| s.workflow_type.as_str()).collect();
        let s_labels: Vec<&serde_json::Value> = summary_puts.iter().map(|(_, s)| &s.labels).collect();
        let s_stuck: Vec<bool> = summary_puts.iter().map(|(_, s)| s.stuck).collect();
        let s_paused: Vec<bool> = summary_puts.iter().map(|(_, s)| s.paused).collect();
        let s_closed: Vec<i64> = summary_puts.iter().map(|(_, s)| s.closed_ms).collect();
        let s_open: Vec<bool> = summary_puts.iter().map(|(_, s)| s.open).collect();

        let (request_puts, request_deletes) = split(&plan.requests);
        let r_ids: Vec<&str> = request_puts.iter().map(|(r, _)| r.as_str()).collect();
        let r_owners: Vec<&str> = request_puts.iter().map(|(_, wf)| wf.as_str()).collect();

        let (task_puts, task_deletes) = split(&plan.tasks);
        let (tp_wf, tp_id, tp_rec) = columns3(&task_puts);
        let (td_wf, td_id) = keys2(&task_deletes);
        let (lease_puts, lease_deletes) = split(&plan.leases);
        let (lp_wf, lp_id, lp_rec) = columns3(&lease_puts);
        let (ld_wf, ld_id) = keys2(&lease_deletes);

        let mut timer_puts: (Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
        let mut timer_deletes: (Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
        for ((at, wf, id), put) in &plan.timers {
            let into = if *put { &mut timer_puts } else { &mut timer_deletes };
            into.0.push(*at);
            into.1.push(wf);
            into.2.push(id);
        }

        let o_seqs = plan.outbox.iter().map(|(s, _)| seq(*s)).collect::<std::result::Result<Vec<_>, _>>()?;
        let o_records: Vec<&[u8]> = plan.outbox.iter().map(|(_, r)| r.as_slice()).collect();
        let o_deleted = plan.deleted_outbox.iter().map(|s| i64::try_from(*s).unwrap_or(i64::MAX)).collect::<Vec<_>>();
        let high_water = plan.outbox_high_water.map(seq).transpose()?;
        let high_water_was = stored.outbox_high_water.map(seq).transpose()?;
        let floor = plan.outbox_floor.map(|f| i64::try_from(f).unwrap_or(i64::MAX));

        let d_types: Vec<&str> = plan.definitions.keys().map(|(t, _)| t.as_str()).collect();
        let d_versions: Vec<i64> = plan.definitions.keys().map(|(_, v)| i64::from(*v)).collect();
        let d_records: Vec<&[u8]> = plan.definitions.values().map(Vec::as_slice).collect();

        let (pause_puts, pause_deletes) = split(&plan.queue_pauses);
        let q_names: Vec<&str> = pause_puts.iter().map(|(q, _)| q.as_str()).collect();
        let q_records: Vec<&[u8]> = pause_puts.iter().map(|(_, r)| r.as_slice()).collect();

        let p_wiped: [&(dyn ToSql + Sync); 1] = [&wiped];
        let p_batches: [&(dyn ToSql + Sync); 4] = [&batch_ids, &batch_firsts, &batch_lasts, &batch_events];
        let p_updates: [&(dyn ToSql + Sync); 2] = [&update_ids, &update_seqs];
        let p_new_histories: [&(dyn ToSql + Sync); 2] = [&new_ids, &new_seqs];
        let p_moved_histories: [&(dyn ToSql + Sync); 3] = [&moved_ids, &moved_expected, &moved_seqs];
        let p_history_deletes: [&(dyn ToSql + Sync); 1] = [&history_deletes];
        let p_summaries: [&(dyn ToSql + Sync); 9] =
            [&s_ids, &s_bytes, &s_status, &s_type, &s_labels, &s_stuck, &s_paused, &s_closed, &s_open];
        let p_summary_deletes: [&(dyn ToSql + Sync); 1] = [&summary_deletes];
        let p_requests: [&(dyn ToSql + Sync); 2] = [&r_ids, &r_owners];
        let p_request_deletes: [&(dyn ToSql + Sync); 1] = [&request_deletes];
        let p_tasks: [&(dyn ToSql + Sync); 3] = [&tp_wf, &tp_id, &tp_rec];
        let p_task_deletes: [&(dyn ToSql + Sync); 2] = [&td_wf, &td_id];
        let p_leases: [&(dyn ToSql + Sync); 3] = [&lp_wf, &lp_id, &lp_rec];
        let p_lease_deletes: [&(dyn ToSql + Sync); 2] = [&ld_wf, &ld_id];
        let p_timers: [&(dyn ToSql + Sync); 3] = [&timer_puts.0, &timer_puts.1, &timer_puts.2];
        let p_timer_deletes: [&(dyn ToSql + Sync); 3] = [&timer_deletes.0, &timer_deletes.1, &timer_deletes.2];
        let p_outbox: [&(dyn ToSql + Sync); 2] = [&o_seqs, &o_records];
        let p_outbox_deletes: [&(dyn ToSql + Sync); 1] = [&o_deleted];
        let p_high_water: [&(dyn ToSql + Sync); 1] = [&high_water];
        let p_moved_high_water: [&(dyn ToSql + Sync); 2] = [&high_water_was, &high_water];
        // Read under lock, the fences were checked by that read.
        let (asserted, fences) = match checks {
            Checks::Asserted(fences) => (true, fences),
            Checks::ReadUnderLock => (false, &[][..]),
        };
        let (fence_shards, fence_epochs) = fence_columns(fences);
        let p_fence: [&(dyn ToSql + Sync); 2] = [&fence_shards, &fence_epochs];
        let p_floor: [&(dyn ToSql + Sync); 1] = [&floor];
        let p_definitions: [&(dyn ToSql + Sync); 3] = [&d_types, &d_versions, &d_records];
        let p_pauses: [&(dyn ToSql + Sync); 2] = [&q_names, &q_records];
        let p_pause_deletes: [&(dyn ToSql + Sync); 1] = [&pause_deletes];

        let st = &self.st;
        let mut pipeline = Pipeline::new(&self.client);
        if asserted {
            pipeline.simple("BEGIN");
        }
        // The assertions before the writes: a write that collides with
        // another node's (a batch number, an outbox number) would fail the
        // transaction with an error that does not say to read and retry.
        if !fences.is_empty() {
            pipeline.query("asserting the shards' epochs", &st.assert_fence, &p_fence);
        }
        if asserted {
            if !new_ids.is_empty() {
                pipeline.query("asserting new histories", &st.assert_new_histories, &p_new_histories);
            }
            if !moved_ids.is_empty() {
                pipeline.query("asserting history positions", &st.assert_histories, &p_moved_histories);
            }
            if !r_ids.is_empty() {
                pipeline.query("asserting request ids", &st.assert_requests, &p_requests);
            }
            if high_water.is_some() {
                pipeline.query("asserting the outbox high water mark", &st.assert_high_water, &p_moved_high_water);
            }
        }
        // A deleted history's batches go before the batches of a history
        // started anew under its id in the same batch.
        if !wiped.is_empty() {
            pipeline.query("deleting histories", &st.wipe_batches, &p_wiped);
        }
        if !batch_ids.is_empty() {
            pipeline.query("appending events", &st.insert_batches, &p_batches);
        }
        if !asserted && !update_ids.is_empty() {
            pipeline.query("updating history lengths", &st.update_histories, &p_updates);
        }
        if !history_deletes.is_empty() {
            pipeline.query("deleting history rows", &st.delete_histories, &p_history_deletes);
        }
        if !s_ids.is_empty() {
            pipeline.query("writing summaries", &st.upsert_summaries, &p_summaries);
        }
        if !summary_deletes.is_empty() {
            pipeline.query("deleting summaries", &st.delete_summaries, &p_summary_deletes);
        }
        if !asserted && !r_ids.is_empty() {
            pipeline.query("writing request ids", &st.upsert_requests, &p_requests);
        }
        if !request_deletes.is_empty() {
            pipeline.query("deleting request ids", &st.delete_requests, &p_request_deletes);
        }
        if !tp_wf.is_empty() {
            pipeline.query("writing tasks", &st.upsert_tasks, &p_tasks);
        }
        if !td_wf.is_empty() {
            pipeline.query("deleting tasks", &st.delete_tasks, &p_task_deletes);
        }
        if !lp_wf.is_empty() {
            pipeline.query("writing leases", &st.upsert_leases, &p_leases);
        }
        if !ld_wf.is_empty() {
            pipeline.query("deleting leases", &st.delete_leases, &p_lease_deletes);
        }
        if !timer_puts.0.is_empty() {
            pipeline.query("writing timers", &st.insert_timers, &p_timers);
        }
        if !timer_deletes.0.is_empty() {
            pipeline.query("deleting timers", &st.delete_timers, &p_timer_deletes);
        }
        if !o_seqs.is_empty() {
            pipeline.query("writing outbox records", &st.insert_outbox, &p_outbox);
        }
        if !o_deleted.is_empty() {
            pipeline.query("deleting outbox records", &st.delete_outbox, &p_outbox_deletes);
        }
        if !asserted && high_water.is_some() {
            pipeline.query("storing the outbox high water mark", &st.store_high_water, &p_high_water);
        }
        if floor.is_some() {
            pipeline.query("raising the outbox floor", &st.raise_floor, &p_floor);
        }
        if !d_types.is_empty() {
            pipeline.query("writing definitions", &st.upsert_definitions, &p_definitions);
        }
        if !q_names.is_empty() {
            pipeline.query("writing queue pauses", &st.upsert_queue_pauses, &p_pauses);
        }
        if !pause_deletes.is_empty() {
            pipeline.query("deleting queue pauses", &st.delete_queue_pauses, &p_pause_deletes);
        }
        // In the same round trip: if a statement above failed, the server
        // aborted the transaction and answers this COMMIT with a rollback;
        // `run` reports that statement's error either way.
        pipeline.simple("COMMIT");
        pipeline.run().await.map(drop)
    }
}

/// A table's final rows: (key, value) to put, keys to delete.
fn split<K: Clone, V>(rows: &std::collections::BTreeMap<K, Option<V>>) -> (Vec<(K, &V)>, Vec<K>) {
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (key, value) in rows {
        match value {
            Some(value) => puts.push((key.clone(), value)),
            None => deletes.push(key.clone()),
        }
    }
    (puts, deletes)
}

type TaskColumns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a [u8]>);

fn columns3<'a>(rows: &'a [((String, String), &'a Vec<u8>)]) -> TaskColumns<'a> {
    let mut columns: TaskColumns<'a> = Default::default();
    for ((wf, id), record) in rows {
        columns.0.push(wf);
        columns.1.push(id);
        columns.2.push(record);
    }
    columns
}

fn keys2(keys: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    keys.iter().map(|(wf, id)| (wf.as_str(), id.as_str())).unzip()
}

fn answer_all(batch: Vec<Request>, error: impl Fn() -> Error) {
    for request in batch {
        if let Some(reply) = request.reply {
            let _ = reply.send(Err(error()));
        }
    }
}
