//! Backpressure: the worker asks for no more tasks than it has free slots,
//! never holds more than it asked for, and grants freed slots in batches
//! while the orchestrator still holds credit for half of them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sagaflow_proto::v1::worker_message;
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};
use support::{FakeOrchestrator, guarded, task};
use tokio::sync::{Semaphore, mpsc};

/// Counts the handlers running at once and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker whose `blocking` handler reports its start, then waits for one
/// permit of `release`.
fn blocking_worker(
    endpoint: String,
    max_concurrency: u32,
) -> (Worker, Arc<Gauge>, Arc<Semaphore>, mpsc::UnboundedReceiver<String>) {
    let gauge = Arc::new(Gauge::default());
    let release = Arc::new(Semaphore::new(0));
    let (started, started_rx) = mpsc::unbounded_channel();
    let worker = Worker::builder(endpoint)
        .worker_id("credit-test")
        .max_concurrency(max_concurrency)
        .activity("blocking", {
            let (gauge, release) = (Arc::clone(&gauge), Arc::clone(&release));
            move |ctx: ActivityContext, _input: Value| {
                let (gauge, release, started) = (Arc::clone(&gauge), Arc::clone(&release), started.clone());
                async move {
                    gauge.enter();
                    let _ = started.send(ctx.task_id().to_owned());
                    release.acquire().await.expect("open").forget();
                    gauge.leave();
                    Ok::<_, ActivityError>(json!({ "done": ctx.task_id() }))
                }
            }
        })
        .build()
        .expect("valid worker");
    (worker, gauge, release, started_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_exactly_max_concurrency_and_never_holds_more_than_granted() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (worker, gauge, release, mut started) = blocking_worker(orchestrator.endpoint(), 2);
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    let register = session.handshake().await;
    assert_eq!(register.worker_id, "credit-test");
    assert_eq!(register.activity_types, ["blocking"]);
    assert_eq!(session.expect_credit().await, 2);

    session.send_task(task("a", "blocking", &json!({}))).await;
    session.send_task(task("b", "blocking", &json!({}))).await;
    for _ in 0..2 {
        guarded("a handler to start", started.recv()).await;
    }

    // Both slots are taken: the next message can only be an outcome, with no
    // credit before it.
    release.add_permits(1);
    let first = session.expect_outcome().await;
    // The finished task keeps its slot until its outcome is acknowledged.
    session.ack(&first).await;
    assert_eq!(session.expect_credit().await, 1);
    assert!(session.granted - session.acked <= 2);

    session.send_task(task("c", "blocking", &json!({}))).await;
    guarded("the third handler to start", started.recv()).await;

    release.add_permits(2);
    let (second, third) = (session.expect_outcome().await, session.expect_outcome().await);
    session.ack(&second).await;
    assert_eq!(session.expect_credit().await, 1);
    // The orchestrator now holds credit for half the slots: the third's slot
    // is granted once that credit is used.
    session.ack(&third).await;
    session.send_task(task("d", "blocking", &json!({}))).await;
    guarded("the fourth handler to start", started.recv()).await;
    assert_eq!(session.expect_credit().await, 1);
    assert!(session.granted - session.acked <= 2);

    assert_eq!(gauge.peak.load(Ordering::SeqCst), 2);
    assert_eq!(session.tasks_sent, 4);
    assert!(!run.is_finished());
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credit_is_granted_in_batches_while_the_orchestrator_holds_half_the_slots() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (worker, gauge, release, mut started) = blocking_worker(orchestrator.endpoint(), 8);
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 8);

    // Two tasks run and end; their slots are not granted one message each,
    // since the orchestrator still holds credit for six.
    for id in ["a", "b"] {
        session.send_task(task(id, "blocking", &json!({}))).await;
        guarded("a handler to start", started.recv()).await;
    }
    release.add_permits(2);
    for _ in 0..2 {
        let outcome = session.expect_outcome().await;
        session.ack(&outcome).await;
    }
    // Three more tasks bring the held credit below half (8 / 2): the two free
    // slots come back in one grant.
    for id in ["c", "d", "e"] {
        session.send_task(task(id, "blocking", &json!({}))).await;
        guarded("a handler to start", started.recv()).await;
    }
    assert_eq!(session.expect_credit().await, 2);
    assert_eq!(session.granted, 10);
    assert!(session.granted - session.acked <= 8);
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 3);
    run.abort();
}

#[tokio::test]
async fn a_task_beyond_the_credit_granted_is_not_run() {
    let mut orchestrator = FakeOrchestrator::start().await;
    let (worker, gauge, release, mut started) = blocking_worker(orchestrator.endpoint(), 1);
    let run = tokio::spawn(worker.run());

    let mut session = orchestrator.accept().await;
    session.handshake().await;
    assert_eq!(session.expect_credit().await, 1);
    session.send_task(task("a", "blocking", &json!({}))).await;
    guarded("the handler to start", started.recv()).await;
    session.send_task_beyond_credit(task("b", "blocking", &json!({}))).await;

    release.add_permits(1);
    let outcome = session.expect_outcome().await;
    assert_eq!(outcome.task_id, "a");
    session.ack(&outcome).await;
    // Had "b" been taken, it would hold the only slot and no credit would come.
    match session.recv().await {
        worker_message::Message::Credit(credit) => assert_eq!(credit.tasks, 1),
        other => panic!("expected Credit, got {other:?}"),
    }
    assert_eq!(gauge.peak.load(Ordering::SeqCst), 1);
    run.abort();
}
