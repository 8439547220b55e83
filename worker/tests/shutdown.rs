//! Graceful shutdown: stop asking, finish what runs, wait for the
//! acknowledgements, then return.

mod support;

use std::time::Duration;

use sagaflow_proto::v1::task_outcome;
use sagaflow_worker::{ActivityContext, ActivityError, Error, Worker};
use serde_json::{Value, json};
use support::{FakeOrchestrator, free_addr, guarded, task};
use tokio::sync::{Semaphore, mpsc};

#[tokio::test]
async fn shutdown_waits_for_the_running_task_and_its_acknowledgement() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let release = std::sync::Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = Worker::builder(orchestrator.endpoint())
        .max_concurrency(2)
        .activity("orders.create", {
            let release = std::sync::Arc::clone(&release);
            move |ctx: ActivityContext, _input: Value| {
                let (release, started_tx) = (std::sync::Arc::clone(&release), started_tx.clone());
                async move {
                    let _ = started_tx.send(());
                    release.acquire().await.expect("open").forget();
                    Ok::<_, ActivityError>(json!({ "order_id": ctx.idempotency_key() }))
                }
            }
        })
        .build()
        .expect("valid worker");
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 2);
    session.send_task(task("order", "orders.create", &json!({}))).await;
    guarded("the handler to start", started.recv()).await;

    handle.shutdown();
    release.add_permits(1);
    // No credit is asked for during the drain: the next message is the outcome.
    let first = session.expect_outcome().await;
    assert_eq!(first.outcome, Some(task_outcome::Outcome::Completed(json!({ "order_id": "key-order" }).to_string())));

    // The worker waits for the acknowledgement with its stream open: it still
    // runs a task sent on credit granted before the drain began.
    session.send_task(task("late", "orders.create", &json!({}))).await;
    guarded("the second handler to start", started.recv()).await;
    release.add_permits(1);
    let second = session.expect_outcome().await;
    assert_eq!(second.task_id, "late");

    session.ack(&first).await;
    session.ack(&second).await;
    // No credit after the acknowledgements: the worker closes its stream.
    assert_eq!(session.next().await, None);
    drop(session);
    let result = guarded("the worker to stop", run).await.expect("joined");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_drain_that_outlives_its_budget_stops_the_tasks_and_says_so() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = Worker::builder(orchestrator.endpoint())
        .max_concurrency(1)
        .drain_timeout(Duration::from_millis(200))
        .activity("hang", move |_ctx: ActivityContext, _input: Value| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok::<_, ActivityError>(())
            }
        })
        .build()
        .expect("valid worker");
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    session.expect_credit().await;
    session.send_task(task("stuck", "hang", &json!({}))).await;
    guarded("the handler to start", started.recv()).await;

    handle.shutdown();
    let result = guarded("the drain to time out", run).await.expect("joined");
    assert!(matches!(result, Err(Error::DrainTimedOut { running: 1, unacked: 0, .. })), "{result:?}");
}

#[tokio::test]
async fn with_nothing_in_flight_shutdown_returns_even_without_an_orchestrator() {
    let endpoint = format!("http://{}", free_addr().await);
    let worker = Worker::builder(endpoint)
        .activity("echo", |_ctx: ActivityContext, input: Value| async move { Ok::<_, ActivityError>(input) })
        .build()
        .expect("valid worker");
    let result = guarded("the worker to stop", worker.run_until(async {})).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn dropping_the_run_future_stops_the_worker_and_closes_its_stream() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let worker = Worker::builder(orchestrator.endpoint())
        .activity("echo", |_ctx: ActivityContext, input: Value| async move { Ok::<_, ActivityError>(input) })
        .build()
        .expect("valid worker");
    let run = tokio::spawn(worker.run());
    let mut session = orchestrator.accept().await;
    session.handshake().await;
    session.expect_credit().await;

    // The run loop is a task of its own; it must not outlive the future.
    run.abort();
    assert!(run.await.is_err_and(|e| e.is_cancelled()));
    assert!(session.next().await.is_none(), "the worker's stream is still open");
}
