//! The outbox relay: durable outbox records → JetStream, deleted after PubAck.
//!
//! Each round reads the oldest records (only durable ones: it waits on the
//! store's barrier first), publishes a *window* of them, awaits the PubAcks
//! in order, and deletes exactly the acknowledged records. A window never
//! holds two events of one workflow, and the next window starts only once
//! the whole current one is stored, so within a workflow no event can
//! overtake an earlier one, even when a publish is lost and retried while
//! a later one went through. Across workflows, publishes are pipelined.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use tokio::sync::watch;

use super::broker::{self, Event};
use super::{Backoff, Error, RelayOptions, Result};
use sagaflow_store::{OutboxRecord, Store};

/// While idle, the relay re-reads the outbox at least this often, in case a
/// change signal was missed.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Counting the whole backlog means scanning it; do it at most this often.
const COUNT_EVERY: Duration = Duration::from_secs(1);
const COUNT_PAGE: usize = 4096;

/// Drains the outbox into JetStream until told to stop. Built from
/// [`RelayOptions`]; see [`Relay::run`].
pub struct Relay {
    options: RelayOptions,
    store: Arc<dyn Store>,
    /// Ticks when a commit added outbox records, so that the relay wakes at once.
    outbox_changes: watch::Receiver<u64>,
}

/// What one window came to.
#[derive(Debug, Default, PartialEq, Eq)]
struct WindowOutcome {
    /// Outbox seqs of the events the broker stored (or already had).
    acked: Vec<u64>,
    duplicates: u64,
    /// The first failure, if any event of the window was not acknowledged.
    failure: Option<String>,
}

impl Relay {
    pub fn new(options: RelayOptions, store: Arc<dyn Store>, outbox_changes: watch::Receiver<u64>) -> Self {
        Self { options, store, outbox_changes }
    }

    /// The event loop. It never gives up on the broker: while it is away the
    /// relay backs off (capped) and the outbox grows, which the
    /// `sagaflow_outbox_backlog` gauge shows. It stops when `stop` turns true;
    /// stopping mid-window is safe, since unacknowledged records stay.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let client = match broker::connect(&self.options.url, "sagaflow-relay", self.options.backoff_max).await {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "the outbox relay cannot start");
                return;
            }
        };
        // The client connects in the background; give a reachable broker a
        // moment, so that a normal start does not begin with a failed round.
        let connecting = async {
            while !broker::connected(&client) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(2), connecting) => {}
            _ = stop.changed() => return,
        }
        let js = jetstream::ContextBuilder::new().timeout(self.options.ack_timeout).build(client.clone());
        let mut changes = self.outbox_changes.clone();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut backlog = Backlog::default();
        let mut stream_ready = false;
        let mut published_total = 0u64;
        // Logged once per outage, not once per retry.
        let mut failing = false;
        tracing::info!(url = %self.options.url, stream = %self.options.stream, "outbox relay started");
        while !*stop.borrow() {
            changes.mark_unchanged();
            // Dropping a round midway is safe: what was not deleted is
            // published again, and JetStream drops the copies.
            let round = tokio::select! {
                round = self.round(&client, &js, &mut stream_ready, &mut backlog, &mut published_total) => round,
                _ = stop.changed() => break,
            };
            if round.is_ok() && failing {
                tracing::info!("outbox relay is publishing again");
                failing = false;
            }
            // Idle: sleep until a decision writes events (or the poll). Failed:
            // back off, whatever is written meanwhile.
            let (wait, wake_on_change) = match round {
                Ok(Round::Progress) => {
                    backoff.reset();
                    continue;
                }
                Ok(Round::Idle) => {
                    backoff.reset();
                    (IDLE_POLL, true)
                }
                Err(e) => {
                    // The same record is retried; its Nats-Msg-Id makes a
                    // second copy harmless if the first one was stored.
                    metrics::counter!("sagaflow_outbox_relay_failures_total").increment(1);
                    let delay = backoff.next_delay();
                    if failing {
                        tracing::debug!(error = %e, retry_in = ?delay, "outbox relay round failed");
                    } else {
                        tracing::warn!(error = %e, "outbox relay cannot publish; events wait in the outbox, retrying with backoff");
                        failing = true;
                    }
                    (delay, false)
                }
            };
            tokio::select! {
                // A dropped sender stops the relay too, rather than spin.
                _ = stop.changed() => break,
                _ = changes.changed(), if wake_on_change => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    async fn round(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        stream_ready: &mut bool,
        backlog: &mut Backlog,
        published_total: &mut u64,
    ) -> Result<Round> {
        let store = &self.store;
        // Publish only what a crash cannot undo: an event relayed for a
        // decision that was then lost would be a lie.
        store.barrier().wait().await?;
        let page = store.outbox(0, self.options.window.max(1)).await?;
        backlog.observe(store.as_ref(), &page, self.options.window.max(1)).await?;
        if page.is_empty() {
            return Ok(Round::Idle);
        }
        if !broker::connected(client) {
            // Publishing now would only queue copies in the client.
            return Err(Error::broker("publish", "not connected"));
        }
        if !*stream_ready {
            broker::ensure_events_stream(js, &self.options).await?;
            *stream_ready = true;
        }
        let window = window(&page);
        let outcome = self.publish(js, window).await;
        if outcome.failure.is_some() {
            // A missing stream (deleted by hand) is recreated next round.
            *stream_ready = false;
        }
        if !outcome.acked.is_empty() {
            *published_total += outcome.acked.len() as u64;
            #[cfg(feature = "fault-injection")]
            fault_injection::crash_if_due(*published_total);
            store.delete_outbox(&outcome.acked).await?.wait().await?;
            backlog.deleted(outcome.acked.len());
            metrics::counter!("sagaflow_outbox_relayed_total").increment(outcome.acked.len() as u64);
            metrics::counter!("sagaflow_outbox_relay_duplicates_total").increment(outcome.duplicates);
        }
        match outcome.failure {
            Some(reason) => Err(Error::broker("publish", reason)),
            None => Ok(Round::Progress),
        }
    }

    /// Sends the whole window, then awaits each PubAck in order.
    async fn publish(&self, js: &jetstream::Context, window: &[OutboxRecord]) -> WindowOutcome {
        let mut outcome = WindowOutcome::default();
        let mut pending: Vec<(u64, PublishAckFuture)> = Vec::with_capacity(window.len());
        for record in window {
            let event = Event::from_outbox(record);
            let message = PublishMessage::build()
                .payload(event.payload.clone().into())
                .headers(event.headers())
                .message_id(&event.event_id);
            match js.send_publish(event.subject(), message).await {
                Ok(ack) => pending.push((record.seq, ack)),
                Err(e) => {
                    outcome.failure = Some(format!("{}: {e}", record.event_id));
                    break;
                }
            }
        }
        for (seq, ack) in pending {
            match ack.await {
                Ok(ack) => {
                    outcome.duplicates += u64::from(ack.duplicate);
                    outcome.acked.push(seq);
                }
                Err(e) => {
                    if outcome.failure.is_none() {
                        outcome.failure = Some(format!("outbox #{seq}: {e}"));
                    }
                }
            }
        }
        outcome
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// The outbox is empty.
    Idle,
    /// A window went through; there may be more.
    Progress,
}

/// The longest prefix of `page` in which no workflow appears twice (at least
/// one record): these may be in flight together without reordering a workflow.
fn window(page: &[OutboxRecord]) -> &[OutboxRecord] {
    let mut seen = HashSet::new();
    let end = page.iter().position(|r| !seen.insert(r.workflow_id.as_str())).unwrap_or(page.len());
    &page[..end.max(1).min(page.len())]
}

/// The `sagaflow_outbox_backlog` gauge: the number of outbox records.
///
/// A page shorter than its limit is the whole outbox, so the common cases
/// (drained, or a small backlog) need no extra read; a full page means a
/// larger backlog, counted by a paged scan at most once per [`COUNT_EVERY`]
/// and kept current in between by what was deleted.
#[derive(Debug, Default)]
struct Backlog {
    count: u64,
    counted_at: Option<Instant>,
}

impl Backlog {
    async fn observe(&mut self, store: &dyn Store, page: &[OutboxRecord], limit: usize) -> Result<()> {
        if page.len() < limit {
            self.count = page.len() as u64;
        } else if self.counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
            self.count = count(store).await?;
            self.counted_at = Some(Instant::now());
        } else {
            self.count = self.count.max(page.len() as u64);
        }
        self.publish();
        Ok(())
    }

    fn deleted(&mut self, n: usize) {
        self.count = self.count.saturating_sub(n as u64);
        self.publish();
    }

    fn publish(&self) {
        metrics::gauge!("sagaflow_outbox_backlog").set(self.count as f64);
    }
}

async fn count(store: &dyn Store) -> Result<u64> {
    let mut total = 0u64;
    let mut after = 0;
    loop {
        let page = store.outbox(after, COUNT_PAGE).await?;
        total += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == COUNT_PAGE => after = last.seq,
            _ => return Ok(total),
        }
    }
}

/// Test builds only (the tests enable the feature; a release build has no
/// trace of it): `SAGAFLOW_FAULT_RELAY_CRASH_AFTER_PUBLISHED=N` aborts the
/// process once N events were acknowledged by the broker and before their
/// outbox records are deleted, the exact window a crash re-publishes.
#[cfg(feature = "fault-injection")]
mod fault_injection {
    const CRASH_AFTER_PUBLISHED: &str = "SAGAFLOW_FAULT_RELAY_CRASH_AFTER_PUBLISHED";

    pub(super) fn crash_if_due(published_total: u64) {
        let limit = std::env::var(CRASH_AFTER_PUBLISHED).ok().and_then(|v| v.parse::<u64>().ok());
        if limit.is_some_and(|limit| published_total >= limit) {
            tracing::error!(published = published_total, "fault injection: crashing after publish, before delete");
            std::process::abort();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(seq: u64, workflow_id: &str) -> OutboxRecord {
        OutboxRecord { seq, workflow_id: workflow_id.into(), ..Default::default() }
    }

    #[test]
    fn a_window_never_holds_two_events_of_one_workflow() {
        let page = [record(1, "a"), record(2, "b"), record(3, "c"), record(4, "a"), record(5, "d")];
        let seqs: Vec<u64> = window(&page).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let same = [record(1, "a"), record(2, "a")];
        assert_eq!(window(&same).len(), 1, "a workflow's events go one at a time");
        assert!(window(&[]).is_empty());
    }

    #[tokio::test]
    async fn the_backlog_counts_a_short_page_without_a_scan() {
        let store = sagaflow_store::MemoryStore::in_memory();
        let mut backlog = Backlog::default();
        backlog.observe(&store, &[record(1, "a"), record(2, "b")], 10).await.unwrap();
        assert_eq!(backlog.count, 2);
        backlog.deleted(2);
        assert_eq!(backlog.count, 0);
    }
}
