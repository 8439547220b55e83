//! What a handler sees: the attempt's identity, its heartbeats, its span.

mod support;

use std::sync::Arc;

use sagaflow_proto::v1::ActivityTask;
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};
use support::{FakeOrchestrator, capture_tracing, guarded};
use tokio::sync::{Semaphore, mpsc};

#[derive(Debug)]
struct Seen {
    workflow_id: String,
    workflow_type: String,
    task_id: String,
    activity_type: String,
    step: String,
    attempt: u32,
    compensation: bool,
    idempotency_key: String,
    correlation_id: String,
    traceparent: Option<String>,
    start_to_close: Option<std::time::Duration>,
    heartbeat_timeout: Option<std::time::Duration>,
    span: Option<&'static str>,
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_context_carries_the_attempt_and_its_heartbeats_reach_the_orchestrator() {
    // A current-thread runtime: the capturing subscriber is per thread.
    let (_guard, captured, _events) = capture_tracing();
    let mut orchestrator = FakeOrchestrator::start().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // The handler finishes only once its heartbeat has arrived: a heartbeat
    // sent after the outcome would be dropped.
    let finish = Arc::new(Semaphore::new(0));
    let release = Arc::clone(&finish);
    let worker = Worker::builder(orchestrator.endpoint())
        .activity("inventory.release", move |ctx: ActivityContext, _input: Value| {
            let (seen_tx, finish) = (seen_tx.clone(), Arc::clone(&finish));
            async move {
                let _ = seen_tx.send(Seen {
                    workflow_id: ctx.workflow_id().to_owned(),
                    workflow_type: ctx.workflow_type().to_owned(),
                    task_id: ctx.task_id().to_owned(),
                    activity_type: ctx.activity_type().to_owned(),
                    step: ctx.step().to_owned(),
                    attempt: ctx.attempt(),
                    compensation: ctx.is_compensation(),
                    idempotency_key: ctx.idempotency_key().to_owned(),
                    correlation_id: ctx.correlation_id().to_owned(),
                    traceparent: ctx.traceparent().map(str::to_owned),
                    start_to_close: ctx.start_to_close_timeout(),
                    heartbeat_timeout: ctx.heartbeat_timeout(),
                    span: tracing::Span::current().metadata().map(|m| m.name()),
                });
                ctx.heartbeat(json!({ "progress": 1 }));
                finish.acquire().await.expect("open").forget();
                Ok::<_, ActivityError>(json!({ "released": ctx.idempotency_key() }))
            }
        })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    session.expect_credit().await;
    session
        .send_task(ActivityTask {
            workflow_id: "wf-42".to_owned(),
            task_id: "task-7".to_owned(),
            workflow_type: "checkout".to_owned(),
            activity_type: "inventory.release".to_owned(),
            step: "reserve".to_owned(),
            attempt: 3,
            compensation: true,
            input: json!({ "sku": "s-1" }).to_string(),
            idempotency_key: "reservation-9".to_owned(),
            correlation_id: "request-5".to_owned(),
            traceparent: TRACEPARENT.to_owned(),
            start_to_close_ms: 60_000,
            heartbeat_ms: 5_000,
            lease_token: "lease-of-task-7".to_owned(),
        })
        .await;

    let seen = guarded("the handler", seen.recv()).await.expect("sent");
    assert_eq!(seen.workflow_id, "wf-42");
    assert_eq!(seen.workflow_type, "checkout");
    assert_eq!(seen.task_id, "task-7");
    assert_eq!(seen.activity_type, "inventory.release");
    assert_eq!(seen.step, "reserve");
    assert_eq!(seen.attempt, 3);
    assert!(seen.compensation);
    assert_eq!(seen.idempotency_key, "reservation-9");
    assert_eq!(seen.correlation_id, "request-5");
    assert_eq!(seen.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(seen.start_to_close, Some(std::time::Duration::from_secs(60)));
    assert_eq!(seen.heartbeat_timeout, Some(std::time::Duration::from_secs(5)));
    assert_eq!(seen.span, Some("activity"));

    let heartbeat = session.expect_heartbeat().await;
    assert_eq!((heartbeat.workflow_id.as_str(), heartbeat.task_id.as_str()), ("wf-42", "task-7"));
    // The orchestrator hears of a lease only from its holder: every message echoes the token.
    assert_eq!(heartbeat.lease_token, "lease-of-task-7");
    let details: Value = serde_json::from_str(&heartbeat.details).expect("JSON details");
    assert_eq!(details, json!({ "progress": 1 }));

    release.add_permits(1);
    let outcome = session.expect_outcome().await;
    assert_eq!(outcome.task_id, "task-7");
    assert_eq!(outcome.lease_token, "lease-of-task-7");

    let spans = captured.activity_spans.lock().expect("not poisoned").clone();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    for (field, value) in [
        ("workflow_id", "wf-42"),
        ("task_id", "task-7"),
        ("activity_type", "inventory.release"),
        ("attempt", "3"),
        ("correlation_id", "request-5"),
    ] {
        assert_eq!(span.get(field).map(String::as_str), Some(value), "{field}");
    }
    run.abort();
}
