//! The saga definition model. A definition is a sequence of steps in the
//! Garcia-Molina and Salem shape: compensable steps, at most one pivot, then
//! retriable steps. It serialises with serde so that it can be listed, shown,
//! and loaded from a file.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;
use crate::policies::PolicyDefaults;

/// Where a step sits relative to the point of no return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Can be undone; its compensation runs, in reverse order, if a later step fails.
    #[default]
    Compensable,
    /// The point of no return. Once it succeeds the saga only moves forward.
    Pivot,
    /// After the pivot: retried until it succeeds, escalating past a threshold.
    Retriable,
}

/// How a failed attempt is retried: exponential backoff from
/// `initial_interval_ms`, multiplied by `backoff_coefficient` each time and
/// capped at `maximum_interval_ms`. Every field is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay before the first retry, in milliseconds.
    pub initial_interval_ms: u64,
    /// Each retry waits this many times longer than the one before; at least 1.
    #[schemars(range(min = 1.0))]
    pub backoff_coefficient: f64,
    /// The longest delay between two attempts, in milliseconds; 0 means no cap.
    pub maximum_interval_ms: u64,
    /// 0 means unlimited.
    pub maximum_attempts: u32,
    /// Error types that fail the step at once, whatever the worker said.
    pub non_retryable_error_types: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval_ms: 200,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 30_000,
            maximum_attempts: 5,
            non_retryable_error_types: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 is the first retry).
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exponent = i32::try_from(next_attempt.saturating_sub(2)).unwrap_or(i32::MAX);
        let scaled = self.initial_interval_ms as f64 * self.backoff_coefficient.powi(exponent);
        let capped = if self.maximum_interval_ms == 0 { scaled } else { scaled.min(self.maximum_interval_ms as f64) };
        Duration::from_millis(capped.max(0.0) as u64)
    }

    /// Whether attempt `attempt` may be followed by another.
    pub fn allows_another(&self, attempt: u32) -> bool {
        self.maximum_attempts == 0 || attempt < self.maximum_attempts
    }

    pub fn is_non_retryable(&self, error_type: &str) -> bool {
        self.non_retryable_error_types.iter().any(|t| t == error_type)
    }

    /// Never give up: for steps after the pivot.
    pub fn unlimited() -> Self {
        Self { maximum_attempts: 0, ..Self::default() }
    }
}

/// Budgets in milliseconds; 0 means no limit. Every field is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Timeouts {
    /// How long a task may wait in its queue for a worker.
    pub schedule_to_start_ms: u64,
    /// How long one attempt may run once a worker took it.
    pub start_to_close_ms: u64,
    /// How long a running attempt may go without a heartbeat.
    pub heartbeat_ms: u64,
    /// How long the step may take over all its attempts.
    pub schedule_to_close_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { schedule_to_start_ms: 0, start_to_close_ms: 30_000, heartbeat_ms: 0, schedule_to_close_ms: 0 }
    }
}

/// Where a value comes from: a JSON pointer into the saga's context
/// (`/input/...`, `/steps/NAME/...`, `/signals/NAME/...`, `/workflow_id`), or a literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A JSON pointer into the context, such as `/input/items` or `/steps/price/total_cents`.
    Pointer(String),
    /// This value, as written.
    Literal(serde_json::Value),
}

/// A step's input document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    /// The whole context: the workflow input, earlier results and signals.
    #[default]
    Context,
    /// An object built field by field.
    Fields(BTreeMap<String, Source>),
}

/// How a step's idempotency key is derived, once, at its first attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeySpec {
    /// `<workflow_id>/<step>`.
    #[default]
    Derived,
    /// A string (or number) found at this pointer in the context.
    Pointer(String),
}

/// What a step does, chosen by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
#[schemars(deny_unknown_fields)]
pub enum Action {
    /// Run an activity on a worker.
    Activity {
        /// The activity a worker runs, such as `payments.capture`.
        activity_type: String,
    },
    /// Wait on a durable timer.
    Sleep {
        /// How long to wait, in milliseconds.
        duration_ms: u64,
    },
    /// Wait until a signal of this name arrives; fail after `timeout_ms` (0 = never).
    AwaitSignal {
        /// The signal's name (`SignalWorkflow`'s `name`).
        signal: String,
        /// How long to wait, in milliseconds, before the step fails; 0 waits forever.
        timeout_ms: u64,
    },
    /// Start another saga (a child) with the step's input, and wait until
    /// its steps are done. The child stays open, held, until its parent
    /// passes its pivot or closes (then it completes) or compensates (then
    /// the child runs its own compensations). ADR 0023.
    Child {
        /// The child saga's type.
        workflow_type: String,
        /// The child's version; the latest that is not deprecated when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
}

/// The activity type of a child step's task: the orchestrator runs it itself
/// (it starts the child and waits for it), never a worker.
pub const CHILD_ACTIVITY: &str = "sagaflow.child";
/// The activity type of a child step's compensation: the orchestrator has
/// the held child run its own compensations.
pub const CHILD_COMPENSATION: &str = "sagaflow.child.compensate";
/// The label a child carries with its parent's workflow id.
pub const PARENT_LABEL: &str = "sagaflow.parent";
/// The label a redriven run carries: the id of the run it redrives (ADR 0025).
pub const REDRIVE_LABEL: &str = "sagaflow.redrive_of";

/// The activity that undoes a compensable step, run (in reverse step order)
/// when a later step fails before the pivot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Compensation {
    /// The activity a worker runs to undo the step, such as `inventory.release`.
    pub activity_type: String,
    /// The compensation's input document; by default the whole context.
    #[serde(default)]
    pub input: InputSpec,
    /// By default 10 attempts: a compensation that keeps failing leaves the
    /// saga `FAILED` for an operator.
    #[serde(default = "RetryPolicy::unlimited_compensation")]
    pub retry: RetryPolicy,
    /// The compensation's timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl RetryPolicy {
    fn unlimited_compensation() -> Self {
        Self { maximum_attempts: 10, ..Self::default() }
    }
}

/// An alert raised once a retriable step has failed `after_attempts` times;
/// the step goes on retrying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Escalation {
    /// After this many failed attempts the alert is raised (once).
    pub after_attempts: u32,
    /// The alert's domain name, such as `ShipmentDelayed`.
    pub alert: String,
    /// An activity run once when the alert is raised (to tell the customer,
    /// say). It runs beside the step and never blocks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Step {
    /// Unique in the saga, non-empty, without '/': pointers name it (`/steps/NAME/...`).
    pub name: String,
    /// Compensable (the default), pivot or retriable.
    #[serde(default)]
    pub kind: StepKind,
    /// What the step does: an activity, a sleep or a signal wait.
    pub action: Action,
    /// The activity's input document; by default the whole context.
    #[serde(default)]
    pub input: InputSpec,
    /// How the idempotency key the worker sees is made; by default `<workflow_id>/<step>`.
    #[serde(default)]
    pub idempotency_key: KeySpec,
    /// How a compensable step is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Compensation>,
    /// How failed attempts are retried; by default 5 attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The activity's time budgets.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// For a retriable step: an alert after a number of failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// The domain event published (through the outbox) when the step completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emits: Option<String>,
    /// An alert raised when the step's result holds findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<FindingsAlert>,
    /// The step runs only when this holds on the context as it reaches the
    /// step; otherwise it is skipped (`StepSkipped`), and nothing of it is
    /// compensated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Consecutive steps that name the same group run at once, and the saga
    /// goes on when all of them are done (ADR 0020).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<String>,
}

/// Raised when a step completes with a non-empty list at `pointer` in its
/// result (a self-healing job's violations): the orchestrator publishes
/// `event` with the list as its evidence, counts each finding on the
/// counter `metric`, and logs them at error level. The step itself
/// succeeded: finding a problem is the job doing its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FindingsAlert {
    /// A JSON pointer into the step's result, such as `/violations`.
    pub pointer: String,
    /// The domain event's type, such as `InvariantViolated`.
    pub event: String,
    /// The Prometheus counter each finding adds one to, labelled `job`,
    /// `alert` (the event) and `invariant`: what alert rules page on. A
    /// counter name ending in `_total`; left out, and not written when it
    /// is, [`FindingsAlert::DEFAULT_METRIC`], so that a definition
    /// registered before this field keeps its content hash.
    #[serde(default = "FindingsAlert::default_metric", skip_serializing_if = "FindingsAlert::is_default_metric")]
    pub metric: String,
}

impl FindingsAlert {
    /// The counter of an alert that names none.
    pub const DEFAULT_METRIC: &str = "sagaflow_invariant_violations_total";

    fn default_metric() -> String {
        Self::DEFAULT_METRIC.to_owned()
    }

    fn is_default_metric(metric: &str) -> bool {
        metric == Self::DEFAULT_METRIC
    }
}

/// Whether `name` may name a Prometheus counter: letters, digits and `_`,
/// not starting with a digit, ending in `_total` (colons are left to
/// recording rules).
fn is_counter_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() > "_total".len()
        && name.ends_with("_total")
}

impl Step {
    /// A compensable step that runs `activity_type` on a worker.
    pub fn activity(name: impl Into<String>, activity_type: impl Into<String>) -> Self {
        Self::with_action(name, Action::Activity { activity_type: activity_type.into() })
    }

    /// A durable sleep.
    pub fn sleep(name: impl Into<String>, duration: Duration) -> Self {
        Self::with_action(name, Action::Sleep { duration_ms: millis(duration) })
    }

    /// Waits for the signal `signal`; `timeout` of zero waits forever.
    pub fn await_signal(name: impl Into<String>, signal: impl Into<String>, timeout: Duration) -> Self {
        Self::with_action(name, Action::AwaitSignal { signal: signal.into(), timeout_ms: millis(timeout) })
    }

    fn with_action(name: impl Into<String>, action: Action) -> Self {
        Self {
            name: name.into(),
            kind: StepKind::Compensable,
            action,
            input: InputSpec::Context,
            idempotency_key: KeySpec::Derived,
            compensation: None,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            escalation: None,
            emits: None,
            alert: None,
            when: None,
            parallel: None,
        }
    }

    /// Runs the step only when `condition` holds.
    #[must_use]
    pub fn when(mut self, condition: Condition) -> Self {
        self.when = Some(condition);
        self
    }

    /// Runs the step at once with its neighbours of the same `group`.
    #[must_use]
    pub fn parallel(mut self, group: impl Into<String>) -> Self {
        self.parallel = Some(group.into());
        self
    }

    /// Publishes `event_type` when the step completes.
    #[must_use]
    pub fn emits(mut self, event_type: impl Into<String>) -> Self {
        self.emits = Some(event_type.into());
        self
    }

    #[must_use]
    pub fn pivot(mut self) -> Self {
        self.kind = StepKind::Pivot;
        self
    }

    /// After the pivot: retried without limit.
    #[must_use]
    pub fn retriable(mut self) -> Self {
        self.kind = StepKind::Retriable;
        self.retry.maximum_attempts = 0;
        self
    }

    #[must_use]
    pub fn compensate_with(mut self, activity_type: impl Into<String>) -> Self {
        self.compensation = Some(Compensation {
            activity_type: activity_type.into(),
            input: InputSpec::Context,
            retry: RetryPolicy::unlimited_compensation(),
            timeouts: Timeouts::default(),
        });
        self
    }

    /// Sets the compensation's retry policy (after `compensate_with`).
    #[must_use]
    pub fn compensation_retry(mut self, retry: RetryPolicy) -> Self {
        if let Some(c) = &mut self.compensation {
            c.retry = retry;
        }
        self
    }

    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[must_use]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        if let Some(c) = &mut self.compensation {
            c.timeouts = timeouts;
        }
        self
    }

    #[must_use]
    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        self.timeouts.start_to_close_ms = millis(timeout);
        self
    }

    /// Adds an input field read from the context at `pointer`.
    #[must_use]
    pub fn input_from(mut self, field: impl Into<String>, pointer: impl Into<String>) -> Self {
        self.fields().insert(field.into(), Source::Pointer(pointer.into()));
        self
    }

    #[must_use]
    pub fn input_literal(mut self, field: impl Into<String>, value: serde_json::Value) -> Self {
        self.fields().insert(field.into(), Source::Literal(value));
        self
    }

    /// The compensation reads the same fields as the forward action.
    #[must_use]
    pub fn compensation_input_from(mut self, field: impl Into<String>, pointer: impl Into<String>) -> Self {
        if let Some(c) = &mut self.compensation {
            if !matches!(c.input, InputSpec::Fields(_)) {
                c.input = InputSpec::Fields(BTreeMap::new());
            }
            if let InputSpec::Fields(fields) = &mut c.input {
                fields.insert(field.into(), Source::Pointer(pointer.into()));
            }
        }
        self
    }

    #[must_use]
    pub fn idempotency_key_from(mut self, pointer: impl Into<String>) -> Self {
        self.idempotency_key = KeySpec::Pointer(pointer.into());
        self
    }

    #[must_use]
    pub fn escalate_after(mut self, attempts: u32, alert: impl Into<String>) -> Self {
        self.escalation = Some(Escalation { after_attempts: attempts, alert: alert.into(), notify: None });
        self
    }

    /// Raises `event` when the result has a non-empty list at `pointer`
    /// (see [`FindingsAlert`]).
    #[must_use]
    pub fn alert_on_findings(mut self, pointer: impl Into<String>, event: impl Into<String>) -> Self {
        self.alert = Some(FindingsAlert {
            pointer: pointer.into(),
            event: event.into(),
            metric: FindingsAlert::default_metric(),
        });
        self
    }

    /// Counts the findings alert's findings on `metric` (after
    /// `alert_on_findings`; see [`FindingsAlert::metric`]).
    #[must_use]
    pub fn alert_metric(mut self, metric: impl Into<String>) -> Self {
        if let Some(alert) = &mut self.alert {
            alert.metric = metric.into();
        }
        self
    }

    /// Runs `activity_type` once when the escalation alert is raised.
    #[must_use]
    pub fn notify_on_escalation(mut self, activity_type: impl Into<String>) -> Self {
        if let Some(escalation) = &mut self.escalation {
            escalation.notify = Some(activity_type.into());
        }
        self
    }

    fn fields(&mut self) -> &mut BTreeMap<String, Source> {
        if !matches!(self.input, InputSpec::Fields(_)) {
            self.input = InputSpec::Fields(BTreeMap::new());
        }
        match &mut self.input {
            InputSpec::Fields(fields) => fields,
            InputSpec::Context => unreachable!("set to Fields just above"),
        }
    }

    pub fn activity_type(&self) -> Option<&str> {
        match &self.action {
            Action::Activity { activity_type } => Some(activity_type),
            _ => None,
        }
    }

    /// A step that starts the child saga `workflow_type` and waits for it.
    pub fn child(name: impl Into<String>, workflow_type: impl Into<String>) -> Self {
        Self::with_action(name, Action::Child { workflow_type: workflow_type.into(), version: None })
    }

    /// Whether compensating the saga undoes this step once it was attempted:
    /// it has a compensation, or it is a child saga (undone by its own).
    pub fn undoes(&self) -> bool {
        self.compensation.is_some() || matches!(self.action, Action::Child { .. })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A saga definition: one version of a workflow type. A registered version
/// is immutable; change the content under a new `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SagaDefinition {
    /// The workflow type, such as `checkout`: what a start names.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The version; a start takes the latest that is not deprecated.
    pub version: u32,
    /// What the saga does, for people.
    #[serde(default)]
    pub description: String,
    /// The steps, in order: compensable steps, at most one pivot, then retriable steps.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
    /// Domain events of the saga as a whole.
    #[serde(default, skip_serializing_if = "LifecycleEvents::is_empty")]
    pub events: LifecycleEvents,
    /// Only an operator may start it (a refund moves money; a job repairs
    /// state): a client token naming the type is refused. A property of the
    /// saga rather than a list of names in the auth layer, so that a saga
    /// added later carries its own rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator_only: bool,
    /// The API that starts this saga (`sagaflow.checkout.v1.CheckoutService`,
    /// say), when one derives its ids and idempotency keys: `StartWorkflow`
    /// refuses it, since a raw input could name another run's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The retry and timeouts of the steps and compensations that set none
    /// of their own (docs/definitions/policies.md). Resolved into every
    /// step when a document is parsed, so that the steps hold their
    /// effective policies; kept here for readers, and left out when empty.
    #[serde(default, skip_serializing_if = "PolicyDefaults::is_empty")]
    pub defaults: PolicyDefaults,
    /// How long a closed workflow of this saga is kept, in milliseconds,
    /// before its history, index row and request id are deleted; unset: the
    /// server's `--retention` (7 days by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
}

/// Domain events published when a saga starts, completes, or is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct LifecycleEvents {
    /// When the saga starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// On COMPLETED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    /// On COMPENSATED or CANCELLED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensated: Option<String>,
    /// On FAILED or TERMINATED: the saga stopped without completing or
    /// compensating, so that a consumer that saw it start sees it end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl LifecycleEvents {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("a saga needs a name")]
    NoName,
    #[error("saga {0} has no steps")]
    NoSteps(String),
    #[error("step name {0:?} is used twice")]
    DuplicateStep(String),
    #[error("step {step}: {reason}")]
    InvalidStep { step: String, reason: String },
    /// A rule broken by one field of a step, such as `alert.metric`.
    #[error("step {step}: {field}: {reason}")]
    InvalidStepField { step: String, field: String, reason: String },
    /// A rule broken by the definition's `defaults`, at `field` under it.
    #[error("defaults.{field}: {reason}")]
    InvalidDefaults { field: String, reason: String },
    #[error("not a saga definition: {0}")]
    Parse(String),
}

impl SagaDefinition {
    pub fn builder(name: impl Into<String>, version: u32) -> SagaBuilder {
        SagaBuilder {
            definition: Self {
                name: name.into(),
                version,
                description: String::new(),
                steps: Vec::new(),
                events: LifecycleEvents::default(),
                operator_only: false,
                retention_ms: None,
                started_by: None,
                defaults: PolicyDefaults::default(),
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and validates a definition written as JSON, its `defaults`
    /// resolved into the steps (see [`crate::policies`]).
    pub fn from_json(text: &str) -> Result<Self, DefinitionError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DefinitionError::Parse(e.to_string()))?;
        let explicit = crate::policies::ExplicitPolicies::of_document(&value);
        let mut definition: Self = serde_json::from_value(value).map_err(|e| DefinitionError::Parse(e.to_string()))?;
        crate::policies::resolve(&mut definition, &explicit);
        definition.validate()?;
        Ok(definition)
    }

    /// The same saga with every duration multiplied by `factor`: timeouts,
    /// retry intervals, sleeps and signal deadlines. Attempts, kinds and
    /// keys stay as they are, so a scaled saga takes the same path in less
    /// time: tests and the chaos matrix run the shipped sagas at 0.05. A
    /// duration that was set stays at least 1 ms (0 means "no limit").
    #[must_use]
    pub fn scaled(&self, factor: f64) -> Self {
        let scale = |ms: u64| if ms == 0 { 0 } else { ((ms as f64 * factor).round() as u64).max(1) };
        let timeouts = |t: Timeouts| Timeouts {
            schedule_to_start_ms: scale(t.schedule_to_start_ms),
            start_to_close_ms: scale(t.start_to_close_ms),
            heartbeat_ms: scale(t.heartbeat_ms),
            schedule_to_close_ms: scale(t.schedule_to_close_ms),
        };
        let retry = |r: &RetryPolicy| RetryPolicy {
            initial_interval_ms: scale(r.initial_interval_ms),
            maximum_interval_ms: scale(r.maximum_interval_ms),
            ..r.clone()
        };
        let mut scaled = self.clone();
        scaled.retention_ms = self.retention_ms.map(scale);
        scaled.defaults = self.defaults.map_durations(retry, timeouts);
        for step in &mut scaled.steps {
            step.timeouts = timeouts(step.timeouts);
            step.retry = retry(&step.retry);
            if let Some(c) = &mut step.compensation {
                c.timeouts = timeouts(c.timeouts);
                c.retry = retry(&c.retry);
            }
            match &mut step.action {
                Action::Sleep { duration_ms } => *duration_ms = scale(*duration_ms),
                Action::AwaitSignal { timeout_ms, .. } => *timeout_ms = scale(*timeout_ms),
                Action::Activity { .. } | Action::Child { .. } => {}
            }
        }
        scaled
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    pub fn pivot_index(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.kind == StepKind::Pivot)
    }

    /// Checks the saga's shape: compensable steps, at most one pivot, then
    /// retriable steps; and that every pointer names an earlier step.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.name.trim().is_empty() {
            return Err(DefinitionError::NoName);
        }
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps(self.name.clone()));
        }
        self.defaults.validate()?;
        // Steps whose results later steps may read; a parallel group's
        // members join it only once the group is over, since siblings run
        // at once and cannot read each other.
        let mut seen: Vec<&str> = Vec::new();
        let mut group: Option<&str> = None;
        let mut members: Vec<&str> = Vec::new();
        let mut closed_groups: Vec<&str> = Vec::new();
        let mut after_pivot = false;
        for step in &self.steps {
            let invalid =
                |reason: &str| DefinitionError::InvalidStep { step: step.name.clone(), reason: reason.into() };
            if step.name.is_empty() || step.name.contains('/') {
                return Err(invalid("a step name is non-empty and has no '/'"));
            }
            if seen.contains(&step.name.as_str()) || members.contains(&step.name.as_str()) {
                return Err(DefinitionError::DuplicateStep(step.name.clone()));
            }
            if step.parallel.as_deref() != group {
                closed_groups.extend(group);
                seen.append(&mut members);
                group = step.parallel.as_deref();
            }
            if let Some(name) = group {
                if name.trim().is_empty() {
                    return Err(invalid("a parallel group has a non-empty name"));
                }
                if closed_groups.contains(&name) {
                    return Err(invalid(&format!("the steps of parallel group {name:?} must be next to each other")));
                }
                if !matches!(step.action, Action::Activity { .. }) {
                    return Err(invalid("a step of a parallel group runs an activity"));
                }
                if step.kind == StepKind::Pivot {
                    return Err(invalid("the pivot stands alone: it cannot be in a parallel group"));
                }
            }
            if let Some(condition) = &step.when {
                if step.kind == StepKind::Pivot {
                    return Err(invalid(
                        "the pivot cannot have a condition: skipping it would leave the point of no return undecided",
                    ));
                }
                if !matches!(step.action, Action::Activity { .. }) {
                    return Err(invalid("a condition guards a step that runs an activity"));
                }
                condition.check().map_err(|reason| invalid(&format!("when: {reason}")))?;
            }
            match (step.kind, after_pivot) {
                (StepKind::Pivot, true) => return Err(invalid("a saga has at most one pivot")),
                (StepKind::Pivot, false) => after_pivot = true,
                (StepKind::Compensable, true) => {
                    return Err(invalid("a step after the pivot cannot be undone: make it retriable"));
                }
                (StepKind::Retriable, false) => {
                    return Err(invalid("a retriable step belongs after the pivot"));
                }
                _ => {}
            }
            if step.compensation.is_some() && step.kind != StepKind::Compensable {
                return Err(invalid("only a compensable step has a compensation"));
            }
            if step.escalation.is_some() && step.kind != StepKind::Retriable {
                return Err(invalid("only a retriable step escalates"));
            }
            if let Action::Activity { activity_type } = &step.action
                && activity_type.trim().is_empty()
            {
                return Err(invalid("the activity type is empty"));
            }
            if let Action::Child { workflow_type, .. } = &step.action {
                if workflow_type.trim().is_empty() {
                    return Err(invalid("a child step names the child's workflow type"));
                }
                if workflow_type == &self.name {
                    return Err(invalid("a saga cannot start itself as its child"));
                }
                if step.kind != StepKind::Compensable {
                    return Err(invalid(
                        "a child saga runs before the pivot, where its parent can still undo it: it is compensable",
                    ));
                }
                if step.compensation.is_some() {
                    return Err(invalid(
                        "a child step is undone by the child's own compensations: it takes no compensation",
                    ));
                }
            }
            if let Some(alert) = &step.alert
                && (!alert.pointer.starts_with('/') || alert.event.trim().is_empty())
            {
                return Err(invalid("an alert names a pointer starting with '/' and an event"));
            }
            if let Some(alert) = &step.alert
                && !is_counter_name(&alert.metric)
            {
                return Err(DefinitionError::InvalidStepField {
                    step: step.name.clone(),
                    field: "alert.metric".into(),
                    reason: format!(
                        "{:?} is not a counter name: letters, digits and '_', ending in \"_total\"",
                        alert.metric
                    ),
                });
            }
            if step.retry.backoff_coefficient < 1.0 || !step.retry.backoff_coefficient.is_finite() {
                return Err(invalid("the backoff coefficient is at least 1"));
            }
            let mut pointers: Vec<&str> = Vec::new();
            collect_pointers(&step.input, &mut pointers);
            if let KeySpec::Pointer(p) = &step.idempotency_key {
                pointers.push(p);
            }
            if let Some(c) = &step.compensation {
                collect_pointers(&c.input, &mut pointers);
            }
            for pointer in pointers {
                check_pointer(pointer, &seen, &step.name).map_err(|reason| invalid(&reason))?;
            }
            // A condition is read before the step runs: not its own result.
            for pointer in step.when.iter().flat_map(Condition::pointers) {
                check_pointer(pointer, &seen, "/").map_err(|reason| invalid(&format!("when: {reason}")))?;
            }
            if group.is_some() {
                members.push(&step.name);
            } else {
                seen.push(&step.name);
            }
        }
        Ok(())
    }
}

fn collect_pointers<'a>(input: &'a InputSpec, out: &mut Vec<&'a str>) {
    if let InputSpec::Fields(fields) = input {
        out.extend(fields.values().filter_map(|s| match s {
            Source::Pointer(p) => Some(p.as_str()),
            Source::Literal(_) => None,
        }));
    }
}

fn check_pointer(pointer: &str, earlier: &[&str], this: &str) -> Result<(), String> {
    let mut parts = pointer.split('/');
    if parts.next() != Some("") {
        return Err(format!("pointer {pointer:?} must start with '/'"));
    }
    match parts.next() {
        Some("input" | "signals" | "workflow_id") => Ok(()),
        // A compensation may read its own step's result.
        Some("steps") => match parts.next() {
            Some(step) if earlier.contains(&step) || step == this => Ok(()),
            Some(step) => Err(format!("pointer {pointer:?} reads step {step:?}, which does not run before this one")),
            None => Err(format!("pointer {pointer:?} names no step")),
        },
        _ => Err(format!("pointer {pointer:?} must start with /input, /steps, /signals or /workflow_id")),
    }
}

/// Writes a [`SagaDefinition`] step by step; `build` validates it.
#[derive(Debug, Clone)]
pub struct SagaBuilder {
    definition: SagaDefinition,
}

impl SagaBuilder {
    /// Only an operator may start this saga (see [`SagaDefinition::operator_only`]).
    #[must_use]
    pub fn operator_only(mut self) -> Self {
        self.definition.operator_only = true;
        self
    }

    /// Only `api` starts this saga (see [`SagaDefinition::started_by`]).
    #[must_use]
    pub fn started_by(mut self, api: impl Into<String>) -> Self {
        self.definition.started_by = Some(api.into());
        self
    }

    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.definition.description = text.into();
        self
    }

    /// Domain events for the saga's start, completion and compensation.
    #[must_use]
    pub fn lifecycle_events(mut self, events: LifecycleEvents) -> Self {
        self.definition.events = events;
        self
    }

    #[must_use]
    pub fn step(mut self, step: Step) -> Self {
        self.definition.steps.push(step);
        self
    }

    pub fn build(self) -> Result<SagaDefinition, DefinitionError> {
        self.definition.validate()?;
        Ok(self.definition)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let policy = RetryPolicy {
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 350,
            ..Default::default()
        };
        assert_eq!(policy.backoff(2), Duration::from_millis(100));
        assert_eq!(policy.backoff(3), Duration::from_millis(200));
        assert_eq!(policy.backoff(4), Duration::from_millis(350));
    }

    #[test]
    fn shape_is_enforced() {
        let after_pivot = SagaDefinition::builder("s", 1)
            .step(Step::activity("a", "x").pivot())
            .step(Step::activity("b", "y").compensate_with("z"))
            .build();
        assert!(matches!(after_pivot, Err(DefinitionError::InvalidStep { .. })));
        let early_retriable = SagaDefinition::builder("s", 1).step(Step::activity("a", "x").retriable()).build();
        assert!(early_retriable.is_err());
        let two_pivots = SagaDefinition::builder("s", 1)
            .step(Step::activity("a", "x").pivot())
            .step(Step::activity("b", "x").pivot())
            .build();
        assert!(two_pivots.is_err());
        let dup = SagaDefinition::builder("s", 1).step(Step::activity("a", "x")).step(Step::activity("a", "y")).build();
        assert_eq!(dup, Err(DefinitionError::DuplicateStep("a".into())));
    }

    #[test]
    fn parallel_groups_and_conditions_are_checked() {
        let build =
            |steps: Vec<Step>| steps.into_iter().fold(SagaDefinition::builder("s", 1), |b, s| b.step(s)).build();
        let reason = |steps: Vec<Step>| match build(steps) {
            Err(DefinitionError::InvalidStep { reason, .. }) => reason,
            other => panic!("expected an invalid step, got {other:?}"),
        };
        let hotel = || Step::activity("hotel", "hotel.book").compensate_with("hotel.cancel").parallel("book");
        let flight = || Step::activity("flight", "flight.book").compensate_with("flight.cancel").parallel("book");
        assert!(build(vec![hotel(), flight(), Step::activity("pay", "p").pivot()]).is_ok());
        let split = vec![hotel(), Step::activity("x", "x"), flight()];
        assert!(reason(split).contains("next to each other"));
        let pivot_in_group = vec![hotel(), Step::activity("pay", "p").pivot().parallel("book")];
        assert!(reason(pivot_in_group).contains("pivot stands alone"));
        let sleep_in_group = vec![hotel(), Step::sleep("wait", Duration::from_secs(1)).parallel("book")];
        assert!(reason(sleep_in_group).contains("runs an activity"));
        let sibling_read = vec![hotel(), flight().input_from("hotel", "/steps/hotel/id")];
        assert!(reason(sibling_read).contains("does not run before"));
        let after_group = Step::activity("pay", "p").pivot().input_from("hotel", "/steps/hotel/id");
        assert!(build(vec![hotel(), flight(), after_group]).is_ok());
        let exists = |p: &str| crate::Condition::Exists(p.into());
        let conditional_pivot = vec![Step::activity("pay", "p").pivot().when(exists("/input/x"))];
        assert!(reason(conditional_pivot).contains("pivot cannot have a condition"));
        let forward = vec![Step::activity("a", "x").when(exists("/steps/b")), Step::activity("b", "y")];
        assert!(reason(forward).starts_with("when: "));
        let own = vec![Step::activity("a", "x").when(exists("/steps/a"))];
        assert!(reason(own).starts_with("when: "));
        assert!(build(vec![Step::activity("a", "x"), Step::activity("b", "y").when(exists("/steps/a/id"))]).is_ok());
    }

    #[test]
    fn pointers_must_name_earlier_steps() {
        let forward_ref = SagaDefinition::builder("s", 1)
            .step(Step::activity("a", "x").input_from("id", "/steps/b/id"))
            .step(Step::activity("b", "y"))
            .build();
        assert!(forward_ref.is_err());
        let ok = SagaDefinition::builder("s", 1)
            .step(Step::activity("a", "x"))
            .step(Step::activity("b", "y").input_from("id", "/steps/a/id").idempotency_key_from("/input/key"))
            .build();
        assert!(ok.is_ok());
    }

    #[test]
    fn scaling_shortens_every_duration_and_keeps_the_path() {
        let saga = SagaDefinition::builder("s", 1)
            .step(Step::activity("a", "x").compensate_with("undo-x").timeouts(Timeouts {
                start_to_close_ms: 10_000,
                heartbeat_ms: 0,
                ..Timeouts::default()
            }))
            .step(Step::sleep("wait", Duration::from_secs(2)))
            .step(Step::activity("b", "y").pivot().retry(RetryPolicy { maximum_attempts: 3, ..RetryPolicy::default() }))
            .build()
            .unwrap();
        let fast = saga.scaled(0.05);
        assert_eq!(fast.steps[0].timeouts.start_to_close_ms, 500);
        assert_eq!(fast.steps[0].timeouts.heartbeat_ms, 0, "no limit stays no limit");
        assert_eq!(fast.steps[0].compensation.as_ref().unwrap().timeouts.start_to_close_ms, 500);
        assert_eq!(fast.steps[1].action, Action::Sleep { duration_ms: 100 });
        assert_eq!(fast.steps[2].retry.initial_interval_ms, 10);
        assert_eq!(fast.steps[2].retry.maximum_attempts, 3);
        assert_eq!(saga.scaled(1.0), saga);
        assert_eq!(saga.scaled(0.000_001).steps[2].retry.initial_interval_ms, 1);
        assert_eq!(fast.validate(), Ok(()));
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let saga = SagaDefinition::builder("s", 3)
            .step(Step::activity("a", "x").compensate_with("undo-x"))
            .step(Step::sleep("wait", Duration::from_secs(2)))
            .step(Step::activity("b", "y").pivot())
            .step(Step::activity("c", "z").retriable().escalate_after(3, "Late"))
            .build()
            .unwrap();
        assert_eq!(SagaDefinition::from_json(&saga.to_json()).unwrap(), saga);
    }

    #[test]
    fn a_findings_alert_names_a_counter() {
        let alerting = |metric: &str| {
            SagaDefinition::builder("job", 1)
                .step(
                    Step::activity("check", "x.check").alert_on_findings("/violations", "Broken").alert_metric(metric),
                )
                .build()
        };
        let saga = alerting("shop_broken_things_total").unwrap();
        assert!(saga.to_json().contains("\"metric\": \"shop_broken_things_total\""));
        assert_eq!(SagaDefinition::from_json(&saga.to_json()).unwrap(), saga);
        for bad in ["shop_broken_things", "_total", "9lives_total", "shop-broken_total", "a:b_total", ""] {
            let e = alerting(bad).unwrap_err();
            assert!(
                matches!(&e, DefinitionError::InvalidStepField { step, field, .. } if step == "check" && field == "alert.metric"),
                "{bad}: {e}"
            );
        }
        // Left out, it is the default, and the default is not written.
        let default = alerting(FindingsAlert::DEFAULT_METRIC).unwrap();
        assert!(!default.to_json().contains("metric"), "{}", default.to_json());
        let read = SagaDefinition::from_json(&default.to_json()).unwrap();
        assert_eq!(read.steps[0].alert.as_ref().unwrap().metric, "sagaflow_invariant_violations_total");
    }
}
