//! Key layout of the single sled tree. One tree keeps every decision a single
//! atomic `apply_batch`. Numbers are big-endian so that scans run in order.
//! A workflow id is length-prefixed, so no id is a prefix of another's keys.
//!
//! | prefix | key                              | value           |
//! |--------|----------------------------------|-----------------|
//! | `h`    | wf, last seq of the batch        | HistoryBatch    |
//! | `w`    | workflow id (raw)                | WorkflowSummary |
//! | `o`    | workflow id (raw)                | (empty): open   |
//! | `r`    | request id (raw)                 | workflow id     |
//! | `k`    | wf, task id                      | TaskRecord      |
//! | `l`    | wf, task id                      | Lease           |
//! | `t`    | fire_at, wf, timer id            | (empty)         |
//! | `x`    | outbox seq                       | OutboxRecord    |
//! | `m`    | name                             | metadata        |
//! | `d`    | type (length-prefixed), version  | DefinitionRecord|
//! | `q`    | queue name (raw)                 | QueuePauseRecord|
//!
//! A history is a run of batches, one per commit, each under the sequence
//! number of its last event: a scan from `seq` starts at the batch that holds
//! it, and the last key gives the history's length without a decode. A
//! checkpoint may store several batches as one (under the last one's key),
//! and a replay after a crash may write them again one by one: readers skip
//! events they have already passed.

pub const HISTORY: u8 = b'h';
pub const SUMMARY: u8 = b'w';
pub const OPEN: u8 = b'o';
pub const REQUEST: u8 = b'r';
pub const TASK: u8 = b'k';
pub const LEASE: u8 = b'l';
pub const TIMER: u8 = b't';
pub const OUTBOX: u8 = b'x';
/// Saga definitions: source data, not derived, so never cleared by a rebuild.
pub const DEFINITION: u8 = b'd';
/// Paused activity queues: an operator's decision, not derived, so never
/// cleared by a rebuild.
pub const QUEUE_PAUSE: u8 = b'q';
/// `s | shard (u32 BE)` → a shard's lease: ownership, not derived.
pub const SHARD_LEASE: u8 = b's';
/// The last outbox sequence number ever assigned, so that numbers are never
/// reused after relayed records are deleted.
pub const OUTBOX_HIGH_WATER: &[u8] = b"moutbox-seq";
/// The highest outbox sequence number deleted by pruning (without a broker):
/// a reader whose cursor is below it would silently skip records.
pub const OUTBOX_FLOOR: &[u8] = b"moutbox-pruned";

/// The layout version, so that a store written by an older build is migrated
/// (or a newer one refused) rather than misread.
pub const FORMAT: &[u8] = b"mformat";
/// 1: one history key per event. 2: one per commit ([`HistoryBatch`](super::records::HistoryBatch)).
pub const FORMAT_VERSION: u8 = 2;

/// Derived prefixes, cleared by a rebuild.
pub const DERIVED: &[u8] = &[SUMMARY, OPEN, REQUEST, TASK, LEASE, TIMER];

/// The longest workflow id a key can hold: its length is one byte.
pub const MAX_WORKFLOW_ID_BYTES: usize = u8::MAX as usize;

/// Whether `workflow_id` fits in a key. The store checks this at its entry
/// points (a commit is refused, a read finds nothing), so that building a key
/// can assert it: a truncated id would let two long ids share one history.
pub fn fits(workflow_id: &str) -> bool {
    workflow_id.len() <= MAX_WORKFLOW_ID_BYTES
}

fn with_workflow(prefix: u8, workflow_id: &str, extra: usize) -> Vec<u8> {
    let id = workflow_id.as_bytes();
    let len = u8::try_from(id.len()).unwrap_or_else(|_| {
        panic!("workflow id of {} bytes reached key building; the store checks `fits` first", id.len())
    });
    let mut key = Vec::with_capacity(2 + id.len() + extra);
    key.push(prefix);
    key.push(len);
    key.extend_from_slice(id);
    key
}

pub fn history_prefix(workflow_id: &str) -> Vec<u8> {
    with_workflow(HISTORY, workflow_id, 8)
}

pub fn history(workflow_id: &str, seq: u64) -> Vec<u8> {
    let mut key = history_prefix(workflow_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Whether both are history keys of one workflow.
pub fn same_history(a: &[u8], b: &[u8]) -> bool {
    fn workflow(key: &[u8]) -> Option<&[u8]> {
        let len = usize::from(*key.get(1)?);
        key.get(..2 + len).filter(|_| key[0] == HISTORY)
    }
    workflow(a).is_some_and(|wf| Some(wf) == workflow(b))
}

pub fn raw(prefix: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(prefix);
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn task(prefix: u8, workflow_id: &str, task_id: &str) -> Vec<u8> {
    let mut key = with_workflow(prefix, workflow_id, task_id.len());
    key.extend_from_slice(task_id.as_bytes());
    key
}

pub fn timer(fire_at_ms: i64, workflow_id: &str, timer_id: &str) -> Vec<u8> {
    let mut key = vec![TIMER];
    // Times are after 1970, so the cast keeps order; a negative time sorts first.
    key.extend_from_slice(&u64::try_from(fire_at_ms).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(&with_workflow(0, workflow_id, timer_id.len())[1..]);
    key.extend_from_slice(timer_id.as_bytes());
    key
}

/// A type name is length-prefixed like a workflow id (and held to the same
/// limit), so that one type's versions never interleave with another's.
pub fn definition(workflow_type: &str, version: u32) -> Vec<u8> {
    let mut key = with_workflow(DEFINITION, workflow_type, 4);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub fn shard_lease(shard: u32) -> Vec<u8> {
    let mut key = vec![SHARD_LEASE];
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

pub fn outbox(seq: u64) -> Vec<u8> {
    let mut key = vec![OUTBOX];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits `len | id | rest` after a one-byte prefix.
pub fn split_workflow(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(*key.get(1)?);
    let id = key.get(2..2 + len)?;
    let rest = key.get(2 + len..)?;
    Some((std::str::from_utf8(id).ok()?, rest))
}

pub fn timer_from_key(key: &[u8]) -> Option<(i64, String, String)> {
    let fire = i64::try_from(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?)).ok()?;
    let len = usize::from(*key.get(9)?);
    let wf = std::str::from_utf8(key.get(10..10 + len)?).ok()?;
    let timer_id = std::str::from_utf8(key.get(10 + len..)?).ok()?;
    Some((fire, wf.to_owned(), timer_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_by_sequence_and_ids_do_not_collide() {
        assert!(history("a", 2) < history("a", 10));
        // "a" must not see "ab"'s events when scanning its prefix.
        assert!(!history("ab", 1).starts_with(&history_prefix("a")));
        assert!(same_history(&history("a", 2), &history("a", 9)));
        assert!(!same_history(&history("a", 2), &history("ab", 2)));
        assert!(!same_history(&raw(SUMMARY, "a"), &raw(SUMMARY, "a")));
    }

    #[test]
    fn definition_keys_sort_by_type_then_version() {
        assert!(definition("a", 2) < definition("a", 10));
        assert!(!definition("ab", 1).starts_with(&with_workflow(DEFINITION, "a", 0)));
    }

    #[test]
    #[should_panic(expected = "workflow id of 256 bytes")]
    fn an_id_too_long_for_a_key_is_never_truncated() {
        history(&"a".repeat(256), 1);
    }

    #[test]
    fn timer_key_round_trips_and_sorts_by_time() {
        let key = timer(1_700_000_000_000, "wf-1", "retry-0");
        assert_eq!(timer_from_key(&key), Some((1_700_000_000_000, "wf-1".into(), "retry-0".into())));
        assert!(timer(5, "z", "a") < timer(6, "a", "a"));
    }
}
