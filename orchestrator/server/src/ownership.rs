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
//! One shard for now: the whole store moves as one. Several shards spread
//! over several nodes use the same lease and fence, per shard (ADR 0030).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{self, Fence, Store};

/// What `sagaflow cluster status` shows: read from the cluster's database,
/// so that it answers while no node serves.
pub use sagaflow_store_postgres::{ClusterView, cluster_view};

/// The shard the whole store is, while it has one.
const SHARD: u32 = 0;

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
    fence: Fence,
    lost: watch::Receiver<Option<String>>,
    renewer: JoinHandle<()>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership").field("owner", &self.owner).field("fence", &self.fence).finish_non_exhaustive()
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
        let mut waited = false;
        let lease = loop {
            // A store that broke (its database connection did) never serves:
            // the process ends, and its supervisor starts it afresh.
            if let Some(failure) = store.write_failure() {
                return Err(Error::Broken(failure));
            }
            let lease = store.acquire_shard(SHARD, &owner, ttl).await?;
            if lease.owner == owner {
                serving.send_replace(None);
                break lease;
            }
            let holder = address_of(&lease.owner).map(str::to_owned);
            serving.send_if_modified(|now| {
                let changed = *now != holder;
                *now = holder.clone();
                changed
            });
            if !waited {
                tracing::info!(holder = %lease.owner, node = %owner, "standby: another node holds the store; waiting for its lease to end");
                waited = true;
            }
            tokio::time::sleep(RENEW_EVERY).await;
        };
        let fence = Fence { shard: SHARD, epoch: lease.epoch };
        store.fence(fence);
        metrics::gauge!("sagaflow_store_epoch").set(lease.epoch as f64);
        tracing::info!(node = %owner, epoch = lease.epoch, "took the store");
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(renew(Arc::clone(&store), owner.clone(), fence, lost_tx));
        Ok(Self { store, owner, fence, lost, renewer })
    }

    pub fn epoch(&self) -> u64 {
        self.fence.epoch
    }

    /// Resolves, with the reason, once this node no longer owns the store.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the lease renewal stopped".to_owned(),
        }
    }

    /// Gives the store up for a standby to take at once (unless it was lost).
    pub async fn release(self) {
        self.renewer.abort();
        if self.lost.borrow().is_some() {
            return;
        }
        give_up(&*self.store, &self.owner, self.fence).await;
    }
}

/// Releases the lease, so that a standby takes over at once; bounded, since
/// the database may not answer at all. Without it, the lease expires.
async fn give_up(store: &dyn Store, owner: &str, fence: Fence) {
    match tokio::time::timeout(RENEW_EVERY * 2, store.release_shard(fence)).await {
        Ok(Ok(())) => tracing::info!(node = %owner, epoch = fence.epoch, "released the store"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not release the store's lease; a standby takes over when it expires");
        }
        Err(_) => {
            tracing::warn!("the database did not answer the lease's release; a standby takes over when it expires")
        }
    }
}

/// Renews until the lease is lost. A renewal that fails for another reason
/// (the database unreachable) is retried until the lease would have run
/// out; past that, another node may own the store, so this one stops.
/// A store that refuses writes (a connection to its database broke) cannot
/// serve however long its lease lasts: the node gives the lease up, if the
/// database still takes that, so that a standby serves at once, and stops.
async fn renew(store: Arc<dyn Store>, owner: String, fence: Fence, lost: watch::Sender<Option<String>>) {
    let mut valid_until = Instant::now() + LEASE_TTL;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if let Some(failure) = store.write_failure() {
            give_up(&*store, &owner, fence).await;
            let _ = lost.send(Some(format!("the store refuses writes: {failure}")));
            return;
        }
        let asked = Instant::now();
        // A renewal stuck on a silent network fails when the lease runs
        // out: past that, another node may own the store. One woken from a
        // pause past that still asks, to learn whether one does.
        let answer_by = valid_until.max(asked + RENEW_EVERY);
        let renewal = tokio::time::timeout_at(answer_by, store.renew_shard(fence, &owner, millis(LEASE_TTL)));
        let renewed = renewal.await.unwrap_or_else(|_| {
            Err(store::Error::Engine("the database did not answer before the lease ran out".to_owned()))
        });
        match renewed {
            Ok(_) => valid_until = asked + LEASE_TTL,
            Err(e @ store::Error::Fenced { .. }) => {
                let _ = lost.send(Some(format!("another node took the store over: {e}")));
                return;
            }
            Err(e) if Instant::now() >= valid_until => {
                let _ = lost.send(Some(format!("the store's lease ran out while it could not be renewed: {e}")));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the store's lease; retrying"),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
