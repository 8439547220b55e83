//! One active node per shared store (PostgreSQL), the others standing by.
//!
//! A node serves only while it holds the store's shard lease. It takes the
//! lease before recovery (waiting, as a standby, while another live node
//! holds it), installs the lease's epoch as the fence every write of its
//! store must pass, and renews it in the background. When a renewal finds
//! the epoch moved on (another node took over while this one was paused or
//! cut off), or it could not renew before the lease ran out, the node has
//! lost the store and must stop: [`Ownership::lost`] resolves, and its
//! writes are refused by the database meanwhile. A graceful stop releases
//! the lease, so that a standby takes over at once instead of after it expires.
//!
//! The store's workflows are placed in the cluster's shards
//! ([`sagaflow_store::shard_of`]), each with a lease and an epoch of its own,
//! and every write of a workflow checks its shard's epoch. By default a
//! node takes every shard or none, in one atomic step, so that the store
//! moves whole; with `--spread-shards` the nodes share the shards out and
//! each serves its share ([`spread`], ADR 0030).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{self, Fence, Store};

pub mod spread;

/// What `sagaflow cluster status` shows: read from the cluster's database,
/// so that it answers while no node serves.
pub use sagaflow_store_postgres::{ClusterView, MAX_SHARDS, cluster_view};

/// How long a lease lasts without renewal: a dead node's store is taken over
/// this long after its last renewal, at most.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// How often the owner renews, and a standby asks again: several renewals
/// fit in one lease, so that one slow round trip loses nothing.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store's lease: {0}")]
    Store(#[from] store::Error),
    #[error("the store refuses writes, so this node cannot serve: {0}")]
    Broken(String),
}

/// This node's hold on the store.
pub struct Ownership {
    store: Arc<dyn Store>,
    owner: String,
    fences: Vec<Fence>,
    lost: watch::Receiver<Option<String>>,
    renewer: JoinHandle<()>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership").field("owner", &self.owner).field("fences", &self.fences).finish_non_exhaustive()
    }
}

/// A name for this process that no other process ever had: a restarted
/// node must not inherit its predecessor's lease.
pub fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let unique = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &unique[unique.len() - 8..])
}

/// The name a node holds the lease under: its id and, when it takes
/// forwarded calls, the `host:port` it serves gRPC at, which standbys read
/// from the lease to forward to it.
pub fn owner_name(node: &str, address: Option<&str>) -> String {
    match address {
        Some(address) => format!("{node}@{address}"),
        None => node.to_owned(),
    }
}

/// Where the lease's holder serves, if it said.
pub fn address_of(owner: &str) -> Option<&str> {
    owner.split_once('@').map(|(_, address)| address).filter(|a| !a.is_empty())
}

impl Ownership {
    /// Takes the store for `owner`, waiting while another live node holds
    /// it; meanwhile `serving` names where the holder serves (`None` when
    /// the store is free or its holder did not say).
    pub async fn take(
        store: Arc<dyn Store>,
        owner: String,
        serving: &watch::Sender<Option<String>>,
    ) -> Result<Self, Error> {
        let ttl = millis(LEASE_TTL);
        let shards: Vec<u32> = (0..store.shard_count()).collect();
        let mut waited = false;
        let leases = loop {
            // A store that broke (its database connection did) never serves:
            // the process ends, and its supervisor starts it afresh.
            if let Some(failure) = store.write_failure() {
                return Err(Error::Broken(failure));
            }
            let leases = store.acquire_shards(&shards, &owner, ttl).await?;
            if leases.iter().all(|l| l.owner == owner) {
                serving.send_replace(None);
                break leases;
            }
            // Nodes take every shard or none: any live holder serves them all.
            let held = leases.iter().find(|l| l.owner != owner && !l.owner.is_empty());
            let holder = held.and_then(|l| address_of(&l.owner)).map(str::to_owned);
            serving.send_if_modified(|now| {
                let changed = *now != holder;
                *now = holder.clone();
                changed
            });
            if !waited {
                let holder = held.map_or("", |l| l.owner.as_str());
                tracing::info!(%holder, node = %owner, "standby: another node holds the store; waiting for its lease to end");
                waited = true;
            }
            tokio::time::sleep(RENEW_EVERY).await;
        };
        let fences: Vec<Fence> = leases.iter().map(|l| Fence { shard: l.shard, epoch: l.epoch }).collect();
        store.fence(&fences);
        for fence in &fences {
            metrics::gauge!("sagaflow_store_epoch", "shard" => fence.shard.to_string()).set(fence.epoch as f64);
        }
        record_shards(fences.len(), store.shard_count());
        tracing::info!(node = %owner, shards = fences.len(), epochs = ?leases.iter().map(|l| l.epoch).collect::<Vec<_>>(), "took the store");
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(renew(Arc::clone(&store), owner.clone(), fences.clone(), lost_tx));
        Ok(Self { store, owner, fences, lost, renewer })
    }

    /// Resolves, with the reason, once this node no longer owns the store.
    pub async fn lost(&self) -> String {
        reason_lost(&self.lost).await
    }

    /// Gives the store up for a standby to take at once (unless it was lost).
    pub async fn release(self) {
        self.renewer.abort();
        shards_held(0);
        if self.lost.borrow().is_some() {
            return;
        }
        give_up(&*self.store, &self.owner, &self.fences).await;
        if let Err(e) = self.store.leave(&self.owner).await {
            tracing::warn!(error = %e, "could not record that this node left");
        }
    }
}

/// Releases the lease, so that a standby takes over at once; bounded, since
/// the database may not answer at all. Without it, the lease expires.
async fn give_up(store: &dyn Store, owner: &str, fences: &[Fence]) {
    match tokio::time::timeout(RENEW_EVERY * 2, store.release_shards(fences)).await {
        Ok(Ok(())) => tracing::info!(node = %owner, shards = fences.len(), "released shard leases"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not release shard leases; another node takes them when they expire");
        }
        Err(_) => {
            tracing::warn!("the database did not answer the leases' release; another node takes them when they expire")
        }
    }
}

/// Waits for the renewer to say why the node can no longer serve.
async fn reason_lost(lost: &watch::Receiver<Option<String>>) -> String {
    let mut lost = lost.clone();
    match lost.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the lease renewal stopped".to_owned(),
    }
}

/// How many shards this node serves: summed over the nodes, every shard of
/// the cluster, unless some are unserved (the alert SagaflowShardsUnserved).
fn shards_held(count: usize) {
    metrics::gauge!("sagaflow_shards_held").set(count as f64);
}

/// A node that serves `held` of the cluster's `count` shards; a store of
/// its own is one shard, which it holds.
pub fn record_shards(held: usize, count: u32) {
    shards_held(held);
    metrics::gauge!("sagaflow_cluster_shards").set(f64::from(count));
}

/// Renews until the lease is lost. A renewal that fails for another reason
/// (the database unreachable) is retried until the lease would have run
/// out; past that, another node may own the store, so this one stops.
/// A store that refuses writes (a connection to its database broke) cannot
/// serve however long its lease lasts: the node gives the lease up, if the
/// database still takes that, so that a standby serves at once, and stops.
async fn renew(store: Arc<dyn Store>, owner: String, fences: Vec<Fence>, lost: watch::Sender<Option<String>>) {
    let lost = |reason: String| {
        shards_held(0);
        let _ = lost.send(Some(reason));
    };
    let mut valid_until = Instant::now() + LEASE_TTL;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if let Some(failure) = store.write_failure() {
            give_up(&*store, &owner, &fences).await;
            lost(format!("the store refuses writes: {failure}"));
            return;
        }
        let asked = Instant::now();
        // A renewal stuck on a silent network fails when the lease runs
        // out: past that, another node may own the store. One woken from a
        // pause past that still asks, to learn whether one does.
        let answer_by = valid_until.max(asked + RENEW_EVERY);
        let renewal = tokio::time::timeout_at(answer_by, store.renew_shards(&fences, &owner, millis(LEASE_TTL)));
        let renewed = renewal.await.unwrap_or_else(|_| {
            Err(store::Error::Engine("the database did not answer before the lease ran out".to_owned()))
        });
        match renewed {
            Ok(_) => valid_until = asked + LEASE_TTL,
            Err(e @ store::Error::Fenced { .. }) => {
                lost(format!("another node took the store over: {e}"));
                return;
            }
            Err(e) if Instant::now() >= valid_until => {
                lost(format!("the store's lease ran out while it could not be renewed: {e}"));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the store's lease; retrying"),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
