//! The `Store` layout over any ordered key-value engine with atomic batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};

use prost::Message;
use sagaflow_proto::is_terminal;
use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};

use super::records::HistoryBatch;
use super::{
    Commit, DefinitionRecord, Durable, Error, Fence, IndexPage, Lease, ListQuery, OutboxRecord, QueuePauseRecord,
    Result, ShardLease, Store, TaskKey, TaskRecord, TimerRecord, keys,
};

/// One write of a batch: a put, or a delete when the value is `None`.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// What the layout needs from an engine.
pub trait Kv: Send + Sync + 'static {
    /// Applies every write or none, and returns when they are visible.
    fn apply(&self, writes: Vec<Write>) -> Result<Durable>;
    /// Applies every write or none, without asking for a flush: they become
    /// durable with whatever flush comes next.
    fn apply_unflushed(&self, writes: Vec<Write>) -> Result<()> {
        self.apply(writes).map(drop)
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visits keys `>= from` that start with `prefix`, in order, until `visit` returns false.
    fn scan(&self, from: &[u8], prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>>;
    /// [`last_with_prefix`](Kv::last_with_prefix) for a prefix whose keys are
    /// only ever added in increasing order and deleted only all at once (a
    /// history): an engine may then answer from its newest writes alone.
    fn last_appended(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        self.last_with_prefix(prefix)
    }
    fn barrier(&self) -> Durable;
    /// Why the engine refuses writes, if it does.
    fn write_failure(&self) -> Option<String> {
        None
    }
}

/// A [`Store`] over a key-value engine; see `keys.rs` for the layout.
pub struct KvStore<K> {
    kv: K,
    outbox_seq: AtomicU64,
    /// Serialises commits that carry outbox records, so that outbox sequence
    /// numbers become visible in order and a reader never skips one.
    outbox_order: Mutex<()>,
    /// Makes a commit's checks (the expected sequence, the request id's
    /// owner) and its apply one step: commits of one workflow, or naming one
    /// request id, take the same stripe.
    stripes: Box<[Mutex<()>]>,
    /// The fences every write must pass, once installed.
    fences: Mutex<Option<Vec<Fence>>>,
    /// Writes hold it shared while they check the fence and apply; taking
    /// a shard holds it exclusively, so that no write passes a stale check.
    ownership: RwLock<()>,
}

/// Enough stripes that unrelated workflows rarely share one.
const STRIPES: usize = 256;

fn stripe_of(id: &str) -> usize {
    (crate::fnv1a(id.as_bytes()) % STRIPES as u64) as usize
}

impl<K: Kv> KvStore<K> {
    pub(crate) fn new(kv: K) -> Result<Self> {
        let last_key = match kv.last_with_prefix(&[keys::OUTBOX])? {
            Some(key) => key.get(1..9).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes),
            None => 0,
        };
        let high_water =
            kv.get(keys::OUTBOX_HIGH_WATER)?.and_then(|b| b.as_slice().try_into().ok()).map_or(0, u64::from_be_bytes);
        let last = last_key.max(high_water);
        let stripes = (0..STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Self {
            kv,
            outbox_seq: AtomicU64::new(last),
            outbox_order: Mutex::new(()),
            stripes,
            fences: Mutex::default(),
            ownership: RwLock::new(()),
        })
    }

    /// The key-value layer underneath, for tests of its own contract.
    #[cfg(test)]
    pub(crate) fn kv(&self) -> &K {
        &self.kv
    }

    fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M> {
        M::decode(bytes)
            .map_err(|e| Error::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
    }

    fn writes_for(&self, commit: &mut Commit) -> Result<Vec<Write>> {
        let wf = commit.workflow_id.as_str();
        let mut writes = Vec::with_capacity(8);
        if let Some(first) = commit.events.first().map(|e| e.seq) {
            let stored = if commit.new_history { 0 } else { self.read_last_seq(wf)? };
            check_append(wf, stored, &commit.events)?;
            let last = first + commit.events.len() as u64 - 1;
            let batch = HistoryBatch { events: std::mem::take(&mut commit.events) };
            writes.push((keys::history(wf, last), Some(batch.encode_to_vec())));
        }
        if let Some(summary) = &commit.summary {
            writes.push((keys::raw(keys::SUMMARY, wf), Some(summary.encode_to_vec())));
            let open = if is_terminal(summary.status) { None } else { Some(Vec::new()) };
            writes.push((keys::raw(keys::OPEN, wf), open));
        }
        if let Some(request_id) = &commit.request_id {
            let key = keys::raw(keys::REQUEST, request_id);
            if let Some(owner) = self.kv.get(&key)?
                && owner != wf.as_bytes()
            {
                return Err(Error::RequestIdTaken {
                    request_id: request_id.clone(),
                    workflow_id: String::from_utf8_lossy(&owner).into_owned(),
                });
            }
            writes.push((key, Some(wf.as_bytes().to_vec())));
        }
        for task in &commit.put_tasks {
            writes.push((keys::task(keys::TASK, task.workflow_id(), task.task_id()), Some(task.encode_to_vec())));
        }
        for (task_id, lease) in &commit.put_leases {
            writes.push((keys::task(keys::LEASE, wf, task_id), Some(lease.encode_to_vec())));
        }
        for task_id in &commit.delete_tasks {
            writes.push((keys::task(keys::TASK, wf, task_id), None));
            writes.push((keys::task(keys::LEASE, wf, task_id), None));
        }
        for timer in &commit.delete_timers {
            writes.push((keys::timer(timer.fire_at_ms, &timer.workflow_id, &timer.timer_id), None));
        }
        for timer in &commit.put_timers {
            writes.push((keys::timer(timer.fire_at_ms, &timer.workflow_id, &timer.timer_id), Some(Vec::new())));
        }
        for record in &mut commit.outbox {
            record.seq = self.outbox_seq.fetch_add(1, Ordering::SeqCst) + 1;
            writes.push((keys::outbox(record.seq), Some(record.encode_to_vec())));
        }
        for definition in &commit.put_definitions {
            let key = keys::definition(&definition.workflow_type, definition.version);
            writes.push((key, Some(definition.encode_to_vec())));
        }
        if let Some(delete) = &commit.delete {
            if self.kv.get(&keys::raw(keys::OPEN, wf))?.is_some() {
                return Err(Error::StillOpen(wf.to_owned()));
            }
            let prefix = keys::history_prefix(wf);
            self.kv.scan(&prefix, &prefix, &mut |key, _| {
                writes.push((key.to_vec(), None));
                true
            })?;
            writes.push((keys::raw(keys::SUMMARY, wf), None));
            // Only if it still names this workflow: a later start may own it.
            let request = keys::raw(keys::REQUEST, &delete.request_id);
            if self.kv.get(&request)?.as_deref() == Some(wf.as_bytes()) {
                writes.push((request, None));
            }
        }
        for pause in &commit.put_queue_pauses {
            writes.push((keys::raw(keys::QUEUE_PAUSE, &pause.queue), Some(pause.encode_to_vec())));
        }
        for queue in &commit.delete_queue_pauses {
            writes.push((keys::raw(keys::QUEUE_PAUSE, queue), None));
        }
        if let Some(last) = commit.outbox.last() {
            writes.push((keys::OUTBOX_HIGH_WATER.to_vec(), Some(last.seq.to_be_bytes().to_vec())));
        }
        Ok(writes)
    }

    /// Every record under `prefix`, in key order.
    fn decode_all<M: Message + Default>(&self, prefix: u8) -> Result<Vec<M>> {
        self.decode_range(&[prefix], prefix, usize::MAX)
    }

    /// At most `limit` records under `prefix` from the key `from` on, in key
    /// order; the first that does not decode fails the read.
    fn decode_range<M: Message + Default>(&self, from: &[u8], prefix: u8, limit: usize) -> Result<Vec<M>> {
        let mut records = Vec::new();
        let mut failure = None;
        self.kv.scan(from, &[prefix], &mut |key, value| {
            if records.len() >= limit {
                return false;
            }
            match Self::decode(key, value) {
                Ok(record) => records.push(record),
                Err(e) => failure = Some(e),
            }
            failure.is_none()
        })?;
        failure.map_or(Ok(records), Err)
    }

    /// Ids under `prefix` strictly after `after`, at most `limit`.
    fn ids_with_prefix(&self, prefix: u8, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        self.kv.scan(&after_key(prefix, after), &[prefix], &mut |key, _| {
            if ids.len() >= limit {
                return false;
            }
            ids.push(String::from_utf8_lossy(&key[1..]).into_owned());
            true
        })?;
        Ok(ids)
    }

    fn read_history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>> {
        if !keys::fits(workflow_id) {
            return Ok(Vec::new());
        }
        let from_seq = from_seq.max(1);
        // A commit's last event is stored under its own number, so the one an
        // await asks for (a workflow's last) is a point read, not a scan.
        if limit == 1 {
            let key = keys::history(workflow_id, from_seq);
            if let Some(bytes) = self.kv.get(&key)? {
                let batch: HistoryBatch = Self::decode(&key, &bytes)?;
                if let Some(event) = batch.events.into_iter().find(|e| e.seq == from_seq) {
                    return Ok(vec![event]);
                }
            }
        }
        let mut events: Vec<HistoryEvent> = Vec::new();
        let mut failure = None;
        self.kv.scan(
            &keys::history(workflow_id, from_seq),
            &keys::history_prefix(workflow_id),
            &mut |key, value| {
                let batch = match Self::decode::<HistoryBatch>(key, value) {
                    Ok(batch) => batch,
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                };
                for event in batch.events {
                    if events.len() >= limit {
                        return false;
                    }
                    // Overlapping batches (see keys.rs) repeat events already taken.
                    if event.seq >= from_seq && events.last().is_none_or(|last| event.seq > last.seq) {
                        events.push(event);
                    }
                }
                true
            },
        )?;
        failure.map_or(Ok(events), Err)
    }

    fn read_last_seq(&self, workflow_id: &str) -> Result<u64> {
        if !keys::fits(workflow_id) {
            return Ok(0);
        }
        Ok(self
            .kv
            .last_appended(&keys::history_prefix(workflow_id))?
            .and_then(|key| key.get(key.len() - 8..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn read_outbox_floor(&self) -> Result<u64> {
        match self.kv.get(keys::OUTBOX_FLOOR)? {
            None => Ok(0),
            Some(bytes) => bytes.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| Error::Corrupt {
                key: String::from_utf8_lossy(keys::OUTBOX_FLOOR).into_owned(),
                reason: format!("{} bytes, not a u64", bytes.len()),
            }),
        }
    }

    /// Holds off shard takeovers for the write that follows, after checking
    /// that the fences of `workflow`'s shard (of every shard, for a write of
    /// the store as a whole) are still their shards' epochs.
    fn fenced(&self, workflow: Option<&str>) -> Result<RwLockReadGuard<'_, ()>> {
        let guard = self.ownership.read().unwrap_or_else(PoisonError::into_inner);
        let held = self.fences.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for fence in crate::fences_for(held.as_deref(), self.shard_count(), workflow.map(std::iter::once))? {
            let current = self.shard_lease(fence.shard)?.map_or(0, |lease| lease.epoch);
            if current != fence.epoch {
                return Err(Error::Fenced { shard: fence.shard, epoch: fence.epoch, current });
            }
        }
        Ok(guard)
    }

    fn shard_lease(&self, shard: u32) -> Result<Option<ShardLease>> {
        let key = keys::shard_lease(shard);
        self.kv.get(&key)?.map(|bytes| Self::decode(&key, &bytes)).transpose()
    }

    /// [`Store::acquire_shards`] up to its flush.
    fn take_shards(&self, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<(Vec<ShardLease>, Durable)> {
        let _exclusive = self.ownership.write().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        let mut shards = shards.to_vec();
        shards.sort_unstable();
        shards.dedup();
        let held = shards.iter().map(|shard| self.shard_lease(*shard)).collect::<Result<Vec<_>>>()?;
        if held.iter().flatten().any(|h| h.owner != owner && h.expires_ms > now) {
            let as_they_stand = shards
                .iter()
                .zip(held)
                .map(|(shard, h)| h.unwrap_or(ShardLease { shard: *shard, ..ShardLease::default() }))
                .collect();
            return Ok((as_they_stand, Durable::ready()));
        }
        let taken: Vec<ShardLease> = shards
            .iter()
            .zip(held)
            .map(|(shard, held)| match held {
                Some(held) if held.owner == owner && held.expires_ms > now => {
                    ShardLease { expires_ms: now + ttl_ms, ..held }
                }
                held => ShardLease {
                    shard: *shard,
                    owner: owner.to_owned(),
                    epoch: held.map_or(0, |h| h.epoch) + 1,
                    expires_ms: now + ttl_ms,
                },
            })
            .collect();
        let durable =
            self.kv.apply(taken.iter().map(|l| (keys::shard_lease(l.shard), Some(l.encode_to_vec()))).collect())?;
        Ok((taken, durable))
    }

    /// [`Store::renew_shards`] up to its flush.
    fn extend_shards(&self, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<(Vec<ShardLease>, Durable)> {
        let _exclusive = self.ownership.write().unwrap_or_else(PoisonError::into_inner);
        let mut renewed = Vec::with_capacity(fences.len());
        let mut moved_on = None;
        for fence in fences {
            let held = self.shard_lease(fence.shard)?;
            let current = held.as_ref().map_or(0, |h| h.epoch);
            match held.filter(|h| h.epoch == fence.epoch && h.owner == owner) {
                Some(held) => renewed.push(ShardLease { expires_ms: now_ms() + ttl_ms, ..held }),
                None => moved_on = Some(Error::Fenced { shard: fence.shard, epoch: fence.epoch, current }),
            }
        }
        let durable =
            self.kv.apply(renewed.iter().map(|l| (keys::shard_lease(l.shard), Some(l.encode_to_vec()))).collect())?;
        match moved_on {
            Some(e) => Err(e),
            None => Ok((renewed, durable)),
        }
    }

    fn apply_commit(&self, mut commit: Commit) -> Result<Durable> {
        check_ids(&commit)?;
        let _owned = self.fenced(Some(&commit.workflow_id).filter(|wf| !wf.is_empty()).map(String::as_str))?;
        let mut stripes = vec![stripe_of(&commit.workflow_id)];
        if let Some(request_id) = &commit.request_id {
            stripes.push(stripe_of(&format!("request:{request_id}")));
        }
        // In index order, so that two commits never wait on each other.
        stripes.sort_unstable();
        stripes.dedup();
        let _checked = stripes
            .iter()
            .map(|i| self.stripes[*i].lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect::<Vec<_>>();
        if commit.outbox.is_empty() {
            let writes = self.writes_for(&mut commit)?;
            return self.kv.apply(writes);
        }
        let _ordered = self.outbox_order.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let writes = self.writes_for(&mut commit)?;
        self.kv.apply(writes)
    }
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The first key under `prefix` strictly after the id `after`.
fn after_key(prefix: u8, after: Option<&str>) -> Vec<u8> {
    match after {
        Some(after) => {
            let mut from = keys::raw(prefix, after);
            from.push(0);
            from
        }
        None => vec![prefix],
    }
}

/// The first task (or lease) key strictly after `after`.
fn after_task_key(prefix: u8, after: Option<&super::TaskKey>) -> Vec<u8> {
    match after {
        Some((wf, task_id)) => {
            let mut from = keys::task(prefix, wf, task_id);
            from.push(0);
            from
        }
        None => vec![prefix],
    }
}

fn fit(workflow_id: &str) -> Result<()> {
    if keys::fits(workflow_id) {
        return Ok(());
    }
    let prefix = workflow_id.chars().take(32).collect();
    Err(Error::IdTooLong { prefix, len: workflow_id.len() })
}

/// Refuses events that do not extend a history stored up to `stored`
/// without a gap or an overlap, inside the commit as after the history.
pub fn check_append(workflow_id: &str, stored: u64, events: &[HistoryEvent]) -> Result<()> {
    let Some(first) = events.first().map(|e| e.seq) else { return Ok(()) };
    if first != stored.saturating_add(1) {
        return Err(Error::SequenceConflict { workflow_id: workflow_id.into(), stored, requested: first });
    }
    for (expected, event) in (first..).zip(events) {
        // A gap inside one commit would corrupt the history for good.
        if event.seq != expected {
            return Err(Error::SequenceConflict {
                workflow_id: workflow_id.into(),
                stored: expected - 1,
                requested: event.seq,
            });
        }
    }
    Ok(())
}

/// Refuses a commit naming an id longer than [`MAX_WORKFLOW_ID_BYTES`](keys::MAX_WORKFLOW_ID_BYTES)
/// (workflow ids, request ids of deletions, definition types, queues): every
/// backend holds ids to this one limit, so that all accept the same commits.
pub fn check_ids(commit: &Commit) -> Result<()> {
    fit(&commit.workflow_id)?;
    commit.put_tasks.iter().try_for_each(|task| fit(task.workflow_id()))?;
    commit.put_definitions.iter().try_for_each(|d| fit(&d.workflow_type))?;
    commit.put_queue_pauses.iter().try_for_each(|p| fit(&p.queue))?;
    commit.delete_queue_pauses.iter().try_for_each(|queue| fit(queue))?;
    if let Some(delete) = &commit.delete
        && !keys::fits(&delete.request_id)
    {
        return Err(Error::IdTooLong {
            prefix: delete.request_id.chars().take(32).collect(),
            len: delete.request_id.len(),
        });
    }
    commit.put_timers.iter().chain(&commit.delete_timers).try_for_each(|timer| fit(&timer.workflow_id))
}

#[async_trait::async_trait]
impl<K: Kv> Store for KvStore<K> {
    async fn commit(&self, commit: Commit) -> Result<Durable> {
        self.apply_commit(commit)
    }

    fn record_leases(&self, workflow_id: &str, leases: Vec<(String, Lease)>) -> Result<()> {
        let mut commit = Commit { workflow_id: workflow_id.to_owned(), put_leases: leases, ..Commit::default() };
        check_ids(&commit)?;
        let _owned = self.fenced(Some(workflow_id))?;
        self.kv.apply_unflushed(self.writes_for(&mut commit)?)
    }

    fn barrier(&self) -> Durable {
        self.kv.barrier()
    }

    fn write_failure(&self) -> Option<String> {
        self.kv.write_failure()
    }

    async fn history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>> {
        self.read_history(workflow_id, from_seq, limit)
    }

    async fn last_seq(&self, workflow_id: &str) -> Result<u64> {
        self.read_last_seq(workflow_id)
    }

    async fn summary(&self, workflow_id: &str) -> Result<Option<WorkflowSummary>> {
        let key = keys::raw(keys::SUMMARY, workflow_id);
        self.kv.get(&key)?.map(|bytes| Self::decode(&key, &bytes)).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<IndexPage> {
        let mut page = IndexPage::default();
        let prefix = keys::raw(keys::SUMMARY, &query.id_prefix);
        let from = match &query.after {
            Some(after) if *after >= query.id_prefix => after_key(keys::SUMMARY, Some(after)),
            _ => prefix.clone(),
        };
        let mut scanned = 0usize;
        let mut last_seen = None;
        let mut failure = None;
        let mut exhausted = true;
        self.kv.scan(&from, &prefix, &mut |key, value| {
            if page.workflows.len() >= query.limit || scanned >= query.scan_budget {
                exhausted = false;
                return false;
            }
            scanned += 1;
            match Self::decode::<WorkflowSummary>(key, value) {
                Ok(summary) => {
                    last_seen = Some(summary.workflow_id.clone());
                    if query.filter.matches(&summary) {
                        page.workflows.push(summary);
                    }
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if !exhausted {
            page.next_after = last_seen;
        }
        Ok(page)
    }

    async fn open_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.ids_with_prefix(keys::OPEN, after, limit)
    }

    async fn all_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let mut ids: Vec<String> = Vec::new();
        let from = match after {
            // Past every history key of `after` (a sequence number is 8 bytes).
            Some(after) if keys::fits(after) => {
                let mut from = keys::history_prefix(after);
                from.extend_from_slice(&[0xff; 9]);
                from
            }
            _ => vec![keys::HISTORY],
        };
        self.kv.scan(&from, &[keys::HISTORY], &mut |key, _| {
            if let Some((wf, _)) = keys::split_workflow(key)
                && ids.last().is_none_or(|last| last != wf)
            {
                if ids.len() >= limit {
                    return false;
                }
                ids.push(wf.to_owned());
            }
            true
        })?;
        Ok(ids)
    }

    async fn workflow_for_request(&self, request_id: &str) -> Result<Option<String>> {
        Ok(self.kv.get(&keys::raw(keys::REQUEST, request_id))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn tasks(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<TaskRecord>> {
        self.decode_range(&after_task_key(keys::TASK, after), keys::TASK, limit)
    }

    async fn leases(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<(String, String, Lease)>> {
        let mut leases = Vec::new();
        let mut failure = None;
        self.kv.scan(&after_task_key(keys::LEASE, after), &[keys::LEASE], &mut |key, value| {
            if leases.len() >= limit {
                return false;
            }
            let Some((wf, task_id)) = keys::split_workflow(key) else {
                return true;
            };
            match Self::decode::<Lease>(key, value) {
                Ok(lease) => leases.push((wf.to_owned(), String::from_utf8_lossy(task_id).into_owned(), lease)),
                Err(e) => failure = Some(e),
            }
            failure.is_none()
        })?;
        failure.map_or(Ok(leases), Err)
    }

    async fn timers(&self, after: Option<&TimerRecord>, limit: usize) -> Result<Vec<TimerRecord>> {
        let mut timers = Vec::new();
        let from = match after {
            Some(t) => {
                let mut from = keys::timer(t.fire_at_ms, &t.workflow_id, &t.timer_id);
                from.push(0);
                from
            }
            None => vec![keys::TIMER],
        };
        self.kv.scan(&from, &[keys::TIMER], &mut |key, _| {
            if timers.len() >= limit {
                return false;
            }
            if let Some((fire_at_ms, workflow_id, timer_id)) = keys::timer_from_key(key) {
                timers.push(TimerRecord { fire_at_ms, workflow_id, timer_id });
            }
            true
        })?;
        Ok(timers)
    }

    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>> {
        self.decode_range(&keys::outbox(after.saturating_add(1)), keys::OUTBOX, limit)
    }

    async fn delete_outbox(&self, seqs: &[u64]) -> Result<Durable> {
        let _owned = self.fenced(None)?;
        self.kv.apply(seqs.iter().map(|seq| (keys::outbox(*seq), None)).collect())
    }

    async fn prune_outbox(&self, seqs: &[u64]) -> Result<Durable> {
        let _owned = self.fenced(None)?;
        // Read, raise, write: serialised, so that two pruners cannot lower it.
        let _ordered = self.outbox_order.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let floor = self.read_outbox_floor()?.max(seqs.iter().copied().max().unwrap_or(0));
        let mut writes: Vec<Write> = seqs.iter().map(|seq| (keys::outbox(*seq), None)).collect();
        writes.push((keys::OUTBOX_FLOOR.to_vec(), Some(floor.to_be_bytes().to_vec())));
        self.kv.apply(writes)
    }

    async fn outbox_floor(&self) -> Result<u64> {
        self.read_outbox_floor()
    }

    async fn definitions(&self) -> Result<Vec<DefinitionRecord>> {
        self.decode_all(keys::DEFINITION)
    }

    async fn queue_pauses(&self) -> Result<Vec<QueuePauseRecord>> {
        self.decode_all(keys::QUEUE_PAUSE)
    }

    async fn clear_derived(&self) -> Result<()> {
        for prefix in keys::DERIVED {
            let mut doomed = Vec::new();
            self.kv.scan(&[*prefix], &[*prefix], &mut |key, _| {
                doomed.push((key.to_vec(), None));
                true
            })?;
            for chunk in doomed.chunks(10_000) {
                // Made durable by the rebuild commits that follow.
                drop(self.kv.apply(chunk.to_vec())?);
            }
        }
        Ok(())
    }

    async fn acquire_shards(&self, shards: &[u32], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        let (leases, durable) = self.take_shards(shards, owner, ttl_ms)?;
        durable.wait().await?;
        Ok(leases)
    }

    async fn renew_shards(&self, fences: &[Fence], owner: &str, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        let (leases, durable) = self.extend_shards(fences, owner, ttl_ms)?;
        durable.wait().await?;
        Ok(leases)
    }

    async fn shard_leases(&self) -> Result<Vec<ShardLease>> {
        self.decode_all(keys::SHARD_LEASE)
    }

    async fn release_shards(&self, fences: &[Fence]) -> Result<()> {
        let durable = {
            let _exclusive = self.ownership.write().unwrap_or_else(PoisonError::into_inner);
            let mut released = Vec::new();
            for fence in fences {
                if let Some(held) = self.shard_lease(fence.shard)?.filter(|h| h.epoch == fence.epoch) {
                    let free = ShardLease { owner: String::new(), expires_ms: 0, ..held };
                    released.push((keys::shard_lease(fence.shard), Some(free.encode_to_vec())));
                }
            }
            self.kv.apply(released)?
        };
        durable.wait().await
    }

    fn fences(&self) -> Option<Vec<Fence>> {
        self.fences.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn fence(&self, fences: &[Fence]) {
        *self.fences.lock().unwrap_or_else(PoisonError::into_inner) = Some(crate::in_shard_order(fences));
    }
}
