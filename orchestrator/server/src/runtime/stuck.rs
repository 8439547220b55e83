//! The stuck-saga detector. It flags, with a `StuckDetected` event, a
//! workflow that made no progress for too long and a task that no connected
//! worker can take. (A compensation out of retries is flagged by the engine
//! itself.) A flag clears when the workflow moves again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sagaflow_proto::v1::WorkflowSummary;
use sagaflow_workflows::SagaDefinition;
use serde::{Deserialize, Serialize};

use super::Runtime;
use super::timers::now_ms;
use crate::engine::{Input, StuckReason, WorkflowState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckPolicy {
    /// An open workflow without progress for this long is flagged.
    #[serde(with = "humantime_serde_compat")]
    pub no_progress_after: Duration,
    /// A task queued this long for an activity type no worker runs is flagged.
    #[serde(with = "humantime_serde_compat")]
    pub no_worker_after: Duration,
    /// How often the detector looks.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for StuckPolicy {
    fn default() -> Self {
        Self {
            no_progress_after: Duration::from_secs(300),
            no_worker_after: Duration::from_secs(30),
            interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
struct Watched {
    last_progress_ms: i64,
    stuck: Option<String>,
    /// Waiting on a sleep step: silence is expected.
    sleeping: bool,
    /// Paused by an operator: silent by choice, never flagged for it.
    paused: bool,
    /// A child held for its parent: silent until the parent decides.
    held: bool,
    current_step: String,
}

pub(super) struct Tracker {
    policy: StuckPolicy,
    open: Mutex<HashMap<String, Watched>>,
}

impl Tracker {
    pub(super) fn new(policy: StuckPolicy) -> Self {
        Self { policy, open: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn observe(&self, state: &WorkflowState, definition: &SagaDefinition) {
        if state.is_terminal() {
            self.lock().remove(&state.workflow_id);
            return;
        }
        let watched = Watched {
            last_progress_ms: state.last_progress_ms,
            stuck: state.stuck.as_ref().map(|(r, _, _)| r.clone()),
            sleeping: state.timers.keys().any(|t| t.starts_with("sleep/")),
            paused: state.paused.is_some(),
            held: state.held,
            current_step: super::records::summary(state, definition).current_step,
        };
        self.lock().insert(state.workflow_id.clone(), watched);
    }

    pub(super) fn observe_summary(&self, summary: &WorkflowSummary) {
        let watched = Watched {
            last_progress_ms: summary.updated_ms,
            stuck: (!summary.stuck_reason.is_empty()).then(|| summary.stuck_reason.clone()),
            sleeping: false,
            paused: !summary.paused_reason.is_empty(),
            held: false,
            current_step: summary.current_step.clone(),
        };
        self.lock().insert(summary.workflow_id.clone(), watched);
    }

    /// Stops watching the workflows `gone` names (their shard went to another node).
    pub(super) fn forget(&self, gone: &dyn Fn(&str) -> bool) {
        self.lock().retain(|workflow_id, _| !gone(workflow_id));
    }

    fn silent_since(&self, before_ms: i64) -> Vec<(String, i64, String)> {
        self.lock()
            .iter()
            .filter(|(_, w)| {
                w.stuck.is_none() && !w.sleeping && !w.paused && !w.held && w.last_progress_ms <= before_ms
            })
            .map(|(id, w)| (id.clone(), w.last_progress_ms, w.current_step.clone()))
            .collect()
    }

    /// Open workflows flagged stuck, by reason.
    pub(super) fn stuck_by_reason(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for reason in self.lock().values().filter_map(|w| w.stuck.clone()) {
            *counts.entry(reason).or_insert(0) += 1;
        }
        counts
    }

    pub(super) fn paused_count(&self) -> usize {
        self.lock().values().filter(|w| w.paused).count()
    }

    pub(super) fn open_count(&self) -> usize {
        self.lock().len()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Runtime {
    pub(super) async fn detect_stuck(self) {
        let mut ticker = tokio::time::interval(self.inner.stuck.policy.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.check_stuck().await;
        }
    }

    /// Open workflows flagged stuck, by reason (`NO_PROGRESS`, …).
    pub fn stuck_counts(&self) -> HashMap<String, usize> {
        self.inner.stuck.stuck_by_reason()
    }

    /// One pass of the detector; returns how many workflows it flagged.
    pub async fn check_stuck(&self) -> usize {
        let now = now_ms();
        let policy = self.inner.stuck.policy;
        let mut flagged = 0;
        for (workflow_id, activity_type) in self.inner.dispatch.unserved(now - millis(policy.no_worker_after)) {
            let message = format!(
                "no connected worker runs activity type {activity_type:?}; the task has waited more than {}",
                humantime::format_duration(policy.no_worker_after)
            );
            flagged += self.flag(&workflow_id, StuckReason::NoWorker, message).await;
        }
        for (workflow_id, since, step) in self.inner.stuck.silent_since(now - millis(policy.no_progress_after)) {
            let silent = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
            let message = format!(
                "no progress for {} (at step {step:?})",
                humantime::format_duration(Duration::from_secs(silent.as_secs()))
            );
            flagged += self.flag(&workflow_id, StuckReason::NoProgress, message).await;
        }
        crate::metrics::record_stuck(&self.inner.stuck.stuck_by_reason(), self.inner.stuck.open_count());
        crate::metrics::record_paused(self.inner.stuck.paused_count());
        crate::metrics::record_alarms(self.inner.timers.armed());
        crate::metrics::record_slots(self.slot_count());
        crate::metrics::record_workers(&self.inner.dispatch.workers_by_type());
        flagged
    }

    async fn flag(&self, workflow_id: &str, reason: StuckReason, message: String) -> usize {
        match self.decide(workflow_id, Input::Stuck { reason, message: message.clone() }).await {
            Ok(events) if !events.is_empty() => {
                // Read back for the log line only: a flag is rare, off the hot path.
                let started = self.started_event(workflow_id).await.ok().flatten();
                let correlation_id = started.map(|s| s.correlation_id).unwrap_or_default();
                tracing::warn!(workflow_id, %correlation_id, reason = reason.as_str(), %message, "stuck saga detected");
                1
            }
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(workflow_id, error = %e, "could not flag a stuck saga");
                0
            }
        }
    }
}
