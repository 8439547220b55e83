//! Sagaflow's [`Store`] on PostgreSQL.
//!
//! Several sagaflow nodes may share one database: a commit's checks hold
//! across processes because they run under row locks in the database, not
//! under a lock in one process. A history append is a conditional write of
//! the workflow's `histories` row (or, on the read path, locks it first), so
//! that of two nodes extending the same position one wins and the other gets
//! [`Error::SequenceConflict`]; a start's request id is claimed the same way.
//!
//! Writes go through one writer task that owns one connection (`writer.rs`):
//! it takes every commit queued while the last transaction ran and applies
//! them in one transaction, so one WAL flush covers many commits (group
//! commit). A commit resolves only after its transaction committed, so the
//! [`Durable`] it returns is already ready. Reads use a small pool of other
//! connections (`reads.rs`).
//!
//! TLS: libpq's `sslmode` and `sslrootcert` in the URL (`tls.rs`); an
//! encrypted connection always verifies the server's certificate.

mod migrations;
mod plan;
mod reads;
mod shards;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod writer;

use std::sync::Arc;

use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};
use sagaflow_store::{
    Commit, DefinitionRecord, Durable, Error, Fence, IndexPage, Lease, ListQuery, OutboxRecord, Placement,
    QueuePauseRecord, Result, ShardLease, Store, TaskKey, TaskRecord, TimerRecord, check_ids,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

pub use migrations::LATEST_VERSION;
pub use shards::ClusterView;

use plan::Op;
use reads::Readers;
use writer::{Request, Shared};

/// Read connections. Reads are short point and range queries; a few
/// connections keep one slow list from delaying a history read, and more
/// would only compete with the writer for the same cores.
const READ_CONNECTIONS: usize = 4;

/// A [`Store`] in a PostgreSQL database.
pub struct PostgresStore {
    ops: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    readers: Readers,
    url: String,
    placement: Placement,
}

/// The shard count of a cluster that its first node creates without
/// `--shards`: enough to spread over a handful of nodes, few enough that
/// each write's fence check and each renewal stay small (ADR 0030).
pub const DEFAULT_SHARDS: u32 = 8;

/// The most shards a cluster may have.
pub const MAX_SHARDS: u32 = 1024;

impl PostgresStore {
    /// Connects, applies pending migrations (refusing a database that a newer
    /// build migrated), and starts the writer task on the current runtime.
    /// The first store on a database creates its cluster with
    /// [`DEFAULT_SHARDS`] shards.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_to_cluster(url, None, None).await
    }

    /// As [`connect`](Self::connect), asking for `shards` shards and for the
    /// nodes to hold them by `placement`: the cluster is created with them
    /// if no node created it yet. A cluster created with another count
    /// refuses the store ([`Error::ShardCount`]); one with another
    /// placement takes the new one if none of its nodes runs (none seen
    /// within `quiet`, no lease unexpired) and refuses the store otherwise
    /// ([`Error::Placement`]).
    pub async fn connect_to_cluster(
        url: &str,
        shards: Option<u32>,
        placement: Option<(Placement, std::time::Duration)>,
    ) -> Result<Self> {
        let mut client = open(url, "migration", None).await?;
        let applied = migrations::apply(&mut client).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied PostgreSQL schema migrations");
        }
        let (requested, quiet) =
            placement.map_or((None, 0), |(p, quiet)| (Some(p), i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX)));
        let (shard_count, placement) = shards::cluster_config(&client, shards, requested, quiet).await?;
        drop(client);
        let shared = Arc::new(Shared::new(shard_count));
        let (ops, queue) = mpsc::unbounded_channel();
        let writer_connection = open(url, "writer", Some(Arc::clone(&shared))).await?;
        let writer = writer::Writer::start(writer_connection, Arc::clone(&shared)).await?;
        tokio::spawn(writer.run(queue));
        let readers = Readers::connect(url, READ_CONNECTIONS, &shared).await?;
        Ok(Self { ops, shared, readers, url: url.to_owned(), placement })
    }

    /// How the cluster's nodes hold its shards, as its database says.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Write transactions committed so far: with group commit, far fewer than
    /// the commits they carried.
    pub fn write_transactions(&self) -> u64 {
        self.shared.transactions()
    }

    /// The secret named `name` that every node on this database shares:
    /// `fresh` makes it if no node did yet. Two nodes that ask at once both
    /// get the one that landed first.
    pub async fn shared_secret(&self, name: &str, fresh: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        let client = self.readers.client();
        client
            .execute(
                "INSERT INTO cluster_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &fresh()],
            )
            .await
            .map_err(engine("storing a cluster secret"))?;
        let row = client
            .query_one("SELECT value FROM cluster_secrets WHERE name = $1", &[&name])
            .await
            .map_err(engine("reading a cluster secret"))?;
        row.try_get(0).map_err(|e| Error::Corrupt { key: format!("cluster_secrets/{name}"), reason: e.to_string() })
    }

    /// Batches that went the path that reads under lock (ADR 0029): their
    /// assumptions failed (another node wrote, a commit is refused), they
    /// delete workflows, or the writer did not know the outbox high water
    /// mark yet. Every other batch commits in one round trip.
    pub fn read_path_batches(&self) -> u64 {
        self.shared.read_path_batches()
    }

    fn send(&self, op: Op) -> Result<oneshot::Receiver<Result<()>>> {
        if let Some(failure) = self.shared.failure() {
            return Err(Error::FlushFailed(failure));
        }
        let (reply, answer) = oneshot::channel();
        self.ops.send(Request { op, reply: Some(reply) }).map_err(|_| writer_stopped())?;
        Ok(answer)
    }

    /// Hands `op` to the writer and waits until its transaction committed.
    async fn write(&self, op: Op) -> Result<Durable> {
        self.send(op)?.await.map_err(|_| writer_stopped())??;
        // Committed with the server's synchronous_commit: already on disk.
        Ok(Durable::ready())
    }
}

/// Who holds each shard and which nodes were seen lately: read over a
/// connection of its own, with no migration and no writer, for an
/// operator's `sagaflow cluster status`.
pub async fn cluster_view(url: &str) -> Result<ClusterView> {
    let client = open(url, "status", None).await?;
    shards::view(&client).await
}

fn writer_stopped() -> Error {
    Error::FlushFailed("the PostgreSQL writer task stopped".into())
}

/// Opens one connection and drives it on its own task. Unless the URL names
/// an application, the connection is named after its role (`sagaflow
/// writer`, ...), so that an operator can tell them apart in
/// `pg_stat_activity`.
///
/// The store does not reconnect (ADR 0031): when a connection of a store's
/// breaks, the store fails (`broken`) and refuses writes from then on, and
/// the node that holds it steps down, to be restarted by its supervisor.
async fn open(url: &str, role: &str, broken: Option<Arc<Shared>>) -> Result<Client> {
    let tls::Target { mut config, tls } = tls::Target::parse(url)?;
    if config.get_application_name().is_none() {
        config.application_name(format!("sagaflow {role}"));
    }
    let connecting = format!("connecting the {role} connection");
    match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(engine(&connecting))?;
            watch_connection(role, connection, broken);
            Ok(client)
        }
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(engine(&connecting))?;
            watch_connection(role, connection, broken);
            Ok(client)
        }
    }
}

/// Drives a connection until it closes. A connection closes cleanly only
/// when its client is dropped; any other end (the server terminated the
/// session, restarted, or the network broke) fails the store it served.
fn watch_connection<S, T>(role: &str, connection: tokio_postgres::Connection<S, T>, broken: Option<Arc<Shared>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let role = role.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            match broken {
                Some(shared) => shared.fail(format!("the {role} connection to PostgreSQL broke: {}", describe(&e))),
                None => tracing::warn!(error = %describe(&e), "PostgreSQL: the {role} connection closed"),
            }
        }
    });
}

/// Maps a database failure to [`Error::Engine`], saying what was being done.
pub(crate) fn engine(doing: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Engine(format!("PostgreSQL, {doing}: {}", describe(&e)))
}

/// The server's own message and SQLSTATE when it sent one; the client's
/// `Display` alone says only "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether PostgreSQL's `text` (and `jsonb`) can hold `s`: they cannot hold
/// a NUL character. The API refuses control characters in ids, so this only
/// guards a commit from failing the statement, and so every commit of its
/// batch.
pub(crate) fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// Refuses a commit with a text value PostgreSQL cannot store, before it
/// reaches a batch.
fn check_text(commit: &Commit) -> Result<()> {
    let summary_texts = commit.summary.iter().flat_map(|s| {
        std::iter::once(s.workflow_type.as_str()).chain(s.labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
    });
    let texts = std::iter::once(commit.workflow_id.as_str())
        .chain(commit.request_id.as_deref())
        .chain(commit.put_tasks.iter().flat_map(|t| [t.workflow_id(), t.task_id()]))
        .chain(commit.delete_tasks.iter().map(String::as_str))
        .chain(commit.put_leases.iter().map(|(task_id, _)| task_id.as_str()))
        .chain(
            commit
                .put_timers
                .iter()
                .chain(&commit.delete_timers)
                .flat_map(|t| [t.workflow_id.as_str(), t.timer_id.as_str()]),
        )
        .chain(commit.put_definitions.iter().map(|d| d.workflow_type.as_str()))
        .chain(commit.put_queue_pauses.iter().map(|p| p.queue.as_str()))
        .chain(commit.delete_queue_pauses.iter().map(String::as_str))
        .chain(commit.delete.iter().map(|d| d.request_id.as_str()))
        .chain(summary_texts);
    for text in texts {
        if !storable(text) {
            return Err(Error::Engine(format!(
                "PostgreSQL cannot store a NUL character; refused the commit of {:?} naming {text:?}",
                commit.workflow_id
            )));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn commit(&self, commit: Commit) -> Result<Durable> {
        check_ids(&commit)?;
        check_text(&commit)?;
        self.write(Op::Commit(Box::new(commit))).await
    }

    fn record_leases(&self, workflow_id: &str, leases: Vec<(String, Lease)>) -> Result<()> {
        let commit = Commit { workflow_id: workflow_id.to_owned(), put_leases: leases, ..Commit::default() };
        check_ids(&commit)?;
        check_text(&commit)?;
        if let Some(failure) = self.shared.failure() {
            return Err(Error::FlushFailed(failure));
        }
        // No reply: a lease rides the next transaction, and the caller does not wait for it.
        let op = Op::Leases { workflow_id: commit.workflow_id, leases: commit.put_leases };
        self.shared.lease_sent();
        self.ops.send(Request { op, reply: None }).map_err(|_| writer_stopped())
    }

    fn barrier(&self) -> Durable {
        // Every write acknowledged so far was acknowledged after its commit.
        Durable::ready()
    }

    fn write_failure(&self) -> Option<String> {
        self.shared.failure()
    }

    async fn history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>> {
        self.readers.history(workflow_id, from_seq, limit).await
    }

    async fn last_seq(&self, workflow_id: &str) -> Result<u64> {
        self.readers.last_seq(workflow_id).await
    }

    async fn summary(&self, workflow_id: &str) -> Result<Option<WorkflowSummary>> {
        self.readers.summary(workflow_id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<IndexPage> {
        self.readers.list(query).await
    }

    async fn open_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.readers.open_workflows(after, limit).await
    }

    async fn all_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.readers.all_workflows(after, limit).await
    }

    async fn workflow_for_request(&self, request_id: &str) -> Result<Option<String>> {
        self.readers.workflow_for_request(request_id).await
    }

    async fn tasks(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<TaskRecord>> {
        self.readers.tasks(after, limit).await
    }

    async fn leases(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<(String, String, Lease)>> {
        self.shared.leases_settled().await;
        self.readers.leases(after, limit).await
    }

    async fn timers(&self, after: Option<&TimerRecord>, limit: usize) -> Result<Vec<TimerRecord>> {
        self.readers.timers(after, limit).await
    }

    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>> {
        self.readers.outbox(after, limit).await
    }

    async fn delete_outbox(&self, seqs: &[u64]) -> Result<Durable> {
        self.write(Op::DeleteOutbox(seqs.to_vec())).await
    }

    async fn prune_outbox(&self, seqs: &[u64]) -> Result<Durable> {
        self.write(Op::PruneOutbox(seqs.to_vec())).await
    }

    async fn outbox_floor(&self) -> Result<u64> {
        self.readers.outbox_floor().await
    }

    async fn definitions(&self) -> Result<Vec<DefinitionRecord>> {
        self.readers.definitions().await
    }

    async fn queue_pauses(&self) -> Result<Vec<QueuePauseRecord>> {
        self.readers.queue_pauses().await
    }

    async fn clear_derived(&self) -> Result<()> {
        // Through the writer, so that it lands after every write queued before it.
        self.write(Op::ClearDerived).await.map(drop)
    }

    async fn acquire_shards(&self, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        shards::acquire(self.readers.client(), shards, owner, ttl_ms).await
    }

    async fn renew_shards(&self, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        shards::renew(self.readers.client(), fences, owner, ttl_ms).await
    }

    async fn shard_leases(&self) -> Result<Vec<ShardLease>> {
        shards::all(self.readers.client()).await
    }

    async fn release_shards(&self, fences: &[Fence]) -> Result<()> {
        let client = self.readers.client();
        if !client.is_closed() {
            return shards::release(client, fences).await;
        }
        // Its connections broke (the database restarted or failed over): a
        // fresh one may reach it again, and then a standby takes over at
        // once instead of when the lease expires.
        let fresh = open(&self.url, "release", None).await?;
        shards::release(&fresh, fences).await
    }

    async fn live_nodes(&self, within_ms: i64) -> Result<Vec<String>> {
        shards::live_nodes(self.readers.client(), within_ms).await
    }

    async fn leave(&self, owner: &str) -> Result<()> {
        shards::leave(self.readers.client(), owner).await
    }

    fn fences(&self) -> Option<Vec<Fence>> {
        self.shared.fences()
    }

    fn fence(&self, fences: &[Fence]) {
        self.shared.set_fences(fences);
    }

    fn shard_count(&self) -> u32 {
        self.shared.shard_count()
    }
}
