//! Spreading the cluster's shards over its live nodes (`--spread-shards`,
//! ADR 0030).
//!
//! Every node serves at once, with whatever shards it holds (none, at
//! first), and aims at its share of them: the live nodes (those that renewed
//! or asked lately, [`Store::live_nodes`]) in name order, the first
//! `N mod L` of them one shard more than the others. Every node computes
//! the same shares from the same list, so that they agree without talking:
//! - **below its share**, a node takes shards that are free (released, or
//!   never taken) or whose holder is no longer live, one lease at a time;
//!   the lease statement itself refuses one that has not expired yet;
//! - **above it** (a node joined), it gives the surplus up: its runtime
//!   stops serving those shards, the store's fences drop them, and the
//!   leases are released for the newcomer to take at once;
//! - **a renewal that finds a shard fenced** (the node was paused or cut
//!   off past its lease, and another took the shard) drops that shard and
//!   goes on serving the others: its writes of it were already refused by
//!   the database, by epoch. It then asks for a share again like any node.
//!
//! Two tasks: the renewer keeps the leases alive every second whatever
//! happens, and the balancer moves shards, which may wait on a recovery.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Error, LEASE_TTL, RENEW_EVERY, millis, record_shards, shards_held};
use crate::runtime::Runtime;
use crate::store::{self, Fence, ShardLease, Store};

/// How recently a node must have renewed or asked to count as live. A
/// node renews every second, so three missed renewals; shorter than a
/// lease, so that the survivors' shares have grown by the time a dead
/// node's leases run out.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// How long a joining node waits for the others to hand it some of its share.
const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// This node's hold on its share of the cluster's shards.
pub struct Spread {
    node: Arc<Node>,
    lost: watch::Receiver<Option<String>>,
    renewer: JoinHandle<()>,
    balancer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spread").field("owner", &self.node.owner).field("held", &self.node.held()).finish()
    }
}

/// What the renewer and the balancer share.
struct Node {
    store: Arc<dyn Store>,
    owner: String,
    /// The leases held, in shard order; the store is fenced for exactly these.
    held: Mutex<Vec<Fence>>,
    /// Woken when the renewer dropped shards, for the balancer to stop
    /// serving them at once.
    dropped: Notify,
}

impl Spread {
    /// Joins the cluster as `owner` and takes the free shards of its share;
    /// the node serves at once, with those (perhaps none). Renewals start
    /// now, so that a long recovery does not let the leases run out.
    pub async fn join(store: Arc<dyn Store>, owner: String) -> Result<Self, Error> {
        if let Some(failure) = store.write_failure() {
            return Err(Error::Broken(failure));
        }
        let node = Arc::new(Node { store, owner, held: Mutex::default(), dropped: Notify::new() });
        // Fenced for nothing yet: a shared store writes only what it holds.
        node.hold(|_| {});
        record_shards(0, node.store.shard_count());
        // Seen before counting the live nodes: the shares include this one.
        node.store.renew_shards(&[], &node.owner, millis(LEASE_TTL)).await?;
        let mut share = node.balance(None).await?;
        // The others hand their surplus over within a second or two of
        // seeing this node: wait for some, so that the node starts with
        // shards to write its records with (definitions applied at start).
        let deadline = Instant::now() + JOIN_WITHIN;
        while share > 0 && node.held().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(RENEW_EVERY / 4).await;
            node.store.renew_shards(&[], &node.owner, millis(LEASE_TTL)).await?;
            share = node.balance(None).await?;
        }
        tracing::info!(node = %node.owner, shards = ?node.shards(), "joined the cluster");
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(renew(Arc::clone(&node), lost_tx));
        Ok(Self { node, lost, renewer, balancer: None })
    }

    /// Where this node serves, as its leases say.
    pub fn address(&self) -> Option<&str> {
        super::address_of(&self.node.owner)
    }

    /// Moves shards in and out of `runtime` from now on (its recovery
    /// served the shards held when it started).
    pub fn attach(&mut self, runtime: Runtime) {
        let node = Arc::clone(&self.node);
        self.balancer = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(RENEW_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = node.dropped.notified() => {}
                }
                if let Err(e) = node.balance(Some(&runtime)).await {
                    tracing::warn!(error = %e, "could not balance the cluster's shards; trying again");
                }
            }
        }));
    }

    /// Resolves, with the reason, once this node cannot serve at all (its
    /// store refuses writes); losing a shard is not that.
    pub async fn lost(&self) -> String {
        super::reason_lost(&self.lost).await
    }

    /// Leaves the cluster: releases every lease, for the other nodes to
    /// take at once, and stops counting as live.
    pub async fn release(self) {
        self.renewer.abort();
        if let Some(balancer) = self.balancer {
            balancer.abort();
        }
        if self.lost.borrow().is_some() {
            return;
        }
        let held = self.node.held();
        self.node.hold(Vec::clear);
        super::give_up(&*self.node.store, &self.node.owner, &held).await;
        if let Err(e) = self.node.store.leave(&self.node.owner).await {
            tracing::warn!(error = %e, "could not record that this node left; the others notice in seconds");
        }
    }
}

impl Node {
    fn held(&self) -> Vec<Fence> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn shards(&self) -> Vec<u32> {
        self.held().iter().map(|f| f.shard).collect()
    }

    /// Changes the leases held, and fences the store for them in the same
    /// step, so that the store never writes a shard this node let go.
    fn hold(&self, change: impl FnOnce(&mut Vec<Fence>)) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut held);
        held.sort_unstable_by_key(|f| f.shard);
        held.dedup_by_key(|f| f.shard);
        self.store.fence(&held);
        shards_held(held.len());
    }

    /// One round: stops serving what the renewer dropped, then moves
    /// towards this node's share, which it returns.
    async fn balance(&self, runtime: Option<&Runtime>) -> Result<usize, store::Error> {
        if let Some(runtime) = runtime {
            self.serve_only_held(runtime).await;
        }
        let live = self.store.live_nodes(millis(LIVE_WITHIN)).await?;
        let share = share_of(&self.owner, &live, self.store.shard_count());
        let held = self.held();
        if held.len() > share {
            // The highest shards go: any choice works, one that every node
            // makes alike keeps the moves few.
            self.hand_over(&held[share..], runtime).await;
        } else if held.len() < share {
            let leases = self.store.shard_leases().await?;
            self.take(&leases, &live, share - held.len(), runtime).await?;
        }
        Ok(share)
    }

    /// Makes the runtime stop serving the shards no longer held.
    async fn serve_only_held(&self, runtime: &Runtime) {
        let held: BTreeSet<u32> = self.shards().into_iter().collect();
        let stale: Vec<u32> = runtime.served_shards().into_iter().filter(|s| !held.contains(s)).collect();
        if stale.is_empty() {
            return;
        }
        if let Err(e) = runtime.give_up_shards(&stale).await {
            tracing::error!(error = %e, shards = ?stale, "could not stop serving shards this node lost");
        }
    }

    /// Gives `surplus` up for another node to take at once.
    async fn hand_over(&self, surplus: &[Fence], runtime: Option<&Runtime>) {
        let shards: Vec<u32> = surplus.iter().map(|f| f.shard).collect();
        if let Some(runtime) = runtime
            && let Err(e) = runtime.give_up_shards(&shards).await
        {
            tracing::error!(error = %e, ?shards, "could not stop serving surplus shards; keeping them");
            return;
        }
        self.hold(|held| held.retain(|f| !surplus.contains(f)));
        super::give_up(&*self.store, &self.owner, surplus).await;
        tracing::info!(node = %self.owner, ?shards, "handed shards over to the nodes that joined");
    }

    /// Takes up to `wanted` shards that are free or whose holder is gone,
    /// then serves them.
    async fn take(
        &self,
        leases: &[ShardLease],
        live: &[String],
        wanted: usize,
        runtime: Option<&Runtime>,
    ) -> Result<(), store::Error> {
        let ttl = millis(LEASE_TTL);
        let mut taken = Vec::new();
        let orphaned =
            leases.iter().filter(|l| l.owner != self.owner && (l.owner.is_empty() || !live.contains(&l.owner)));
        for lease in orphaned {
            if taken.len() == wanted {
                break;
            }
            // One at a time: a lease not yet expired must not hold up the others.
            let now = self.store.acquire_shards(&[lease.shard], &self.owner, ttl).await?;
            if let Some(mine) = now.into_iter().find(|l| l.shard == lease.shard && l.owner == self.owner) {
                metrics::gauge!("sagaflow_store_epoch", "shard" => mine.shard.to_string()).set(mine.epoch as f64);
                taken.push(Fence { shard: mine.shard, epoch: mine.epoch });
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        self.hold(|held| held.extend_from_slice(&taken));
        let shards: Vec<u32> = taken.iter().map(|f| f.shard).collect();
        tracing::info!(node = %self.owner, ?shards, epochs = ?taken.iter().map(|f| f.epoch).collect::<Vec<_>>(), "took shards");
        if let Some(runtime) = runtime
            && let Err(e) = runtime.take_shards(&shards).await
        {
            // Not served: another node may manage where this one could not.
            tracing::error!(error = %e, ?shards, "could not recover the shards taken; giving them back");
            self.hold(|held| held.retain(|f| !taken.contains(f)));
            super::give_up(&*self.store, &self.owner, &taken).await;
        }
        Ok(())
    }

    /// After a renewal was refused: drops the shards whose lease moved on
    /// (`named` is the one the refusal named, if the leases cannot be read).
    async fn drop_lost(&self, renewed: &[Fence], named: u32) {
        let lost: Vec<Fence> = match self.store.shard_leases().await {
            Ok(leases) => renewed
                .iter()
                .filter(|f| !leases.iter().any(|l| l.shard == f.shard && l.epoch == f.epoch && l.owner == self.owner))
                .copied()
                .collect(),
            Err(_) => renewed.iter().filter(|f| f.shard == named).copied().collect(),
        };
        self.drop_shards(&lost, "another node took them over while this one could not renew");
    }

    fn drop_shards(&self, lost: &[Fence], why: &str) {
        // Those handed over since the renewal read the set are gone already.
        let held = self.held();
        let lost: Vec<Fence> = lost.iter().filter(|f| held.contains(f)).copied().collect();
        if lost.is_empty() {
            return;
        }
        self.hold(|held| held.retain(|f| !lost.contains(f)));
        let shards: Vec<u32> = lost.iter().map(|f| f.shard).collect();
        tracing::warn!(node = %self.owner, ?shards, why, "lost shards; serving the others");
        self.dropped.notify_one();
    }
}

/// This node's share of `shards` among the `live` nodes (itself counted).
fn share_of(owner: &str, live: &[String], shards: u32) -> usize {
    let mut live: Vec<&str> = live.iter().map(String::as_str).collect();
    if !live.contains(&owner) {
        live.push(owner);
    }
    live.sort_unstable();
    live.dedup();
    let nodes = live.len();
    let position = live.iter().position(|n| *n == owner).unwrap_or(0);
    let shards = shards as usize;
    shards / nodes + usize::from(position < shards % nodes)
}

/// Renews the leases held every second. One that moved on is dropped (the
/// balancer stops serving it); when none could be renewed before they ran
/// out, every one is. A store that refuses writes (its connection broke)
/// cannot serve at all: its leases are given up and the node stops.
async fn renew(node: Arc<Node>, lost: watch::Sender<Option<String>>) {
    let ttl = millis(LEASE_TTL);
    let mut valid_until = Instant::now() + LEASE_TTL;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if let Some(failure) = node.store.write_failure() {
            let held = node.held();
            node.hold(Vec::clear);
            super::give_up(&*node.store, &node.owner, &held).await;
            let _ = lost.send(Some(format!("the store refuses writes: {failure}")));
            return;
        }
        let held = node.held();
        let asked = Instant::now();
        let answer_by = valid_until.max(asked + RENEW_EVERY);
        let renewal = tokio::time::timeout_at(answer_by, node.store.renew_shards(&held, &node.owner, ttl));
        let renewed = renewal.await.unwrap_or_else(|_| {
            Err(store::Error::Engine("the database did not answer before the leases ran out".to_owned()))
        });
        match renewed {
            Ok(_) => valid_until = asked + LEASE_TTL,
            Err(store::Error::Fenced { shard, .. }) => {
                // The others were renewed all the same.
                valid_until = asked + LEASE_TTL;
                node.drop_lost(&held, shard).await;
            }
            Err(e) if Instant::now() >= valid_until => {
                node.drop_shards(&held, &format!("their leases ran out while they could not be renewed: {e}"));
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the shards' leases; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn shares_add_up_to_every_shard_and_differ_by_one_at_most() {
        let live = nodes(&["c", "a", "b"]);
        let shares: Vec<usize> = ["a", "b", "c"].iter().map(|n| share_of(n, &live, 8)).collect();
        assert_eq!(shares, [3, 3, 2]);
        for count in 1..=20 {
            let total: usize = live.iter().map(|n| share_of(n, &live, count)).sum();
            assert_eq!(total, count as usize, "{count} shards over 3 nodes");
        }
    }

    #[test]
    fn a_node_not_yet_listed_counts_itself() {
        assert_eq!(share_of("b", &nodes(&["a"]), 8), 4);
        assert_eq!(share_of("a", &[], 8), 8);
        assert_eq!(share_of("d", &nodes(&["a", "b", "c"]), 2), 0, "more nodes than shards: the last hold none");
    }
}
