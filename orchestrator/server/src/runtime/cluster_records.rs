//! On a shared store, the records of the cluster as a whole are written by
//! whichever node takes the call (a definition registered or deprecated, a
//! queue paused or resumed); every other node learns them from the store
//! (ADR 0030). Each node reads them every [`LEARN_EVERY`], and at once (at
//! most once a [`LEARN_AT_MOST`]) when a start names a type or version it
//! does not know, so that a start right after a registration elsewhere
//! works.

use std::time::{Duration, Instant};

use super::definitions::stored_entry;
use super::timers::now_ms;
use super::{Result, Runtime};

/// How often a node reads the cluster's definitions and queue pauses.
pub const LEARN_EVERY: Duration = Duration::from_secs(2);
/// A start of an unknown type reads the definitions at most this often:
/// a flood of such starts must not become a flood of reads.
const LEARN_AT_MOST: Duration = Duration::from_secs(1);

impl Runtime {
    /// Whether other nodes write this runtime's store too.
    pub(super) fn store_is_shared(&self) -> bool {
        self.inner.store.fences().is_some()
    }

    /// Learns the cluster's records for as long as the runtime runs.
    pub(super) async fn learn_cluster_records(self) {
        let mut ticker = tokio::time::interval(LEARN_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.learn_definitions().await {
                tracing::warn!(error = %e, "could not read the cluster's definitions; the next pass retries");
            }
            if let Err(e) = self.learn_queue_pauses().await {
                tracing::warn!(error = %e, "could not read the cluster's queue pauses; the next pass retries");
            }
        }
    }

    /// Reads the definitions for a caller that found one missing; whether
    /// they may have changed since it looked. Callers at once share one
    /// read, and reads are [`LEARN_AT_MOST`] apart: a flood of starts of
    /// unknown types waits, and does not become a flood of reads.
    pub(super) async fn learn_definitions_now(&self) -> bool {
        if !self.store_is_shared() {
            return false;
        }
        let asked = Instant::now();
        let mut last = self.inner.definitions_learned.lock().await;
        if last.is_some_and(|read| read >= asked) {
            // Read after this caller looked, while it waited.
            return true;
        }
        if let Some(read) = *last {
            tokio::time::sleep_until((read + LEARN_AT_MOST).into()).await;
        }
        *last = Some(Instant::now());
        match self.learn_definitions().await {
            Ok(learned) => learned > 0,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the cluster's definitions");
                false
            }
        }
    }

    /// Adds the definitions another node registered and marks those it
    /// deprecated; returns how many changed here.
    async fn learn_definitions(&self) -> Result<usize> {
        // Under the registration lock, so that a registration here is
        // either in the store read or already in the registry.
        let _serialised = self.inner.registering.lock().await;
        let records = self.inner.store.definitions().await?;
        let news: Vec<_> = {
            let registry = self.registry();
            records
                .into_iter()
                .filter(|r| registry.entry(&r.workflow_type, r.version).is_none_or(|e| r.deprecated && !e.deprecated))
                .collect()
        };
        let mut learned = 0;
        for record in news {
            let (workflow_type, version) = (record.workflow_type.clone(), record.version);
            let entry = match stored_entry(record) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(%workflow_type, version, error = %e, "a stored definition cannot be used here");
                    continue;
                }
            };
            let mut registry = self.registry_mut();
            if let Err(conflict) = registry.check(&entry) {
                tracing::error!(%conflict, "a definition stored by another node differs from this node's");
                continue;
            }
            tracing::info!(%workflow_type, version, deprecated = entry.deprecated, "learned a definition from the cluster");
            registry.insert(entry);
            learned += 1;
        }
        Ok(learned)
    }

    /// Pauses the queues another node paused, and resumes those it resumed.
    async fn learn_queue_pauses(&self) -> Result<()> {
        let _serialised = self.inner.pausing.lock().await;
        let stored = self.inner.store.queue_pauses().await?;
        let dispatch = &self.inner.dispatch;
        let mut changed = false;
        for record in &stored {
            if !dispatch.is_paused(&record.queue) {
                tracing::warn!(queue = %record.queue, reason = %record.reason, "activity queue paused by another node");
                dispatch.pause(record.clone());
                changed = true;
            }
        }
        for paused in dispatch.paused_queues() {
            if !stored.iter().any(|r| r.queue == paused.queue) {
                tracing::info!(queue = %paused.queue, "activity queue resumed by another node");
                dispatch.resume(&paused.queue, now_ms());
                changed = true;
            }
        }
        if changed {
            crate::metrics::record_paused_queues(&dispatch.paused_queues());
        }
        Ok(())
    }
}
