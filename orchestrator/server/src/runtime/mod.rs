//! The runtime drives workflows: one writer per workflow, every decision
//! committed atomically and durably before its effects (tasks, timers,
//! replies) are released.
//!
//! The story of a request: `api` validates, [`engine`](crate::engine) decides,
//! [`store`](crate::store) commits, [`dispatch`] hands out work, and
//! [`timers`] wake what waits.

mod archival;
mod children;
mod cluster_records;
mod definitions;
mod describe;
pub mod dispatch;
pub mod lease_token;
mod other_nodes;
mod outbox;
mod queues;
mod reads;
mod recent;
mod records;
mod recovery;
mod redrive;
pub mod retention;
mod shards;
mod stuck;
pub mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use sagaflow_proto::v1::{HistoryEvent, WorkflowStarted, WorkflowStatus, WorkflowSummary, history_event::Attributes};
use sagaflow_workflows::SagaDefinition;
use tokio::sync::watch;

pub use definitions::{LoadError, Registered, load_stored};
pub use other_nodes::OtherNodes;
pub use recent::{Cursor, NewestPage, NewestQuery};
pub use records::summary;
pub use recovery::{RebuildReport, rebuild_derived};
pub use redrive::Redriven;
pub use stuck::StuckPolicy;

use crate::engine::{self, Input, Outcome, Rejection, WorkflowState};
use crate::limits::Limits;
use crate::registry::{Registry, Unstartable};
use crate::store::{self, Commit, Store};
use dispatch::Dispatch;
use timers::{Alarm, Timers, now_ms};

/// Why the runtime refused or failed a request. The API maps each variant to
/// one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The runtime broke one of its own promises (an event it should have
    /// recorded is missing): a bug, never the caller's fault.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The archive (`--archive-dir`) could not be written or read; a
    /// deletion that needed it did not happen.
    #[error(transparent)]
    Archive(#[from] crate::archive::Error),
    /// The workflow's shard is another node's, or changing hands: retry
    /// (`shards.rs`).
    #[error("workflow {workflow_id} is in shard {shard}, which this node does not serve now; retry shortly")]
    NotServed { workflow_id: String, shard: u32 },
    /// The node serving another shard could not be reached, or did not answer.
    #[error("{0}")]
    Unreachable(String),
}

impl Error {
    /// Whether the same call may succeed shortly (a shard changing hands).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::NotServed { .. } | Self::Unreachable(_))
    }
}

impl From<Rejection> for Error {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::UnknownStep(_) => Self::InvalidArgument(rejection.to_string()),
            _ => Self::FailedPrecondition(rejection.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request to start a workflow, validated by the API.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub workflow_type: String,
    pub request_id: String,
    /// Canonical JSON text.
    pub input: String,
    pub workflow_id: Option<String>,
    pub labels: HashMap<String, String>,
    pub correlation_id: String,
    pub traceparent: String,
    /// Set when a parent's child step starts this workflow (ADR 0023).
    pub parent_workflow_id: String,
    /// Set when this start redrives an ended run (ADR 0025).
    pub redrive: Option<redrive::RedriveStart>,
}

/// What a repeated start must match to be answered with the workflow its
/// request id started.
#[derive(Clone, Copy)]
struct Start<'a> {
    workflow_type: &'a str,
    request_id: &'a str,
    input: &'a str,
    workflow_id: Option<&'a str>,
}

impl<'a> Start<'a> {
    fn of(request: &'a StartRequest) -> Self {
        Self {
            workflow_type: &request.workflow_type,
            request_id: &request.request_id,
            input: &request.input,
            workflow_id: request.workflow_id.as_deref(),
        }
    }
}

#[derive(Default)]
struct Slot {
    state: Option<(WorkflowState, Arc<SagaDefinition>)>,
}

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// What a watcher of one workflow learns after each durable decision.
#[derive(Debug, Clone, Default)]
struct Progress {
    last_seq: u64,
    terminal: bool,
    /// Set by the decision that closed the workflow, so that a waiter
    /// answers without reading back what that decision just wrote.
    ended: Option<Arc<Ended>>,
}

/// A workflow as a waiter learns it: its durable summary and, once it is
/// terminal, the result and reason its last event gives.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    pub summary: WorkflowSummary,
    pub result: String,
    pub reason: String,
}

/// The result and reason a closing event gives; `None` for any other event.
fn outcome_of(event: &HistoryEvent) -> Option<(String, String)> {
    Some(match event.attributes.as_ref()? {
        Attributes::WorkflowCompleted(c) => (c.result.clone(), String::new()),
        Attributes::WorkflowCompensated(c) => (String::new(), c.reason.clone()),
        Attributes::WorkflowFailed(f) => (String::new(), f.reason.clone()),
        Attributes::WorkflowCancelled(c) => (String::new(), c.reason.clone()),
        Attributes::WorkflowTerminated(t) => (String::new(), t.reason.clone()),
        _ => return None,
    })
}

/// Counts and logs a findings alert; its domain event is already in the outbox.
fn raise(state: &WorkflowState, alert: &outbox::RaisedAlert) {
    crate::metrics::record_findings(&state.workflow_type, &alert.metric, &alert.event, &alert.findings);
    for finding in &alert.findings {
        tracing::error!(
            workflow_id = %state.workflow_id,
            workflow_type = %state.workflow_type,
            step = %alert.step,
            alert = %alert.event,
            invariant = finding.get("invariant").and_then(serde_json::Value::as_str).unwrap_or(""),
            subject = finding.get("subject").and_then(serde_json::Value::as_str).unwrap_or(""),
            evidence = %finding,
            "{}", alert.event
        );
    }
}

/// Drops idle slots until at most `keep` remain. Idle means no one holds the
/// slot: every clone is made under the map's lock, so with the lock held a
/// count of one cannot rise, and the next user builds a fresh slot that
/// loads the state from the store, as after a restart. Which idle slots go
/// is the map's order: any of them costs the same replay to bring back.
/// Evicting a tenth at a time keeps the scan's cost per start constant.
fn evict_idle(slots: &mut HashMap<String, SlotRef>, keep: usize) {
    let mut excess = slots.len().saturating_sub(keep);
    slots.retain(|_, slot| {
        if excess > 0 && Arc::strong_count(slot) == 1 {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// Cheap to clone; every clone drives the same workflows.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// Every definition, built-in and stored, in memory: a start takes the
    /// read lock for a lookup and reads nothing from the store.
    registry: RwLock<Registry>,
    /// Serialises registrations and deprecations (see `definitions.rs`).
    registering: tokio::sync::Mutex<()>,
    /// When the cluster's definitions were last read for a start that named
    /// an unknown one (`cluster_records.rs`).
    definitions_learned: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Serialises queue pauses and resumptions with learning the cluster's.
    pausing: tokio::sync::Mutex<()>,
    limits: Limits,
    slots: Mutex<HashMap<String, SlotRef>>,
    /// Serialises starts per request id (striped), so that concurrent
    /// duplicates see one another.
    start_stripes: Vec<tokio::sync::Mutex<()>>,
    dispatch: Dispatch,
    timers: Timers,
    /// Bumped after every durable decision of a workflow someone is watching.
    watchers: Mutex<HashMap<String, watch::Sender<Progress>>>,
    stuck: stuck::Tracker,
    /// Bumped after every durable decision that wrote outbox records.
    outbox_changed: watch::Sender<u64>,
    /// Where closed workflows go before they are deleted (`--archive-dir`).
    archive: Option<Arc<crate::archive::Archive>>,
    /// Workflows by start time, for the console; built on first use.
    recent: recent::Recent,
    /// The shards whose workflows this runtime drives (`shards.rs`).
    served: shards::Served,
    /// How it reaches the nodes serving the other shards (`other_nodes.rs`).
    other_nodes: std::sync::OnceLock<Arc<dyn OtherNodes>>,
}

impl Runtime {
    /// Builds the runtime over `store`, adds the definitions stored in it to
    /// `registry` (the built-ins), registers `apply` as the API would (stored,
    /// refused if a version's content changed), and recovers what was in
    /// flight: after the apply, so that a workflow of a type only a file
    /// named before definitions were stored still resumes.
    pub async fn start(
        store: Arc<dyn Store>,
        mut registry: Registry,
        apply: Vec<SagaDefinition>,
        limits: Limits,
        stuck_policy: StuckPolicy,
        lease_key: lease_token::LeaseKey,
        archive: Option<Arc<crate::archive::Archive>>,
    ) -> Result<Self> {
        let stored = load_stored(&*store, &mut registry).await.map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        if stored > 0 {
            tracing::info!(definitions = stored, "loaded the stored saga definitions");
        }
        let (timers, fired) = Timers::start();
        let dispatch = Dispatch::new(Arc::clone(&store), timers.clone(), lease_key);
        let served = shards::Served::new(store.shard_count(), store.fences());
        let runtime = Self {
            inner: Arc::new(Inner {
                store,
                registry: RwLock::new(registry),
                registering: tokio::sync::Mutex::new(()),
                definitions_learned: tokio::sync::Mutex::default(),
                pausing: tokio::sync::Mutex::new(()),
                limits,
                slots: Mutex::default(),
                start_stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
                dispatch,
                timers,
                watchers: Mutex::default(),
                stuck: stuck::Tracker::new(stuck_policy),
                outbox_changed: watch::channel(0).0,
                archive,
                recent: recent::Recent::default(),
                served,
                other_nodes: std::sync::OnceLock::new(),
            }),
        };
        if !apply.is_empty() {
            runtime.register_definitions(apply, false).await?;
        }
        runtime.recover().await?;
        tokio::spawn(runtime.clone().fire_alarms(fired));
        tokio::spawn(runtime.clone().detect_stuck());
        if runtime.store_is_shared() {
            tokio::spawn(runtime.clone().learn_cluster_records());
        }
        Ok(runtime)
    }

    /// For the server's own wiring (health, the relay, the jobs); the API
    /// reads through the runtime's methods instead (`reads.rs`).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The definitions; hold the guard briefly (never across an await).
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.inner.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.inner.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Changes whenever new outbox records are durable.
    pub fn outbox_changes(&self) -> watch::Receiver<u64> {
        self.inner.outbox_changed.subscribe()
    }

    pub fn dispatch(&self) -> &Dispatch {
        &self.inner.dispatch
    }

    fn slot(&self, workflow_id: &str) -> SlotRef {
        let mut slots = self.inner.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cap = self.inner.limits.max_hot_workflows;
        if slots.len() >= cap && !slots.contains_key(workflow_id) {
            evict_idle(&mut slots, cap - cap / 10);
        }
        Arc::clone(slots.entry(workflow_id.to_owned()).or_default())
    }

    /// The definition a workflow started with: its type and version, and the
    /// content hash its `WorkflowStarted` pins (empty in older histories).
    fn definition_for(&self, started: &WorkflowStarted) -> Result<Arc<SagaDefinition>> {
        let (workflow_type, version) = (&started.workflow_type, started.definition_version);
        let registry = self.registry();
        let Some(entry) = registry.entry(workflow_type, version) else {
            return Err(Error::FailedPrecondition(format!(
                "definition {workflow_type} version {version} is not registered on this server; register it to resume the workflow"
            )));
        };
        if !started.definition_hash.is_empty() && started.definition_hash != entry.hash {
            return Err(Error::FailedPrecondition(format!(
                "definition {workflow_type} version {version} has content {} here, the workflow started on {}",
                entry.hash, started.definition_hash
            )));
        }
        Ok(Arc::clone(&entry.definition))
    }

    async fn load(&self, workflow_id: &str) -> Result<(WorkflowState, Arc<SagaDefinition>)> {
        let history = self.inner.store.history(workflow_id, 1, usize::MAX).await?;
        let Some(Attributes::WorkflowStarted(started)) = history.first().and_then(|e| e.attributes.as_ref()) else {
            return Err(Error::NotFound(format!("workflow {workflow_id} not found")));
        };
        let definition = match self.definition_for(started) {
            // Registered on another node, which started it, perhaps.
            Err(_) if self.learn_definitions_now().await => self.definition_for(started)?,
            found => found?,
        };
        let state = engine::replay(workflow_id, &history, &definition);
        Ok((state, definition))
    }

    /// Starts a workflow on the latest version of its type that is not
    /// deprecated, or returns the one this request id already started.
    pub async fn start_workflow(&self, request: StartRequest) -> Result<(String, bool)> {
        self.start_workflow_version(request, None).await
    }

    /// [`start_workflow`](Self::start_workflow) on the version named, when
    /// one is. A chosen workflow id in another node's shard starts there.
    pub async fn start_workflow_version(&self, request: StartRequest, version: Option<u32>) -> Result<(String, bool)> {
        self.start_in(request, version, true).await
    }

    /// [`start_workflow_version`](Self::start_workflow_version) for another
    /// node: here, or refused ([`Error::NotServed`]), never passed on.
    pub async fn start_here(&self, request: StartRequest, version: Option<u32>) -> Result<(String, bool)> {
        self.start_in(request, version, false).await
    }

    async fn start_in(&self, request: StartRequest, version: Option<u32>, pass_on: bool) -> Result<(String, bool)> {
        let to_start = || {
            let registry = self.registry();
            registry.to_start(&request.workflow_type, version).map(|e| (Arc::clone(&e.definition), e.hash.clone()))
        };
        let mut chosen = to_start();
        // Registered on another node a moment ago, perhaps.
        if matches!(chosen, Err(Unstartable::UnknownType(..) | Unstartable::UnknownVersion(..)))
            && self.learn_definitions_now().await
        {
            chosen = to_start();
        }
        let (definition, definition_hash) = match chosen {
            Ok(chosen) => chosen,
            Err(e @ (Unstartable::Deprecated(..) | Unstartable::AllDeprecated(_))) => {
                // A retry of a start made before the deprecation still answers
                // with its workflow: a start is idempotent by request id.
                return match self.started_by(&request).await? {
                    Some(existing) => Ok((existing, true)),
                    None => Err(Error::FailedPrecondition(e.to_string())),
                };
            }
            Err(e @ Unstartable::UnknownType(..)) => return Err(Error::InvalidArgument(e.to_string())),
            Err(e @ Unstartable::UnknownVersion(..)) => return Err(Error::NotFound(e.to_string())),
        };
        // A redrive names its old run, whose node draws the new one's id.
        if pass_on
            && request.redrive.is_none()
            && let Some((shard, nodes)) = request.workflow_id.as_deref().and_then(|id| self.elsewhere(id))
        {
            return nodes.start(shard, &request, version).await;
        }
        let stripe = stripe_of(&request.request_id, self.inner.start_stripes.len());
        let _serialised = self.inner.start_stripes[stripe].lock().await;
        // The request id is not looked up first: the store refuses a start
        // whose request id is taken (`RequestIdTaken`, below), which saves
        // the common start a read. Only a start about to be refused for
        // another reason looks first, so that a retry of one that was
        // accepted answers with its workflow instead.
        if let Some(first) = self.queue_full(&definition) {
            return match self.started_by(&request).await? {
                Some(existing) => Ok((existing, true)),
                None => Err(Error::ResourceExhausted(first)),
            };
        }
        let chosen_id = request.workflow_id.is_some();
        let workflow_id = match &request.workflow_id {
            Some(chosen) => chosen.clone(),
            None => self.new_workflow_id()?,
        };
        self.inner.served.admit(&workflow_id).await?;
        let slot = self.slot(&workflow_id);
        let mut guard = slot.lock().await;
        if let Err(e) = self.inner.served.check(&workflow_id) {
            drop(guard);
            self.release(&workflow_id, slot);
            return Err(e);
        }
        // A fresh UUIDv7 names no existing workflow; only a chosen id is looked up.
        if guard.state.is_some() || (chosen_id && self.inner.store.last_seq(&workflow_id).await? > 0) {
            drop(guard);
            drop(slot);
            return match self.started_by(&request).await? {
                Some(existing) => Ok((existing, true)),
                None => Err(Error::AlreadyExists(format!(
                    "workflow {workflow_id} already exists (started by another request id)"
                ))),
            };
        }
        let started = WorkflowStarted {
            workflow_type: definition.name.clone(),
            definition_version: definition.version,
            request_id: request.request_id.clone(),
            input: request.input,
            labels: request.labels,
            correlation_id: request.correlation_id,
            traceparent: request.traceparent,
            definition_hash,
            parent_workflow_id: request.parent_workflow_id,
            ..redrive::started_fields(request.redrive)
        };
        let now = now_ms();
        let (state, events) = engine::start(&workflow_id, started, &definition, now);
        let before = records::Derived::default();
        let commit_result =
            self.commit(&workflow_id, &state, &definition, events, &before, Some(request.request_id), None).await;
        match commit_result {
            Ok(()) => {
                crate::metrics::record_started(&definition.name);
                tracing::debug!(
                    workflow_id,
                    workflow_type = %definition.name,
                    correlation_id = %state.correlation_id,
                    trace_id = crate::telemetry::trace_id_hex(&state),
                    "workflow started"
                );
                let closed = Self::keep(&mut guard, state, definition);
                drop(guard);
                if closed {
                    self.release(&workflow_id, slot);
                }
                Ok((workflow_id, false))
            }
            Err(e) => {
                drop(guard);
                self.release(&workflow_id, slot);
                match e {
                    Error::Store(store::Error::RequestIdTaken { workflow_id: existing, .. }) => {
                        let start = Start {
                            workflow_type: &state.workflow_type,
                            request_id: &state.request_id,
                            input: &state.input,
                            workflow_id: chosen_id.then_some(workflow_id.as_str()),
                        };
                        self.confirm_existing(&existing, start).await.map(|()| (existing, true))
                    }
                    e => Err(e),
                }
            }
        }
    }

    /// A fresh workflow id (a UUIDv7) in a shard this runtime serves, so
    /// that a start without an id is served where it arrives.
    fn new_workflow_id(&self) -> Result<String> {
        // Each draw lands in a served shard with probability served/count:
        // the expected number of draws is count/served, at most the count.
        let draws = if self.inner.served.none() { 1 } else { 64 * self.inner.served.count() };
        let mut last = String::new();
        for _ in 0..draws {
            last = uuid::Uuid::now_v7().to_string();
            if self.inner.served.check(&last).is_ok() {
                return Ok(last);
            }
        }
        let shard = self.inner.served.shard_of(&last);
        Err(Error::NotServed { workflow_id: last, shard })
    }

    /// The workflow `request`'s request id started, if one did and it is
    /// the same start; an error when the request id started another.
    async fn started_by(&self, request: &StartRequest) -> Result<Option<String>> {
        match self.inner.store.workflow_for_request(&request.request_id).await? {
            Some(existing) => self.confirm_existing(&existing, Start::of(request)).await.map(|()| Some(existing)),
            None => Ok(None),
        }
    }

    /// Answers a repeated start with the workflow its request id started,
    /// once that start is durable (never confirm what a crash could still
    /// undo), if it is the same start.
    async fn confirm_existing(&self, existing: &str, start: Start<'_>) -> Result<()> {
        self.inner.store.barrier().wait().await?;
        self.compare_with_existing(existing, start).await
    }

    fn queue_full(&self, definition: &SagaDefinition) -> Option<String> {
        let activity_type = definition.steps.iter().find_map(|s| s.activity_type())?;
        let queued = self.inner.dispatch.queue_len(activity_type);
        (queued >= self.inner.limits.max_queued_tasks).then(|| {
            format!(
                "the {activity_type} queue holds {queued} tasks (limit {}); retry after workers catch up",
                self.inner.limits.max_queued_tasks
            )
        })
    }

    /// The event a history starts with; `None` when there is no history.
    async fn started_event(&self, workflow_id: &str) -> Result<Option<WorkflowStarted>> {
        let first = self.inner.store.history(workflow_id, 1, 1).await?;
        Ok(match first.into_iter().next().and_then(|e| e.attributes) {
            Some(Attributes::WorkflowStarted(started)) => Some(started),
            _ => None,
        })
    }

    async fn compare_with_existing(&self, workflow_id: &str, start: Start<'_>) -> Result<()> {
        let Some(started) = self.started_event(workflow_id).await? else {
            return Err(Error::NotFound(format!("workflow {workflow_id} of this request id has no history")));
        };
        let same_id = start.workflow_id.is_none_or(|id| id == workflow_id);
        if started.workflow_type == start.workflow_type && started.input == start.input && same_id {
            Ok(())
        } else {
            Err(Error::AlreadyExists(format!(
                "request id {:?} already started workflow {workflow_id} with a different type, input or workflow id",
                start.request_id
            )))
        }
    }

    /// Feeds one input to a workflow and commits what follows. Returns the
    /// new events (empty when nothing changed).
    pub async fn decide(&self, workflow_id: &str, input: Input) -> Result<Vec<HistoryEvent>> {
        self.inner.served.admit(workflow_id).await?;
        let slot = self.slot(workflow_id);
        let mut guard = slot.lock().await;
        // Checked again under the lock: a shard given up meanwhile waited for it.
        if let Err(e) = self.inner.served.check(workflow_id) {
            drop(guard);
            self.release(workflow_id, slot);
            return Err(e);
        }
        let (mut state, definition) = match guard.state.take() {
            Some(loaded) => loaded,
            None => match self.load(workflow_id).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    drop(guard);
                    self.release(workflow_id, slot);
                    return Err(e);
                }
            },
        };
        let outcome_task = match &input {
            Input::ActivityOutcome { task_id, .. } => Some(task_id.clone()),
            _ => None,
        };
        if let Input::Signal { .. } = &input
            && state.last_seq + 1 >= self.inner.limits.max_history_events
        {
            let limit = self.inner.limits.max_history_events;
            guard.state = Some((state, definition));
            return Err(Error::ResourceExhausted(format!(
                "workflow {workflow_id} has reached its history limit of {limit} events"
            )));
        }
        let before = records::derived(&state);
        let timings = crate::metrics::task_timings(&state);
        let before_seq = state.last_seq;
        let now = now_ms();
        let mut events = match engine::run(&mut state, &definition, input, now) {
            Ok(events) => events,
            Err(rejection) => {
                guard.state = Some((state, definition));
                return Err(rejection.into());
            }
        };
        if events.is_empty() {
            guard.state = Some((state, definition));
            return Ok(events);
        }
        if state.last_seq >= self.inner.limits.max_history_events {
            // Past the limit the workflow stops loudly rather than growing without bound.
            let (reloaded, _) = self.load(workflow_id).await?;
            state = reloaded;
            let limit = self.inner.limits.max_history_events;
            // Once the pivot was attempted, failing could keep money with no
            // order: the saga stops, flagged, for an operator (money safety
            // before availability). Before it nothing was taken, and it fails.
            let pivot_attempted = definition.pivot_index().is_some_and(|i| state.track(i, false).is_some());
            let flag = engine::StuckReason::HistoryLimit;
            if pivot_attempted && state.stuck.as_ref().is_some_and(|(reason, _, _)| reason == flag.as_str()) {
                guard.state = Some((state, definition));
                return Ok(Vec::new());
            }
            let attributes = if pivot_attempted {
                let message = format!(
                    "history limit of {limit} events reached after the pivot was attempted: settle the step by hand \
                     and terminate, or restart with a higher --max-history-events (the runbook's HISTORY_LIMIT)"
                );
                tracing::error!(workflow_id, correlation_id = %state.correlation_id, %message, "workflow stopped at its history limit");
                Attributes::StuckDetected(sagaflow_proto::v1::StuckDetected { reason: flag.as_str().into(), message })
            } else {
                let reason = format!("history limit of {limit} events reached");
                tracing::error!(workflow_id, correlation_id = %state.correlation_id, %reason, "workflow failed at its history limit");
                Attributes::WorkflowFailed(sagaflow_proto::v1::WorkflowFailed { reason, step: String::new() })
            };
            let stopped = HistoryEvent { seq: state.last_seq + 1, time_ms: now, attributes: Some(attributes) };
            state.apply(&stopped, &definition);
            events = vec![stopped];
        }
        debug_assert_eq!(events.first().map(|e| e.seq), Some(before_seq + 1));
        match self
            .commit(workflow_id, &state, &definition, events.clone(), &before, None, outcome_task.as_deref())
            .await
        {
            Ok(()) => {
                crate::metrics::record_activity_events(&timings, &events);
                let closed = Self::keep(&mut guard, state, definition);
                drop(guard);
                if closed {
                    self.release(workflow_id, slot);
                }
                Ok(events)
            }
            Err(e) => {
                // The cached state ran ahead of the store: reload it next time.
                drop(guard);
                self.release(workflow_id, slot);
                Err(e)
            }
        }
    }

    /// Commits, waits for durability, then releases the effects.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        workflow_id: &str,
        state: &WorkflowState,
        definition: &SagaDefinition,
        events: Vec<HistoryEvent>,
        before: &records::Derived,
        request_id: Option<String>,
        outcome_task: Option<&str>,
    ) -> Result<()> {
        let delta = records::delta(before, state, definition);
        let closes = events.iter().any(|e| e.attributes.as_ref().is_some_and(closes_workflow));
        let outbox = outbox::domain_events(state, definition, &events);
        let published: Vec<String> = outbox.iter().map(|r| r.event_type.clone()).collect();
        let alerts = outbox::raised_alerts(definition, &events);
        // Only a start passes a request id, and it has made sure, under the
        // workflow's lock, that no history exists.
        let new_history = request_id.is_some() && events.first().is_some_and(|e| e.seq == 1);
        let newly_held = events.iter().any(|e| matches!(e.attributes, Some(Attributes::WorkflowHeld(_))));
        let summary = records::summary(state, definition);
        let ended = closes.then(|| {
            let (result, reason) = events.iter().rev().find_map(outcome_of).unwrap_or_default();
            Arc::new(Ended { summary: summary.clone(), result, reason })
        });
        let commit = Commit {
            workflow_id: workflow_id.to_owned(),
            events,
            new_history,
            summary: Some(summary),
            request_id,
            put_tasks: delta.new_tasks.clone(),
            delete_tasks: delta.gone_tasks.clone(),
            // Dispatch records leases as it hands tasks out, not a decision.
            put_leases: Vec::new(),
            put_timers: delta.new_timers.clone(),
            delete_timers: delta.gone_timers.clone(),
            outbox,
            put_definitions: Vec::new(),
            put_queue_pauses: Vec::new(),
            delete_queue_pauses: Vec::new(),
            delete: None,
        };
        let started = std::time::Instant::now();
        self.inner.store.commit(commit).await?.wait().await?;
        crate::metrics::record_commit(started.elapsed());
        if new_history {
            self.inner.recent.add(state.started_ms, workflow_id);
        }
        let now = now_ms();
        for task_id in &delta.gone_tasks {
            self.inner.dispatch.remove(workflow_id, task_id, outcome_task != Some(task_id.as_str()));
        }
        for task in &delta.new_tasks {
            if children::is_child_task(task) {
                self.run_child_task(task);
            } else {
                self.inner.dispatch.enqueue(task, now);
            }
        }
        if newly_held {
            self.hold_for_parent(workflow_id);
        }
        for timer in &delta.gone_timers {
            self.inner.timers.cancel_workflow_timer(&timer.workflow_id, &timer.timer_id);
        }
        for timer in delta.new_timers {
            self.inner
                .timers
                .arm(timer.fire_at_ms, Alarm::Workflow { workflow_id: timer.workflow_id, timer_id: timer.timer_id });
        }
        self.inner.stuck.observe(state, definition);
        // Raised only once the evidence is durable, and only here: a replay
        // after a restart rebuilds the state without raising it again.
        for alert in &alerts {
            raise(state, alert);
        }
        if closes {
            crate::metrics::record_finished(state);
            crate::telemetry::export_workflow_span(state);
            tracing::debug!(
                workflow_id,
                correlation_id = %state.correlation_id,
                trace_id = crate::telemetry::trace_id_hex(state),
                status = sagaflow_proto::status_name(state.status),
                "workflow closed"
            );
        }
        self.notify(workflow_id, Progress { last_seq: state.last_seq, terminal: state.is_terminal(), ended });
        if !published.is_empty() {
            crate::metrics::record_domain_events(&published);
            self.inner.outbox_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Keeps an open workflow's state hot; a closed one is dropped, and the
    /// caller [releases](Self::release) its slot once it lets go of the lock.
    /// Returns whether the workflow is closed.
    fn keep(
        guard: &mut tokio::sync::MutexGuard<'_, Slot>,
        state: WorkflowState,
        definition: Arc<SagaDefinition>,
    ) -> bool {
        if state.is_terminal() {
            guard.state = None;
            true
        } else {
            guard.state = Some((state, definition));
            false
        }
    }

    /// Gives the caller's hold on a slot back and drops the slot if no one
    /// else holds it. Every holder calls this, not [`forget`](Self::forget):
    /// a holder's own reference made `forget` see the slot as busy, so no
    /// closed workflow's slot was ever dropped, and the map grew by one
    /// entry (with room for a whole state) per workflow until
    /// `--max-hot-workflows` evicted it (found by `bench --phase soak`).
    fn release(&self, workflow_id: &str, slot: SlotRef) {
        drop(slot);
        self.forget(workflow_id);
    }

    /// Workflows with a slot: those with a hot state, plus any in use now.
    pub(super) fn slot_count(&self) -> usize {
        self.inner.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    fn forget(&self, workflow_id: &str) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only drop an idle slot; one that someone waits on stays.
        if slots.get(workflow_id).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(workflow_id);
        }
    }

    fn notify(&self, workflow_id: &str, progress: Progress) {
        let watchers = self.inner.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = watchers.get(workflow_id) {
            sender.send_replace(progress);
        }
    }

    /// A worker's outcome. Returns whether it counted (false: late or duplicate).
    pub async fn complete(&self, workflow_id: &str, task_id: &str, worker_id: &str, outcome: Outcome) -> Result<bool> {
        let started_ms = self.inner.dispatch.lease_of(workflow_id, task_id).map_or_else(now_ms, |(_, at)| at);
        let input =
            Input::ActivityOutcome { task_id: task_id.into(), worker_id: worker_id.into(), started_ms, outcome };
        let events = self.decide(workflow_id, input).await?;
        Ok(events
            .iter()
            .any(|e| matches!(e.attributes, Some(Attributes::ActivityCompleted(_) | Attributes::ActivityFailed(_)))))
    }

    /// Waits until the workflow changes past `seen_seq`, or the timeout.
    pub async fn wait_for_change(&self, workflow_id: &str, seen_seq: u64, timeout: Duration) -> Result<()> {
        self.watch(workflow_id, timeout, |p| p.last_seq > seen_seq, |summary| summary.history_length > seen_seq)
            .await
            .map(drop)
    }

    /// Waits until the workflow is terminal, or the timeout, and returns its
    /// durable summary (with its outcome once terminal). Intermediate
    /// decisions do not wake the waiter.
    pub async fn await_terminal(&self, workflow_id: &str, timeout: Duration) -> Result<Arc<Ended>> {
        let seen =
            self.watch(workflow_id, timeout, |p| p.terminal, |summary| sagaflow_proto::is_terminal(summary.status));
        if let Some(ended) = seen.await?.and_then(|progress| progress.ended) {
            // Watchers hear of a decision only once it is durable, so this
            // needs neither a read nor a barrier, which would wait for the
            // next flush of everyone else's commits.
            return Ok(ended);
        }
        // Timed out, found it already ended, or woken by a decision after
        // the closing one.
        let summary = self.describe(workflow_id).await?;
        self.ended(summary).await
    }

    /// The progress whose durable decision woke the waiter; `None` when it
    /// timed out or found the condition already met.
    async fn watch(
        &self,
        workflow_id: &str,
        timeout: Duration,
        done: impl Fn(&Progress) -> bool,
        already: impl Fn(&WorkflowSummary) -> bool,
    ) -> Result<Option<Progress>> {
        if self.elsewhere(workflow_id).is_some() {
            return self.poll(workflow_id, timeout, already).await;
        }
        let mut rx = {
            let mut watchers = self.inner.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            watchers.entry(workflow_id.to_owned()).or_insert_with(|| watch::channel(Progress::default()).0).subscribe()
        };
        // Checked after subscribing, so a change in between is not missed.
        let current = self.inner.store.summary(workflow_id).await?;
        let mut woken_by = None;
        if !current.as_ref().is_some_and(&already)
            && let Ok(Ok(progress)) = tokio::time::timeout(timeout, rx.wait_for(|p| done(p))).await
        {
            woken_by = Some(progress.clone());
        }
        drop(rx);
        let mut watchers = self.inner.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if watchers.get(workflow_id).is_some_and(|s| s.receiver_count() == 0) {
            watchers.remove(workflow_id);
        }
        Ok(woken_by)
    }

    /// Waits, reading the store, until `already` holds of the workflow of
    /// another node's shard, or the timeout: its decisions wake no one here.
    async fn poll(
        &self,
        workflow_id: &str,
        timeout: Duration,
        already: impl Fn(&WorkflowSummary) -> bool,
    ) -> Result<Option<Progress>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let summary = self.inner.store.summary(workflow_id).await?;
            if summary.as_ref().is_some_and(&already) || tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + other_nodes::POLL)).await;
        }
    }

    /// `summary` with its result and reason, read from its last event when
    /// it is terminal.
    pub async fn ended(&self, summary: WorkflowSummary) -> Result<Arc<Ended>> {
        let (result, reason) = if sagaflow_proto::is_terminal(summary.status) {
            self.outcome(&summary).await?
        } else {
            Default::default()
        };
        Ok(Arc::new(Ended { summary, result, reason }))
    }

    /// The result and reason of a terminal workflow, from its last event.
    pub async fn outcome(&self, summary: &WorkflowSummary) -> Result<(String, String)> {
        let last = self.inner.store.history(&summary.workflow_id, summary.history_length, 1).await?;
        Ok(last.first().and_then(outcome_of).unwrap_or_default())
    }

    /// Deletes a closed workflow's history, index row and request id, under
    /// its lock so that no decision interleaves; durable when this returns.
    /// With an archive, the history is archived durably before.
    pub async fn delete_workflow(&self, workflow_id: &str) -> Result<()> {
        self.inner.served.admit(workflow_id).await?;
        let slot = self.slot(workflow_id);
        let guard = slot.lock().await;
        let summary = match self.inner.served.check(workflow_id) {
            Ok(()) => self.describe(workflow_id).await,
            Err(e) => Err(e),
        };
        let result = match summary {
            Ok(summary) if !sagaflow_proto::is_terminal(summary.status) => Err(Error::FailedPrecondition(format!(
                "workflow {workflow_id} is {}: only a closed workflow can be deleted; cancel or terminate it first",
                sagaflow_proto::status_name(WorkflowStatus::try_from(summary.status).unwrap_or_default())
            ))),
            Ok(summary) => match self.archive_before_delete(&summary).await {
                // Archived durably first (when the server archives): a crash
                // after this leaves it archived and not deleted, and the next
                // deletion archives it again (ADR 0026).
                Ok(()) => {
                    match self.inner.store.commit(Commit::delete(workflow_id, summary.request_id.clone())).await {
                        Ok(durable) => {
                            let deleted = durable.wait().await.map_err(Error::from);
                            if deleted.is_ok() {
                                self.inner.recent.remove(summary.started_ms, workflow_id);
                            }
                            deleted
                        }
                        Err(store::Error::StillOpen(_)) => {
                            Err(Error::FailedPrecondition(format!("workflow {workflow_id} is still open")))
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        drop(guard);
        self.release(workflow_id, slot);
        if result.is_ok() {
            tracing::info!(workflow_id, "workflow deleted");
        }
        result
    }

    /// The durable summary of a workflow.
    pub async fn describe(&self, workflow_id: &str) -> Result<WorkflowSummary> {
        self.inner.store.barrier().wait().await?;
        self.inner
            .store
            .summary(workflow_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("workflow {workflow_id} not found")))
    }

    /// The live state of an open workflow (loaded if needed), for describe.
    pub async fn state(&self, workflow_id: &str) -> Result<(WorkflowState, Arc<SagaDefinition>)> {
        let slot = self.slot(workflow_id);
        let guard = slot.lock().await;
        let (loaded, cached) = match &guard.state {
            Some((state, definition)) => (Ok((state.clone(), Arc::clone(definition))), true),
            None => (self.load(workflow_id).await, false),
        };
        drop(guard);
        // A read keeps no state: a slot made only for it goes.
        if !cached {
            self.release(workflow_id, slot);
        }
        loaded
    }

    async fn fire_alarms(self, mut fired: tokio::sync::mpsc::Receiver<Alarm>) {
        // A burst of due timers (after a restart, say) runs at most this many
        // decisions at once; the rest wait in the timer wheel.
        let slots = Arc::new(tokio::sync::Semaphore::new(ALARMS_IN_FLIGHT));
        while let Some(alarm) = fired.recv().await {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
            let runtime = self.clone();
            tokio::spawn(async move {
                runtime.on_alarm(alarm).await;
                drop(slot);
            });
        }
    }

    async fn on_alarm(&self, alarm: Alarm) {
        let (workflow_id, input) = match alarm {
            Alarm::Workflow { workflow_id, timer_id } => (workflow_id, Input::TimerFired { timer_id }),
            Alarm::Deadline { workflow_id, task_id, kind, lease_started_ms } => {
                if !self.inner.dispatch.deadline_applies(&workflow_id, &task_id, kind, lease_started_ms, now_ms()) {
                    return;
                }
                let worker_id =
                    self.inner.dispatch.lease_of(&workflow_id, &task_id).map(|(worker, _)| worker).unwrap_or_default();
                (workflow_id, Input::TimedOut { task_id, timeout: kind, worker_id })
            }
            Alarm::Reclaim { workflow_id, task_id } => {
                self.inner.dispatch.reclaim(&workflow_id, &task_id, now_ms());
                return;
            }
        };
        if let Err(e) = self.decide(&workflow_id, input).await {
            tracing::warn!(workflow_id, error = %e, "a timer could not be applied");
        }
    }
}

/// Alarm handlers running at once.
const ALARMS_IN_FLIGHT: usize = 1024;

/// Whether this event ends the workflow: counted and traced exactly once.
fn closes_workflow(attributes: &Attributes) -> bool {
    matches!(
        attributes,
        Attributes::WorkflowCompleted(_)
            | Attributes::WorkflowCompensated(_)
            | Attributes::WorkflowFailed(_)
            | Attributes::WorkflowCancelled(_)
            | Attributes::WorkflowTerminated(_)
    )
}

fn stripe_of(request_id: &str, stripes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut hasher);
    usize::try_from(hasher.finish() % stripes as u64).unwrap_or(0)
}
