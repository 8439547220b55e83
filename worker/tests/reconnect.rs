//! Reconnecting: an orchestrator that is not there yet, or that hangs up
//! before registering, is retried with backoff.

mod support;

use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};
use support::{FakeOrchestrator, capture_tracing, free_addr, guarded, task};

fn echo_worker(endpoint: String) -> Worker {
    Worker::builder(endpoint)
        .worker_id("reconnect-test")
        .max_concurrency(3)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .activity("echo", |_ctx: ActivityContext, input: Value| async move { Ok::<_, ActivityError>(input) })
        .build()
        .expect("valid worker")
}

#[tokio::test]
async fn a_worker_started_before_its_orchestrator_connects_once_it_is_up() {
    let (_guard, _captured, mut events) = capture_tracing();
    let addr = free_addr().await;
    let run = tokio::spawn(echo_worker(format!("http://{addr}")).run());

    // Wait until the worker has failed to connect at least once.
    guarded("a failed connection attempt", async {
        while events.recv().await.expect("the worker logs") != "cannot reach the orchestrator" {}
    })
    .await;

    let mut orchestrator = FakeOrchestrator::start_on(addr).await;
    let mut session = orchestrator.accept().await;
    assert_eq!(session.handshake().await.worker_id, "reconnect-test");
    assert_eq!(session.expect_credit().await, 3);
    session.send_task(task("a", "echo", &json!(7))).await;
    assert_eq!(session.expect_outcome().await.task_id, "a");
    run.abort();
}

#[tokio::test]
async fn a_stream_that_ends_before_registration_is_retried() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let run = tokio::spawn(echo_worker(orchestrator.endpoint()).run());

    let mut refused = orchestrator.accept().await;
    refused.recv().await; // Register, never answered
    drop(refused);

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 3);
    run.abort();
}

#[tokio::test]
async fn a_worker_given_a_channel_uses_it_instead_of_its_endpoint() {
    let mut orchestrator = FakeOrchestrator::start().await;
    // Nothing listens at the endpoint: only the channel can reach the orchestrator.
    let unreachable = format!("http://{}", free_addr().await);
    let channel = tonic::transport::Channel::from_shared(orchestrator.endpoint()).expect("a valid URI").connect_lazy();
    let worker = Worker::builder(unreachable)
        .worker_id("channel-test")
        .channel(channel)
        .activity("echo", |_ctx: ActivityContext, input: Value| async move { Ok::<_, ActivityError>(input) })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    assert_eq!(session.handshake().await.worker_id, "channel-test");
    session.expect_credit().await;
    session.send_task(task("a", "echo", &json!(1))).await;
    assert_eq!(session.expect_outcome().await.task_id, "a");
    run.abort();
}
