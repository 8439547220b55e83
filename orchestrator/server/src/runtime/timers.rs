//! One timer wheel for everything that waits: durable workflow timers (retry
//! backoff, sleeps, signal deadlines) and activity deadlines. Whoever
//! receives an alarm checks that it still applies, so a stale one is
//! harmless; alarms that no longer matter are still cancelled, because an
//! alarm left armed holds memory until its time (hours, for a deadline).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::engine::TimeoutKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alarm {
    /// A durable timer of the workflow's history.
    Workflow { workflow_id: String, timer_id: String },
    /// An activity deadline; `lease_started_ms` tells which lease it was armed for.
    Deadline { workflow_id: String, task_id: String, kind: TimeoutKind, lease_started_ms: i64 },
    /// Re-queue a restored lease if no reconnecting worker claimed it.
    Reclaim { workflow_id: String, task_id: String },
}

impl Alarm {
    pub fn workflow_id(&self) -> &str {
        match self {
            Self::Workflow { workflow_id, .. }
            | Self::Deadline { workflow_id, .. }
            | Self::Reclaim { workflow_id, .. } => workflow_id,
        }
    }
}

#[derive(Clone)]
pub struct Timers {
    inner: Arc<Inner>,
}

/// When an alarm fires, and the arming order among alarms of that time.
pub type AlarmKey = (i64, u64);

struct Inner {
    armed: Mutex<Armed>,
    next_id: std::sync::atomic::AtomicU64,
    changed: Notify,
}

/// A workflow timer, as its history names it.
type TimerName = (String, String);

#[derive(Default)]
struct Armed {
    alarms: BTreeMap<AlarmKey, Alarm>,
    /// The alarm of each armed workflow timer, so that a timer deleted before
    /// its time (a signal that came before its deadline, a workflow that
    /// closed during a sleep) takes its alarm with it.
    workflow_timers: HashMap<TimerName, AlarmKey>,
}

impl Armed {
    fn insert(&mut self, key: AlarmKey, alarm: Alarm) {
        if let Alarm::Workflow { workflow_id, timer_id } = &alarm {
            // Armed twice (a recovery racing a decision): the later alarm is
            // the one a cancel must find; the earlier one fires harmlessly.
            self.workflow_timers.insert((workflow_id.clone(), timer_id.clone()), key);
        }
        self.alarms.insert(key, alarm);
    }

    /// Takes the alarms due at or before `now`.
    fn take_due(&mut self, now: i64) -> BTreeMap<AlarmKey, Alarm> {
        let later = self.alarms.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.alarms, later);
        for (key, alarm) in &due {
            if let Alarm::Workflow { workflow_id, timer_id } = alarm {
                let name = (workflow_id.clone(), timer_id.clone());
                if self.workflow_timers.get(&name) == Some(key) {
                    self.workflow_timers.remove(&name);
                }
            }
        }
        due
    }
}

pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl Timers {
    /// Starts the wheel; fired alarms arrive on the returned channel.
    pub fn start() -> (Self, mpsc::Receiver<Alarm>) {
        let inner = Arc::new(Inner {
            armed: Mutex::new(Armed::default()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            changed: Notify::new(),
        });
        // Bounded: while the consumer is behind, due alarms wait in the
        // wheel (one per armed timer, which the history limits bound)
        // instead of piling up in a channel.
        let (fired_tx, fired_rx) = mpsc::channel(FIRED_CAPACITY);
        tokio::spawn(run(Arc::clone(&inner), fired_tx));
        (Self { inner }, fired_rx)
    }

    /// Arms `alarm` for `at_ms`; the key cancels it.
    pub fn arm(&self, at_ms: i64, alarm: Alarm) -> AlarmKey {
        let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let earliest = {
            let mut armed = self.lock();
            armed.insert((at_ms, id), alarm);
            armed.alarms.keys().next().is_some_and(|k| k.1 == id)
        };
        if earliest {
            self.inner.changed.notify_one();
        }
        (at_ms, id)
    }

    /// Drops alarms that are no longer wanted (a task's deadlines once it
    /// ended). A fired alarm's key is simply not found. Without this, every
    /// task left its deadlines in memory until they passed: a task with a
    /// one-hour deadline that took 5 ms held its alarm for an hour.
    pub fn cancel(&self, keys: &[AlarmKey]) {
        if keys.is_empty() {
            return;
        }
        let mut armed = self.lock();
        for key in keys {
            armed.alarms.remove(key);
        }
    }

    /// Drops the alarm of a workflow timer its history deleted before its time.
    pub fn cancel_workflow_timer(&self, workflow_id: &str, timer_id: &str) {
        let mut armed = self.lock();
        if let Some(key) = armed.workflow_timers.remove(&(workflow_id.to_owned(), timer_id.to_owned())) {
            armed.alarms.remove(&key);
        }
    }

    /// Drops the alarms of the workflows `gone` names (their shard went to
    /// another node, which arms its own).
    pub fn forget(&self, gone: &dyn Fn(&str) -> bool) {
        let mut armed = self.lock();
        armed.alarms.retain(|_, alarm| !gone(alarm.workflow_id()));
        armed.workflow_timers.retain(|(workflow_id, _), _| !gone(workflow_id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Armed> {
        self.inner.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Alarms armed and not yet fired or cancelled.
    pub fn armed(&self) -> usize {
        self.lock().alarms.len()
    }
}

/// Alarms handed over and not yet taken by the runtime.
const FIRED_CAPACITY: usize = 1024;

async fn run(inner: Arc<Inner>, fired: mpsc::Sender<Alarm>) {
    loop {
        let now = now_ms();
        let (due, next) = {
            let mut armed = inner.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = armed.take_due(now);
            (due, armed.alarms.keys().next().map(|k| k.0))
        };
        for alarm in due.into_values() {
            if fired.send(alarm).await.is_err() {
                return;
            }
        }
        match next {
            Some(at) => {
                let wait = Duration::from_millis(u64::try_from(at - now).unwrap_or(0).max(1));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = inner.changed.notified() => {}
                }
            }
            None => inner.changed.notified().await,
        }
    }
}
