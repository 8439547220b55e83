//! Workflows in the order they started, newest first: what the console's
//! list shows (ADR 0027).
//!
//! The store indexes workflows by id, and ids are not in time order (a
//! checkout's is derived from its request id), so "the newest 50" would read
//! every summary. This index keeps `(started_ms, workflow_id)` of every
//! workflow in memory, so that a page reads only the summaries it shows (and,
//! under a filter, those it examines). It is built by one scan of the
//! summaries the first time it is asked for, not at start: a server whose
//! console nobody opens pays nothing. Once built, the runtime keeps it
//! current: a start adds its workflow once durable, a deletion removes it.
//!
//! Changes that land while the scan runs are queued and applied after it, in
//! order, so none is lost (the scan may or may not have seen them: adding
//! twice and removing what is absent are both harmless).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sagaflow_proto::v1::WorkflowSummary;

use super::{Result, Runtime};
use crate::store::ListQuery;

/// Newest first; ties (same millisecond) by id.
type Key = (Reverse<i64>, Arc<str>);

#[derive(Debug)]
enum Change {
    Add(i64, Arc<str>),
    Remove(i64, Arc<str>),
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Unbuilt,
    /// A scan runs; the changes made meanwhile wait here.
    Building(Vec<Change>),
    Built(BTreeSet<Key>),
}

/// The index, owned by the runtime.
#[derive(Debug, Default)]
pub(super) struct Recent {
    state: Mutex<State>,
    /// Serialises builds, so that two first visitors scan once.
    building: tokio::sync::Mutex<()>,
}

impl Recent {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, change: Change) {
        match &mut *self.lock() {
            State::Unbuilt => {}
            State::Building(pending) => pending.push(change),
            State::Built(set) => apply(set, change),
        }
    }

    /// A workflow started (its start is durable).
    pub(super) fn add(&self, started_ms: i64, workflow_id: &str) {
        self.change(Change::Add(started_ms, workflow_id.into()));
    }

    /// A workflow was deleted.
    pub(super) fn remove(&self, started_ms: i64, workflow_id: &str) {
        self.change(Change::Remove(started_ms, workflow_id.into()));
    }
}

fn apply(set: &mut BTreeSet<Key>, change: Change) {
    match change {
        Change::Add(at, id) => {
            set.insert((Reverse(at), id));
        }
        Change::Remove(at, id) => {
            set.remove(&(Reverse(at), id));
        }
    }
}

/// Where a page of [`Runtime::newest`] starts: strictly older than this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_ms: i64,
    pub workflow_id: String,
}

/// What [`Runtime::newest`] reads.
pub struct NewestQuery<'a> {
    /// Start strictly after this row; `None`: from the newest.
    pub after: Option<Cursor>,
    /// Only workflows started at or after this time (Unix ms).
    pub started_from_ms: Option<i64>,
    /// Only workflows started at or before this time (Unix ms).
    pub started_to_ms: Option<i64>,
    /// Rows that count; the others are examined and skipped.
    pub filter: &'a (dyn Fn(&WorkflowSummary) -> bool + Sync),
    /// At most this many rows.
    pub limit: usize,
    /// At most this many summaries read before a partial page is returned:
    /// a filter that matches little must not read a whole large store in
    /// one request.
    pub examine_budget: usize,
}

impl std::fmt::Debug for NewestQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewestQuery")
            .field("after", &self.after)
            .field("started_from_ms", &self.started_from_ms)
            .field("started_to_ms", &self.started_to_ms)
            .field("limit", &self.limit)
            .field("examine_budget", &self.examine_budget)
            .finish_non_exhaustive()
    }
}

/// A page of [`Runtime::newest`].
#[derive(Debug, Clone, Default)]
pub struct NewestPage {
    pub workflows: Vec<WorkflowSummary>,
    /// Where the next page starts; `None` when nothing older is left.
    pub next: Option<Cursor>,
    /// How many summaries this page read.
    pub examined: usize,
    /// The page stopped at the budget, not because it was full or the end came.
    pub budget_spent: bool,
}

/// Keys are taken from the index this many at a time, so that its lock is
/// never held across the store reads.
const CHUNK: usize = 256;

impl Runtime {
    /// Builds the index once; later calls return at once.
    async fn recent_ready(&self) -> Result<()> {
        if matches!(*self.inner.recent.lock(), State::Built(_)) {
            return Ok(());
        }
        let _one_builder = self.inner.recent.building.lock().await;
        {
            let mut state = self.inner.recent.lock();
            match &*state {
                State::Built(_) => return Ok(()),
                State::Building(_) | State::Unbuilt => *state = State::Building(Vec::new()),
            }
        }
        let started = std::time::Instant::now();
        let keys = match self.start_keys().await {
            Ok(keys) => keys,
            Err(e) => {
                *self.inner.recent.lock() = State::Unbuilt;
                return Err(e);
            }
        };
        let mut set: BTreeSet<Key> = keys.into_iter().collect();
        let mut state = self.inner.recent.lock();
        if let State::Building(pending) = std::mem::take(&mut *state) {
            for change in pending {
                apply(&mut set, change);
            }
        }
        tracing::info!(workflows = set.len(), elapsed = ?started.elapsed(), "built the index of workflows by start time");
        *state = State::Built(set);
        Ok(())
    }

    /// Every workflow's (start time, id), read from the index a page at a time.
    async fn start_keys(&self) -> Result<Vec<Key>> {
        const PAGE: usize = 10_000;
        let mut keys = Vec::new();
        let mut query = ListQuery { limit: PAGE, scan_budget: usize::MAX, ..ListQuery::default() };
        loop {
            let page = self.inner.store.list(&query).await?;
            keys.extend(
                page.workflows.iter().map(|s| (Reverse(s.started_ms), Arc::<str>::from(s.workflow_id.as_str()))),
            );
            match page.next_after {
                Some(next) => query.after = Some(next),
                None => return Ok(keys),
            }
            // A page is a burst of reads; let other tasks run between them.
            tokio::task::yield_now().await;
        }
    }

    /// The next `CHUNK` keys of the index after `from`, within `oldest_ms`;
    /// and whether any key is left after them.
    fn recent_chunk(&self, from: &Bound<Key>, oldest_ms: i64) -> (Vec<Key>, bool) {
        let state = self.inner.recent.lock();
        let State::Built(set) = &*state else { return (Vec::new(), false) };
        let mut range = set.range((from.clone(), Bound::Unbounded)).take_while(|(Reverse(at), _)| *at >= oldest_ms);
        let chunk: Vec<Key> = range.by_ref().take(CHUNK).cloned().collect();
        let more = range.next().is_some();
        (chunk, more)
    }

    /// Workflows newest first (by start time, then id), each read from the
    /// index after the durability barrier, as `list` reads them.
    pub async fn newest(&self, query: NewestQuery<'_>) -> Result<NewestPage> {
        self.recent_ready().await?;
        self.inner.store.barrier().wait().await?;
        let oldest_ms = query.started_from_ms.unwrap_or(i64::MIN);
        let to_bound = |to: i64| Bound::Included((Reverse(to), Arc::from("")));
        let mut from: Bound<Key> = match (&query.after, query.started_to_ms) {
            // A cursor newer than the bound: start at the bound. (Everything
            // started at or before `to`: the empty id sorts before any real
            // id of that millisecond.)
            (Some(c), Some(to)) if c.started_ms > to => to_bound(to),
            (Some(c), _) => Bound::Excluded((Reverse(c.started_ms), Arc::from(c.workflow_id.as_str()))),
            (None, Some(to)) => to_bound(to),
            (None, None) => Bound::Unbounded,
        };
        let (limit, budget) = (query.limit.max(1), query.examine_budget.max(1));
        let mut page = NewestPage::default();
        loop {
            let (chunk, more) = self.recent_chunk(&from, oldest_ms);
            let total = chunk.len();
            for (i, key) in chunk.into_iter().enumerate() {
                page.examined += 1;
                if let Some(summary) = self.inner.store.summary(&key.1).await?
                    && (query.filter)(&summary)
                {
                    page.workflows.push(summary);
                }
                let left = i + 1 < total || more;
                if page.workflows.len() >= limit || page.examined >= budget {
                    page.budget_spent = left && page.workflows.len() < limit;
                    page.next = left.then(|| Cursor { started_ms: key.0.0, workflow_id: key.1.to_string() });
                    return Ok(page);
                }
                from = Bound::Excluded(key);
            }
            if !more {
                return Ok(page);
            }
        }
    }
}
