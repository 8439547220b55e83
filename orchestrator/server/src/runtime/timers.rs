//! One timer wheel for everything that waits: durable workflow timers (retry
//! backoff, sleeps, signal deadlines) and activity deadlines. Alarms that no
//! longer matter are not removed; whoever receives one checks that it still
//! applies, which keeps arming and firing O(log n) and lock-light.

use std::collections::BTreeMap;
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

#[derive(Clone)]
pub struct Timers {
    inner: Arc<Inner>,
}

/// When an alarm fires, and the arming order among alarms of that time.
pub type AlarmKey = (i64, u64);

struct Inner {
    alarms: Mutex<BTreeMap<AlarmKey, Alarm>>,
    next_id: std::sync::atomic::AtomicU64,
    changed: Notify,
}

pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl Timers {
    /// Starts the wheel; fired alarms arrive on the returned channel.
    pub fn start() -> (Self, mpsc::Receiver<Alarm>) {
        let inner = Arc::new(Inner {
            alarms: Mutex::new(BTreeMap::new()),
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
            let mut alarms = self.lock();
            alarms.insert((at_ms, id), alarm);
            alarms.keys().next().is_some_and(|k| k.1 == id)
        };
        if earliest {
            self.inner.changed.notify_one();
        }
        (at_ms, id)
    }

    /// Drops alarms that are no longer wanted (a task's deadlines once it
    /// ended). A fired alarm's key is simply not found. Without this, every
    /// task left its deadlines in memory until they passed: a task with a
    /// one-hour deadline that took 5 ms held its alarm for an hour, and the
    /// soak phase saw memory grow by 36 MiB a minute.
    pub fn cancel(&self, keys: &[AlarmKey]) {
        if keys.is_empty() {
            return;
        }
        let mut alarms = self.lock();
        for key in keys {
            alarms.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<AlarmKey, Alarm>> {
        self.inner.alarms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Alarms armed and not yet fired or cancelled.
    pub fn armed(&self) -> usize {
        self.lock().len()
    }
}

/// Alarms handed over and not yet taken by the runtime.
const FIRED_CAPACITY: usize = 1024;

async fn run(inner: Arc<Inner>, fired: mpsc::Sender<Alarm>) {
    loop {
        let now = now_ms();
        let (due, next) = {
            let mut alarms = inner.alarms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let later = alarms.split_off(&(now + 1, 0));
            let due = std::mem::replace(&mut *alarms, later);
            (due, alarms.keys().next().map(|k| k.0))
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
