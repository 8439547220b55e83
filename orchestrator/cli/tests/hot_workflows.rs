//! `--max-hot-workflows` bounds the workflow states kept in memory: past it,
//! idle states are dropped and rebuilt from their histories. Against a real
//! server with a bound of 4 and 100 open workflows, concurrent signals (six
//! per workflow, racing) all land exactly once and every workflow ends.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, apply_definitions, await_end, full_history, start_request, status_of};
use sagaflow_proto::v1::SignalWorkflowRequest;
use sagaflow_proto::v1::history_event::Attributes;

const SIX_SIGNALS: &str = r#"
name: six-signals
version: 1
steps:
  - {name: a, action: {type: await_signal, signal: a, timeout_ms: 0}}
  - {name: b, action: {type: await_signal, signal: b, timeout_ms: 0}}
  - {name: c, action: {type: await_signal, signal: c, timeout_ms: 0}}
  - {name: d, action: {type: await_signal, signal: d, timeout_ms: 0}}
  - {name: e, action: {type: await_signal, signal: e, timeout_ms: 0}}
  - {name: f, action: {type: await_signal, signal: f, timeout_ms: 0}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_beyond_the_bound_are_rebuilt_from_their_histories() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--max-hot-workflows", "4"]).await;
    apply_definitions(&server, dir.path(), SIX_SIGNALS).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let request = start_request("six-signals", &format!("hot-{i}"), "{}");
        ids.push(client.start_workflow(request).await.unwrap().into_inner().workflow_id);
    }
    // Within the server's admission limit for calls in flight.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut sends = tokio::task::JoinSet::new();
    for id in &ids {
        for name in ["a", "b", "c", "d", "e", "f"] {
            let mut client = client.clone();
            let request = SignalWorkflowRequest { workflow_id: id.clone(), name: name.into(), ..Default::default() };
            let in_flight = std::sync::Arc::clone(&in_flight);
            sends.spawn(async move {
                let _permit = in_flight.acquire_owned().await.unwrap();
                client.signal_workflow(request).await.map(drop)
            });
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().unwrap();
    }
    for id in &ids {
        assert_eq!(status_of(&await_end(&mut client, id).await), "COMPLETED", "{id}");
        let signals = full_history(&mut client, id)
            .await
            .iter()
            .filter(|e| matches!(e.attributes, Some(Attributes::SignalReceived(_))))
            .count();
        assert_eq!(signals, 6, "{id}: each signal recorded once");
    }
}
