//! What a handler sees: its [`ActivityContext`], the [`ActivityError`] it may
//! return, and the type-erased form the worker stores handlers in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sagaflow_proto::v1::{ActivityTask, Heartbeat};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A failed attempt, as a handler reports it.
///
/// The `error_type` is what a saga's retry policy matches on (its
/// non-retryable error types), so keep it stable and machine-readable, such as
/// `PaymentDeclined`; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct ActivityError {
    error_type: String,
    message: String,
    retryable: bool,
}

impl ActivityError {
    /// Error type of the failure reported when a task's input does not
    /// deserialize into the handler's input type. Not retryable: the same input
    /// would fail the same way.
    pub const INVALID_INPUT: &'static str = "InvalidInput";
    /// Error type of the failure reported when a handler's result cannot be
    /// serialized to JSON. Not retryable.
    pub const INVALID_OUTPUT: &'static str = "InvalidOutput";
    /// Error type of the failure reported when a handler panics. Retryable: a
    /// panic is a bug or a broken invariant, not a verdict on the input.
    pub const PANIC: &'static str = sagaflow_proto::error_types::PANIC;
    /// Error type of the failure reported when a handler outlives the attempt's
    /// start-to-close budget. Retryable.
    pub const TIMEOUT: &'static str = sagaflow_proto::error_types::START_TO_CLOSE_TIMEOUT;
    /// Error type of the failure reported for a task whose activity type this
    /// worker does not run. Retryable, so that a worker that does run it can
    /// take the next attempt.
    pub const UNKNOWN_ACTIVITY: &'static str = "UnknownActivityType";
    /// Error type of the failure reported for a result larger than the
    /// orchestrator takes. Not retryable: the same work would give the same result.
    pub const RESULT_TOO_LARGE: &'static str = "ResultTooLarge";

    /// A failure that another attempt may not repeat (a timeout, a service
    /// that is down). The orchestrator retries it under the step's policy.
    pub fn retryable(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error_type: error_type.into(), message: message.into(), retryable: true }
    }

    /// A failure that every attempt would repeat (a declined card, invalid
    /// input). The orchestrator fails the step at once and compensates.
    pub fn non_retryable(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error_type: error_type.into(), message: message.into(), retryable: false }
    }

    /// The machine-readable kind, such as `PaymentDeclined`.
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the orchestrator may retry the attempt.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// Everything an attempt knows about itself, handed to the handler.
///
/// Cheap to clone; clones share the task's data and its heartbeat line.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    task: Arc<TaskInfo>,
    heartbeats: mpsc::Sender<Heartbeat>,
}

#[derive(Debug)]
struct TaskInfo {
    workflow_id: String,
    workflow_type: String,
    task_id: String,
    activity_type: String,
    step: String,
    attempt: u32,
    compensation: bool,
    idempotency_key: String,
    correlation_id: String,
    traceparent: String,
    start_to_close: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
    /// Echoed with every heartbeat: the orchestrator hears of a lease only from its holder.
    lease_token: String,
}

impl ActivityContext {
    /// Takes the task's metadata; the input stays with the caller.
    pub(crate) fn new(task: &mut ActivityTask, heartbeats: mpsc::Sender<Heartbeat>) -> Self {
        let budget = |ms: u32| (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        Self {
            task: Arc::new(TaskInfo {
                workflow_id: std::mem::take(&mut task.workflow_id),
                workflow_type: std::mem::take(&mut task.workflow_type),
                task_id: std::mem::take(&mut task.task_id),
                activity_type: std::mem::take(&mut task.activity_type),
                step: std::mem::take(&mut task.step),
                attempt: task.attempt,
                compensation: task.compensation,
                idempotency_key: std::mem::take(&mut task.idempotency_key),
                correlation_id: std::mem::take(&mut task.correlation_id),
                traceparent: std::mem::take(&mut task.traceparent),
                start_to_close: budget(task.start_to_close_ms),
                heartbeat_timeout: budget(task.heartbeat_ms),
                lease_token: task.lease_token.clone(),
            }),
            heartbeats,
        }
    }

    /// The workflow this attempt belongs to.
    pub fn workflow_id(&self) -> &str {
        &self.task.workflow_id
    }

    /// The workflow's type, such as `checkout`.
    pub fn workflow_type(&self) -> &str {
        &self.task.workflow_type
    }

    /// This attempt's task id, unique per attempt.
    pub fn task_id(&self) -> &str {
        &self.task.task_id
    }

    /// The activity type the task was routed by, such as `inventory.reserve`.
    pub fn activity_type(&self) -> &str {
        &self.task.activity_type
    }

    /// The saga step that scheduled this activity.
    pub fn step(&self) -> &str {
        &self.task.step
    }

    /// The attempt number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempt
    }

    /// Whether this task undoes a step (a compensation) rather than doing one.
    pub fn is_compensation(&self) -> bool {
        self.task.compensation
    }

    /// The step's idempotency key: the same for every attempt of the step.
    /// Apply the effect at most once per key.
    pub fn idempotency_key(&self) -> &str {
        &self.task.idempotency_key
    }

    /// The correlation id of the request that started the workflow; put it
    /// on every log line and outgoing call.
    pub fn correlation_id(&self) -> &str {
        &self.task.correlation_id
    }

    /// The W3C `traceparent` of the scheduling span, if the orchestrator sent one.
    pub fn traceparent(&self) -> Option<&str> {
        Some(self.task.traceparent.as_str()).filter(|t| !t.is_empty())
    }

    /// How long this attempt may run, if the step sets a budget. The worker
    /// stops the handler and reports a retryable `StartToCloseTimeout` once it
    /// is spent.
    pub fn start_to_close_timeout(&self) -> Option<Duration> {
        self.task.start_to_close
    }

    /// How often the orchestrator expects a heartbeat, if the step requires one.
    pub fn heartbeat_timeout(&self) -> Option<Duration> {
        self.task.heartbeat_timeout
    }

    /// Reports progress and proves the attempt is alive.
    ///
    /// Heartbeats are best effort: one is dropped when the worker is not
    /// connected or its heartbeat queue is full, and the next one supersedes it
    /// anyway. `details` is serialized to JSON; a value that cannot be
    /// serialized is sent as `null`.
    pub fn heartbeat<D: Serialize>(&self, details: D) {
        let details = serde_json::to_string(&details).unwrap_or_else(|error| {
            tracing::warn!(%error, "heartbeat details are not serializable; sending null");
            "null".to_owned()
        });
        let heartbeat = Heartbeat {
            workflow_id: self.task.workflow_id.clone(),
            task_id: self.task.task_id.clone(),
            details,
            lease_token: self.task.lease_token.clone(),
        };
        if self.heartbeats.try_send(heartbeat).is_err() {
            tracing::debug!("heartbeat dropped: queue full");
        }
    }
}

/// The JSON result of a handler, or why it failed.
pub(crate) type HandlerResult = Result<String, ActivityError>;

/// A handler with its input and output types erased to JSON text.
pub(crate) type Handler =
    Arc<dyn Fn(ActivityContext, String) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// Wraps a typed handler so that the worker can store and call it with JSON text.
pub(crate) fn erase<T, R, F, Fut>(handler: F) -> Handler
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(ActivityContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ActivityError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |ctx: ActivityContext, input: String| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            // An absent input is JSON null, so that `()` and `Option<_>` inputs work.
            let text = if input.is_empty() { "null" } else { &input };
            let input: T = serde_json::from_str(text)
                .map_err(|error| ActivityError::non_retryable(ActivityError::INVALID_INPUT, error.to_string()))?;
            // The handler is called inside this future, so that a panic while
            // it builds its future is caught like one while it runs.
            let output = handler(ctx, input).await?;
            serde_json::to_string(&output)
                .map_err(|error| ActivityError::non_retryable(ActivityError::INVALID_OUTPUT, error.to_string()))
        })
    })
}
