//! A fake orchestrator: a real tonic `WorkerService` on a loopback socket that
//! hands each session to the test, which then plays the server's side by hand.
//! Plus a `tracing` layer that captures the worker's events and spans.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use sagaflow_proto::v1::{
    ActivityTask, Credit, Heartbeat, OutcomeAck, Register, Registered, ServerMessage, TaskCancelled, TaskOutcome,
    WorkerMessage, server_message, worker_message,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Guards every wait of a test, so that a bug fails the test instead of
/// hanging it. Never used to order events.
pub const GUARD: Duration = Duration::from_secs(10);

pub async fn guarded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(GUARD, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub struct FakeOrchestrator {
    pub addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<FakeSession>,
}

impl FakeOrchestrator {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// On a given address, for a worker that was started before its orchestrator.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the reserved port");
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, sessions) = mpsc::unbounded_channel();
        let service = WorkerServiceServer::new(Service { sessions: tx });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { addr, sessions }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next stream a worker opens.
    pub async fn accept(&mut self) -> FakeSession {
        guarded("a session", self.sessions.recv()).await.expect("the server is running")
    }
}

/// A loopback address nothing listens on (bound, then released).
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

struct Service {
    sessions: mpsc::UnboundedSender<FakeSession>,
}

#[tonic::async_trait]
impl WorkerService for Service {
    type OpenSessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn open_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let (outbound, rx) = mpsc::channel(1024);
        let session = FakeSession { inbound: request.into_inner(), outbound, granted: 0, tasks_sent: 0, acked: 0 };
        self.sessions.send(session).map_err(|_| Status::unavailable("the test is gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The server's side of one stream. Dropping it ends the stream.
pub struct FakeSession {
    inbound: Streaming<WorkerMessage>,
    outbound: mpsc::Sender<Result<ServerMessage, Status>>,
    /// Credit the worker granted on this stream.
    pub granted: u32,
    pub tasks_sent: u32,
    pub acked: u32,
}

impl FakeSession {
    /// The next message, or `None` once the worker closed the stream.
    pub async fn next(&mut self) -> Option<worker_message::Message> {
        match guarded("a worker message", self.inbound.message()).await {
            Ok(Some(message)) => Some(message.message.expect("a message kind")),
            Ok(None) | Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> worker_message::Message {
        self.next().await.expect("the worker closed the stream")
    }

    async fn send(&self, message: server_message::Message) {
        self.outbound.send(Ok(ServerMessage { message: Some(message) })).await.expect("the stream is open");
    }

    /// Expects `Register` and answers `Registered`.
    pub async fn handshake(&mut self) -> Register {
        self.handshake_with_limit(0).await
    }

    /// [`handshake`](Self::handshake), saying that results over `max_result_bytes` are not taken.
    pub async fn handshake_with_limit(&mut self, max_result_bytes: u64) -> Register {
        let register = match self.recv().await {
            worker_message::Message::Register(register) => register,
            other => panic!("expected Register first, got {other:?}"),
        };
        let registered = Registered { session_id: "session-1".to_owned(), max_result_bytes };
        self.send(server_message::Message::Registered(registered)).await;
        register
    }

    pub async fn expect_credit(&mut self) -> u32 {
        match self.recv().await {
            worker_message::Message::Credit(Credit { tasks }) => {
                self.granted += tasks;
                tasks
            }
            other => panic!("expected Credit, got {other:?}"),
        }
    }

    pub async fn expect_outcome(&mut self) -> TaskOutcome {
        match self.recv().await {
            worker_message::Message::Outcome(outcome) => outcome,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    pub async fn expect_heartbeat(&mut self) -> Heartbeat {
        match self.recv().await {
            worker_message::Message::Heartbeat(heartbeat) => heartbeat,
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }

    /// Sends a task within the credit granted, as the orchestrator must.
    pub async fn send_task(&mut self, task: ActivityTask) {
        assert!(self.tasks_sent < self.granted, "the fake orchestrator would exceed the credit granted");
        self.send_task_beyond_credit(task).await;
    }

    /// Sends a task whether or not credit allows it: a misbehaving orchestrator.
    pub async fn send_task_beyond_credit(&mut self, task: ActivityTask) {
        self.tasks_sent += 1;
        self.send(server_message::Message::Task(task)).await;
    }

    pub async fn ack(&mut self, outcome: &TaskOutcome) {
        self.acked += 1;
        self.send(server_message::Message::Ack(OutcomeAck {
            workflow_id: outcome.workflow_id.clone(),
            task_id: outcome.task_id.clone(),
            accepted: true,
            refused: String::new(),
        }))
        .await;
    }

    /// Refuses an outcome for good, as the orchestrator does for one that is
    /// not the sender's to report.
    pub async fn refuse(&mut self, outcome: &TaskOutcome, why: &str) {
        self.send(server_message::Message::Ack(OutcomeAck {
            workflow_id: outcome.workflow_id.clone(),
            task_id: outcome.task_id.clone(),
            accepted: false,
            refused: why.to_owned(),
        }))
        .await;
    }

    pub async fn cancel(&self, workflow_id: &str, task_id: &str) {
        self.send(server_message::Message::TaskCancelled(TaskCancelled {
            workflow_id: workflow_id.to_owned(),
            task_id: task_id.to_owned(),
            reason: "attempt timed out".to_owned(),
        }))
        .await;
    }
}

/// A task for `activity_type` with JSON `input`; its workflow is `wf-{task_id}`.
pub fn task(task_id: &str, activity_type: &str, input: &serde_json::Value) -> ActivityTask {
    ActivityTask {
        workflow_id: format!("wf-{task_id}"),
        task_id: task_id.to_owned(),
        workflow_type: "checkout".to_owned(),
        activity_type: activity_type.to_owned(),
        step: "step".to_owned(),
        attempt: 1,
        compensation: false,
        input: input.to_string(),
        idempotency_key: format!("key-{task_id}"),
        correlation_id: format!("corr-{task_id}"),
        traceparent: String::new(),
        start_to_close_ms: 0,
        heartbeat_ms: 0,
        lease_token: format!("lease-{task_id}"),
    }
}

/// What the capture layer saw of the worker.
#[derive(Clone, Default)]
pub struct Captured {
    /// Fields of every `activity` span, by name.
    pub activity_spans: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

/// Installs a capturing subscriber on this thread (use a current-thread
/// runtime) and returns its guard, what it captures, and the messages of the
/// worker's events as they happen.
pub fn capture_tracing() -> (tracing::subscriber::DefaultGuard, Captured, mpsc::UnboundedReceiver<String>) {
    use tracing_subscriber::layer::SubscriberExt;

    let captured = Captured::default();
    let (events, rx) = mpsc::unbounded_channel();
    let layer = CaptureLayer { captured: captured.clone(), events };
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (guard, captured, rx)
}

struct CaptureLayer {
    captured: Captured,
    events: mpsc::UnboundedSender<String>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "activity" {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            self.captured.activity_spans.lock().expect("not poisoned").push(fields.0);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target().starts_with("sagaflow_worker") {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let _ = self.events.send(fields.0.remove("message").unwrap_or_default());
        }
    }
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
