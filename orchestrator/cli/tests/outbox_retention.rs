//! Without a broker the outbox is bounded (`--outbox-retention`, ADR 0026):
//! a real server prunes events past it, a reader whose cursor is below what
//! was pruned is told so (OUT_OF_RANGE, naming the floor) instead of
//! skipping them in silence, and a reader that restarts from the floor reads
//! what came after.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, ServerProcess, WorkerProcess, await_end, metric_where, scrape, start_request, status_of};
use sagaflow_proto::v1::StreamEventsRequest;
use sagaflow_proto::v1::event_service_client::EventServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

async fn tail(server: &ServerProcess, after: u64) -> std::process::Output {
    let after = after.to_string();
    tokio::process::Command::new(BIN)
        .args(["--server", &server.url, "--output", "json", "events", "tail", "--after", &after])
        .output()
        .await
        .unwrap()
}

fn seqs(output: &std::process::Output) -> Vec<u64> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_events_are_out_of_range_and_a_reader_restarts_from_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = common::write_test_definitions(dir.path());
    let args = [
        "--definitions",
        definitions.to_str().unwrap(),
        "--outbox-retention",
        "2s",
        "--retention-check-interval",
        "100ms",
    ];
    let server = ServerProcess::start(dir.path(), &args).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    let first = client.start_workflow(start_request("quick", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &first).await), "COMPLETED");
    let before = seqs(&tail(&server, 0).await);
    assert_eq!(before.len(), 3, "QuickStarted, Reserved, QuickCompleted: {before:?}");
    let floor = *before.last().unwrap();

    // The pass prunes them once they are 2 s old.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric_where(&scrape(&server.http).await, "sagaflow_outbox_pruned_total", &[]) != Some(3.0) {
        assert!(tokio::time::Instant::now() < deadline, "the outbox was not pruned within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A cursor below the floor: refused, with the floor to restart from.
    let refused = tail(&server, 0).await;
    assert_eq!(refused.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&refused.stderr).unwrap();
    assert_eq!(error["error"]["code"], "OUT_OF_RANGE");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("sagaflow events tail --after {floor}")), "{message}");
    let mut events = EventServiceClient::connect(server.url.clone()).await.unwrap();
    let status = events.stream_events(StreamEventsRequest { after_seq: floor - 1, follow: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(status.metadata().get("sagaflow-outbox-floor").unwrap().to_str().unwrap(), floor.to_string());
    assert!(status.message().contains(&format!("after_seq {floor}")), "{}", status.message());

    // From the floor on: nothing was missed, and what comes next is read.
    assert!(seqs(&tail(&server, floor).await).is_empty());
    let mut follower = tokio::process::Command::new(BIN)
        .args(["--server", &server.url, "--output", "json", "events", "tail", "--follow", "--after"])
        .arg(floor.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let second = client.start_workflow(start_request("quick", "r-2", "{}")).await.unwrap().into_inner().workflow_id;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["workflow_id"], second.as_str());
        assert!(event["seq"].as_u64().unwrap() > floor);
        seen.push(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["QuickStarted", "Reserved", "QuickCompleted"]);
    follower.kill().await.unwrap();
    drop(worker);
}
