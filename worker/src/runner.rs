//! The run loop. One task owns all of the worker's state (running tasks,
//! unacknowledged outcomes, credit), so none of it needs a lock: handlers run
//! in their own tasks and talk back only through their results and the
//! heartbeat queue.
//!
//! Slot accounting, the invariant the orchestrator relies on: a task holds a
//! slot from its arrival until the orchestrator acknowledges its outcome (or
//! until it is cancelled), and per session
//! `running + unacked + credit not yet used <= max_concurrency`.
//! Holding the slot until the acknowledgement bounds the outcomes kept for
//! re-sending, and makes a slow store slow down its workers instead of
//! letting outcomes pile up in their memory.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use sagaflow_proto::trace_context::{TraceParent, span_id_of};
use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::{
    ActivityTask, Credit, Heartbeat, OutcomeAck, Register, ServerMessage, TaskCancelled, TaskFailure, TaskOutcome,
    TaskRef, WorkerMessage, server_message, task_outcome, worker_message,
};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::activity::{ActivityContext, ActivityError, Handler, HandlerResult};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::trace::{self, FinishedSpan};

/// After a drain, how long to wait for the orchestrator to close its side of
/// the stream, so that it sees a clean end rather than a reset.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) struct Runner {
    config: Config,
    handlers: HashMap<String, Handler>,
    register: Register,
    /// Resolves once, when a drain is requested; `None` afterwards.
    shutdown: Option<Shutdown>,
    /// Kept so that the shutdown future's receiver never sees the channel close.
    _drain: std::sync::Arc<watch::Sender<bool>>,
    /// Set when the drain starts; the drain must finish by then.
    drain_deadline: Option<Instant>,
    tasks: JoinSet<TaskOutcome>,
    running: HashMap<TaskKey, AbortHandle>,
    keys: HashMap<Id, TaskKey>,
    /// Outcomes sent (or to be sent) and not yet acknowledged, in completion
    /// order. At most `max_concurrency` long (see the module docs).
    unacked: Vec<TaskOutcome>,
    /// Each held task's span, from delivery until its outcome is acknowledged,
    /// so that every line about the task carries its correlation and trace ids.
    spans: HashMap<TaskKey, Span>,
    /// Each held task's lease token, for as long as its span: the proof,
    /// echoed in its outcome and after a reconnect, that this worker holds it.
    leases: HashMap<TaskKey, String>,
    heartbeat_tx: mpsc::Sender<Heartbeat>,
    heartbeat_rx: mpsc::Receiver<Heartbeat>,
    /// Capacity of a session's outbound queue.
    outbound_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskKey {
    workflow_id: String,
    task_id: String,
}

impl TaskKey {
    fn new(workflow_id: &str, task_id: &str) -> Self {
        Self { workflow_id: workflow_id.to_owned(), task_id: task_id.to_owned() }
    }

    fn is(&self, workflow_id: &str, task_id: &str) -> bool {
        self.workflow_id == workflow_id && self.task_id == task_id
    }
}

/// Why the run loop stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Drained,
    DrainTimedOut,
}

/// What woke the loop.
enum Event {
    ShutdownRequested,
    Server(Result<Option<ServerMessage>, tonic::Status>),
    Finished(Result<(Id, TaskOutcome), JoinError>),
    Heartbeat(Heartbeat),
}

/// Why a session could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("the orchestrator answered with an error")]
    Status(#[source] tonic::Status),
    #[error("no session within {0:?}")]
    Timeout(Duration),
    #[error("the orchestrator ended the stream")]
    Ended,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("the outbound stream is backlogged: the orchestrator is not reading it")]
    Backlogged,
    #[error("the outbound stream is closed")]
    Closed,
}

/// One open `OpenSession` stream.
struct Session {
    id: String,
    /// The largest result the orchestrator takes (0: it did not say).
    max_result_bytes: u64,
    tx: mpsc::Sender<WorkerMessage>,
    inbound: Streaming<ServerMessage>,
    /// Credit granted on this stream and not yet used by a task.
    outstanding: u32,
}

impl Session {
    /// Queues a message the protocol depends on (an outcome, credit). A full
    /// queue means the orchestrator stopped reading; the session is then
    /// given up and everything it carried is re-sent on the next one.
    fn send(&self, message: worker_message::Message) -> Result<(), SessionError> {
        self.tx.try_send(WorkerMessage { message: Some(message) }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SessionError::Backlogged,
            mpsc::error::TrySendError::Closed(_) => SessionError::Closed,
        })
    }

    /// Queues a heartbeat unless the queue is half full: heartbeats are
    /// superseded by the next one, so they must never crowd out outcomes.
    fn send_heartbeat(&self, heartbeat: Heartbeat) {
        if self.tx.capacity() > self.tx.max_capacity() / 2 {
            let _ = self.tx.try_send(WorkerMessage { message: Some(worker_message::Message::Heartbeat(heartbeat)) });
        } else {
            debug!("heartbeat dropped: outbound stream busy");
        }
    }

    /// Closes our half of the stream and waits, briefly, for the orchestrator
    /// to close its half.
    async fn close(self, grace: Duration) {
        let Self { tx, mut inbound, .. } = self;
        drop(tx);
        let drained = async {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(server_message::Message::Task(task)) = message.message {
                    // Credit granted before the drain began, used after it
                    // ended: the orchestrator reassigns the task when its
                    // lease expires.
                    warn!(
                        workflow_id = %task.workflow_id,
                        task_id = %task.task_id,
                        "task arrived after the drain finished; not run"
                    );
                }
            }
        };
        let _ = tokio::time::timeout(grace, drained).await;
    }
}

impl Runner {
    pub(crate) fn new(
        config: Config,
        handlers: HashMap<String, Handler>,
        drain: Arc<watch::Sender<bool>>,
        shutdown: Shutdown,
    ) -> Self {
        let max = usize::try_from(config.max_concurrency).unwrap_or(usize::MAX);
        let mut activity_types: Vec<String> = handlers.keys().cloned().collect();
        activity_types.sort_unstable();
        let (heartbeat_tx, heartbeat_rx) = mpsc::channel(max.saturating_mul(4).clamp(16, 4096));
        Self {
            register: Register { worker_id: config.worker_id.clone(), activity_types, held: Vec::new() },
            config,
            handlers,
            shutdown: Some(shutdown),
            _drain: drain,
            drain_deadline: None,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            keys: HashMap::new(),
            unacked: Vec::new(),
            spans: HashMap::new(),
            leases: HashMap::new(),
            heartbeat_tx,
            heartbeat_rx,
            // Register, every unacknowledged outcome, every running task's
            // outcome and the credit that follows acknowledgements, with room
            // to spare: a full queue means the orchestrator stopped reading.
            outbound_capacity: max.saturating_mul(4).saturating_add(64),
        }
    }

    pub(crate) async fn run(mut self) -> Result<()> {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut failures: u32 = 0;
        // Which endpoint to dial: kept while a node serves, moved on past
        // one that refuses or drops us (a standby, a node that died).
        let mut attempt: usize = 0;
        loop {
            // Announce what is still running, so that a restarted
            // orchestrator keeps those leases instead of re-queueing them.
            let mut register = self.register.clone();
            register.held = self
                .running
                .keys()
                .map(|k| TaskRef {
                    workflow_id: k.workflow_id.clone(),
                    task_id: k.task_id.clone(),
                    lease_token: self.leases.get(k).cloned().unwrap_or_default(),
                })
                .collect();
            // The future owns a copy of the config: `offline` needs `self` mutably meanwhile.
            let connecting = connect(self.config.clone(), attempt, register, self.outbound_capacity);
            match self.offline(connecting).await {
                Err(stop) => return self.finish(stop),
                Ok(Ok(mut session)) => {
                    backoff.reset();
                    failures = 0;
                    info!(
                        worker_id = %self.config.worker_id,
                        session_id = %session.id,
                        endpoint = %self.config.endpoint(attempt).uri(),
                        activity_types = ?self.register.activity_types,
                        "connected to the orchestrator"
                    );
                    match self.online(&mut session).await {
                        Ok(stop) => {
                            session.close(self.close_grace()).await;
                            return self.finish(stop);
                        }
                        Err(error) => warn!(
                            error = %Chain(&error),
                            running = self.running.len(),
                            unacked = self.unacked.len(),
                            "disconnected from the orchestrator; reconnecting"
                        ),
                    }
                    attempt = attempt.wrapping_add(1);
                }
                Ok(Err(error)) => {
                    failures = failures.saturating_add(1);
                    warn!(
                        error = %Chain(&error),
                        endpoint = %self.config.endpoint(attempt).uri(),
                        failures,
                        "cannot reach the orchestrator"
                    );
                    attempt = attempt.wrapping_add(1);
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "waiting before reconnecting");
            if let Err(stop) = self.offline(tokio::time::sleep(delay)).await {
                return self.finish(stop);
            }
        }
    }

    /// Serves the running tasks while `future` (a connection attempt or a
    /// backoff delay) runs. Outcomes are kept for the next session and
    /// heartbeats are dropped.
    async fn offline<F: Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        let mut future = std::pin::pin!(future);
        loop {
            if self.drained() {
                return Err(Stop::Drained);
            }
            let event = tokio::select! {
                biased;
                () = requested(&mut self.shutdown) => Event::ShutdownRequested,
                () = passed(self.drain_deadline) => return Err(Stop::DrainTimedOut),
                output = &mut future => return Ok(output),
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    Event::Finished(joined)
                }
                Some(heartbeat) = self.heartbeat_rx.recv() => Event::Heartbeat(heartbeat),
            };
            // Without a session, nothing can fail to send.
            let _ = self.on_event(event, None);
        }
    }

    /// Serves one session until it ends (`Err`) or the worker stops (`Ok`).
    async fn online(&mut self, session: &mut Session) -> Result<Stop, SessionError> {
        // The previous session may have died before these were made durable.
        for outcome in &mut self.unacked {
            fit_result(outcome, session.max_result_bytes);
            session.send(worker_message::Message::Outcome(outcome.clone()))?;
        }
        if !self.unacked.is_empty() {
            info!(count = self.unacked.len(), "re-sent unacknowledged outcomes");
        }
        self.top_up(session)?;
        loop {
            if self.drained() {
                return Ok(Stop::Drained);
            }
            let event = tokio::select! {
                biased;
                () = requested(&mut self.shutdown) => Event::ShutdownRequested,
                () = passed(self.drain_deadline) => return Ok(Stop::DrainTimedOut),
                message = session.inbound.message() => Event::Server(message),
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    Event::Finished(joined)
                }
                Some(heartbeat) = self.heartbeat_rx.recv() => Event::Heartbeat(heartbeat),
            };
            self.on_event(event, Some(session))?;
        }
    }

    fn on_event(&mut self, event: Event, session: Option<&mut Session>) -> Result<(), SessionError> {
        match event {
            Event::ShutdownRequested => {
                self.begin_drain();
                Ok(())
            }
            Event::Finished(joined) => self.on_finished(joined, session),
            Event::Heartbeat(heartbeat) => {
                // Best effort: dropped while offline, and once the task is over.
                let key = TaskKey::new(&heartbeat.workflow_id, &heartbeat.task_id);
                if let Some(session) = session
                    && self.running.contains_key(&key)
                {
                    session.send_heartbeat(heartbeat);
                }
                Ok(())
            }
            Event::Server(message) => match (message, session) {
                (Ok(Some(message)), Some(session)) => self.on_server_message(message, session),
                (Ok(Some(_)), None) => Ok(()),
                (Ok(None), _) => Err(SessionError::Ended),
                (Err(status), _) => Err(SessionError::Status(status)),
            },
        }
    }

    fn on_server_message(&mut self, message: ServerMessage, session: &mut Session) -> Result<(), SessionError> {
        match message.message {
            Some(server_message::Message::Task(task)) => self.on_task(task, session),
            Some(server_message::Message::Ack(ack)) => self.on_ack(&ack, session),
            Some(server_message::Message::TaskCancelled(cancelled)) => {
                self.on_cancelled(&cancelled);
                Ok(())
            }
            Some(server_message::Message::Registered(_)) => {
                warn!("unexpected Registered in an open session; ignored");
                Ok(())
            }
            // Only a node relaying a session asks for credit back.
            Some(server_message::Message::Withdrawn(_)) => {
                warn!("unexpected Withdrawn: this worker withdrew no credit; ignored");
                Ok(())
            }
            // A message kind added to the contract after this SDK was built.
            None => {
                debug!("unknown server message ignored");
                Ok(())
            }
        }
    }

    fn on_task(&mut self, task: ActivityTask, session: &mut Session) -> Result<(), SessionError> {
        if session.outstanding == 0 {
            // Running it would break the limit the worker promised to keep.
            // Its lease will expire and the orchestrator will reassign it.
            error!(
                workflow_id = %task.workflow_id,
                task_id = %task.task_id,
                "the orchestrator sent a task beyond the credit granted; not running it"
            );
            return Ok(());
        }
        session.outstanding -= 1;
        let key = TaskKey::new(&task.workflow_id, &task.task_id);
        let trace = ActivitySpan::of(&task);
        let span = task_span(&task, trace.as_ref());
        if self.running.contains_key(&key) || self.unacked.iter().any(|o| key.is(&o.workflow_id, &o.task_id)) {
            span.in_scope(|| warn!("duplicate delivery of a task this worker already holds; ignored"));
            return self.top_up(session);
        }
        let Some(handler) = self.handlers.get(&task.activity_type).cloned() else {
            span.in_scope(|| warn!("task for an activity type this worker does not run"));
            let error = ActivityError::retryable(
                ActivityError::UNKNOWN_ACTIVITY,
                format!("worker {} does not run activity type {:?}", self.config.worker_id, task.activity_type),
            );
            self.spans.insert(key.clone(), span);
            self.leases.insert(key.clone(), task.lease_token.clone());
            return self.record(outcome(key, task.lease_token, Err(error)), Some(session));
        };
        self.spawn(task, handler, key, span, trace);
        // The credit this task used may have been the one that kept the grant waiting.
        self.top_up(session)
    }

    fn spawn(
        &mut self,
        mut task: ActivityTask,
        handler: Handler,
        key: TaskKey,
        span: Span,
        trace: Option<ActivitySpan>,
    ) {
        let input = std::mem::take(&mut task.input);
        let ctx = ActivityContext::new(&mut task, self.heartbeat_tx.clone());
        let lease_token = std::mem::take(&mut task.lease_token);
        self.leases.insert(key.clone(), lease_token.clone());
        self.spans.insert(key.clone(), span.clone());
        let budget = ctx.start_to_close_timeout();
        let task_key = key.clone();
        let run = async move {
            debug!("activity started");
            let started = std::time::SystemTime::now();
            let attributes = trace.as_ref().map(|_| span_attributes(&ctx));
            let attempt = handler(ctx, input);
            let result = match budget {
                None => attempt.await,
                Some(budget) => tokio::time::timeout(budget, attempt).await.unwrap_or_else(|_| {
                    Err(ActivityError::retryable(
                        ActivityError::TIMEOUT,
                        format!("the attempt ran past its start-to-close budget of {budget:?}"),
                    ))
                }),
            };
            match &result {
                Ok(_) => debug!("activity completed"),
                Err(error) => info!(
                    error_type = error.error_type(),
                    retryable = error.is_retryable(),
                    message = error.message(),
                    "activity failed"
                ),
            }
            if let (Some(trace), Some(attributes)) = (trace, attributes) {
                trace.finish(started, attributes, result.as_ref().err());
            }
            outcome(task_key, lease_token, result)
        };
        let abort = self.tasks.spawn(run.instrument(span));
        self.keys.insert(abort.id(), key.clone());
        self.running.insert(key, abort);
    }

    fn on_finished(
        &mut self,
        joined: Result<(Id, TaskOutcome), JoinError>,
        session: Option<&mut Session>,
    ) -> Result<(), SessionError> {
        let (id, result) = match joined {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(error) => (error.id(), Err(error)),
        };
        let Some(key) = self.keys.remove(&id) else {
            // Every spawned task is keyed before the loop can see it finish.
            error!(task = %id, "finished task was not tracked");
            return Ok(());
        };
        self.running.remove(&key);
        match result {
            Ok(outcome) => self.record(outcome, session),
            Err(error) if error.is_panic() => {
                let panic = panic_message(error.into_panic());
                self.span_of(&key).in_scope(|| error!(%panic, "activity handler panicked"));
                let failure = ActivityError::retryable(ActivityError::PANIC, panic);
                let lease_token = self.leases.get(&key).cloned().unwrap_or_default();
                self.record(outcome(key, lease_token, Err(failure)), session)
            }
            Err(_) => {
                // Aborted after a TaskCancelled: the orchestrator wants no outcome.
                self.leases.remove(&key);
                self.spans.remove(&key).unwrap_or_else(Span::none).in_scope(|| debug!("cancelled task stopped"));
                session.map_or(Ok(()), |session| self.top_up(session))
            }
        }
    }

    /// Keeps an outcome until it is acknowledged, and sends it if connected.
    fn record(&mut self, outcome: TaskOutcome, session: Option<&mut Session>) -> Result<(), SessionError> {
        let mut outcome = outcome;
        if let Some(session) = &session {
            fit_result(&mut outcome, session.max_result_bytes);
        }
        self.unacked.push(outcome);
        match (session, self.unacked.last()) {
            (Some(session), Some(outcome)) => session.send(worker_message::Message::Outcome(outcome.clone())),
            _ => Ok(()),
        }
    }

    fn on_ack(&mut self, ack: &OutcomeAck, session: &mut Session) -> Result<(), SessionError> {
        let Some(index) =
            self.unacked.iter().position(|o| o.workflow_id == ack.workflow_id && o.task_id == ack.task_id)
        else {
            // An outcome re-sent after a reconnect can be acknowledged twice.
            debug!(
                workflow_id = %ack.workflow_id,
                task_id = %ack.task_id,
                "acknowledgement for an outcome not held; ignored"
            );
            return Ok(());
        };
        self.unacked.remove(index);
        let key = TaskKey::new(&ack.workflow_id, &ack.task_id);
        self.leases.remove(&key);
        let span = self.spans.remove(&key).unwrap_or_else(Span::none);
        span.in_scope(|| {
            if !ack.refused.is_empty() {
                // Refused for good: sending it again would be refused again.
                error!(refused = %ack.refused, "the orchestrator refused this outcome");
            } else if ack.accepted {
                debug!("outcome acknowledged");
            } else {
                info!("outcome recorded but not applied: the attempt was late or a duplicate");
            }
        });
        self.top_up(session)
    }

    fn on_cancelled(&mut self, cancelled: &TaskCancelled) {
        let key = TaskKey::new(&cancelled.workflow_id, &cancelled.task_id);
        match self.running.get(&key) {
            // Its slot is freed when the join set reports the task stopped.
            Some(abort) => {
                self.span_of(&key).in_scope(|| {
                    info!(reason = %cancelled.reason, "the orchestrator cancelled the task; stopping its handler");
                });
                abort.abort();
            }
            None => debug!(
                workflow_id = %key.workflow_id,
                task_id = %key.task_id,
                "cancellation of a task not running; ignored"
            ),
        }
    }

    /// The span of a task this worker holds (a disabled one if it holds none).
    fn span_of(&self, key: &TaskKey) -> Span {
        self.spans.get(key).cloned().unwrap_or_else(Span::none)
    }

    /// Grants credit for every free slot, unless draining. While the
    /// orchestrator still holds credit for at least half of the slots, the
    /// grant waits: it would not let the orchestrator send anything sooner,
    /// and one grant then covers many tasks instead of one message per task.
    fn top_up(&self, session: &mut Session) -> Result<(), SessionError> {
        if self.drain_deadline.is_some() || session.outstanding >= self.config.max_concurrency.div_ceil(2) {
            return Ok(());
        }
        let held = u32::try_from(self.running.len() + self.unacked.len())
            .unwrap_or(u32::MAX)
            .saturating_add(session.outstanding);
        let free = self.config.max_concurrency.saturating_sub(held);
        if free > 0 {
            session.send(worker_message::Message::Credit(Credit { tasks: free }))?;
            session.outstanding += free;
            debug!(credit = free, "credit granted");
        }
        Ok(())
    }

    fn begin_drain(&mut self) {
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
            info!(
                running = self.running.len(),
                unacked = self.unacked.len(),
                timeout = ?self.config.drain_timeout,
                "draining: asking for no more tasks, finishing the running ones"
            );
        }
    }

    fn drained(&self) -> bool {
        self.drain_deadline.is_some() && self.running.is_empty() && self.unacked.is_empty()
    }

    fn close_grace(&self) -> Duration {
        self.drain_deadline
            .map_or(CLOSE_GRACE, |deadline| deadline.saturating_duration_since(Instant::now()).min(CLOSE_GRACE))
    }

    fn finish(mut self, stop: Stop) -> Result<()> {
        match stop {
            Stop::Drained => {
                info!(worker_id = %self.config.worker_id, "drained; worker stopped");
                Ok(())
            }
            Stop::DrainTimedOut => {
                let (running, unacked) = (self.running.len(), self.unacked.len());
                self.tasks.abort_all();
                warn!(
                    worker_id = %self.config.worker_id,
                    running,
                    unacked,
                    "drain timed out; stopping the remaining tasks"
                );
                Err(Error::DrainTimedOut { timeout: self.config.drain_timeout, running, unacked })
            }
        }
    }
}

/// Opens a stream, registers, and waits for `Registered`, all within `timeout`.
async fn connect(
    config: Config,
    attempt: usize,
    register: Register,
    outbound_capacity: usize,
) -> Result<Session, SessionError> {
    let timeout = config.connect_timeout;
    let open = async {
        let channel = match &config.channel {
            Some(channel) => channel.clone(),
            None => config.endpoint(attempt).connect().await.map_err(SessionError::Connect)?,
        };
        let token = config.token.clone();
        let mut client = WorkerServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            if let Some(token) = &token {
                request.metadata_mut().insert("authorization", token.clone());
            }
            Ok(request)
        });
        let (tx, rx) = mpsc::channel(outbound_capacity);
        tx.try_send(WorkerMessage { message: Some(worker_message::Message::Register(register)) })
            .map_err(|_| SessionError::Closed)?;
        let mut inbound =
            client.open_session(ReceiverStream::new(rx)).await.map_err(SessionError::Status)?.into_inner();
        match inbound.message().await.map_err(SessionError::Status)? {
            Some(ServerMessage { message: Some(server_message::Message::Registered(registered)) }) => Ok(Session {
                id: registered.session_id,
                max_result_bytes: registered.max_result_bytes,
                tx,
                inbound,
                outstanding: 0,
            }),
            Some(_) => Err(SessionError::Protocol("the first server message was not Registered")),
            None => Err(SessionError::Ended),
        }
    };
    tokio::time::timeout(timeout, open).await.unwrap_or(Err(SessionError::Timeout(timeout)))
}

/// Resolves once when the shutdown future does, then never again.
async fn requested(shutdown: &mut Option<Shutdown>) {
    match shutdown {
        Some(signal) => {
            signal.await;
            *shutdown = None;
        }
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline`; never without one.
async fn passed(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Turns a result larger than the orchestrator takes into the failure it is:
/// sent as it is, it would end the stream, and the outcome, re-sent on every
/// reconnect, would end every next one too.
fn fit_result(outcome: &mut TaskOutcome, max_result_bytes: u64) {
    let Some(task_outcome::Outcome::Completed(json)) = &outcome.outcome else { return };
    let size = json.len() as u64;
    if max_result_bytes == 0 || size <= max_result_bytes {
        return;
    }
    warn!(
        workflow_id = %outcome.workflow_id,
        task_id = %outcome.task_id,
        size,
        max_result_bytes,
        "the result is larger than the orchestrator takes; reporting the attempt failed"
    );
    outcome.outcome = Some(task_outcome::Outcome::Failed(TaskFailure {
        error_type: ActivityError::RESULT_TOO_LARGE.to_owned(),
        message: format!("the result is {size} bytes; the orchestrator takes at most {max_result_bytes}"),
        retryable: false,
    }));
}

fn outcome(key: TaskKey, lease_token: String, result: HandlerResult) -> TaskOutcome {
    let outcome = match result {
        Ok(json) => task_outcome::Outcome::Completed(json),
        Err(error) => task_outcome::Outcome::Failed(TaskFailure {
            retryable: error.is_retryable(),
            error_type: error.error_type().to_owned(),
            message: error.message().to_owned(),
        }),
    };
    TaskOutcome { workflow_id: key.workflow_id, task_id: key.task_id, outcome: Some(outcome), lease_token }
}

/// Where an attempt's span sits in the workflow's trace: under the span named
/// by the task's `traceparent`, with an id derived from the task, so that a
/// re-delivered task reports the same span rather than a second one.
struct ActivitySpan {
    name: String,
    context: TraceParent,
    parent_span_id: u64,
}

impl ActivitySpan {
    fn of(task: &ActivityTask) -> Option<Self> {
        let parent = TraceParent::parse(&task.traceparent)?;
        let span_id = span_id_of(&format!("{}/{}", task.workflow_id, task.task_id));
        Some(Self {
            name: task.activity_type.clone(),
            context: parent.with_span(span_id),
            parent_span_id: parent.span_id,
        })
    }

    fn finish(self, start: std::time::SystemTime, attributes: Vec<KeyValue>, error: Option<&ActivityError>) {
        trace::export(FinishedSpan {
            name: self.name,
            context: self.context,
            parent_span_id: Some(self.parent_span_id),
            kind: SpanKind::Consumer,
            start,
            end: std::time::SystemTime::now(),
            attributes,
            error: error.map(|e| format!("{}: {}", e.error_type(), e.message())),
        });
    }
}

/// The `tracing` span of one task: every log line about the task carries
/// these fields, whichever process and whichever stage writes it.
fn task_span(task: &ActivityTask, trace: Option<&ActivitySpan>) -> Span {
    info_span!(
        "activity",
        workflow_id = %task.workflow_id,
        task_id = %task.task_id,
        activity_type = %task.activity_type,
        attempt = task.attempt,
        correlation_id = %task.correlation_id,
        trace_id = trace.map(|t| t.context.trace_id_hex()),
        span_id = trace.map(|t| format!("{:016x}", t.context.span_id)),
        parent_span_id = trace.map(|t| format!("{:016x}", t.parent_span_id)),
    )
}

fn span_attributes(ctx: &ActivityContext) -> Vec<KeyValue> {
    vec![
        KeyValue::new("sagaflow.workflow_id", ctx.workflow_id().to_owned()),
        KeyValue::new("sagaflow.workflow_type", ctx.workflow_type().to_owned()),
        KeyValue::new("sagaflow.task_id", ctx.task_id().to_owned()),
        KeyValue::new("sagaflow.attempt", i64::from(ctx.attempt())),
        KeyValue::new("sagaflow.compensation", ctx.is_compensation()),
        KeyValue::new("sagaflow.correlation_id", ctx.correlation_id().to_owned()),
    ]
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => {
            payload.downcast_ref::<&str>().map_or_else(|| "handler panicked".to_owned(), |m| (*m).to_owned())
        }
    }
}

/// Displays an error with its chain of sources, `a: b: c`.
struct Chain<'a>(&'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
