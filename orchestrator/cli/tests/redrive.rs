//! An operator redrives an ended workflow once its cause is fixed (ADR 0025),
//! through the CLI, against a real server and real workers:
//! - a COMPENSATED checkout-like saga runs again from its first step, as
//!   `ID.redrive-1`, with fresh idempotency keys, and completes; the redrive
//!   is durable across a `kill -9` and answers the same run when repeated;
//! - a FAILED saga runs again from the failed step, carrying over the steps
//!   that stand (a completed activity and a received signal);
//! - any other status is refused with exit 1 and FAILED_PRECONDITION.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{
    BIN, ServerProcess, WorkerProcess, apply_definitions, await_end, event_names, full_history, start_request,
    status_of,
};
use sagaflow_proto::v1::SignalWorkflowRequest;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::Value;

async fn sagaflow(server: &ServerProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).arg("--server").arg(&server.url).args(args).output().await.unwrap()
}

async fn redrive(server: &ServerProcess, id: &str) -> Value {
    let output = sagaflow(server, &["workflow", "redrive", id, "--output", "json"]).await;
    assert!(output.status.success(), "redrive {id}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `(step, idempotency_key)` of every forward attempt in a history.
fn forward_keys(events: &[sagaflow_proto::v1::HistoryEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if !s.compensation => {
                Some((s.step.clone(), s.idempotency_key.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_workflow_is_redriven_as_a_new_run_with_fresh_keys_and_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let broken = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal"]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-redrive", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &id).await), "COMPENSATED");
    let old_keys = forward_keys(&full_history(&mut client, &id).await);

    // The cause is fixed: a worker without the fault replaces the broken one.
    broken.kill9().await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let redriven = redrive(&server, &id).await;
    let new_id = format!("{id}.redrive-1");
    assert_eq!(redriven["workflow_id"], new_id.as_str(), "{redriven}");
    assert_eq!(redriven["from_step"], "reserve", "every step was undone: {redriven}");
    assert_eq!(redriven["carried_steps"], serde_json::json!([]));
    assert_eq!(redriven["already_redriven"], false);

    // Acknowledged means durable: the new run survives a kill -9 at once.
    let url = server.url.clone();
    server.kill9().await;
    let server = ServerProcess::start_on(dir.path(), &url, &[]).await;
    let mut client = server.client().await;
    assert_eq!(status_of(&await_end(&mut client, &new_id).await), "COMPLETED");
    let again = redrive(&server, &id).await;
    assert_eq!(
        (again["workflow_id"].as_str(), again["already_redriven"].as_bool()),
        (Some(new_id.as_str()), Some(true))
    );

    let new_history = full_history(&mut client, &new_id).await;
    let Some(Attributes::WorkflowStarted(started)) = &new_history[0].attributes else { unreachable!() };
    assert_eq!((started.redrive_of.as_str(), started.redrive), (id.as_str(), 1));
    assert_eq!(started.labels.get("sagaflow.redrive_of"), Some(&id));
    let new_keys = forward_keys(&new_history);
    assert!(new_keys.iter().any(|(step, _)| step == "capture"), "{new_keys:?}");
    for (step, key) in &new_keys {
        assert!(key.ends_with("/redrive-1"), "{step}: {key}");
        assert!(!old_keys.iter().any(|(_, old)| old == key), "{step} reuses the old run's key {key}");
    }
    // The old run is left as it ended.
    let old_history = full_history(&mut client, &id).await;
    assert_eq!(event_names(&old_history).last(), Some(&"WorkflowCompensated"));

    // The operator finds the redrive by its label; a COMPLETED run is not redriven.
    let label = format!("sagaflow.redrive_of={id}");
    let listed = sagaflow(&server, &["workflow", "list", "--label", &label, "--output", "json"]).await;
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&new_id), "{}", String::from_utf8_lossy(&listed.stdout));
    let refused = sagaflow(&server, &["workflow", "redrive", &new_id]).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("FAILED_PRECONDITION") && stderr.contains("COMPLETED"), "{stderr}");
    let missing = sagaflow(&server, &["workflow", "redrive", "no-such-workflow"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

const APPROVED_CAPTURE: &str = r#"
name: approved-capture
version: 1
steps:
  - name: quote
    action: {type: activity, activity_type: bench.order}
    timeouts: {start_to_close_ms: 2000}
  - name: approve
    action: {type: await_signal, signal: approve, timeout_ms: 0}
  - name: capture
    kind: pivot
    action: {type: activity, activity_type: bench.capture}
    idempotency_key: {pointer: /input/payment}
    input:
      fields:
        approved_by: {pointer: /signals/approve/by}
    retry: {maximum_attempts: 2, initial_interval_ms: 50}
    timeouts: {start_to_close_ms: 2000}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workflow_is_redriven_from_the_failed_step_with_what_stands_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    apply_definitions(&server, dir.path(), APPROVED_CAPTURE).await;
    let broken = WorkerProcess::start(&server.url, &["--fault", "bench.capture=fatal"]).await;
    let mut client = server.client().await;
    let request = start_request("approved-capture", "r-failed", r#"{"payment": "pay-7"}"#);
    let id = client.start_workflow(request).await.unwrap().into_inner().workflow_id;
    client
        .signal_workflow(SignalWorkflowRequest {
            workflow_id: id.clone(),
            name: "approve".into(),
            input: br#"{"by": "ada"}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ended = await_end(&mut client, &id).await;
    assert_eq!(status_of(&ended), "FAILED", "nothing before the pivot can be undone: {:?}", ended.summary);

    broken.kill9().await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let text = sagaflow(&server, &["workflow", "redrive", &id]).await;
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("runs again from step capture") && text.contains("carried over: quote approve"), "{text}");

    // No second approval is needed: the signal was carried over.
    let new_id = format!("{id}.redrive-1");
    assert_eq!(status_of(&await_end(&mut client, &new_id).await), "COMPLETED");
    let history = full_history(&mut client, &new_id).await;
    let scheduled: Vec<(String, String, String)> = history
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) => {
                Some((s.step.clone(), s.idempotency_key.clone(), s.input.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(scheduled.len(), 1, "only the failed step runs again: {scheduled:?}");
    let (step, key, input) = &scheduled[0];
    assert_eq!((step.as_str(), key.as_str()), ("capture", "pay-7/redrive-1"));
    assert_eq!(serde_json::from_str::<Value>(input).unwrap()["approved_by"], "ada");
    let rendered = sagaflow(&server, &["workflow", "history", &new_id]).await;
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.contains(&format!("redrive 1 of {id}, carried over: quote approve")), "{rendered}");
}
