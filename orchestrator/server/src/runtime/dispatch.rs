//! Task queues (one per activity type), worker sessions and leases.
//!
//! A worker session grants credit; a task goes only to a session with credit
//! left, so a worker never holds more tasks than it asked for. A leased task
//! belongs to one worker until its outcome arrives or a deadline takes it back.
//!
//! Every message about a leased task is checked against the session that
//! sends it ([`Dispatch::authorize`]): its lease token must be one this
//! server issued to the session's worker token, the task must be in the
//! session's queues, and no other live session may hold the lease.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use sagaflow_proto::v1::{ActivityTask, ServerMessage, TaskCancelled, server_message};
use tokio::sync::mpsc;

use super::lease_token::LeaseKey;
use super::timers::{Alarm, AlarmKey, Timers};
use crate::engine::TimeoutKind;
use crate::store::{Lease, QueuePauseRecord, Store, TaskRecord};

pub type SessionId = u64;
pub type Outbound = mpsc::Sender<Result<ServerMessage, tonic::Status>>;

/// Most credit one session may hold; a worker asking for more is capped.
pub const MAX_CREDIT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Queued {
        since_ms: i64,
    },
    Leased {
        session: Option<SessionId>,
        worker_id: String,
        started_ms: i64,
        last_heartbeat_ms: i64,
        /// Restored from the store after a restart and not yet claimed by a
        /// reconnecting worker: the task may never have reached one.
        restored: bool,
    },
}

struct Entry {
    task: ActivityTask,
    state: TaskState,
    /// The queue-side deadlines (`schedule_to_start`, `schedule_to_close`),
    /// absolute; 0 when none. Kept to arm them again after a queue pause.
    queue_deadlines: (i64, i64),
    /// The deadline alarms armed for this task, cancelled when it leaves.
    alarms: Vec<AlarmKey>,
}

struct Session {
    worker_id: String,
    /// The name of the worker token the session authenticated with: lease
    /// tokens are bound to it.
    holder: String,
    activity_types: HashSet<String>,
    credit: u32,
    outbound: Outbound,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<(String, String)>>,
    entries: HashMap<(String, String), Entry>,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
    /// Paused queues: their tasks stay queued, handed to no worker, and
    /// their queue-side deadlines do not apply.
    paused: HashMap<String, QueuePauseRecord>,
}

/// A pending task as an operator sees it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub state: TaskState,
    pub activity_type: String,
}

/// Why a worker's message about a task was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The lease token is not one this server issued to this worker token
    /// for this task: a guessed or borrowed task id.
    Forged,
    /// The task's activity type is not among the session's queues.
    OutsideQueues { activity_type: String },
    /// Another live session holds the lease.
    HeldElsewhere,
}

impl Refusal {
    /// The `reason` label of `sagaflow_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Forged => "lease_token_invalid",
            Self::OutsideQueues { .. } => "queue_not_allowed",
            Self::HeldElsewhere => "lease_held_elsewhere",
        }
    }

    /// What the worker is told.
    pub fn message(&self, workflow_id: &str, task_id: &str) -> String {
        match self {
            Self::Forged => format!(
                "PERMISSION_DENIED: task {workflow_id}/{task_id}: the lease token was not issued to this worker token"
            ),
            Self::OutsideQueues { activity_type } => format!(
                "PERMISSION_DENIED: task {workflow_id}/{task_id} is on the queue {activity_type:?}, which this session does not serve"
            ),
            Self::HeldElsewhere => {
                format!("PERMISSION_DENIED: task {workflow_id}/{task_id} is leased to another connected worker")
            }
        }
    }
}

#[derive(Clone)]
pub struct Dispatch {
    state: Arc<Mutex<State>>,
    store: Arc<dyn Store>,
    timers: Timers,
    lease_key: Arc<LeaseKey>,
}

type Key = (String, String);

fn key(workflow_id: &str, task_id: &str) -> Key {
    (workflow_id.to_owned(), task_id.to_owned())
}

fn deadline(from: i64, budget_ms: u32) -> Option<i64> {
    (budget_ms > 0).then(|| from.saturating_add(i64::from(budget_ms)))
}

impl Dispatch {
    pub fn new(store: Arc<dyn Store>, timers: Timers, lease_key: LeaseKey) -> Self {
        Self { state: Arc::default(), store, timers, lease_key: Arc::new(lease_key) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a newly scheduled task and arms its queue-side deadlines.
    pub fn enqueue(&self, record: &TaskRecord, now: i64) {
        let Some(task) = record.task.clone() else {
            return;
        };
        let wf = task.workflow_id.clone();
        let task_id = task.task_id.clone();
        let mut alarms = Vec::new();
        if record.schedule_to_start_deadline_ms > 0 {
            alarms.push(self.arm(record.schedule_to_start_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToStart, 0));
        }
        if record.schedule_to_close_deadline_ms > 0 {
            alarms.push(self.arm(record.schedule_to_close_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToClose, 0));
        }
        let leases = {
            let mut state = self.lock();
            if state.entries.contains_key(&key(&wf, &task_id)) {
                // Queued once only: a second queue entry would hand it out twice.
                drop(state);
                self.timers.cancel(&alarms);
                return;
            }
            let activity_type = task.activity_type.clone();
            state.queues.entry(activity_type.clone()).or_default().push_back(key(&wf, &task_id));
            let queue_deadlines = (record.schedule_to_start_deadline_ms, record.schedule_to_close_deadline_ms);
            state.entries.insert(
                key(&wf, &task_id),
                Entry { task, state: TaskState::Queued { since_ms: now }, queue_deadlines, alarms },
            );
            self.match_queue(&mut state, &activity_type, now)
        };
        self.persist(leases);
    }

    /// Recovery: a task whose lease was still valid when the server stopped.
    /// Its worker may still report; the lease's own deadlines take it back otherwise.
    pub fn restore_leased(&self, record: &TaskRecord, lease: &Lease) {
        let Some(task) = record.task.clone() else {
            return;
        };
        let (wf, task_id) = (task.workflow_id.clone(), task.task_id.clone());
        let mut alarms = Vec::new();
        if record.schedule_to_close_deadline_ms > 0 {
            alarms.push(self.arm(record.schedule_to_close_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToClose, 0));
        }
        alarms.push(self.arm(lease.expires_ms, &wf, &task_id, TimeoutKind::StartToClose, lease.started_ms));
        let state = TaskState::Leased {
            session: None,
            worker_id: lease.worker_id.clone(),
            started_ms: lease.started_ms,
            last_heartbeat_ms: lease.started_ms,
            restored: true,
        };
        let queue_deadlines = (record.schedule_to_start_deadline_ms, record.schedule_to_close_deadline_ms);
        self.lock().entries.insert(key(&wf, &task_id), Entry { task, state, queue_deadlines, alarms });
    }

    /// Holds `record.queue`: its tasks stay queued until [`resume`](Self::resume).
    /// The caller has made the pause durable first.
    pub fn pause(&self, record: QueuePauseRecord) {
        self.lock().paused.insert(record.queue.clone(), record);
    }

    /// Lets a paused queue go: its queue-side deadlines start again from
    /// `now` with the budgets they had, and its tasks go to workers.
    pub fn resume(&self, queue: &str, now: i64) {
        let leases = {
            let mut state = self.lock();
            if state.paused.remove(queue).is_none() {
                return;
            }
            for entry in state.entries.values_mut().filter(|e| e.task.activity_type == queue) {
                let TaskState::Queued { since_ms } = entry.state else { continue };
                let (wf, task_id) = (&entry.task.workflow_id, &entry.task.task_id);
                let (to_start, to_close) = entry.queue_deadlines;
                let again = |deadline: i64| now.saturating_add(deadline.saturating_sub(since_ms).max(0));
                if to_start > 0 {
                    entry.alarms.push(self.arm(again(to_start), wf, task_id, TimeoutKind::ScheduleToStart, 0));
                }
                if to_close > 0 {
                    entry.alarms.push(self.arm(again(to_close), wf, task_id, TimeoutKind::ScheduleToClose, 0));
                }
            }
            self.match_queue(&mut state, queue, now)
        };
        self.persist(leases);
    }

    pub fn is_paused(&self, queue: &str) -> bool {
        self.lock().paused.contains_key(queue)
    }

    /// The paused queues, by name.
    pub fn paused_queues(&self) -> Vec<QueuePauseRecord> {
        let mut paused: Vec<QueuePauseRecord> = self.lock().paused.values().cloned().collect();
        paused.sort_by(|a, b| a.queue.cmp(&b.queue));
        paused
    }

    /// Drops a task that the workflow no longer wants. A worker holding it
    /// is told, unless the removal is the worker's own outcome.
    pub fn remove(&self, workflow_id: &str, task_id: &str, tell_worker: bool) {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(&key(workflow_id, task_id)) else {
            return;
        };
        self.timers.cancel(&entry.alarms);
        match entry.state {
            TaskState::Queued { .. } => {
                if let Some(queue) = state.queues.get_mut(&entry.task.activity_type) {
                    queue.retain(|(w, t)| !(w == workflow_id && t == task_id));
                }
            }
            TaskState::Leased { session: Some(session), .. } if tell_worker => {
                if let Some(session) = state.sessions.get(&session) {
                    let message = ServerMessage {
                        message: Some(server_message::Message::TaskCancelled(TaskCancelled {
                            workflow_id: workflow_id.into(),
                            task_id: task_id.into(),
                            reason: "the workflow no longer wants this attempt".into(),
                        })),
                    };
                    let _ = session.outbound.try_send(Ok(message));
                }
            }
            TaskState::Leased { .. } => {}
        }
    }

    /// Opens a session for a worker that authenticated as `holder` (its
    /// token's name) and serves `activity_types`, already checked against
    /// that token's queues.
    pub fn open_session(
        &self,
        worker_id: String,
        holder: String,
        activity_types: HashSet<String>,
        outbound: Outbound,
    ) -> SessionId {
        let mut state = self.lock();
        state.next_session += 1;
        let id = state.next_session;
        state.sessions.insert(id, Session { worker_id, holder, activity_types, credit: 0, outbound });
        id
    }

    /// Whether session `id` may speak for the lease on a task: the checks of
    /// every outcome, heartbeat and claim. A task no longer pending passes
    /// on a valid token alone: its outcome is late, and the engine records
    /// it as ignored. A lease left by a session that is gone (a reconnect,
    /// a restart), or held by an earlier session of the same worker id and
    /// token, passes to `id`.
    pub fn authorize(&self, id: SessionId, workflow_id: &str, task_id: &str, token: &str) -> Result<(), Refusal> {
        let mut state = self.lock();
        let State { sessions, entries, .. } = &mut *state;
        let Some(session) = sessions.get(&id) else { return Err(Refusal::HeldElsewhere) };
        if !self.lease_key.verify(&session.holder, workflow_id, task_id, token) {
            return Err(Refusal::Forged);
        }
        let Some(entry) = entries.get_mut(&key(workflow_id, task_id)) else { return Ok(()) };
        if !session.activity_types.contains(&entry.task.activity_type) {
            return Err(Refusal::OutsideQueues { activity_type: entry.task.activity_type.clone() });
        }
        match &mut entry.state {
            TaskState::Leased { session: Some(holder), .. } if *holder == id => Ok(()),
            // The same worker back on a new stream may take its lease over
            // before the server has noticed that the old one is gone.
            TaskState::Leased { session: Some(holder), worker_id, .. }
                if sessions.contains_key(holder) && *worker_id != session.worker_id =>
            {
                Err(Refusal::HeldElsewhere)
            }
            TaskState::Leased { session, restored, .. } => {
                *session = Some(id);
                *restored = false;
                Ok(())
            }
            TaskState::Queued { .. } => Ok(()),
        }
    }

    /// A reconnecting worker still runs these tasks: bind them to its session
    /// (a task that went back to its queue is taken out again, so that it
    /// does not run twice). Returns the claims refused, each with why.
    pub fn claim(&self, id: SessionId, held: &[(String, String, String)], now: i64) -> Vec<(String, String, Refusal)> {
        let mut refused = Vec::new();
        let mut claimable = Vec::new();
        for (workflow_id, task_id, token) in held {
            match self.authorize(id, workflow_id, task_id, token) {
                Ok(()) => claimable.push((workflow_id, task_id)),
                Err(refusal) => refused.push((workflow_id.clone(), task_id.clone(), refusal)),
            }
        }
        let mut state = self.lock();
        let Some(worker_id) = state.sessions.get(&id).map(|s| s.worker_id.clone()) else { return refused };
        for (workflow_id, task_id) in claimable {
            let task_key = key(workflow_id, task_id);
            let Some(entry) = state.entries.get_mut(&task_key) else { continue };
            match &mut entry.state {
                // `authorize` bound it to this session.
                TaskState::Leased { .. } => {}
                TaskState::Queued { .. } => {
                    let activity_type = entry.task.activity_type.clone();
                    entry.state = TaskState::Leased {
                        session: Some(id),
                        worker_id: worker_id.clone(),
                        started_ms: now,
                        last_heartbeat_ms: now,
                        restored: false,
                    };
                    if let Some(at) = deadline(now, entry.task.start_to_close_ms) {
                        entry.alarms.push(self.arm(at, workflow_id, task_id, TimeoutKind::StartToClose, now));
                    }
                    if let Some(queue) = state.queues.get_mut(&activity_type) {
                        queue.retain(|k| *k != task_key);
                    }
                }
            }
        }
        refused
    }

    /// A lease restored after a restart that no worker claimed: the task
    /// goes back to its queue, same attempt and key.
    pub fn reclaim(&self, workflow_id: &str, task_id: &str, now: i64) {
        let leases = {
            let mut state = self.lock();
            let task_key = key(workflow_id, task_id);
            let Some(entry) = state.entries.get_mut(&task_key) else { return };
            if !matches!(entry.state, TaskState::Leased { restored: true, .. }) {
                return;
            }
            entry.state = TaskState::Queued { since_ms: now };
            let activity_type = entry.task.activity_type.clone();
            tracing::info!(
                workflow_id,
                task_id,
                correlation_id = %entry.task.correlation_id,
                "no worker claimed a lease restored after the restart; re-queued"
            );
            state.queues.entry(activity_type.clone()).or_default().push_front(task_key);
            self.match_queue(&mut state, &activity_type, now)
        };
        self.persist(leases);
    }

    /// Drops the tasks of the workflows `gone` names (their shard went to
    /// another node), queued or leased, with their alarms. A worker that
    /// holds one is not told: the attempt is still wanted, and its outcome
    /// counts at the shard's new node.
    pub fn forget(&self, gone: &dyn Fn(&str) -> bool) {
        let mut state = self.lock();
        let keys: Vec<Key> = state.entries.keys().filter(|(wf, _)| gone(wf)).cloned().collect();
        for task_key in &keys {
            if let Some(entry) = state.entries.remove(task_key) {
                self.timers.cancel(&entry.alarms);
            }
        }
        for queue in state.queues.values_mut() {
            queue.retain(|(wf, _)| !gone(wf));
        }
    }

    /// The session's leased tasks stay leased: the worker may reconnect and
    /// report them, and their deadlines take them back if it does not.
    pub fn close_session(&self, id: SessionId) {
        let mut state = self.lock();
        state.sessions.remove(&id);
        for entry in state.entries.values_mut() {
            if let TaskState::Leased { session, .. } = &mut entry.state
                && *session == Some(id)
            {
                *session = None;
            }
        }
    }

    /// Takes back up to `credit` of the session's unspent credit; returns
    /// how much it took.
    pub fn withdraw(&self, id: SessionId, credit: u32) -> u32 {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(&id) else { return 0 };
        let taken = session.credit.min(credit);
        session.credit -= taken;
        taken
    }

    pub fn grant(&self, id: SessionId, credit: u32, now: i64) {
        let leases = {
            let mut state = self.lock();
            let Some(session) = state.sessions.get_mut(&id) else {
                return;
            };
            session.credit = session.credit.saturating_add(credit).min(MAX_CREDIT);
            let types: Vec<String> = session.activity_types.iter().cloned().collect();
            let mut leases = Vec::new();
            for activity_type in types {
                leases.extend(self.match_queue(&mut state, &activity_type, now));
            }
            leases
        };
        self.persist(leases);
    }

    /// Hands queued tasks of one type to sessions with credit, round-robin.
    fn match_queue(&self, state: &mut State, activity_type: &str, now: i64) -> Vec<(Key, Lease)> {
        let mut leases = Vec::new();
        if state.paused.contains_key(activity_type) {
            return leases;
        }
        let mut sessions: Vec<SessionId> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.credit > 0 && s.activity_types.contains(activity_type))
            .map(|(id, _)| *id)
            .collect();
        sessions.sort_unstable();
        let mut turn = 0usize;
        while !sessions.is_empty() {
            let Some(task_key) = state.queues.get_mut(activity_type).and_then(VecDeque::pop_front) else {
                break;
            };
            let Some(entry) = state.entries.get_mut(&task_key) else {
                continue;
            };
            let session_id = sessions[turn % sessions.len()];
            let Some(session) = state.sessions.get_mut(&session_id) else {
                break;
            };
            let mut task = entry.task.clone();
            task.lease_token = self.lease_key.sign(&session.holder, &task_key.0, &task_key.1, now);
            let message = ServerMessage { message: Some(server_message::Message::Task(task)) };
            if session.outbound.try_send(Ok(message)).is_err() {
                // The stream is gone or full: the task waits for another worker.
                state.queues.entry(activity_type.to_owned()).or_default().push_front(task_key);
                sessions.retain(|s| *s != session_id);
                continue;
            }
            session.credit -= 1;
            if session.credit == 0 {
                sessions.retain(|s| *s != session_id);
            } else {
                turn += 1;
            }
            let start_to_close = entry.task.start_to_close_ms;
            let heartbeat = entry.task.heartbeat_ms;
            entry.state = TaskState::Leased {
                session: Some(session_id),
                worker_id: session.worker_id.clone(),
                started_ms: now,
                last_heartbeat_ms: now,
                restored: false,
            };
            let expires_ms = deadline(now, start_to_close).unwrap_or(0);
            if let Some(at) = deadline(now, start_to_close) {
                entry.alarms.push(self.arm(at, &task_key.0, &task_key.1, TimeoutKind::StartToClose, now));
            }
            if let Some(at) = deadline(now, heartbeat) {
                entry.alarms.push(self.arm(at, &task_key.0, &task_key.1, TimeoutKind::Heartbeat, now));
            }
            leases.push((task_key, Lease { worker_id: session.worker_id.clone(), started_ms: now, expires_ms }));
        }
        leases
    }

    fn persist(&self, leases: Vec<(Key, Lease)>) {
        for ((wf, task_id), lease) in leases {
            // Not waited on: a lease is a hint (Store::record_leases).
            if let Err(e) = self.store.record_leases(wf.as_str(), vec![(task_id.clone(), lease)]) {
                tracing::warn!(error = %e, workflow_id = %wf, task_id, "could not record a lease; the task may run again after a restart");
            }
        }
    }

    fn arm(&self, at: i64, workflow_id: &str, task_id: &str, kind: TimeoutKind, lease_started_ms: i64) -> AlarmKey {
        self.timers.arm(
            at,
            Alarm::Deadline { workflow_id: workflow_id.into(), task_id: task_id.into(), kind, lease_started_ms },
        )
    }

    /// Records a heartbeat (already [authorized](Self::authorize)); false
    /// when the task is no longer wanted.
    pub fn heartbeat(&self, workflow_id: &str, task_id: &str, now: i64) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(&key(workflow_id, task_id)) else {
            return false;
        };
        if let TaskState::Leased { last_heartbeat_ms, started_ms, .. } = &mut entry.state {
            *last_heartbeat_ms = now;
            if let Some(at) = deadline(now, entry.task.heartbeat_ms) {
                let started = *started_ms;
                // A long task heartbeats many times: keep only the alarms still to come.
                entry.alarms.retain(|(at, _)| *at > now);
                entry.alarms.push(self.arm(at, workflow_id, task_id, TimeoutKind::Heartbeat, started));
            }
            return true;
        }
        false
    }

    /// Whether a fired deadline still applies to the task as it is now.
    pub fn deadline_applies(
        &self,
        workflow_id: &str,
        task_id: &str,
        kind: TimeoutKind,
        lease_started_ms: i64,
        now: i64,
    ) -> bool {
        let state = self.lock();
        let Some(entry) = state.entries.get(&key(workflow_id, task_id)) else {
            return false;
        };
        let held = state.paused.contains_key(&entry.task.activity_type);
        match (kind, &entry.state) {
            // A task held in a paused queue is not failed for waiting there;
            // `resume` arms its queue-side deadlines again.
            (TimeoutKind::ScheduleToClose | TimeoutKind::ScheduleToStart, TaskState::Queued { .. }) if held => false,
            (TimeoutKind::ScheduleToClose, _) | (TimeoutKind::ScheduleToStart, TaskState::Queued { .. }) => true,
            (TimeoutKind::StartToClose, TaskState::Leased { started_ms, .. }) => *started_ms == lease_started_ms,
            (TimeoutKind::Heartbeat, TaskState::Leased { started_ms, last_heartbeat_ms, .. }) => {
                *started_ms == lease_started_ms
                    && now >= last_heartbeat_ms.saturating_add(i64::from(entry.task.heartbeat_ms))
            }
            _ => false,
        }
    }

    /// Who holds the task and since when, for the `ActivityStarted` event.
    pub fn lease_of(&self, workflow_id: &str, task_id: &str) -> Option<(String, i64)> {
        match &self.lock().entries.get(&key(workflow_id, task_id))?.state {
            TaskState::Leased { worker_id, started_ms, .. } => Some((worker_id.clone(), *started_ms)),
            TaskState::Queued { .. } => None,
        }
    }

    pub fn view(&self, workflow_id: &str, task_id: &str) -> Option<TaskView> {
        let state = self.lock();
        let entry = state.entries.get(&key(workflow_id, task_id))?;
        Some(TaskView { state: entry.state.clone(), activity_type: entry.task.activity_type.clone() })
    }

    /// Queued tasks whose activity type no connected worker runs, queued since
    /// before `since_ms`: `(workflow_id, activity_type)`.
    pub fn unserved(&self, since_ms: i64) -> Vec<(String, String)> {
        let state = self.lock();
        let served: HashSet<&String> = state.sessions.values().flat_map(|s| s.activity_types.iter()).collect();
        state
            .entries
            .values()
            .filter(|e| matches!(e.state, TaskState::Queued { since_ms: at } if at <= since_ms))
            .filter(|e| !served.contains(&e.task.activity_type) && !state.paused.contains_key(&e.task.activity_type))
            .map(|e| (e.task.workflow_id.clone(), e.task.activity_type.clone()))
            .collect()
    }

    pub fn queue_len(&self, activity_type: &str) -> usize {
        self.lock().queues.get(activity_type).map_or(0, VecDeque::len)
    }

    /// Connected sessions per activity type.
    pub fn workers_by_type(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for session in self.lock().sessions.values() {
            for t in &session.activity_types {
                *counts.entry(t.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Every queue an operator may want to see: those a connected worker
    /// serves and those with tasks, sorted by name. Read-only.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let state = self.lock();
        let mut queues: std::collections::BTreeMap<String, QueueStats> = std::collections::BTreeMap::new();
        fn stats<'a>(
            queues: &'a mut std::collections::BTreeMap<String, QueueStats>,
            queue: &str,
        ) -> &'a mut QueueStats {
            queues
                .entry(queue.to_owned())
                .or_insert_with(|| QueueStats { queue: queue.to_owned(), ..QueueStats::default() })
        }
        for session in state.sessions.values() {
            for activity_type in &session.activity_types {
                stats(&mut queues, activity_type).workers.push((session.worker_id.clone(), session.credit));
            }
        }
        for entry in state.entries.values() {
            let queue = stats(&mut queues, &entry.task.activity_type);
            match entry.state {
                TaskState::Queued { .. } => queue.backlog += 1,
                TaskState::Leased { .. } => queue.in_flight += 1,
            }
        }
        for (name, pause) in &state.paused {
            stats(&mut queues, name).paused = Some(pause.clone());
        }
        let mut out: Vec<QueueStats> = queues.into_values().collect();
        for queue in &mut out {
            queue.workers.sort();
        }
        out
    }
}

/// One task queue as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    pub queue: String,
    /// `(worker_id, credit)` of each connected session serving it.
    pub workers: Vec<(String, u32)>,
    pub in_flight: usize,
    pub backlog: usize,
    pub paused: Option<QueuePauseRecord>,
}
