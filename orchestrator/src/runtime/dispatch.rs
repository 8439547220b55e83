//! Task queues (one per activity type), worker sessions and leases.
//!
//! A worker session grants credit; a task goes only to a session with credit
//! left, so a worker never holds more tasks than it asked for. A leased task
//! belongs to one worker until its outcome arrives or a deadline takes it back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use sagaflow_proto::v1::{ActivityTask, ServerMessage, TaskCancelled, server_message};
use tokio::sync::mpsc;

use super::timers::{Alarm, Timers};
use crate::engine::TimeoutKind;
use crate::store::{Lease, Store, TaskRecord};

pub type SessionId = u64;
pub type Outbound = mpsc::Sender<Result<ServerMessage, tonic::Status>>;

/// Most credit one session may hold; a worker asking for more is capped.
const MAX_CREDIT: u32 = 10_000;

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
}

struct Session {
    worker_id: String,
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
}

/// A pending task as an operator sees it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub state: TaskState,
    pub activity_type: String,
}

#[derive(Clone)]
pub struct Dispatch {
    state: Arc<Mutex<State>>,
    store: Arc<dyn Store>,
    timers: Timers,
}

type Key = (String, String);

fn key(workflow_id: &str, task_id: &str) -> Key {
    (workflow_id.to_owned(), task_id.to_owned())
}

fn deadline(from: i64, budget_ms: u32) -> Option<i64> {
    (budget_ms > 0).then(|| from.saturating_add(i64::from(budget_ms)))
}

impl Dispatch {
    pub fn new(store: Arc<dyn Store>, timers: Timers) -> Self {
        Self { state: Arc::default(), store, timers }
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
        if record.schedule_to_start_deadline_ms > 0 {
            self.arm(record.schedule_to_start_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToStart, 0);
        }
        if record.schedule_to_close_deadline_ms > 0 {
            self.arm(record.schedule_to_close_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToClose, 0);
        }
        let leases = {
            let mut state = self.lock();
            let activity_type = task.activity_type.clone();
            state.queues.entry(activity_type.clone()).or_default().push_back(key(&wf, &task_id));
            state.entries.insert(key(&wf, &task_id), Entry { task, state: TaskState::Queued { since_ms: now } });
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
        if record.schedule_to_close_deadline_ms > 0 {
            self.arm(record.schedule_to_close_deadline_ms, &wf, &task_id, TimeoutKind::ScheduleToClose, 0);
        }
        self.arm(lease.expires_ms, &wf, &task_id, TimeoutKind::StartToClose, lease.started_ms);
        let state = TaskState::Leased {
            session: None,
            worker_id: lease.worker_id.clone(),
            started_ms: lease.started_ms,
            last_heartbeat_ms: lease.started_ms,
            restored: true,
        };
        self.lock().entries.insert(key(&wf, &task_id), Entry { task, state });
    }

    /// Drops a task that the workflow no longer wants. A worker holding it
    /// is told, unless the removal is the worker's own outcome.
    pub fn remove(&self, workflow_id: &str, task_id: &str, tell_worker: bool) {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(&key(workflow_id, task_id)) else {
            return;
        };
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

    pub fn open_session(&self, worker_id: String, activity_types: HashSet<String>, outbound: Outbound) -> SessionId {
        let mut state = self.lock();
        state.next_session += 1;
        let id = state.next_session;
        state.sessions.insert(id, Session { worker_id, activity_types, credit: 0, outbound });
        id
    }

    /// A reconnecting worker still runs these tasks: bind them to its session
    /// (a task that went back to its queue is taken out again, so that it
    /// does not run twice).
    pub fn claim(&self, id: SessionId, held: &[(String, String)], now: i64) {
        let mut state = self.lock();
        let Some(worker_id) = state.sessions.get(&id).map(|s| s.worker_id.clone()) else { return };
        for (workflow_id, task_id) in held {
            let task_key = key(workflow_id, task_id);
            let Some(entry) = state.entries.get_mut(&task_key) else { continue };
            match &mut entry.state {
                TaskState::Leased { session, restored, .. } => {
                    *session = Some(id);
                    *restored = false;
                }
                TaskState::Queued { .. } => {
                    let activity_type = entry.task.activity_type.clone();
                    entry.state = TaskState::Leased {
                        session: Some(id),
                        worker_id: worker_id.clone(),
                        started_ms: now,
                        last_heartbeat_ms: now,
                        restored: false,
                    };
                    let deadline_ms = deadline(now, entry.task.start_to_close_ms);
                    if let Some(queue) = state.queues.get_mut(&activity_type) {
                        queue.retain(|k| *k != task_key);
                    }
                    if let Some(at) = deadline_ms {
                        self.arm(at, workflow_id, task_id, TimeoutKind::StartToClose, now);
                    }
                }
            }
        }
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
            let message = ServerMessage { message: Some(server_message::Message::Task(entry.task.clone())) };
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
                self.arm(at, &task_key.0, &task_key.1, TimeoutKind::StartToClose, now);
            }
            if let Some(at) = deadline(now, heartbeat) {
                self.arm(at, &task_key.0, &task_key.1, TimeoutKind::Heartbeat, now);
            }
            leases.push((task_key, Lease { worker_id: session.worker_id.clone(), started_ms: now, expires_ms }));
        }
        leases
    }

    fn persist(&self, leases: Vec<(Key, Lease)>) {
        for ((wf, task_id), lease) in leases {
            if let Err(e) = self.store.put_lease(&wf, &task_id, &lease) {
                tracing::warn!(error = %e, workflow_id = %wf, task_id, "could not record a lease; the task may run again after a restart");
            }
        }
    }

    fn arm(&self, at: i64, workflow_id: &str, task_id: &str, kind: TimeoutKind, lease_started_ms: i64) {
        self.timers.arm(
            at,
            Alarm::Deadline { workflow_id: workflow_id.into(), task_id: task_id.into(), kind, lease_started_ms },
        );
    }

    /// Records a heartbeat; false when the task is no longer wanted.
    pub fn heartbeat(&self, workflow_id: &str, task_id: &str, now: i64) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(&key(workflow_id, task_id)) else {
            return false;
        };
        if let TaskState::Leased { last_heartbeat_ms, started_ms, .. } = &mut entry.state {
            *last_heartbeat_ms = now;
            if let Some(at) = deadline(now, entry.task.heartbeat_ms) {
                let started = *started_ms;
                drop(state);
                self.arm(at, workflow_id, task_id, TimeoutKind::Heartbeat, started);
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
        match (kind, &entry.state) {
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
            .filter(|e| !served.contains(&e.task.activity_type))
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
        let mut out: Vec<QueueStats> = queues.into_values().collect();
        for queue in &mut out {
            queue.workers.sort();
        }
        out
    }
}

/// One task queue as an operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: String,
    /// `(worker_id, credit)` of each connected session serving it.
    pub workers: Vec<(String, u32)>,
    pub in_flight: usize,
    pub backlog: usize,
}
