//! Outcomes: what a handler's result becomes on the wire, and how it survives
//! a lost stream.

mod support;

use std::collections::HashMap;

use sagaflow_proto::v1::{TaskFailure, TaskOutcome, task_outcome, worker_message};
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{FakeOrchestrator, guarded, task};
use tokio::sync::{mpsc, oneshot};

fn completed(outcome: &TaskOutcome) -> Value {
    match &outcome.outcome {
        Some(task_outcome::Outcome::Completed(json)) => serde_json::from_str(json).expect("a JSON result"),
        other => panic!("expected a completed outcome, got {other:?}"),
    }
}

fn failed(outcome: &TaskOutcome) -> &TaskFailure {
    match &outcome.outcome {
        Some(task_outcome::Outcome::Failed(failure)) => failure,
        other => panic!("expected a failed outcome, got {other:?}"),
    }
}

async fn echo(_ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
    Ok(json!({ "echo": input }))
}

#[tokio::test]
async fn an_outcome_not_acknowledged_is_resent_after_a_reconnect() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let worker = Worker::builder(orchestrator.endpoint())
        .worker_id("resend-test")
        .max_concurrency(4)
        .activity("echo", echo)
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut first = orchestrator.accept().await;
    first.handshake().await;
    assert_eq!(first.expect_credit().await, 4);
    first.send_task(task("a", "echo", &json!({ "sku": "s-1" }))).await;
    let sent = first.expect_outcome().await;
    assert_eq!((sent.workflow_id.as_str(), sent.task_id.as_str()), ("wf-a", "a"));
    assert_eq!(completed(&sent), json!({ "echo": { "sku": "s-1" } }));

    // The orchestrator dies before the outcome is durable.
    drop(first);

    let mut second = orchestrator.accept().await;
    let register = second.handshake().await;
    assert_eq!(register.worker_id, "resend-test");
    assert_eq!(second.expect_outcome().await, sent);
    // The unacknowledged outcome still holds its slot.
    assert_eq!(second.expect_credit().await, 3);
    second.ack(&sent).await;
    // Acknowledged, it frees its slot; granted with the next batch, once the
    // orchestrator holds credit for fewer than half of the slots.
    second.send_task(task("b", "echo", &json!({}))).await;
    second.send_task(task("c", "echo", &json!({}))).await;
    let (mut outcomes, mut credit) = (0, 0);
    while outcomes < 2 || credit == 0 {
        match second.recv().await {
            worker_message::Message::Outcome(_) => outcomes += 1,
            worker_message::Message::Credit(granted) => credit += granted.tasks,
            other => panic!("expected outcomes and credit, got {other:?}"),
        }
    }
    assert_eq!(credit, 1);
    run.abort();
}

#[tokio::test]
async fn held_tasks_are_claimed_with_their_lease_tokens_and_a_refused_outcome_is_not_resent() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (release, gate) = mpsc::channel::<()>(1);
    let gate = std::sync::Arc::new(tokio::sync::Mutex::new(gate));
    let worker = Worker::builder(orchestrator.endpoint())
        .worker_id("lease-test")
        .max_concurrency(2)
        .activity("echo", echo)
        .activity("slow", move |_ctx: ActivityContext, _input: Value| {
            let gate = std::sync::Arc::clone(&gate);
            async move {
                gate.lock().await.recv().await;
                Ok::<_, ActivityError>(json!({}))
            }
        })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut first = orchestrator.accept().await;
    first.handshake().await;
    first.expect_credit().await;
    first.send_task(task("done", "echo", &json!({}))).await;
    first.send_task(task("running", "slow", &json!({}))).await;
    let sent = first.expect_outcome().await;
    assert_eq!(sent.lease_token, "lease-done");
    first.refuse(&sent, "PERMISSION_DENIED: not this worker's lease").await;
    // The refusal is taken before the stream goes: wait for the credit it frees.
    assert_eq!(first.expect_credit().await, 1);
    drop(first);

    // After the reconnect the running task is claimed with its token, and the
    // refused outcome is not sent again.
    let mut second = orchestrator.accept().await;
    let register = second.handshake().await;
    let held: Vec<_> = register.held.iter().map(|t| (t.task_id.as_str(), t.lease_token.as_str())).collect();
    assert_eq!(held, [("running", "lease-running")]);
    release.send(()).await.expect("the handler waits");
    loop {
        match second.recv().await {
            worker_message::Message::Outcome(outcome) => {
                assert_eq!(outcome.task_id, "running", "the refused outcome came back");
                break;
            }
            worker_message::Message::Credit(_) => {}
            other => panic!("expected the running task's outcome, got {other:?}"),
        }
    }
    run.abort();
}

#[tokio::test]
async fn a_result_larger_than_the_orchestrator_takes_fails_the_attempt_for_good() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let worker = Worker::builder(orchestrator.endpoint())
        .worker_id("big-result")
        .max_concurrency(2)
        .activity("big", |_ctx: ActivityContext, _input: Value| async move {
            Ok::<_, ActivityError>(json!({ "blob": "x".repeat(2_000) }))
        })
        .activity("echo", echo)
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());
    let mut session = orchestrator.accept().await;
    session.handshake_with_limit(1_024).await;
    session.expect_credit().await;
    session.send_task(task("big", "big", &json!({}))).await;
    let outcome = session.expect_outcome().await;
    let failure = failed(&outcome);
    assert_eq!(failure.error_type, ActivityError::RESULT_TOO_LARGE);
    assert!(!failure.retryable, "{failure:?}");
    assert!(failure.message.contains("1024"), "{failure:?}");
    // A result within the limit goes as it is.
    session.send_task(task("small", "echo", &json!({ "a": 1 }))).await;
    assert_eq!(completed(&session.expect_outcome().await), json!({ "echo": { "a": 1 } }));
    run.abort();
}

#[derive(Debug, Deserialize)]
struct Reserve {
    quantity: u32,
}

#[tokio::test]
async fn errors_map_to_task_failures_with_their_retryability() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let worker = Worker::builder(orchestrator.endpoint())
        .max_concurrency(4)
        .activity("carrier.ship", |_ctx: ActivityContext, _input: Value| async move {
            Err::<Value, _>(ActivityError::retryable("CarrierDown", "carrier answered 503"))
        })
        .activity("payments.capture", |_ctx: ActivityContext, _input: Value| async move {
            Err::<Value, _>(ActivityError::non_retryable("PaymentDeclined", "card declined"))
        })
        .activity("inventory.reserve", |_ctx: ActivityContext, input: Reserve| async move {
            Ok::<_, ActivityError>(input.quantity)
        })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 4);
    session.send_task(task("retry", "carrier.ship", &json!({}))).await;
    session.send_task(task("fatal", "payments.capture", &json!({}))).await;
    let bad_input = json!({ "quantity": "many" });
    session.send_task(task("typed", "inventory.reserve", &bad_input)).await;
    session.send_task(task("unknown", "coupons.apply", &json!({}))).await;

    let mut outcomes = HashMap::new();
    for _ in 0..4 {
        let outcome = session.expect_outcome().await;
        outcomes.insert(outcome.task_id.clone(), outcome);
    }
    let failure = |id: &str| failed(&outcomes[id]).clone();
    assert_eq!(
        failure("retry"),
        TaskFailure {
            error_type: "CarrierDown".to_owned(),
            message: "carrier answered 503".to_owned(),
            retryable: true,
        }
    );
    assert_eq!(
        failure("fatal"),
        TaskFailure { error_type: "PaymentDeclined".to_owned(), message: "card declined".to_owned(), retryable: false }
    );
    let typed = failure("typed");
    assert_eq!(typed.error_type, ActivityError::INVALID_INPUT);
    assert!(!typed.retryable);
    let unknown = failure("unknown");
    assert_eq!(unknown.error_type, ActivityError::UNKNOWN_ACTIVITY);
    assert!(unknown.retryable);

    // A typed handler given input that fits returns its typed result.
    // Each of the first two acknowledgements frees a slot granted at once;
    // then the orchestrator holds credit for half the slots and the grant waits.
    for (n, outcome) in outcomes.values().enumerate() {
        session.ack(outcome).await;
        if n < 2 {
            assert_eq!(session.expect_credit().await, 1);
        }
    }
    session.send_task(task("typed-ok", "inventory.reserve", &json!({ "quantity": 3 }))).await;
    // The task used credit the grant waited on: the two free slots come back together.
    assert_eq!(session.expect_credit().await, 2);
    assert_eq!(completed(&session.expect_outcome().await), json!(3));
    run.abort();
}

#[tokio::test]
async fn a_panicking_handler_fails_the_attempt_retryably_and_the_worker_goes_on() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let worker = Worker::builder(orchestrator.endpoint())
        .max_concurrency(1)
        .activity("explode", |_ctx: ActivityContext, _input: Value| async move {
            if true {
                panic!("reservation table corrupted");
            }
            Ok::<_, ActivityError>(())
        })
        .activity("echo", echo)
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 1);
    session.send_task(task("boom", "explode", &json!({}))).await;
    let outcome = session.expect_outcome().await;
    let failure = failed(&outcome);
    assert_eq!(failure.error_type, ActivityError::PANIC);
    assert!(failure.retryable);
    assert!(failure.message.contains("reservation table corrupted"), "{failure:?}");

    session.ack(&outcome).await;
    assert_eq!(session.expect_credit().await, 1);
    session.send_task(task("after", "echo", &json!(1))).await;
    assert_eq!(completed(&session.expect_outcome().await), json!({ "echo": 1 }));
    assert!(!run.is_finished());
    run.abort();
}

/// Reports on a channel when dropped: proves a handler was stopped.
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_cancelled_task_is_stopped_and_frees_its_slot_without_an_outcome() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<oneshot::Receiver<()>>();
    let worker = Worker::builder(orchestrator.endpoint())
        .max_concurrency(1)
        .activity("hang", move |_ctx: ActivityContext, _input: Value| {
            let (started_tx, dropped_tx) = (started_tx.clone(), dropped_tx.clone());
            async move {
                let (tx, rx) = oneshot::channel();
                let _guard = Dropped(Some(tx));
                let _ = dropped_tx.send(rx);
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok::<_, ActivityError>(())
            }
        })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 1);
    session.send_task(task("slow", "hang", &json!({}))).await;
    guarded("the handler to start", started.recv()).await;
    let stopped = guarded("the drop signal", dropped.recv()).await.expect("sent");

    session.cancel("wf-slow", "slow").await;
    guarded("the handler to be stopped", stopped).await.expect("the guard was dropped");
    // No outcome: the slot comes back as credit.
    assert_eq!(session.expect_credit().await, 1);
    run.abort();
}
