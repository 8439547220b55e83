//! The shards a runtime serves, and how it takes one or gives one up while
//! it runs (ADR 0030).
//!
//! A runtime drives the workflows of the shards it serves and no others: a
//! decision about a workflow of another shard is refused before it loads
//! anything ([`Error::NotServed`]), so that two nodes never both hold a
//! workflow's tasks, timers or hot state. The store's fences are the last
//! word (a write of a shard not fenced is refused there too); the runtime's
//! set is what keeps its memory in step with them:
//! - **Taking a shard**: its caller holds the shard's lease and has fenced
//!   the store for it. The runtime recovers the shard's tasks, timers and
//!   open workflows; the shard's decisions wait until that is done, so
//!   that none interleaves with the recovery (a task read before its
//!   outcome was recorded would be queued again, and run twice). Child
//!   steps and held children found wait until then too.
//! - **Giving a shard up**: the runtime stops serving it at once, waits for
//!   the decisions in flight (each holds its workflow's slot), then drops
//!   its queued and leased tasks, alarms, detector entries and hot states.
//!   Its caller then takes the shard off the store's fences and releases
//!   the lease. A worker still running one of its tasks keeps the outcome:
//!   it is not acknowledged here, and counts at the shard's new node.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};

use tokio::sync::watch;

use crate::store::{Fence, TaskRecord};

use super::{Error, Result, Runtime, SlotRef};

/// Which of the cluster's shards this runtime serves.
pub(super) struct Served {
    count: u32,
    /// The store is this process's alone (never fenced): every shard is
    /// served for good, and no check needs to look.
    alone: bool,
    serving: RwLock<BTreeSet<u32>>,
    /// Shards being recovered: their decisions wait for the recovery
    /// instead of being refused, since the tasks it queues may already be
    /// out with a worker whose outcome must count.
    recovering: RwLock<BTreeSet<u32>>,
    /// Bumped whenever a recovery ends, to wake the decisions it held.
    recovered: watch::Sender<u64>,
}

impl Served {
    /// Every shard the store is fenced for; every shard when it never was
    /// (a store this process has alone).
    pub(super) fn new(count: u32, fences: Option<Vec<Fence>>) -> Self {
        let alone = fences.is_none();
        let serving = match fences {
            Some(fences) => fences.into_iter().map(|f| f.shard).collect(),
            None => (0..count).collect(),
        };
        Self {
            count,
            alone,
            serving: RwLock::new(serving),
            recovering: RwLock::default(),
            recovered: watch::Sender::new(0),
        }
    }

    /// The cluster's shard count.
    pub(super) fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn shard_of(&self, workflow_id: &str) -> u32 {
        crate::store::shard_of(workflow_id, self.count)
    }

    pub(super) fn serves_shard(&self, shard: u32) -> bool {
        self.alone || self.serving.read().unwrap_or_else(PoisonError::into_inner).contains(&shard)
    }

    /// The shard of `workflow_id` when another node serves it: neither
    /// served here nor being recovered here.
    pub(super) fn elsewhere(&self, workflow_id: &str) -> Option<u32> {
        if self.alone {
            return None;
        }
        let shard = self.shard_of(workflow_id);
        let here =
            self.serves_shard(shard) || self.recovering.read().unwrap_or_else(PoisonError::into_inner).contains(&shard);
        (!here).then_some(shard)
    }

    /// Refuses a workflow of a shard this runtime does not serve.
    pub(super) fn check(&self, workflow_id: &str) -> Result<()> {
        if self.alone {
            return Ok(());
        }
        let shard = self.shard_of(workflow_id);
        if self.serves_shard(shard) {
            Ok(())
        } else {
            Err(Error::NotServed { workflow_id: workflow_id.to_owned(), shard })
        }
    }

    /// [`check`](Self::check), after waiting for the recovery of the
    /// workflow's shard if it is being taken.
    pub(super) async fn admit(&self, workflow_id: &str) -> Result<()> {
        if self.alone {
            return Ok(());
        }
        let shard = self.shard_of(workflow_id);
        if self.serves_shard(shard) {
            return Ok(());
        }
        // Subscribed before looking, so that a recovery ending in between is seen.
        let mut recovered = self.recovered.subscribe();
        while self.recovering.read().unwrap_or_else(PoisonError::into_inner).contains(&shard) {
            if recovered.changed().await.is_err() {
                break;
            }
        }
        self.check(workflow_id)
    }

    /// Refuses to move the shards of a store this process has alone.
    fn movable(&self) -> Result<()> {
        if self.alone {
            return Err(Error::FailedPrecondition(
                "this node's store is its own (sled or memory): its shards never move".into(),
            ));
        }
        Ok(())
    }

    fn recovering(&self, shards: &[u32], recovering: bool) {
        toggle(&self.recovering, shards, recovering);
        if !recovering {
            self.recovered.send_modify(|n| *n += 1);
        }
    }

    fn set(&self, shards: &[u32], serve: bool) {
        for shard in shards {
            assert!(*shard < self.count, "shard {shard} of a cluster of {} shards", self.count);
        }
        toggle(&self.serving, shards, serve);
    }

    pub(super) fn all(&self) -> bool {
        self.serving.read().unwrap_or_else(PoisonError::into_inner).len() == self.count as usize
    }

    pub(super) fn none(&self) -> bool {
        self.serving.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    pub(super) fn list(&self) -> Vec<u32> {
        self.serving.read().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}

/// Adds `shards` to `set`, or takes them out.
fn toggle(set: &RwLock<BTreeSet<u32>>, shards: &[u32], on: bool) {
    let mut set = set.write().unwrap_or_else(PoisonError::into_inner);
    for shard in shards {
        if on {
            set.insert(*shard);
        } else {
            set.remove(shard);
        }
    }
}

/// What a recovery found that acts on its own (and so decides): run only
/// once the recovered shards are served.
#[derive(Default)]
pub(super) struct Deferred {
    pub(super) child_tasks: Vec<TaskRecord>,
    pub(super) held_children: Vec<String>,
}

impl Runtime {
    /// The shard `workflow_id` belongs to in this runtime's cluster.
    pub fn shard_of(&self, workflow_id: &str) -> u32 {
        self.inner.served.shard_of(workflow_id)
    }

    /// Whether this runtime serves `shard` now.
    pub fn serves_shard(&self, shard: u32) -> bool {
        self.inner.served.serves_shard(shard)
    }

    /// How many shards the cluster has.
    pub fn shard_count(&self) -> u32 {
        self.inner.served.count()
    }

    /// Whether this runtime serves any shard (a node of a cluster with more
    /// nodes than shards, or one that just joined, may serve none).
    pub fn serves_any_shard(&self) -> bool {
        !self.inner.served.none()
    }

    /// Whether this runtime serves every shard of its cluster.
    pub fn serves_every_shard(&self) -> bool {
        self.inner.served.all()
    }

    /// The shards this runtime serves, in order.
    pub fn served_shards(&self) -> Vec<u32> {
        self.inner.served.list()
    }

    /// Serves `shards` from now on, after recovering their workflows. The
    /// caller holds their leases and has fenced the store for them.
    pub async fn take_shards(&self, shards: &[u32]) -> Result<()> {
        self.inner.served.movable()?;
        let taken: BTreeSet<u32> = shards.iter().copied().filter(|s| !self.inner.served.serves_shard(*s)).collect();
        if taken.is_empty() {
            return Ok(());
        }
        let served = &self.inner.served;
        let in_taken = |workflow_id: &str| taken.contains(&served.shard_of(workflow_id));
        let shards: Vec<u32> = taken.iter().copied().collect();
        served.recovering(&shards, true);
        let recovered = self.recover_where(&in_taken).await;
        if recovered.is_ok() {
            served.set(&shards, true);
        } else {
            // Half recovered, it is not served: its caller gives it back.
            self.forget_workflows(&in_taken);
        }
        served.recovering(&shards, false);
        self.resume_deferred(recovered?);
        let taken = shards;
        tracing::info!(shards = ?taken, "serving shards");
        Ok(())
    }

    /// Stops serving `shards` and forgets their workflows; the caller then
    /// takes them off the store's fences and releases their leases.
    pub async fn give_up_shards(&self, shards: &[u32]) -> Result<()> {
        let served = &self.inner.served;
        served.movable()?;
        served.set(shards, false);
        let given_up = |workflow_id: &str| shards.contains(&served.shard_of(workflow_id));
        let busy: Vec<(String, SlotRef)> = {
            let slots = self.inner.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.iter().filter(|(id, _)| given_up(id)).map(|(id, slot)| (id.clone(), SlotRef::clone(slot))).collect()
        };
        // A decision in flight holds its slot: once each lock is had, none
        // is left, and a later one finds the shard not served.
        for (workflow_id, slot) in busy {
            slot.lock().await.state = None;
            self.release(&workflow_id, slot);
        }
        self.forget_workflows(&given_up);
        tracing::info!(shards = ?shards, "gave shards up");
        Ok(())
    }

    /// Drops the tasks, alarms and detector entries of the workflows `gone` names.
    fn forget_workflows(&self, gone: &dyn Fn(&str) -> bool) {
        self.inner.dispatch.forget(gone);
        self.inner.timers.forget(gone);
        self.inner.stuck.forget(gone);
    }

    /// Starts what a recovery deferred: child steps, and held children's waits.
    pub(super) fn resume_deferred(&self, deferred: Deferred) {
        for task in &deferred.child_tasks {
            self.run_child_task(task);
        }
        for child in &deferred.held_children {
            self.hold_for_parent(child);
        }
    }
}
