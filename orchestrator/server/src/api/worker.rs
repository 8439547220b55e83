//! `sagaflow.v1.WorkerService`: one bidirectional stream per worker.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use sagaflow_proto::v1::worker_service_server::WorkerService;
use sagaflow_proto::v1::{
    OutcomeAck, Registered, ServerMessage, TaskOutcome, WorkerMessage, server_message, task_outcome, worker_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::invalid;
use super::relay::{self, Peers};
use crate::engine::Outcome;
use crate::runtime::Runtime;
use crate::runtime::dispatch::{Outbound, Refusal, SessionId};
use crate::runtime::timers::now_ms;

/// Room for tasks (bounded by credit) plus acknowledgements in flight.
const OUTBOUND_CAPACITY: usize = 4096;
const MAX_ACTIVITY_TYPES: usize = 256;

pub struct WorkerApi {
    runtime: Runtime,
    /// The other nodes of a cluster whose shards are spread: a worker's
    /// session here relays to them (`relay.rs`).
    peers: Option<Arc<Peers>>,
}

impl WorkerApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime, peers: None }
    }

    /// On a shared store: sessions also take the tasks of the shards other
    /// nodes serve, through those nodes.
    pub fn relaying(runtime: Runtime, peers: Arc<Peers>) -> Self {
        Self { runtime, peers: Some(peers) }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type OpenSessionStream = SessionStream;

    async fn open_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let caller = crate::auth::principal(&request);
        // A session another node relays here is served here alone, and so
        // is every session while this node serves every shard for good.
        let relay = self.peers.clone().filter(|peers| {
            !crate::forward::was_forwarded_metadata(request.metadata())
                && (peers.shards_move || !self.runtime.serves_every_shard())
        });
        let credentials = relay::credentials(request.metadata());
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.message);
        let Some(worker_message::Message::Register(register)) = first else {
            return Err(Status::invalid_argument("the first message of a session must be Register"));
        };
        let limits = self.runtime.limits();
        limits.id("worker_id", &register.worker_id).map_err(invalid)?;
        if register.activity_types.is_empty() || register.activity_types.len() > MAX_ACTIVITY_TYPES {
            return Err(Status::invalid_argument(format!(
                "register between 1 and {MAX_ACTIVITY_TYPES} activity types"
            )));
        }
        for activity_type in &register.activity_types {
            limits.id("activity type", activity_type).map_err(invalid)?;
            // A worker token serves only its queues: a leaked inventory token
            // must not be able to take (and fake) payment tasks.
            if !caller.may_serve(activity_type) {
                tracing::warn!(token = %caller.name, %activity_type, "refused a worker outside its queues");
                metrics::counter!("sagaflow_auth_failures_total", "reason" => "queue_not_allowed").increment(1);
                return Err(Status::permission_denied(format!(
                    "token {:?} may not serve the queue {activity_type:?}",
                    caller.name
                )));
            }
        }
        let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let types: HashSet<String> = register.activity_types.iter().cloned().collect();
        // Relayed, this node's tasks pass through the relay, which counts them.
        let (tasks, local_tasks) = match relay {
            Some(_) => {
                let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
                (tx, Some(rx))
            }
            None => (outbound.clone(), None),
        };
        let session =
            self.runtime.dispatch().open_session(register.worker_id.clone(), caller.name.clone(), types, tasks);
        let held: Vec<(String, String, String)> = register
            .held
            .iter()
            .take(crate::runtime::dispatch::MAX_CREDIT as usize)
            .map(|t| (t.workflow_id.clone(), t.task_id.clone(), t.lease_token.clone()))
            .collect();
        let refused = self.runtime.dispatch().claim(session, &held, now_ms());
        tracing::info!(
            worker_id = %register.worker_id,
            session,
            activity_types = ?register.activity_types,
            held = held.len(),
            refused = refused.len(),
            "worker connected"
        );
        let registered = ServerMessage {
            message: Some(server_message::Message::Registered(Registered {
                session_id: session.to_string(),
                max_result_bytes: limits.max_payload_bytes as u64,
            })),
        };
        outbound.send(Ok(registered)).await.map_err(|_| Status::cancelled("the worker went away"))?;
        for (workflow_id, task_id, refusal) in refused {
            // The worker stops what it may not report; it learns nothing it did not send.
            let reason = refused_for(&caller.name, &register.worker_id, "claim", &workflow_id, &task_id, &refusal);
            let cancelled = sagaflow_proto::v1::TaskCancelled { workflow_id, task_id, reason };
            let _ = outbound
                .try_send(Ok(ServerMessage { message: Some(server_message::Message::TaskCancelled(cancelled)) }));
        }
        let local = Local {
            runtime: self.runtime.clone(),
            session,
            token: caller.name,
            worker_id: register.worker_id.clone(),
            outbound: outbound.clone(),
        };
        match (relay, local_tasks) {
            (Some(peers), Some(local_tasks)) => {
                let relay = relay::Relay::new(peers, local, register, credentials, outbound);
                tokio::spawn(relay.run(inbound, local_tasks));
            }
            _ => drop(tokio::spawn(serve(local, inbound))),
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Logs and counts a refused message; returns what the worker is told.
fn refused_for(
    token: &str,
    worker_id: &str,
    message: &'static str,
    workflow_id: &str,
    task_id: &str,
    refusal: &Refusal,
) -> String {
    tracing::warn!(
        token,
        worker_id,
        message,
        workflow_id,
        task_id,
        reason = refusal.reason(),
        "refused a worker message"
    );
    metrics::counter!("sagaflow_auth_failures_total", "reason" => refusal.reason()).increment(1);
    refusal.message(workflow_id, task_id)
}

/// What answers a worker's messages about the tasks this node serves.
pub(super) struct Local {
    pub(super) runtime: Runtime,
    pub(super) session: SessionId,
    pub(super) token: String,
    pub(super) worker_id: String,
    /// Where acknowledgements and cancellations go: the worker's stream.
    pub(super) outbound: Outbound,
}

impl Local {
    /// Handles one message; false when the session must end.
    pub(super) async fn handle(&self, message: worker_message::Message) -> bool {
        let Self { runtime, session, token, worker_id, outbound } = self;
        let session = *session;
        match message {
            worker_message::Message::Credit(credit) => runtime.dispatch().grant(session, credit.tasks, now_ms()),
            worker_message::Message::Withdraw(withdraw) => {
                let tasks = runtime.dispatch().withdraw(session, withdraw.tasks);
                let withdrawn = server_message::Message::Withdrawn(sagaflow_proto::v1::Withdrawn { tasks });
                let _ = outbound.send(Ok(ServerMessage { message: Some(withdrawn) })).await;
            }
            worker_message::Message::Outcome(outcome) => {
                let (workflow_id, task_id) = (&outcome.workflow_id, &outcome.task_id);
                match runtime.dispatch().authorize(session, workflow_id, task_id, &outcome.lease_token) {
                    // Each outcome commits on its own, so that many share one flush.
                    Ok(()) => drop(tokio::spawn(report(runtime.clone(), worker_id.clone(), outcome, outbound.clone()))),
                    Err(refusal) => {
                        // Answered, so that the worker drops it instead of sending it again.
                        let refused = refused_for(token, worker_id, "outcome", workflow_id, task_id, &refusal);
                        let ack = OutcomeAck {
                            workflow_id: outcome.workflow_id,
                            task_id: outcome.task_id,
                            accepted: false,
                            refused,
                        };
                        let _ =
                            outbound.send(Ok(ServerMessage { message: Some(server_message::Message::Ack(ack)) })).await;
                    }
                }
            }
            worker_message::Message::Heartbeat(beat) => {
                let (workflow_id, task_id) = (&beat.workflow_id, &beat.task_id);
                if let Err(refusal) = runtime.dispatch().authorize(session, workflow_id, task_id, &beat.lease_token) {
                    refused_for(token, worker_id, "heartbeat", workflow_id, task_id, &refusal);
                } else if !runtime.dispatch().heartbeat(workflow_id, task_id, now_ms()) {
                    let cancelled = sagaflow_proto::v1::TaskCancelled {
                        workflow_id: beat.workflow_id,
                        task_id: beat.task_id,
                        reason: "the workflow no longer wants this attempt".into(),
                    };
                    let _ = outbound
                        .send(Ok(ServerMessage { message: Some(server_message::Message::TaskCancelled(cancelled)) }))
                        .await;
                }
            }
            worker_message::Message::Register(_) => {
                let _ = outbound.send(Err(Status::invalid_argument("a session registers once"))).await;
                return false;
            }
        }
        true
    }

    pub(super) fn close(&self) {
        self.runtime.dispatch().close_session(self.session);
        tracing::info!(worker_id = %self.worker_id, session = self.session, "worker disconnected");
    }
}

async fn serve(local: Local, mut inbound: Streaming<WorkerMessage>) {
    loop {
        let message = match inbound.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(worker_id = %local.worker_id, %status, "worker stream ended");
                break;
            }
        };
        if let Some(message) = message.message
            && !local.handle(message).await
        {
            break;
        }
    }
    local.close();
}

async fn report(runtime: Runtime, worker_id: String, outcome: TaskOutcome, outbound: Outbound) {
    let limits = runtime.limits();
    let decoded = match outcome.outcome {
        Some(task_outcome::Outcome::Completed(result)) => {
            limits.json_payload("result", result.as_bytes()).map(Outcome::Completed)
        }
        Some(task_outcome::Outcome::Failed(failure)) => Ok(Outcome::Failed {
            error_type: failure.error_type.chars().take(limits.max_id_bytes).collect(),
            message: failure.message.chars().take(4096).collect(),
            retryable: failure.retryable,
        }),
        None => Err(crate::limits::Invalid("an outcome needs a result or a failure".into())),
    };
    let accepted = match decoded {
        // A result too big or not JSON fails the attempt rather than the session.
        Err(invalid) => Outcome::Failed { error_type: "InvalidResult".into(), message: invalid.0, retryable: false },
        Ok(outcome) => outcome,
    };
    let ack = match runtime.complete(&outcome.workflow_id, &outcome.task_id, &worker_id, accepted).await {
        Ok(accepted) => {
            OutcomeAck { workflow_id: outcome.workflow_id, task_id: outcome.task_id, accepted, refused: String::new() }
        }
        Err(crate::runtime::Error::NotFound(_) | crate::runtime::Error::FailedPrecondition(_)) => OutcomeAck {
            workflow_id: outcome.workflow_id,
            task_id: outcome.task_id,
            accepted: false,
            refused: String::new(),
        },
        Err(e) => {
            // Not acknowledged: the worker keeps the outcome and sends it again.
            tracing::warn!(error = %e, workflow_id = %outcome.workflow_id, "could not record an outcome");
            return;
        }
    };
    let _ = outbound.send(Ok(ServerMessage { message: Some(server_message::Message::Ack(ack)) })).await;
}
