//! A trip-booking saga written from scratch on Sagaflow's public API: three
//! steps, a compensation, its own worker, and an embedded orchestrator.
//!
//! Run it with `cargo run -p sagaflow-examples --example custom_saga`.

use std::time::Duration;

use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, StartWorkflowRequest};
use sagaflow_server::workflows::{RetryPolicy, SagaDefinition, Step};
use sagaflow_server::{Options, Registry, Server, Storage};
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};

fn trip_saga() -> anyhow::Result<SagaDefinition> {
    Ok(SagaDefinition::builder("book-trip", 1)
        // Holding a room can be undone.
        .step(
            Step::activity("hotel", "hotel.hold")
                .compensate_with("hotel.release")
                .idempotency_key_from("/input/trip_id"),
        )
        // Charging the card is the point of no return; a decline is final.
        .step(
            Step::activity("charge", "card.charge")
                .pivot()
                .input_from("amount_cents", "/input/amount_cents")
                .retry(RetryPolicy { non_retryable_error_types: vec!["Declined".into()], ..RetryPolicy::default() }),
        )
        // After the charge we only move forward: retried until it succeeds.
        .step(Step::activity("itinerary", "mail.itinerary").retriable().input_from("hotel", "/steps/hotel"))
        .build()?)
}

fn trip_worker(server: &str) -> Result<Worker, sagaflow_worker::Error> {
    Worker::builder(server)
        .worker_id("trip-worker")
        .activity("hotel.hold", |ctx: ActivityContext, _input: Value| async move {
            // The key is the same on every attempt: a real hotel API dedupes on it.
            Ok::<_, ActivityError>(json!({ "hold_id": format!("hold-{}", ctx.idempotency_key()) }))
        })
        .activity("hotel.release", |ctx: ActivityContext, _input: Value| async move {
            println!("  compensating: releasing the room of {}", ctx.workflow_id());
            Ok::<_, ActivityError>(json!({ "released": true }))
        })
        .activity("card.charge", |_ctx: ActivityContext, input: Value| async move {
            match input["amount_cents"].as_i64() {
                Some(amount) if amount <= 50_000 => Ok(json!({ "charged_cents": amount })),
                _ => Err(ActivityError::non_retryable("Declined", "the card limit is 500.00")),
            }
        })
        .activity("mail.itinerary", |_ctx: ActivityContext, input: Value| async move {
            Ok::<_, ActivityError>(json!({ "sent": true, "hotel": input["hotel"] }))
        })
        .build()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut registry = Registry::new();
    registry.register(trip_saga()?)?;
    let options =
        Options { storage: Storage::Memory, listen: "127.0.0.1:0".parse()?, http_listen: None, ..Options::default() };
    let server = Server::start(options, registry).await?;
    let worker = trip_worker(&server.url())?;
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());

    let mut client = WorkflowServiceClient::connect(server.url()).await?;
    for (trip, amount) in [("trip-1", 42_000), ("trip-2", 90_000)] {
        let input = json!({ "trip_id": trip, "amount_cents": amount });
        let started = client
            .start_workflow(StartWorkflowRequest {
                workflow_type: "book-trip".into(),
                request_id: trip.into(),
                input: serde_json::to_vec(&input)?,
                ..Default::default()
            })
            .await?
            .into_inner();
        println!("{trip}: started {}", started.workflow_id);
        let timeout_ms = u32::try_from(Duration::from_secs(10).as_millis())?;
        let done = client
            .await_workflow(AwaitWorkflowRequest { workflow_id: started.workflow_id, timeout_ms })
            .await?
            .into_inner();
        let status = done.summary.map(|s| s.status).unwrap_or_default();
        let status = sagaflow_proto::status_name(sagaflow_proto::v1::WorkflowStatus::try_from(status)?);
        println!("{trip}: {status} {}{}", done.result, done.reason);
    }

    worker_handle.shutdown();
    worker_task.await??;
    server.stop().await;
    Ok(())
}
