//! Derived records, prost-encoded on disk. They are internal to the store and
//! the runtime, so they are defined here rather than in the public contract.

use sagaflow_proto::v1::{ActivityTask, HistoryEvent};

/// The events one commit appended to a history, stored under the sequence
/// number of the last one (see `keys.rs`): one key per decision, not per event.
/// Its only field is repeated, so two encoded batches, concatenated, are the
/// encoding of one batch holding the events of both.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryBatch {
    // Tag 1 and nothing else: concatenation depends on it.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<HistoryEvent>,
}

/// A scheduled activity attempt waiting for (or leased to) a worker.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskRecord {
    #[prost(message, optional, tag = "1")]
    pub task: Option<ActivityTask>,
    #[prost(int64, tag = "2")]
    pub scheduled_ms: i64,
    /// Queued longer than this fails the attempt (SCHEDULE_TO_START); 0 = never.
    #[prost(int64, tag = "3")]
    pub schedule_to_start_deadline_ms: i64,
    /// The step as a whole must finish before this (SCHEDULE_TO_CLOSE); 0 = never.
    #[prost(int64, tag = "4")]
    pub schedule_to_close_deadline_ms: i64,
}

impl TaskRecord {
    pub fn workflow_id(&self) -> &str {
        self.task.as_ref().map_or("", |t| t.workflow_id.as_str())
    }

    pub fn task_id(&self) -> &str {
        self.task.as_ref().map_or("", |t| t.task_id.as_str())
    }
}

/// Which worker holds a task, and until when.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(string, tag = "1")]
    pub worker_id: String,
    #[prost(int64, tag = "2")]
    pub started_ms: i64,
    #[prost(int64, tag = "3")]
    pub expires_ms: i64,
}

/// A durable timer: a retry backoff, a sleep step or a signal deadline.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct TimerRecord {
    #[prost(int64, tag = "1")]
    pub fire_at_ms: i64,
    #[prost(string, tag = "2")]
    pub workflow_id: String,
    #[prost(string, tag = "3")]
    pub timer_id: String,
}

/// A domain event waiting to be relayed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxRecord {
    /// Assigned by the store, increasing.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(string, tag = "2")]
    pub event_id: String,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(string, tag = "4")]
    pub workflow_id: String,
    #[prost(uint64, tag = "5")]
    pub workflow_seq: u64,
    #[prost(string, tag = "6")]
    pub correlation_id: String,
    #[prost(string, tag = "7")]
    pub payload: String,
    #[prost(int64, tag = "8")]
    pub time_ms: i64,
}

/// One version of a saga definition, registered at runtime. Unlike every
/// other record here it is not derived from histories: it is the definition a
/// history was started with, so a restart needs no definition files.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DefinitionRecord {
    #[prost(string, tag = "1")]
    pub workflow_type: String,
    #[prost(uint32, tag = "2")]
    pub version: u32,
    /// Hex SHA-256 of `json`, the content a `WorkflowStarted` pins.
    #[prost(string, tag = "3")]
    pub content_hash: String,
    /// The definition as canonical JSON (keys sorted, no whitespace).
    #[prost(string, tag = "4")]
    pub json: String,
    /// A deprecated version cannot be started; running workflows go on.
    #[prost(bool, tag = "5")]
    pub deprecated: bool,
    #[prost(int64, tag = "6")]
    pub registered_ms: i64,
}

/// An activity queue an operator paused: its tasks stay queued, handed to no
/// worker, until the record is deleted. Source data, like a definition: a
/// rebuild keeps it, and a restart restores the pause.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueuePauseRecord {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(string, tag = "3")]
    pub identity: String,
    #[prost(int64, tag = "4")]
    pub paused_ms: i64,
}

/// Who owns a shard of the store, and until when (ms since the epoch, on
/// the store's clock). `epoch` rises each time the shard changes hands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ShardLease {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    #[prost(string, tag = "2")]
    pub owner: String,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
    #[prost(int64, tag = "4")]
    pub expires_ms: i64,
}
