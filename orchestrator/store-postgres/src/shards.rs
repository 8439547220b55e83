//! Shard leases: who owns a shard, until when, at which epoch. Each call is
//! one statement, so its check and its change are one atomic step, on the
//! database's clock.

use futures_util::future::try_join;
use sagaflow_store::{Error, Fence, Result, ShardLease};
use tokio_postgres::{Client, Row};

use crate::engine;

const COLUMNS: &str = "shard, owner, epoch, (extract(epoch FROM expires_at) * 1000)::bigint";

fn lease(row: &Row) -> Result<ShardLease> {
    let corrupt = |e: tokio_postgres::Error| Error::Corrupt { key: "shard_leases".into(), reason: e.to_string() };
    let shard: i32 = row.try_get(0).map_err(corrupt)?;
    let epoch: i64 = row.try_get(2).map_err(corrupt)?;
    Ok(ShardLease {
        shard: u32::try_from(shard).unwrap_or_default(),
        owner: row.try_get(1).map_err(corrupt)?,
        epoch: u64::try_from(epoch).unwrap_or_default(),
        expires_ms: row.try_get(3).map_err(corrupt)?,
    })
}

fn shard_id(shard: u32) -> Result<i32> {
    i32::try_from(shard).map_err(|_| Error::Engine(format!("shard {shard} is past the largest shard number")))
}

fn epoch_of(fence: Fence) -> i64 {
    i64::try_from(fence.epoch).unwrap_or(i64::MAX)
}

async fn current(client: &Client, shard: i32) -> Result<Option<ShardLease>> {
    let sql = format!("SELECT {COLUMNS} FROM shard_leases WHERE shard = $1");
    client.query_opt(&sql, &[&shard]).await.map_err(engine("reading a shard lease"))?.as_ref().map(lease).transpose()
}

/// Records that `owner` is alive now, and forgets nodes not seen for 15
/// minutes (a node's name is new at each start).
async fn seen(client: &Client, owner: &str) -> Result<()> {
    client
        .execute(
            "WITH gone AS (DELETE FROM cluster_nodes WHERE seen_at < now() - interval '15 minutes')
             INSERT INTO cluster_nodes (owner, seen_at) VALUES ($1, now())
             ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
            &[&owner],
        )
        .await
        .map_err(engine("recording that this node is alive"))?;
    Ok(())
}

// `seen` goes in the same pipeline as the lease's statement: no round trip
// of its own, so the lease's timing is what it was.
pub(crate) async fn acquire(client: &Client, shard: u32, owner: &str, ttl_ms: i64) -> Result<ShardLease> {
    try_join(seen(client, owner), take(client, shard, owner, ttl_ms)).await.map(|((), lease)| lease)
}

pub(crate) async fn renew(client: &Client, fence: Fence, owner: &str, ttl_ms: i64) -> Result<ShardLease> {
    try_join(seen(client, owner), extend(client, fence, owner, ttl_ms)).await.map(|((), lease)| lease)
}

async fn take(client: &Client, shard: u32, owner: &str, ttl_ms: i64) -> Result<ShardLease> {
    let shard = shard_id(shard)?;
    // Every SET sees the old row: renewing one's live lease keeps the epoch,
    // anything else (a takeover, one's own expired lease) raises it.
    let sql = format!(
        "INSERT INTO shard_leases AS l (shard, owner, epoch, expires_at)
         VALUES ($1, $2, 1, now() + $3::float8 * interval '1 millisecond')
         ON CONFLICT (shard) DO UPDATE SET
             epoch = CASE WHEN l.owner = excluded.owner AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END,
             owner = excluded.owner,
             expires_at = excluded.expires_at
         WHERE l.owner = excluded.owner OR l.expires_at <= now()
         RETURNING {COLUMNS}"
    );
    let ttl = ttl_ms as f64;
    match client.query_opt(&sql, &[&shard, &owner, &ttl]).await.map_err(engine("taking a shard lease"))? {
        Some(row) => lease(&row),
        // Held by another node: say by whom.
        None => current(client, shard).await?.ok_or_else(|| Error::Engine("a shard lease vanished".into())),
    }
}

async fn extend(client: &Client, fence: Fence, owner: &str, ttl_ms: i64) -> Result<ShardLease> {
    let shard = shard_id(fence.shard)?;
    let sql = format!(
        "UPDATE shard_leases SET expires_at = now() + $4::float8 * interval '1 millisecond'
         WHERE shard = $1 AND epoch = $2 AND owner = $3 RETURNING {COLUMNS}"
    );
    let ttl = ttl_ms as f64;
    let row = client
        .query_opt(&sql, &[&shard, &epoch_of(fence), &owner, &ttl])
        .await
        .map_err(engine("renewing a shard lease"))?;
    match row {
        Some(row) => lease(&row),
        None => {
            let current = current(client, shard).await?.map_or(0, |l| l.epoch);
            Err(Error::Fenced { shard: fence.shard, epoch: fence.epoch, current })
        }
    }
}

/// Every shard's lease, every node seen lately, and the database's clock,
/// which both run on.
pub(crate) async fn view(client: &Client) -> Result<ClusterView> {
    let missing = |doing: &'static str| {
        move |e: tokio_postgres::Error| {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                Error::Engine(
                    "this database holds no Sagaflow cluster of this version: no node of it started here".into(),
                )
            } else {
                engine(doing)(e)
            }
        }
    };
    let corrupt = |key: &str| {
        let key = key.to_owned();
        move |e: tokio_postgres::Error| Error::Corrupt { key, reason: e.to_string() }
    };
    let sql = format!("SELECT {COLUMNS} FROM shard_leases ORDER BY shard");
    let leases = client.query(&sql, &[]).await.map_err(missing("reading the shard leases"))?;
    let leases = leases.iter().map(lease).collect::<Result<Vec<_>>>()?;
    let nodes = client
        .query("SELECT owner, (extract(epoch FROM seen_at) * 1000)::bigint FROM cluster_nodes ORDER BY owner", &[])
        .await
        .map_err(missing("reading the cluster's nodes"))?;
    let nodes = nodes
        .iter()
        .map(|row| {
            Ok((row.try_get(0).map_err(corrupt("cluster_nodes"))?, row.try_get(1).map_err(corrupt("cluster_nodes"))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let now = client
        .query_one("SELECT (extract(epoch FROM now()) * 1000)::bigint", &[])
        .await
        .map_err(engine("reading the database's clock"))?;
    Ok(ClusterView { leases, nodes, now_ms: now.try_get(0).map_err(corrupt("now()"))? })
}

/// Who holds each shard and which nodes are alive, on the database's clock
/// (milliseconds since the epoch).
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub leases: Vec<ShardLease>,
    /// Each node's lease owner name, and when it was last seen.
    pub nodes: Vec<(String, i64)>,
    pub now_ms: i64,
}

pub(crate) async fn release(client: &Client, fence: Fence) -> Result<()> {
    let shard = shard_id(fence.shard)?;
    // A node releases when it stops: it is no longer one of the cluster's.
    // Both parts see the lease as it was, owner included.
    client
        .execute(
            "WITH forgotten AS (DELETE FROM cluster_nodes
                 WHERE owner = (SELECT owner FROM shard_leases WHERE shard = $1 AND epoch = $2))
             UPDATE shard_leases SET owner = '', expires_at = now() WHERE shard = $1 AND epoch = $2",
            &[&shard, &epoch_of(fence)],
        )
        .await
        .map_err(engine("releasing a shard lease"))?;
    Ok(())
}
