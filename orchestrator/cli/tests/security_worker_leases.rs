//! Every WorkerService message is authorised, not only the first: with a real
//! server process, a worker token confined to other queues, or another
//! session of the right token, can neither claim, heartbeat nor complete a
//! task it does not hold, even knowing its ids (they are predictable) or its
//! lease token.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::ServerProcess;
use common::secure::{self, BENCH_WORKER, CLIENT, OPERATOR, WORKER, with_token};
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{Item, StartCheckoutRequest};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::worker_service_client::WorkerServiceClient;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    ActivityTask, Credit, DescribeWorkflowRequest, GetWorkflowHistoryRequest, Heartbeat, OutcomeAck, Register,
    ServerMessage, TaskOutcome, TaskRef, WorkerMessage, server_message, task_outcome, worker_message,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

const PRICE: &str = "catalog.price_snapshot";

/// A worker session driven by hand.
struct Session {
    tx: mpsc::Sender<WorkerMessage>,
    inbound: Streaming<ServerMessage>,
}

impl Session {
    async fn open(channel: &Channel, token: &str, worker_id: &str, queue: &str, held: Vec<TaskRef>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let register = Register { worker_id: worker_id.into(), activity_types: vec![queue.into()], held };
        tx.send(WorkerMessage { message: Some(worker_message::Message::Register(register)) }).await.unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = WorkerServiceClient::new(channel.clone())
            .open_session(with_token(stream, Some(token)))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().and_then(|m| m.message);
        assert!(matches!(first, Some(server_message::Message::Registered(_))), "{first:?}");
        Self { tx, inbound }
    }

    async fn send(&self, message: worker_message::Message) {
        self.tx.send(WorkerMessage { message: Some(message) }).await.unwrap();
    }

    async fn next(&mut self) -> server_message::Message {
        let next = tokio::time::timeout(Duration::from_secs(30), self.inbound.message()).await;
        next.expect("a server message within 30 s").unwrap().and_then(|m| m.message).expect("a message")
    }

    async fn take_task(&mut self) -> ActivityTask {
        self.send(worker_message::Message::Credit(Credit { tasks: 1 })).await;
        match self.next().await {
            server_message::Message::Task(task) => task,
            other => panic!("expected a task, got {other:?}"),
        }
    }

    async fn complete(&mut self, task: &ActivityTask, lease_token: &str) -> OutcomeAck {
        let outcome = TaskOutcome {
            workflow_id: task.workflow_id.clone(),
            task_id: task.task_id.clone(),
            outcome: Some(task_outcome::Outcome::Completed(r#"{"total_cents": 1, "forged": true}"#.into())),
            lease_token: lease_token.into(),
        };
        self.send(worker_message::Message::Outcome(outcome)).await;
        match self.next().await {
            server_message::Message::Ack(ack) => ack,
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }
}

fn task_ref(task: &ActivityTask, lease_token: &str) -> TaskRef {
    TaskRef { workflow_id: task.workflow_id.clone(), task_id: task.task_id.clone(), lease_token: lease_token.into() }
}

async fn secured() -> (ServerProcess, tempfile::TempDir) {
    secure::start_server(&[]).await
}

/// A checkout whose first task (the price snapshot) waits for a worker.
async fn start_checkout(channel: &Channel) -> String {
    let request = StartCheckoutRequest {
        client_request_id: "victim-1".into(),
        customer_id: "alice".into(),
        items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
        ..Default::default()
    };
    let started = CheckoutServiceClient::new(channel.clone())
        .start_checkout(with_token(request, Some(CLIENT)))
        .await
        .unwrap()
        .into_inner();
    started.checkout_id
}

/// How many activities of the workflow completed, as its history says.
async fn completions(channel: &Channel, workflow_id: &str) -> usize {
    let request = GetWorkflowHistoryRequest {
        workflow_id: workflow_id.into(),
        from_seq: 1,
        page_size: 500,
        ..Default::default()
    };
    let page = WorkflowServiceClient::new(channel.clone())
        .get_workflow_history(with_token(request, Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner();
    page.events.iter().filter(|e| matches!(e.attributes, Some(Attributes::ActivityCompleted(_)))).count()
}

#[tokio::test]
async fn only_the_session_holding_a_lease_may_claim_heartbeat_or_complete_it() {
    let (server, _dir) = secured().await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let checkout = start_checkout(&channel).await;
    let mut holder = Session::open(&channel, WORKER, "holder", PRICE, Vec::new()).await;
    let task = holder.take_task().await;
    assert_eq!(task.workflow_id, checkout);
    assert!(!task.lease_token.is_empty(), "a task carries its lease token");
    assert!(!task.lease_token.contains(&task.task_id), "the token is opaque: {}", task.lease_token);
    let mut workflows = WorkflowServiceClient::new(channel.clone());

    // A token confined to `bench.*` knows the ids, and even the lease token.
    let mut intruder = Session::open(&channel, BENCH_WORKER, "intruder", "bench.reserve", Vec::new()).await;
    for token in ["", "0.00", task.lease_token.as_str()] {
        let ack = intruder.complete(&task, token).await;
        assert!(!ack.accepted, "{ack:?}");
        assert!(ack.refused.starts_with("PERMISSION_DENIED"), "{ack:?}");
        intruder
            .send(worker_message::Message::Heartbeat(Heartbeat {
                workflow_id: task.workflow_id.clone(),
                task_id: task.task_id.clone(),
                details: String::new(),
                lease_token: token.into(),
            }))
            .await;
    }
    // Claiming it on a reconnect is refused, and the claimant is told to stop.
    let mut claimant =
        Session::open(&channel, BENCH_WORKER, "holder", "bench.reserve", vec![task_ref(&task, &task.lease_token)])
            .await;
    match claimant.next().await {
        server_message::Message::TaskCancelled(cancelled) => {
            assert_eq!(cancelled.task_id, task.task_id);
            assert!(cancelled.reason.starts_with("PERMISSION_DENIED"), "{cancelled:?}");
        }
        other => panic!("expected the claim refused, got {other:?}"),
    }

    // Another worker of the right token, with the leaked token, is not the holder either
    // while the holder's session is live.
    let mut rival = Session::open(&channel, WORKER, "rival", PRICE, vec![task_ref(&task, &task.lease_token)]).await;
    match rival.next().await {
        server_message::Message::TaskCancelled(cancelled) => {
            assert!(cancelled.reason.contains("another connected worker"), "{cancelled:?}");
        }
        other => panic!("expected the claim refused, got {other:?}"),
    }
    let ack = rival.complete(&task, &task.lease_token).await;
    assert!(!ack.accepted && ack.refused.contains("another connected worker"), "{ack:?}");

    // Nothing of that reached the history; the lease is still the holder's.
    assert_eq!(completions(&channel, &checkout).await, 0);
    let described = workflows
        .describe_workflow(with_token(DescribeWorkflowRequest { workflow_id: checkout.clone() }, Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner();
    let pending = &described.pending_activities[0];
    assert_eq!((pending.state.as_str(), pending.worker_id.as_str()), ("LEASED", "holder"));

    // The holder's own outcome counts.
    let ack = holder.complete(&task, &task.lease_token).await;
    assert!(ack.accepted && ack.refused.is_empty(), "{ack:?}");
    assert_eq!(completions(&channel, &checkout).await, 1);

    let metrics = common::scrape_as(&server.http, OPERATOR).await;
    for reason in ["lease_token_invalid", "lease_held_elsewhere"] {
        assert!(metrics.contains(&format!("sagaflow_auth_failures_total{{reason=\"{reason}\"}}")), "{reason}");
    }
}

#[tokio::test]
async fn a_worker_that_reconnects_keeps_its_lease_with_its_token() {
    let (server, _dir) = secured().await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let checkout = start_checkout(&channel).await;
    let mut first = Session::open(&channel, WORKER, "w-1", PRICE, Vec::new()).await;
    let task = first.take_task().await;
    // The same worker, back on a new stream, claims what it still runs and reports it:
    // whether or not the server has yet noticed that the old stream is gone.
    let mut again = Session::open(&channel, WORKER, "w-1", PRICE, vec![task_ref(&task, &task.lease_token)]).await;
    drop(first);
    let ack = again.complete(&task, &task.lease_token).await;
    assert!(ack.accepted && ack.refused.is_empty(), "{ack:?}");
    assert_eq!(completions(&channel, &checkout).await, 1);
}
