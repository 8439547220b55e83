//! Shard leases: who owns a shard, until when, at which epoch. Each call is
//! one statement, so its check and its change are one atomic step, on the
//! database's clock.

use futures_util::future::try_join;
use sagaflow_store::{Error, Fence, Placement, Result, ShardLease};
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

/// The fences' shards and epochs as statements take them, in shard order.
/// A shard or epoch past what a column holds matches no row: nothing is
/// renewed, released or written under it.
pub(crate) fn fence_columns(fences: &[Fence]) -> (Vec<i32>, Vec<i64>) {
    let mut fences = fences.to_vec();
    fences.sort_unstable_by_key(|f| f.shard);
    fences
        .iter()
        .map(|f| (i32::try_from(f.shard).unwrap_or(i32::MAX), i64::try_from(f.epoch).unwrap_or(i64::MAX)))
        .unzip()
}

/// Adds a free lease row, at epoch 0, for each of `shards` that has none,
/// so that a statement taking shards can lock every one it asks for.
async fn add_free_leases(client: &Client, shards: &[i32]) -> Result<()> {
    client
        .execute(
            "INSERT INTO shard_leases (shard, owner, epoch, expires_at)
             SELECT shard, '', 0, now() FROM unnest($1::int4[]) AS shard ON CONFLICT DO NOTHING",
            &[&shards],
        )
        .await
        .map_err(engine("adding shard leases"))?;
    Ok(())
}

fn leases(rows: &[Row]) -> Result<Vec<ShardLease>> {
    rows.iter().map(lease).collect()
}

async fn current(client: &Client, shards: &[i32]) -> Result<Vec<ShardLease>> {
    let sql = format!("SELECT {COLUMNS} FROM shard_leases WHERE shard = ANY($1::int4[]) ORDER BY shard");
    leases(&client.query(&sql, &[&shards]).await.map_err(engine("reading shard leases"))?)
}

/// The cluster's shard count and placement: those `requested` (or the
/// defaults) when this is the cluster's first node, which also adds a free
/// lease for each shard (so that `cluster status` lists them before any
/// node took one). A shard count never changes; a placement changes only
/// while no node of the cluster runs (`quiet_ms`: none seen that recently,
/// no lease unexpired), since nodes that disagree leave shards unserved.
pub(crate) async fn cluster_config(
    client: &Client,
    requested: Option<u32>,
    placement: Option<Placement>,
    quiet_ms: i64,
) -> Result<(u32, Placement)> {
    let wanted = requested.unwrap_or(crate::DEFAULT_SHARDS);
    if !(1..=crate::MAX_SHARDS).contains(&wanted) {
        return Err(Error::Engine(format!("a cluster has 1 to {} shards, not {wanted}", crate::MAX_SHARDS)));
    }
    let wanted = i32::try_from(wanted).map_err(|_| Error::Engine(format!("{wanted} shards do not fit")))?;
    let first_placement = placement.unwrap_or(Placement::Spread).name();
    client
        .execute(
            "INSERT INTO cluster_config (shard_count, placement) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&wanted, &first_placement],
        )
        .await
        .map_err(engine("creating the cluster's configuration"))?;
    let row = client
        .query_one("SELECT placement, shard_count FROM cluster_config", &[])
        .await
        .map_err(engine("reading the cluster's configuration"))?;
    let corrupt = |reason: String| Error::Corrupt { key: "cluster_config".into(), reason };
    let stored: i32 = row.try_get(1).map_err(|e| corrupt(e.to_string()))?;
    let count = u32::try_from(stored).map_err(|_| corrupt(format!("{stored} shards")))?;
    if let Some(requested) = requested.filter(|r| *r != count) {
        return Err(Error::ShardCount { cluster: count, requested });
    }
    let mut current = placement_in(&row)?;
    if let Some(requested) = placement.filter(|p| *p != current) {
        current = change_placement(client, current, requested, quiet_ms).await?;
    }
    add_free_leases(client, &(0..stored).collect::<Vec<_>>()).await?;
    Ok((count, current))
}

/// Changes the cluster's placement from `current` to `requested` if none
/// of its nodes runs and no node set it moments ago: a node that just
/// created the cluster or changed its placement was not seen yet, and must
/// not be undone by another starting at the same time. One conditional
/// statement on the placement read, so that of two nodes changing it at
/// once the second finds it changed.
async fn change_placement(
    client: &Client,
    current: Placement,
    requested: Placement,
    quiet_ms: i64,
) -> Result<Placement> {
    let quiet = quiet_ms as f64;
    let changed = client
        .execute(
            "UPDATE cluster_config SET placement = $1, placement_set_at = now()
             WHERE placement = $2
               AND placement_set_at < now() - $3::float8 * interval '1 millisecond'
               AND NOT EXISTS (SELECT 1 FROM shard_leases WHERE expires_at > now())
               AND NOT EXISTS (SELECT 1 FROM cluster_nodes
                               WHERE seen_at > now() - $3::float8 * interval '1 millisecond')",
            &[&requested.name(), &current.name(), &quiet],
        )
        .await
        .map_err(engine("changing the cluster's placement"))?;
    if changed == 1 {
        tracing::info!(from = %current, to = %requested, "changed the cluster's placement: none of its nodes ran");
        return Ok(requested);
    }
    let row = client
        .query_one("SELECT placement FROM cluster_config", &[])
        .await
        .map_err(engine("reading the cluster's placement"))?;
    match placement_in(&row)? {
        // Another node starting now asked for the same.
        now if now == requested => Ok(now),
        now => Err(Error::Placement { cluster: now, requested }),
    }
}

/// The placement in `row`'s first column.
fn placement_in(row: &Row) -> Result<Placement> {
    let corrupt = |reason: String| Error::Corrupt { key: "cluster_config".into(), reason };
    let name: &str = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    Placement::from_name(name).ok_or_else(|| corrupt(format!("placement {name:?}")))
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
pub(crate) async fn acquire(client: &Client, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
    try_join(seen(client, owner), take(client, shards, owner, ttl_ms)).await.map(|((), leases)| leases)
}

pub(crate) async fn renew(client: &Client, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
    try_join(seen(client, owner), extend(client, fences, owner, ttl_ms)).await.map(|((), leases)| leases)
}

async fn take(client: &Client, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
    let mut shards = shards.iter().map(|s| shard_id(*s)).collect::<Result<Vec<_>>>()?;
    shards.sort_unstable();
    shards.dedup();
    // All or none: a node serves whole, and two nodes must never split the
    // shards. FOR UPDATE reads each row as it stands once locked, so that
    // of two nodes asking at once the second sees the first's leases. The
    // unlocked look before it keeps a standby, asking every second, from
    // locking rows that each of the serving node's writes reads FOR SHARE.
    // Renewing one's own live lease keeps the epoch; any other change of
    // hands (a takeover, one's own expired lease) raises it.
    let sql = "WITH held AS (
            SELECT shard, owner, epoch, expires_at FROM shard_leases
            WHERE shard = ANY($1::int4[]) AND NOT EXISTS (
                SELECT 1 FROM shard_leases WHERE shard = ANY($1::int4[]) AND owner <> $2 AND expires_at > now())
            ORDER BY shard FOR UPDATE),
        taken AS (
            SELECT shard, CASE WHEN owner = $2 AND expires_at > now() THEN epoch ELSE epoch + 1 END AS epoch
            FROM held
            WHERE (SELECT bool_and(owner = $2 OR expires_at <= now()) AND count(*) = cardinality($1::int4[]) FROM held))
        UPDATE shard_leases AS l
        SET owner = $2, epoch = t.epoch, expires_at = now() + $3::float8 * interval '1 millisecond'
        FROM taken AS t WHERE l.shard = t.shard
        RETURNING l.shard, l.owner, l.epoch, (extract(epoch FROM l.expires_at) * 1000)::bigint";
    let ttl = ttl_ms as f64;
    // Pipelined: the rows are added before the statement runs.
    let (_, rows) = try_join(add_free_leases(client, &shards), async {
        client.query(sql, &[&shards, &owner, &ttl]).await.map_err(engine("taking shard leases"))
    })
    .await?;
    let mut taken = leases(&rows)?;
    if taken.is_empty() {
        // Held by another node: say by whom.
        return current(client, &shards).await;
    }
    taken.sort_by_key(|l| l.shard);
    if taken.len() != shards.len() {
        return Err(Error::Engine(format!("took {} of {} shard leases at once", taken.len(), shards.len())));
    }
    Ok(taken)
}

async fn extend(client: &Client, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
    let (shards, epochs) = fence_columns(fences);
    let sql = "UPDATE shard_leases AS l SET expires_at = now() + $4::float8 * interval '1 millisecond'
        FROM unnest($1::int4[], $2::bigint[]) AS f (shard, epoch)
        WHERE l.shard = f.shard AND l.epoch = f.epoch AND l.owner = $3
        RETURNING l.shard, l.owner, l.epoch, (extract(epoch FROM l.expires_at) * 1000)::bigint";
    let ttl = ttl_ms as f64;
    let rows = client.query(sql, &[&shards, &epochs, &owner, &ttl]).await.map_err(engine("renewing shard leases"))?;
    let mut renewed = leases(&rows)?;
    renewed.sort_by_key(|l| l.shard);
    let Some(lost) = fences.iter().find(|f| !renewed.iter().any(|l| l.shard == f.shard)) else {
        return Ok(renewed);
    };
    let now = current(client, &[shard_id(lost.shard)?]).await?;
    Err(Error::Fenced { shard: lost.shard, epoch: lost.epoch, current: now.first().map_or(0, |l| l.epoch) })
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
    let leases = client.query(&every_lease(), &[]).await.map_err(missing("reading the shard leases"))?;
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
    let placement = client
        .query_opt("SELECT placement FROM cluster_config", &[])
        .await
        .map_err(missing("reading the cluster's placement"))?;
    let placement = placement.as_ref().map(placement_in).transpose()?;
    let now = client
        .query_one("SELECT (extract(epoch FROM now()) * 1000)::bigint", &[])
        .await
        .map_err(engine("reading the database's clock"))?;
    Ok(ClusterView { leases, nodes, placement, now_ms: now.try_get(0).map_err(corrupt("now()"))? })
}

/// Who holds each shard and which nodes are alive, on the database's clock
/// (milliseconds since the epoch).
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub leases: Vec<ShardLease>,
    /// Each node's lease owner name, and when it was last seen.
    pub nodes: Vec<(String, i64)>,
    /// How its nodes hold the shards; `None` before its first node started.
    pub placement: Option<Placement>,
    pub now_ms: i64,
}

/// Every shard's lease, in shard order.
pub(crate) async fn all(client: &Client) -> Result<Vec<ShardLease>> {
    let rows = client.query(&every_lease(), &[]).await.map_err(engine("reading the shard leases"))?;
    rows.iter().map(lease).collect()
}

fn every_lease() -> String {
    format!("SELECT {COLUMNS} FROM shard_leases ORDER BY shard")
}

pub(crate) async fn release(client: &Client, fences: &[Fence]) -> Result<()> {
    let (shards, epochs) = fence_columns(fences);
    client
        .execute(
            "UPDATE shard_leases AS l SET owner = '', expires_at = now()
             FROM unnest($1::int4[], $2::bigint[]) AS f (shard, epoch)
             WHERE l.shard = f.shard AND l.epoch = f.epoch",
            &[&shards, &epochs],
        )
        .await
        .map_err(engine("releasing shard leases"))?;
    Ok(())
}

/// The nodes seen in the last `within_ms` milliseconds, on the database's clock.
pub(crate) async fn live_nodes(client: &Client, within_ms: i64) -> Result<Vec<String>> {
    let within = within_ms as f64;
    let rows = client
        .query(
            "SELECT owner FROM cluster_nodes WHERE seen_at > now() - $1::float8 * interval '1 millisecond' ORDER BY owner",
            &[&within],
        )
        .await
        .map_err(engine("reading the cluster's live nodes"))?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(|e| Error::Corrupt { key: "cluster_nodes".into(), reason: e.to_string() }))
        .collect()
}

/// Forgets a node that stopped, so that the others share its shards out at once.
pub(crate) async fn leave(client: &Client, owner: &str) -> Result<()> {
    client
        .execute("DELETE FROM cluster_nodes WHERE owner = $1", &[&owner])
        .await
        .map_err(engine("recording that this node left"))?;
    Ok(())
}
