//! Durable storage behind one narrow trait.
//!
//! A workflow's history is the truth; every other record here (the workflow
//! index, the open set, the idempotency map, tasks, leases, timers and the
//! outbox) is derived from histories and can be rebuilt from them. A
//! [`Commit`] carries one decision: its new events and the derived records
//! that change with them, applied as one atomic batch. [`Store::commit`]
//! returns a [`Durable`] that resolves once the batch is flushed to disk;
//! concurrent commits share one flush (group commit).
//!
//! No storage engine type appears in this API, so that another backend (the
//! PostgreSQL-protocol one on the roadmap) can implement it. The two backends
//! here share one layout over an ordered key-value engine ([`kv_store`]):
//! sled on disk, and a `BTreeMap` in memory for tests and embedding.

mod group_commit;
mod keys;
mod kv_store;
mod memory;
mod metrics;
mod overlay;
mod records;
mod sled_store;
mod wal;

/// The suite every backend must pass; a new backend enables the `conformance`
/// feature and expands [`store_conformance_suite!`] in its tests.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use group_commit::Durable;
pub use keys::MAX_WORKFLOW_ID_BYTES;
pub use kv_store::{KvStore, check_append, check_ids};
pub use memory::MemoryStore;
pub use records::{DefinitionRecord, Lease, OutboxRecord, QueuePauseRecord, ShardLease, TaskRecord, TimerRecord};
pub use sled_store::SledStore;

use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};

/// Storage failures. Callers branch on the variant, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine below failed (I/O, corruption). Not retriable in place:
    /// the server stops accepting writes rather than risk a torn history.
    #[error("storage engine: {0}")]
    Engine(String),
    /// Another process has the store open: two writers would tear its histories.
    #[error(
        "the data directory {dir} is in use by another sagaflow process{}; stop it, or give this one another --data-dir",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Locked { dir: String, holder: Option<String> },
    /// A record could not be decoded; the store holds bytes this version cannot read.
    #[error("corrupt record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The commit's first event does not follow the stored history.
    #[error("history of {workflow_id} is at {stored}, the commit starts at {requested}")]
    SequenceConflict { workflow_id: String, stored: u64, requested: u64 },
    /// A workflow id longer than a key can hold ([`MAX_WORKFLOW_ID_BYTES`]).
    /// The API refuses such ids first; this guards ids the server derives.
    #[error("workflow id of {len} bytes is longer than the store's limit of {MAX_WORKFLOW_ID_BYTES}: {prefix}…")]
    IdTooLong { prefix: String, len: usize },
    /// The commit maps a start's request id that already names another
    /// workflow: two starts raced with one request id, and this one lost.
    #[error("request id {request_id} already started workflow {workflow_id}")]
    RequestIdTaken { request_id: String, workflow_id: String },
    /// The write carried a fence whose epoch is no longer the shard's: another
    /// node took the shard over, and this one must stop writing.
    #[error("shard {shard} moved on to epoch {current}; this node's epoch {epoch} is fenced off")]
    Fenced { shard: u32, epoch: u64, current: u64 },
    /// An earlier flush failed; nothing more is acknowledged.
    #[error("a flush failed earlier ({0}); the store is read-only until restarted")]
    FlushFailed(String),
    /// A deletion named a workflow that is still open: only a closed
    /// workflow's records may go.
    #[error("workflow {0} is still open; only a closed workflow can be deleted")]
    StillOpen(String),
    /// The write is of a workflow whose shard this node holds no fence for,
    /// while it holds others: the node that holds that shard must write it.
    #[error("this node does not hold shard {shard}: the node that holds it writes its workflows")]
    ShardNotHeld { shard: u32 },
    /// A write of the store as a whole (definitions, queue pauses, the
    /// outbox) by a node that holds no shard at all: it is fenced off.
    #[error("this node holds no shard of the cluster, so it writes nothing; the nodes that hold the shards do")]
    NoShardHeld,
    /// A node asked for another shard count than the one its cluster was
    /// created with: workflows are placed by it, so it never changes.
    #[error(
        "the cluster was created with {cluster} shards, and a cluster's shard count never changes; start this node with --shards {cluster} or without --shards, not --shards {requested}"
    )]
    ShardCount { cluster: u32, requested: u32 },
    /// A node asked for another placement than its cluster's while other
    /// nodes of the cluster run: they must agree, or shards go unserved.
    #[error(
        "the cluster's shards are placed {cluster}, and a node started with --placement {requested} would not agree with its running nodes; start this node without --placement (or with --placement {cluster}), or stop every node of the cluster first: the first node to start then sets the placement"
    )]
    Placement { cluster: Placement, requested: Placement },
}

/// How a cluster's nodes hold its shards (ADR 0030). A property of the
/// cluster, kept in its database: nodes that disagree would leave shards
/// unserved (a one-node node waits for every shard while spread nodes hold
/// their shares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Each live node serves a share of the shards (the default).
    Spread,
    /// One node serves every shard; the others stand by.
    OneNode,
}

impl Placement {
    /// The name the database and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::OneNode => "one-node",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Spread, Self::OneNode].into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Commit {
    /// Only definitions: a registration, in one atomic batch however many it carries.
    pub fn definitions(definitions: Vec<DefinitionRecord>) -> Self {
        Self { put_definitions: definitions, ..Self::default() }
    }

    /// Only the deletion of a closed workflow (see [`DeleteWorkflow`]).
    pub fn delete(workflow_id: impl Into<String>, request_id: impl Into<String>) -> Self {
        Self {
            workflow_id: workflow_id.into(),
            delete: Some(DeleteWorkflow { request_id: request_id.into() }),
            ..Self::default()
        }
    }

    /// Only a queue pause: `pause` puts the record, `resume` deletes the queue's.
    pub fn queue_pause(pause: Option<QueuePauseRecord>, resume: Option<String>) -> Self {
        Self {
            put_queue_pauses: pause.into_iter().collect(),
            delete_queue_pauses: resume.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// One decision, applied atomically.
#[derive(Debug, Default, Clone)]
pub struct Commit {
    pub workflow_id: String,
    /// Appended to the history; the first must follow the stored last event.
    pub events: Vec<HistoryEvent>,
    /// The caller vouches that the workflow has no history yet (a start,
    /// checked under the workflow's lock, or a freshly generated id), so the
    /// store need not look it up: for a new id that lookup misses the
    /// overlay and reaches sled.
    pub new_history: bool,
    /// The workflow's index row after this decision.
    pub summary: Option<WorkflowSummary>,
    /// Maps a start's `request_id` to this workflow.
    pub request_id: Option<String>,
    pub put_tasks: Vec<TaskRecord>,
    /// Task ids of this workflow whose tasks (and leases) are gone.
    pub delete_tasks: Vec<String>,
    /// Leases of this workflow's tasks, by task id. Leases are hints that
    /// speed recovery; dispatch records them alone with
    /// [`Store::record_leases`], which does not wait for a flush.
    pub put_leases: Vec<(String, Lease)>,
    pub put_timers: Vec<TimerRecord>,
    pub delete_timers: Vec<TimerRecord>,
    pub outbox: Vec<OutboxRecord>,
    /// Saga definitions registered (or deprecated) by this commit; a record
    /// replaces the stored one of its type and version.
    pub put_definitions: Vec<DefinitionRecord>,
    /// Activity queues paused by this commit; a record replaces the queue's.
    pub put_queue_pauses: Vec<QueuePauseRecord>,
    /// Activity queues resumed by this commit.
    pub delete_queue_pauses: Vec<String>,
    /// Removes the (closed) workflow: its history, index row and the request
    /// id that started it, so that the request id may start a new one.
    pub delete: Option<DeleteWorkflow>,
}

/// What the deletion of a workflow removes besides the records under its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteWorkflow {
    /// The request id its `WorkflowStarted` names.
    pub request_id: String,
}

/// A page of the workflow index.
#[derive(Debug, Default, Clone)]
pub struct IndexPage {
    pub workflows: Vec<WorkflowSummary>,
    /// The last workflow id of this page when more may follow.
    pub next_after: Option<String>,
}

/// Which index rows a [`Store::list`] returns: plain data, so that a
/// database backend can turn it into a `WHERE` clause instead of reading
/// every row back. Every condition set must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkflowFilter {
    /// Any of these statuses; empty means any status.
    pub statuses: Vec<i32>,
    /// Exactly this type; empty means any type.
    pub workflow_type: String,
    /// Every one of these labels, with these values.
    pub labels: Vec<(String, String)>,
    /// Only workflows the stuck-saga detector flagged.
    pub stuck_only: bool,
    /// Only paused workflows.
    pub paused_only: bool,
    /// Only terminal workflows closed at or before this time (ms since the epoch).
    pub closed_at_or_before_ms: Option<i64>,
}

impl WorkflowFilter {
    /// Whether the row matches: the reference every backend must agree with.
    pub fn matches(&self, s: &WorkflowSummary) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&s.status))
            && (self.workflow_type.is_empty() || s.workflow_type == self.workflow_type)
            && self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
            && (!self.stuck_only || !s.stuck_reason.is_empty())
            && (!self.paused_only || !s.paused_reason.is_empty())
            && self
                .closed_at_or_before_ms
                .is_none_or(|at| sagaflow_proto::is_terminal(s.status) && s.closed_ms > 0 && s.closed_ms <= at)
    }
}

/// One page of [`Store::list`].
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    /// Only workflow ids that start with this.
    pub id_prefix: String,
    /// Strictly after this workflow id (the last page's `next_after`).
    pub after: Option<String>,
    /// At most this many rows.
    pub limit: usize,
    /// Read at most this many rows before returning a partial page, so that
    /// a filter that matches little cannot make one call scan the index.
    pub scan_budget: usize,
    pub filter: WorkflowFilter,
}

/// The shard `workflow_id` belongs to in a cluster of `shards` shards:
/// FNV-1a (64 bits) of its UTF-8 bytes, modulo the count. Stored placement
/// depends on it, so it never changes (the vectors in the tests pin it).
pub fn shard_of(workflow_id: &str, shards: u32) -> u32 {
    assert!(shards > 0, "a cluster has at least one shard");
    (fnv1a(workflow_id.as_bytes()) % u64::from(shards)) as u32
}

/// FNV-1a, 64 bits: stable across builds and platforms, and cheap.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The fences a write must pass ([`Store::fence`]): none when no fence was
/// ever installed (`held` is `None`: the store is this process's alone);
/// those of the shards of `workflows` when every write is of one (`Some`);
/// every held fence when the write also touches the store as a whole
/// (`None`). A node that holds no shard at all writes nothing.
pub fn fences_for<'a>(
    held: Option<&[Fence]>,
    shard_count: u32,
    workflows: Option<impl IntoIterator<Item = &'a str>>,
) -> Result<Vec<Fence>> {
    let Some(held) = held else { return Ok(Vec::new()) };
    let Some(workflows) = workflows else {
        return if held.is_empty() { Err(Error::NoShardHeld) } else { Ok(held.to_vec()) };
    };
    let mut needed: Vec<u32> = workflows.into_iter().map(|wf| shard_of(wf, shard_count)).collect();
    needed.sort_unstable();
    needed.dedup();
    needed
        .into_iter()
        .map(|shard| held.iter().find(|f| f.shard == shard).copied().ok_or(Error::ShardNotHeld { shard }))
        .collect()
}

/// `fences` in shard order, as [`Store::fences`] gives them back.
pub fn in_shard_order(fences: &[Fence]) -> Vec<Fence> {
    let mut sorted = fences.to_vec();
    sorted.sort_unstable_by_key(|f| f.shard);
    sorted
}

/// The proof of a shard's ownership that a store checks on every write once
/// [`Store::fence`] installed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u32,
    pub epoch: u64,
}

/// The key of a task (and of its lease): a page of tasks resumes after one.
pub type TaskKey = (String, String);

/// What a `Store` holds, for every backend.
///
/// Async, so that a backend may answer over the network. A write is
/// conditional: a commit names the history position it extends and a store
/// refuses it ([`Error::SequenceConflict`]) when another write got there
/// first; the store, not a lock in one process, keeps a start's request id
/// unique ([`Error::RequestIdTaken`]). Recovery reads tasks, leases, timers
/// and workflow ids a page at a time.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the commit atomically. The returned [`Durable`] resolves once
    /// the commit is on disk; acknowledge nothing before that.
    async fn commit(&self, commit: Commit) -> Result<Durable>;

    /// Records where tasks were handed out ([`Commit::put_leases`]) without
    /// waiting: leases are hints that speed recovery, and losing one only
    /// makes a task run again. Dispatch calls this on its hot path.
    fn record_leases(&self, workflow_id: &str, leases: Vec<(String, Lease)>) -> Result<()>;

    /// Resolves once everything applied so far is on disk. A reply built from
    /// a read waits on this, so that no reply shows what a crash could undo.
    fn barrier(&self) -> Durable;

    /// Why the store refuses writes (an earlier flush failed: a full or
    /// failing disk), if it does. Health reports it.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// Events `from_seq..` (1-based), at most `limit`.
    async fn history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>>;

    /// The sequence number of the last event, 0 when there is no history.
    async fn last_seq(&self, workflow_id: &str) -> Result<u64>;

    async fn summary(&self, workflow_id: &str) -> Result<Option<WorkflowSummary>>;

    /// Index rows that match the query's filter, in workflow-id order; see
    /// [`ListQuery`] for the bounds. `next_after` is set when more may follow.
    async fn list(&self, query: &ListQuery) -> Result<IndexPage>;

    /// Ids of the workflows that are not terminal, at most `limit`, strictly
    /// after `after` in the store's own order (the last id of the previous
    /// page): fewer than `limit` means the last page.
    async fn open_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// Ids of every workflow that has a history, for rebuilding; paged as
    /// [`open_workflows`](Store::open_workflows).
    async fn all_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    async fn workflow_for_request(&self, request_id: &str) -> Result<Option<String>>;

    /// Tasks, at most `limit`, strictly after the task `after` in the store's order.
    async fn tasks(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<TaskRecord>>;

    /// Leases as (workflow id, task id, lease), paged as [`tasks`](Store::tasks).
    async fn leases(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<(String, String, Lease)>>;

    /// Timers, at most `limit`, in fire-time order, strictly after the timer `after`.
    async fn timers(&self, after: Option<&TimerRecord>, limit: usize) -> Result<Vec<TimerRecord>>;

    /// Outbox records with sequence numbers greater than `after`, at most `limit`.
    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>>;

    /// Removes relayed outbox records (after the broker acknowledged them).
    async fn delete_outbox(&self, seqs: &[u64]) -> Result<Durable>;

    /// Removes outbox records no broker will take (the server runs without
    /// one and they are past `--outbox-retention`), and raises the pruned
    /// floor ([`outbox_floor`](Store::outbox_floor)) to the highest of
    /// `seqs`, in the same atomic batch. The caller prunes from the oldest
    /// on, so that every record at or below the floor is gone and every
    /// record above it is kept. The floor never goes down.
    async fn prune_outbox(&self, seqs: &[u64]) -> Result<Durable>;

    /// The highest outbox sequence number [`prune_outbox`](Store::prune_outbox)
    /// ever deleted, 0 if none: a reader resuming below it missed records.
    async fn outbox_floor(&self) -> Result<u64>;

    /// Every stored definition, by type then version.
    async fn definitions(&self) -> Result<Vec<DefinitionRecord>>;

    /// Every paused activity queue, by name.
    async fn queue_pauses(&self) -> Result<Vec<QueuePauseRecord>>;

    /// Removes every derived record: the index, open set, idempotency map,
    /// tasks, leases and timers. Histories and the outbox stay.
    async fn clear_derived(&self) -> Result<()>;

    /// Takes every one of `shards` for `owner` for `ttl_ms`, or none: all
    /// of them when each is free, expired or already `owner`'s, in one
    /// atomic step. Returns the leases as they stand after the call, in
    /// shard order: `owner`'s when taken, otherwise who holds each. Taking a
    /// shard from someone else (or for the first time) raises its epoch;
    /// renewing one's own live lease keeps it.
    async fn acquire_shards(&self, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>>;

    /// Extends `owner`'s leases on the fenced shards by `ttl_ms`. Fails with
    /// [`Error::Fenced`] (naming one such shard) when any epoch moved on; the
    /// leases still held are extended all the same.
    async fn renew_shards(&self, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>>;

    /// Every shard's lease as it stands, in shard order (a shard never
    /// taken may have none): who serves it, for forwarding calls there.
    async fn shard_leases(&self) -> Result<Vec<ShardLease>>;

    /// Gives the shards up (a graceful stop, or a node handing its surplus
    /// to one that joined), so that another node may take them at once. A
    /// fence that moved on releases nothing.
    async fn release_shards(&self, fences: &[Fence]) -> Result<()>;

    /// The nodes that took or renewed leases (or asked to) in the last
    /// `within_ms`, in name order: those the cluster's shards are shared
    /// among. A store of one process knows of no other node, and names none.
    async fn live_nodes(&self, within_ms: i64) -> Result<Vec<String>> {
        let _ = within_ms;
        Ok(Vec::new())
    }

    /// `owner` stopped (gracefully): the other nodes no longer count it
    /// among the live ones, and share its shards out at once.
    async fn leave(&self, owner: &str) -> Result<()> {
        let _ = owner;
        Ok(())
    }

    /// From now on, a write of a workflow is refused with [`Error::Fenced`]
    /// unless its shard ([`shard_of`]) is still at the epoch fenced here, and
    /// with [`Error::ShardNotHeld`] when its shard is not fenced at all; a
    /// write of no one workflow (definitions, queue pauses, the outbox)
    /// needs every fenced shard still at its epoch. Checked atomically with
    /// the write. Replaces the fences installed before; an empty set (a
    /// node that gave every shard up) refuses every write.
    fn fence(&self, fences: &[Fence]);

    /// The fences installed by [`fence`](Store::fence), in shard order;
    /// `None` when none ever was: the store is this process's alone, and
    /// every shard is its own.
    fn fences(&self) -> Option<Vec<Fence>>;

    /// How many shards the store's cluster places workflows in ([`shard_of`]);
    /// fixed when the cluster was created. A store only one process opens
    /// is one shard.
    fn shard_count(&self) -> u32 {
        1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Placement is stored: these must never change.
    #[test]
    fn a_workflow_id_always_lands_in_the_same_shard() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        let placed: Vec<u32> = ["order-1", "order-2", "checkout-42", ""].iter().map(|id| shard_of(id, 16)).collect();
        assert_eq!(placed, [13, 4, 14, 5]);
        assert!((0..1000).all(|i| shard_of(&format!("wf-{i}"), 1) == 0));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("checkout-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "spread evenly: {counts:?}");
    }

    #[test]
    fn a_write_needs_its_shards_fences_and_a_write_of_the_store_needs_every_one() {
        let held = [Fence { shard: 0, epoch: 3 }, Fence { shard: 2, epoch: 5 }];
        let in_shard = |shard| (0..).map(|i| format!("wf-{i}")).find(|id| shard_of(id, 4) == shard).unwrap();
        let (zero, one, two) = (in_shard(0), in_shard(1), in_shard(2));
        let of = |ids: &[&String]| fences_for(Some(&held), 4, Some(ids.iter().map(|id| id.as_str())));
        assert_eq!(of(&[&two, &zero, &two]).unwrap(), held, "each shard once, in order");
        assert_eq!(of(&[&zero]).unwrap(), held[..1]);
        assert!(matches!(of(&[&zero, &one]), Err(Error::ShardNotHeld { shard: 1 })));
        assert_eq!(fences_for(Some(&held), 4, None::<[&str; 0]>).unwrap(), held, "the store as a whole");
        assert!(fences_for(None, 4, Some([one.as_str()])).unwrap().is_empty(), "no fence installed, none needed");
        assert!(fences_for(None, 4, None::<[&str; 0]>).unwrap().is_empty());
        // A node that gave every shard up writes nothing, not everything.
        assert!(matches!(fences_for(Some(&[]), 4, Some([one.as_str()])), Err(Error::ShardNotHeld { shard: 1 })));
        assert!(matches!(fences_for(Some(&[]), 4, None::<[&str; 0]>), Err(Error::NoShardHeld)));
    }
}
