//! The worker and the client of the trip-booking saga (examples/trip-booking/trip.yaml), a saga
//! defined as data: a parallel group of holds, a conditional car, a child saga (the insurance), a
//! signal wait with a deadline, a pivot, and a parallel pair of retriable steps after it.
//!
//! Against a server that has the definition applied:
//!
//! ```text
//! sagaflow server --data-dir /tmp/trips &
//! sagaflow definition apply examples/trip-booking/trip.yaml
//! cargo run -p sagaflow-examples --example trip_booking -- --server http://127.0.0.1:50051
//! ```
//!
//! (`examples/trip-booking/run.sh` does all three on free ports.) It serves every activity of the
//! saga, books three trips, prints how each ended and which steps ran, and exits non-zero if any
//! ended otherwise than expected.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use sagaflow_proto::EventName;
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, GetWorkflowHistoryRequest, HistoryEvent, SignalWorkflowRequest, StartWorkflowRequest,
    WorkflowStatus,
};
use sagaflow_worker::{ActivityContext, ActivityError, Worker};
use serde_json::{Value, json};
use tonic::transport::Channel;

const WORKFLOW_TYPE: &str = "trip-booking";

/// A trip, whether its traveller confirms the price, and how its saga must end.
struct Trip {
    input: Value,
    confirms: bool,
    expected: WorkflowStatus,
}

fn trips(run: &str) -> Vec<Trip> {
    vec![
        // Room, seat and car at once; confirmed; charged; tickets and points at once.
        Trip {
            input: json!({"trip_id": format!("{run}-ada"), "traveller": "ada", "car": true, "loyalty_id": "L-1", "card": "ok"}),
            confirms: true,
            expected: WorkflowStatus::Completed,
        },
        // No car (skipped); the card is declined: the seat and the room are released.
        Trip {
            input: json!({"trip_id": format!("{run}-grace"), "traveller": "grace", "card": "declined"}),
            confirms: true,
            expected: WorkflowStatus::Compensated,
        },
        // Never confirms: the deadline passes and every hold is released.
        Trip {
            input: json!({"trip_id": format!("{run}-edsger"), "traveller": "edsger", "car": true, "card": "ok"}),
            confirms: false,
            expected: WorkflowStatus::Compensated,
        },
    ]
}

/// Every activity of trip.yaml. A real service would dedupe on `ctx.idempotency_key()`; the
/// holds here derive their ids from it, so a retried attempt holds the same thing.
fn trip_worker(server: &str) -> Result<Worker, sagaflow_worker::Error> {
    let hold = |kind: &'static str| {
        move |ctx: ActivityContext, _saga: Value| async move {
            Ok::<_, ActivityError>(json!({ kind: format!("{kind}-{}", ctx.idempotency_key()) }))
        }
    };
    let release = |kind: &'static str| {
        move |_ctx: ActivityContext, saga: Value| async move {
            // A compensation sees the saga's context, with the result of the step it undoes.
            Ok::<_, ActivityError>(json!({ "released": saga["steps"][kind][kind] }))
        }
    };
    Worker::builder(server)
        .worker_id("trip-booking-worker")
        .activity("trip.hold_room", hold("room"))
        .activity("trip.release_room", release("room"))
        .activity("trip.hold_seat", hold("seat"))
        .activity("trip.release_seat", release("seat"))
        .activity("trip.hold_car", hold("car"))
        .activity("trip.release_car", release("car"))
        .activity("insurance.quote", |_ctx: ActivityContext, _saga: Value| async move {
            Ok::<_, ActivityError>(json!({ "premium_cents": 2_900 }))
        })
        .activity("insurance.bind", |ctx: ActivityContext, _saga: Value| async move {
            Ok::<_, ActivityError>(json!({ "policy": format!("policy-{}", ctx.idempotency_key()) }))
        })
        .activity("insurance.cancel", |_ctx: ActivityContext, saga: Value| async move {
            Ok::<_, ActivityError>(json!({ "cancelled": saga["steps"]["bind"]["policy"] }))
        })
        .activity("trip.charge", |_ctx: ActivityContext, saga: Value| async move {
            if saga["input"]["card"] == "declined" {
                // Not retryable: every attempt would be declined.
                return Err(ActivityError::non_retryable("CardDeclined", "the card was declined"));
            }
            Ok(json!({ "charged": saga["input"]["trip_id"] }))
        })
        .activity("trip.send_tickets", |_ctx: ActivityContext, saga: Value| async move {
            Ok::<_, ActivityError>(json!({ "sent_to": saga["input"]["traveller"] }))
        })
        .activity("trip.credit_points", |_ctx: ActivityContext, saga: Value| async move {
            Ok::<_, ActivityError>(json!({ "credited": saga["input"]["loyalty_id"] }))
        })
        .build()
}

async fn history(client: &mut WorkflowServiceClient<Channel>, workflow_id: &str) -> anyhow::Result<Vec<HistoryEvent>> {
    let mut events = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.into(),
                from_seq,
                ..Default::default()
            })
            .await?
            .into_inner();
        let done = page.events.is_empty() || page.terminal;
        events.extend(page.events);
        if done {
            return Ok(events);
        }
        from_seq = page.next_seq;
    }
}

/// Waits until the workflow ends: its status and why.
async fn await_end(
    client: &mut WorkflowServiceClient<Channel>,
    workflow_id: &str,
) -> anyhow::Result<(WorkflowStatus, String)> {
    let timeout_ms = u32::try_from(Duration::from_secs(30).as_millis())?;
    let done =
        client.await_workflow(AwaitWorkflowRequest { workflow_id: workflow_id.into(), timeout_ms }).await?.into_inner();
    Ok((WorkflowStatus::try_from(done.summary.map(|s| s.status).unwrap_or_default())?, done.reason))
}

/// "room seat car | charge | tickets points | undo: seat room": what ran, in order.
fn steps_run(events: &[HistoryEvent]) -> String {
    let mut forward = Vec::new();
    let mut undone = Vec::new();
    let mut skipped = Vec::new();
    for event in events {
        match &event.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.attempt == 1 && s.compensation => undone.push(s.step.clone()),
            Some(Attributes::ActivityScheduled(s)) if s.attempt == 1 => forward.push(s.step.clone()),
            Some(Attributes::StepSkipped(s)) => skipped.push(s.step.clone()),
            _ => {}
        }
    }
    let mut text = format!("ran: {}", forward.join(" "));
    if !skipped.is_empty() {
        text += &format!("; skipped: {}", skipped.join(" "));
    }
    if !undone.is_empty() {
        text += &format!("; undone: {}", undone.join(" "));
    }
    text
}

/// The holds were scheduled together: all of them before the first one completed.
fn holds_ran_at_once(events: &[HistoryEvent], holds: usize) -> bool {
    let first_completion =
        events.iter().position(|e| e.attributes.as_ref().is_some_and(|a| a.event_name() == "ActivityCompleted"));
    let scheduled_before = events[..first_completion.unwrap_or(events.len())]
        .iter()
        .filter(|e| e.attributes.as_ref().is_some_and(|a| a.event_name() == "ActivityScheduled"))
        .count();
    scheduled_before == holds
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = match (args.next().as_deref(), args.next()) {
        (None, _) => "http://127.0.0.1:50051".to_owned(),
        (Some("--server"), Some(url)) => url,
        _ => bail!("usage: trip_booking [--server URL]   (default http://127.0.0.1:50051)"),
    };
    let worker = trip_worker(&server)?;
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());
    let mut client = WorkflowServiceClient::connect(server.clone())
        .await
        .with_context(|| format!("no Sagaflow server at {server}"))?;

    // Request ids make a start idempotent; a fresh run id lets the example run twice on one server.
    let run = format!("trip-{}", std::process::id());
    let mut started = Vec::new();
    for trip in trips(&run) {
        let workflow_id = client
            .start_workflow(StartWorkflowRequest {
                workflow_type: WORKFLOW_TYPE.into(),
                request_id: trip.input["trip_id"].as_str().unwrap_or_default().into(),
                input: serde_json::to_vec(&trip.input)?,
                ..Default::default()
            })
            .await
            .context("starting a trip (was examples/trip-booking/trip.yaml applied?)")?
            .into_inner()
            .workflow_id;
        if trip.confirms {
            client
                .signal_workflow(SignalWorkflowRequest {
                    workflow_id: workflow_id.clone(),
                    name: "confirm".into(),
                    input: br#"{"price_ok": true}"#.to_vec(),
                    identity: trip.input["traveller"].as_str().unwrap_or_default().into(),
                })
                .await?;
        }
        started.push((workflow_id, trip));
    }

    let mut unexpected = Vec::new();
    for (workflow_id, trip) in started {
        let (status, reason) = await_end(&mut client, &workflow_id).await?;
        let events = history(&mut client, &workflow_id).await?;
        let traveller = trip.input["traveller"].as_str().unwrap_or_default().to_owned();
        println!("{traveller:>7}: {:<11} {reason}", sagaflow_proto::status_name(status));
        println!("         {}", steps_run(&events));
        if status != trip.expected {
            unexpected.push(format!("{traveller} ended {status:?}, expected {:?}", trip.expected));
        }
        // The insurance saga ends as its trip does: completed, or undone with it.
        let (insurance, _) = await_end(&mut client, &format!("{workflow_id}.insurance")).await?;
        println!("         insurance (a child saga): {}", sagaflow_proto::status_name(insurance));
        if insurance != trip.expected {
            unexpected.push(format!("{traveller}'s insurance ended {insurance:?}, expected {:?}", trip.expected));
        }
        let holds = if trip.input["car"] == true { 3 } else { 2 };
        if !holds_ran_at_once(&events, holds) {
            unexpected.push(format!("{traveller}: the {holds} holds did not start together"));
        }
    }

    worker_handle.shutdown();
    worker_task.await??;
    ensure!(unexpected.is_empty(), "unexpected outcomes: {}", unexpected.join("; "));
    println!("every trip ended as expected");
    Ok(())
}
