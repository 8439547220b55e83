//! One batch's checks and net effect, worked out in memory.
//!
//! The writer reads what the checks need under lock ([`Stored`]), then
//! [`Plan::build`] walks the batch in order: each commit is checked against
//! the stored state as the batch's earlier commits left it (two commits of
//! one batch may extend one history), a refused commit changes nothing, and
//! an admitted one updates the final value of every row it touches. So the
//! writer sends one statement per table and kind of change, however many
//! commits the batch carries, and a later commit's change to a row (a task
//! put, then deleted) wins as it would commit by commit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use prost::Message;
use sagaflow_proto::is_terminal;
use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};
use sagaflow_store::{Commit, Error, Lease, Result};

/// A write the writer applies; commits are answered one by one.
#[derive(Debug)]
pub(crate) enum Op {
    Commit(Box<Commit>),
    /// [`Store::record_leases`](sagaflow_store::Store::record_leases): a hint with no reply.
    Leases {
        workflow_id: String,
        leases: Vec<(String, Lease)>,
    },
    DeleteOutbox(Vec<u64>),
    PruneOutbox(Vec<u64>),
    /// Runs in a transaction of its own: it touches whole tables.
    ClearDerived,
}

impl Op {
    pub(crate) fn as_commit(&self) -> Option<&Commit> {
        match self {
            Self::Commit(commit) => Some(commit),
            _ => None,
        }
    }

    /// The workflow this op writes, if it writes one workflow's records
    /// only: its shard's fence is the one it must pass.
    pub(crate) fn workflow(&self) -> Option<&str> {
        match self {
            Self::Commit(commit) if !commit.workflow_id.is_empty() => Some(&commit.workflow_id),
            Self::Leases { workflow_id, .. } => Some(workflow_id),
            _ => None,
        }
    }
}

/// What the checks read from the database, under the batch's locks.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The locked `histories` rows: workflow id to last sequence number (0
    /// for a row this batch inserted to lock a new history).
    pub last_seq: HashMap<String, u64>,
    /// Request id to the workflow it started.
    pub owners: HashMap<String, String>,
    /// Of the workflows the batch deletes, those whose summary is open.
    pub open: HashSet<String>,
    /// The last outbox sequence number handed out; read (and locked) only
    /// when the batch carries outbox records.
    pub outbox_high_water: Option<u64>,
    /// The installed fence and the shard's epoch, when they differ: the
    /// batch is refused whole.
    pub fenced_off: Option<(sagaflow_store::Fence, u64)>,
}

/// The `summaries` row of a summary: the columns the list filters use are
/// copied out of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SummaryRow {
    pub bytes: Vec<u8>,
    pub status: i32,
    pub workflow_type: String,
    pub labels: serde_json::Value,
    pub stuck: bool,
    pub paused: bool,
    pub closed_ms: i64,
    pub open: bool,
}

impl SummaryRow {
    fn of(summary: &WorkflowSummary) -> Self {
        let labels = summary.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        Self {
            bytes: summary.encode_to_vec(),
            status: summary.status,
            workflow_type: summary.workflow_type.clone(),
            labels: serde_json::Value::Object(labels),
            stuck: !summary.stuck_reason.is_empty(),
            paused: !summary.paused_reason.is_empty(),
            closed_ms: summary.closed_ms,
            open: !is_terminal(summary.status),
        }
    }
}

/// One commit's events: a `history_batches` row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchRow {
    pub workflow_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: Vec<u8>,
}

/// A task or lease key.
pub(crate) type TaskKey = (String, String);
/// A timer's key (and whole record).
pub(crate) type TimerKey = (i64, String, String);

/// The net effect of a batch: for each table, the final value of every row
/// it touches (`None`: deleted).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Histories whose length changed; 0: the history is gone (or was never
    /// written) and its row is deleted.
    pub last_seq: BTreeMap<String, u64>,
    /// Workflows whose stored batches are deleted before `batches` are inserted.
    pub wiped: BTreeSet<String>,
    pub batches: Vec<BatchRow>,
    pub summaries: BTreeMap<String, Option<SummaryRow>>,
    pub requests: BTreeMap<String, Option<String>>,
    pub tasks: BTreeMap<TaskKey, Option<Vec<u8>>>,
    pub leases: BTreeMap<TaskKey, Option<Vec<u8>>>,
    pub timers: BTreeMap<TimerKey, bool>,
    /// New records with their sequence numbers.
    pub outbox: Vec<(u64, Vec<u8>)>,
    /// The high water mark to store, when the batch handed out numbers.
    pub outbox_high_water: Option<u64>,
    pub deleted_outbox: BTreeSet<u64>,
    /// The highest sequence number pruned; the stored floor only rises to it.
    pub outbox_floor: Option<u64>,
    pub definitions: BTreeMap<(String, u32), Vec<u8>>,
    pub queue_pauses: BTreeMap<String, Option<Vec<u8>>>,
}

impl Plan {
    /// Checks and applies every op in order; returns the plan and, per op,
    /// whether it was admitted (its error otherwise).
    pub(crate) fn build<'a>(ops: impl IntoIterator<Item = &'a Op>, stored: &Stored) -> (Self, Vec<Result<()>>) {
        let mut plan = Self::default();
        let mut high_water = stored.outbox_high_water;
        let verdicts = ops
            .into_iter()
            .map(|op| match op {
                Op::Commit(commit) => plan.check(stored, commit).map(|()| plan.apply(stored, commit, &mut high_water)),
                Op::Leases { workflow_id, leases } => {
                    for (task_id, lease) in leases {
                        plan.leases.insert((workflow_id.clone(), task_id.clone()), Some(lease.encode_to_vec()));
                    }
                    Ok(())
                }
                Op::DeleteOutbox(seqs) => {
                    plan.deleted_outbox.extend(seqs);
                    Ok(())
                }
                Op::PruneOutbox(seqs) => {
                    plan.deleted_outbox.extend(seqs);
                    if let Some(top) = seqs.iter().copied().max() {
                        plan.outbox_floor = plan.outbox_floor.max(Some(top));
                    }
                    Ok(())
                }
                Op::ClearDerived => Err(Error::Engine("clear_derived reached a commit batch".into())),
            })
            .collect();
        (plan, verdicts)
    }

    fn stored_seq(&self, stored: &Stored, workflow_id: &str) -> u64 {
        self.last_seq.get(workflow_id).or_else(|| stored.last_seq.get(workflow_id)).copied().unwrap_or(0)
    }

    fn owner<'s>(&'s self, stored: &'s Stored, request_id: &str) -> Option<&'s str> {
        match self.requests.get(request_id) {
            Some(owner) => owner.as_deref(),
            None => stored.owners.get(request_id).map(String::as_str),
        }
    }

    fn is_open(&self, stored: &Stored, workflow_id: &str) -> bool {
        match self.summaries.get(workflow_id) {
            Some(row) => row.as_ref().is_some_and(|row| row.open),
            None => stored.open.contains(workflow_id),
        }
    }

    /// The checks of kv_store.rs, in its order: the history position, the
    /// request id's owner, an open workflow's deletion.
    fn check(&self, stored: &Stored, commit: &Commit) -> Result<()> {
        let wf = commit.workflow_id.as_str();
        if !commit.events.is_empty() {
            // `new_history` is not trusted here: another node may have
            // started the same id, and the locked row says so.
            sagaflow_store::check_append(wf, self.stored_seq(stored, wf), &commit.events)?;
        }
        if let Some(request_id) = &commit.request_id
            && let Some(owner) = self.owner(stored, request_id)
            && owner != wf
        {
            return Err(Error::RequestIdTaken { request_id: request_id.clone(), workflow_id: owner.to_owned() });
        }
        if commit.delete.is_some() && self.is_open(stored, wf) {
            return Err(Error::StillOpen(wf.to_owned()));
        }
        Ok(())
    }

    fn apply(&mut self, stored: &Stored, commit: &Commit, high_water: &mut Option<u64>) {
        let wf = &commit.workflow_id;
        if let (Some(first), Some(last)) = (commit.events.first(), commit.events.last()) {
            self.last_seq.insert(wf.clone(), last.seq);
            self.batches.push(BatchRow {
                workflow_id: wf.clone(),
                first_seq: first.seq,
                last_seq: last.seq,
                events: encode_batch(&commit.events),
            });
        }
        if let Some(summary) = &commit.summary {
            self.summaries.insert(wf.clone(), Some(SummaryRow::of(summary)));
        }
        if let Some(request_id) = &commit.request_id {
            self.requests.insert(request_id.clone(), Some(wf.clone()));
        }
        for task in &commit.put_tasks {
            let key = (task.workflow_id().to_owned(), task.task_id().to_owned());
            self.tasks.insert(key, Some(task.encode_to_vec()));
        }
        for (task_id, lease) in &commit.put_leases {
            self.leases.insert((wf.clone(), task_id.clone()), Some(lease.encode_to_vec()));
        }
        for task_id in &commit.delete_tasks {
            self.tasks.insert((wf.clone(), task_id.clone()), None);
            self.leases.insert((wf.clone(), task_id.clone()), None);
        }
        for timer in &commit.delete_timers {
            self.timers.insert((timer.fire_at_ms, timer.workflow_id.clone(), timer.timer_id.clone()), false);
        }
        for timer in &commit.put_timers {
            self.timers.insert((timer.fire_at_ms, timer.workflow_id.clone(), timer.timer_id.clone()), true);
        }
        for record in &commit.outbox {
            // The writer reads the mark whenever a batch carries records;
            // were it missing, numbering from 0 would reuse numbers, and the
            // insert's primary key would fail the batch rather than do that.
            let seq = high_water.unwrap_or(0) + 1;
            *high_water = Some(seq);
            let mut record = record.clone();
            record.seq = seq;
            self.outbox.push((seq, record.encode_to_vec()));
            self.outbox_high_water = Some(seq);
        }
        for definition in &commit.put_definitions {
            self.definitions.insert((definition.workflow_type.clone(), definition.version), definition.encode_to_vec());
        }
        if let Some(delete) = &commit.delete {
            self.wiped.insert(wf.clone());
            self.batches.retain(|batch| batch.workflow_id != *wf);
            self.last_seq.insert(wf.clone(), 0);
            self.summaries.insert(wf.clone(), None);
            // Only if it still names this workflow: a later start may own it.
            if self.owner(stored, &delete.request_id) == Some(wf.as_str()) {
                self.requests.insert(delete.request_id.clone(), None);
            }
        }
        for pause in &commit.put_queue_pauses {
            self.queue_pauses.insert(pause.queue.clone(), Some(pause.encode_to_vec()));
        }
        for queue in &commit.delete_queue_pauses {
            self.queue_pauses.insert(queue.clone(), None);
        }
    }

    /// The `histories` rows to update (new length) and to delete (no
    /// history left, or a row inserted only to lock a history that no
    /// admitted commit started).
    pub(crate) fn history_rows(&self, stored: &Stored) -> (Vec<(String, u64)>, Vec<String>) {
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for (wf, at) in &stored.last_seq {
            match self.last_seq.get(wf).copied().unwrap_or(*at) {
                0 => deletes.push(wf.clone()),
                last if last != *at => updates.push((wf.clone(), last)),
                _ => {}
            }
        }
        updates.sort_unstable();
        deletes.sort_unstable();
        (updates, deletes)
    }
}

/// The encoding of a [`HistoryBatch`](sagaflow_store) holding `events`
/// (field 1, repeated), written without cloning the events into one.
fn encode_batch(events: &[HistoryEvent]) -> Vec<u8> {
    let len = events.iter().map(|e| prost::encoding::message::encoded_len(1, e)).sum();
    let mut buf = Vec::with_capacity(len);
    for event in events {
        prost::encoding::message::encode(1, event, &mut buf);
    }
    buf
}

/// The events of a stored batch.
pub(crate) fn decode_batch(bytes: &[u8]) -> std::result::Result<Vec<HistoryEvent>, prost::DecodeError> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HistoryBatch {
        #[prost(message, repeated, tag = "1")]
        events: Vec<HistoryEvent>,
    }
    HistoryBatch::decode(bytes).map(|batch| batch.events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sagaflow_proto::v1::WorkflowStatus;
    use sagaflow_store::{OutboxRecord, TaskRecord};

    use super::*;

    fn event(seq: u64) -> HistoryEvent {
        HistoryEvent { seq, time_ms: 7, ..Default::default() }
    }

    fn op(commit: Commit) -> Op {
        Op::Commit(Box::new(commit))
    }

    fn append(wf: &str, seqs: std::ops::RangeInclusive<u64>) -> Op {
        op(Commit { workflow_id: wf.into(), events: seqs.map(event).collect(), ..Default::default() })
    }

    fn task(wf: &str, id: &str) -> TaskRecord {
        TaskRecord {
            task: Some(sagaflow_proto::v1::ActivityTask {
                workflow_id: wf.into(),
                task_id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_sees_its_own_earlier_commits_and_a_refused_one_changes_nothing() {
        let stored = Stored { last_seq: [("a".into(), 2)].into(), ..Default::default() };
        let ops = [append("a", 3..=4), append("a", 5..=5), append("a", 5..=5), append("b", 2..=2), append("b", 1..=1)];
        let (plan, verdicts) = Plan::build(&ops, &stored);
        assert!(verdicts[0].is_ok() && verdicts[1].is_ok() && verdicts[4].is_ok());
        assert!(matches!(verdicts[2], Err(Error::SequenceConflict { stored: 5, requested: 5, .. })));
        assert!(matches!(verdicts[3], Err(Error::SequenceConflict { stored: 0, requested: 2, .. })));
        assert_eq!(plan.last_seq, [("a".into(), 5), ("b".into(), 1)].into());
        let batches: Vec<_> = plan.batches.iter().map(|b| (b.workflow_id.as_str(), b.first_seq, b.last_seq)).collect();
        assert_eq!(batches, [("a", 3, 4), ("a", 5, 5), ("b", 1, 1)]);
        assert_eq!(decode_batch(&plan.batches[0].events).unwrap(), vec![event(3), event(4)]);
    }

    #[test]
    fn the_last_change_to_a_row_wins_and_a_lost_request_id_names_its_owner() {
        let stored = Stored { owners: [("req".into(), "other".into())].into(), ..Default::default() };
        let put = op(Commit {
            workflow_id: "a".into(),
            put_tasks: vec![task("a", "t1")],
            put_leases: vec![("t1".into(), Lease::default())],
            ..Default::default()
        });
        let done = op(Commit { workflow_id: "a".into(), delete_tasks: vec!["t1".into()], ..Default::default() });
        let taken = op(Commit { workflow_id: "a".into(), request_id: Some("req".into()), ..Default::default() });
        let (plan, verdicts) = Plan::build(&[put, done, taken], &stored);
        assert_eq!(plan.tasks, [(("a".into(), "t1".into()), None)].into());
        assert_eq!(plan.leases, [(("a".into(), "t1".into()), None)].into());
        assert!(matches!(&verdicts[2], Err(Error::RequestIdTaken { workflow_id, .. }) if workflow_id == "other"));
        assert!(plan.requests.is_empty());
    }

    #[test]
    fn deleting_needs_a_closed_workflow_and_frees_only_its_own_request_id() {
        let stored = Stored {
            last_seq: [("done".into(), 3), ("open".into(), 3)].into(),
            owners: [("req-done".into(), "done".into()), ("req-x".into(), "later".into())].into(),
            open: ["open".into()].into(),
            ..Default::default()
        };
        let ops = [
            op(Commit::delete("open", "req-open")),
            op(Commit::delete("done", "req-done")),
            append("done", 1..=1),
            op(Commit::delete("gone", "req-x")),
        ];
        let (plan, verdicts) = Plan::build(&ops, &stored);
        assert!(matches!(verdicts[0], Err(Error::StillOpen(_))));
        assert!(verdicts[1..].iter().all(Result::is_ok));
        assert_eq!(plan.wiped, ["done".to_owned(), "gone".to_owned()].into());
        assert_eq!(plan.batches.len(), 1, "the new history after the deletion stays");
        assert_eq!(plan.requests, [("req-done".into(), None)].into());
        let (updates, deletes) = plan.history_rows(&stored);
        assert_eq!(updates, [("done".into(), 1)]);
        assert!(deletes.is_empty());
    }

    #[test]
    fn a_summary_put_in_the_batch_decides_whether_a_deletion_may_go() {
        let closed = WorkflowSummary { status: WorkflowStatus::Completed.into(), ..Default::default() };
        let running = WorkflowSummary { status: WorkflowStatus::Running.into(), ..Default::default() };
        let stored = Stored { open: ["wf".into()].into(), ..Default::default() };
        let close = op(Commit { workflow_id: "wf".into(), summary: Some(closed), ..Default::default() });
        let reopen = op(Commit { workflow_id: "wf".into(), summary: Some(running), ..Default::default() });
        let (_, verdicts) = Plan::build(&[close, op(Commit::delete("wf", "r")), reopen], &stored);
        assert!(verdicts.iter().all(Result::is_ok));
        let again = op(Commit::delete("wf", "r"));
        let (_, verdicts) = Plan::build(&[again], &stored);
        assert!(matches!(verdicts[0], Err(Error::StillOpen(_))));
    }

    #[test]
    fn outbox_numbers_follow_the_stored_mark_and_the_floor_only_rises() {
        let stored = Stored { outbox_high_water: Some(7), ..Default::default() };
        let with_outbox = |wf: &str| {
            op(Commit { workflow_id: wf.into(), outbox: vec![OutboxRecord::default(); 2], ..Default::default() })
        };
        let ops = [with_outbox("a"), Op::PruneOutbox(vec![3, 5]), Op::PruneOutbox(vec![4]), with_outbox("b")];
        let (plan, _) = Plan::build(&ops, &stored);
        assert_eq!(plan.outbox.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [8, 9, 10, 11]);
        let decoded = OutboxRecord::decode(plan.outbox[3].1.as_slice()).unwrap();
        assert_eq!(decoded.seq, 11, "the record carries its number");
        assert_eq!(plan.outbox_high_water, Some(11));
        assert_eq!(plan.outbox_floor, Some(5));
        assert_eq!(plan.deleted_outbox, [3, 4, 5].into());
    }

    #[test]
    fn a_lock_row_of_a_refused_start_is_deleted() {
        let stored = Stored { last_seq: [("new".into(), 0)].into(), ..Default::default() };
        let (plan, verdicts) = Plan::build(&[append("new", 2..=2)], &stored);
        assert!(verdicts[0].is_err());
        assert_eq!(plan.history_rows(&stored), (vec![], vec!["new".to_owned()]));
    }
}
