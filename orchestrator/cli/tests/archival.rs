//! Archival against a real server and a real disk (`--archive-dir`, ADR
//! 0025): closed workflows deleted by retention, or by `workflow delete`,
//! are archived first, and `workflow history ID --archived` prints them as
//! the live history printed them; a torn last gzip member costs only its own
//! record; a server without an archive refuses the read with
//! FAILED_PRECONDITION.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    BIN, ServerProcess, WorkerProcess, apply_definitions, await_end, full_history, scrape, start_request, status_of,
    write_test_definitions,
};
use sagaflow_proto::v1::{DescribeWorkflowRequest, GetWorkflowHistoryRequest};
use tonic::Code;

const KEPT: &str = "name: kept
version: 1
retention_ms: 3600000
steps:
  - name: hold
    action: {type: activity, activity_type: bench.reserve}
";

async fn sagaflow(server: &ServerProcess, args: &[&str]) -> Output {
    let mut all = vec!["--server", server.url.as_str()];
    all.extend(args);
    tokio::process::Command::new(BIN).args(all).output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn error_code(output: &Output) -> String {
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    error["error"]["code"].as_str().unwrap().to_owned()
}

/// The history as `workflow history` prints it: (JSON lines, text timeline).
async fn printed(server: &ServerProcess, workflow_id: &str, archived: bool) -> (String, String) {
    let mut args = vec!["workflow", "history", workflow_id, "--full"];
    if archived {
        args.push("--archived");
    }
    let text = stdout(&sagaflow(server, &args).await);
    let mut json_args = vec!["--output", "json"];
    json_args.extend(args);
    let json = stdout(&sagaflow(server, &json_args).await);
    (json, text)
}

async fn gone(server: &ServerProcess, workflow_id: &str) -> bool {
    let mut client = server.client().await;
    let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: workflow_id.into() }).await;
    described.is_err_and(|e| e.code() == Code::NotFound)
}

/// Polls `condition` every 50 ms for up to 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn newest_day_file(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .collect();
    files.sort();
    files.pop().expect("no day file in the archive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_workflows_are_archived_first_and_read_back_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = dir.path().join("archive");
    let definitions = write_test_definitions(dir.path());
    // Long enough to read each history before it goes, short enough for a test.
    let args = [
        "--definitions",
        definitions.to_str().unwrap(),
        "--archive-dir",
        archive.to_str().unwrap(),
        "--retention",
        "4s",
        "--retention-check-interval",
        "100ms",
    ];
    let server = ServerProcess::start_logged(&data, &args, "warn").await;
    apply_definitions(&server, dir.path(), KEPT).await;
    let worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    // Two workflows that retention deletes, one that only an operator does.
    let mut expiring = Vec::new();
    for request_id in ["r-1", "r-2"] {
        let id =
            client.start_workflow(start_request("quick", request_id, "{}")).await.unwrap().into_inner().workflow_id;
        expiring.push(id);
    }
    let kept = client.start_workflow(start_request("kept", "r-kept", "{}")).await.unwrap().into_inner().workflow_id;
    let mut before = Vec::new();
    for id in expiring.iter().chain([&kept]) {
        assert_eq!(status_of(&await_end(&mut client, id).await), "COMPLETED");
        before.push((full_history(&mut client, id).await, printed(&server, id, false).await));
    }

    for id in &expiring {
        eventually(&format!("the deletion of {id} by retention"), || gone(&server, id)).await;
    }
    assert!(!gone(&server, &kept).await, "{kept} has a retention of an hour");
    let deleted = sagaflow(&server, &["workflow", "delete", &kept]).await;
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert!(gone(&server, &kept).await);

    // Each reads back from the archive as it read live: the same events,
    // printed the same way, in JSON and as a timeline.
    for (id, (events, (json, text))) in expiring.iter().chain([&kept]).zip(&before) {
        let archived = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: id.clone(),
                archived: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(archived.terminal);
        assert_eq!(&archived.events, events, "{id}");
        // Paged like a live history.
        let second = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: id.clone(),
                from_seq: 2,
                page_size: 2,
                archived: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.events, events[1..3]);
        assert_eq!((second.next_seq, second.terminal), (4, events.len() == 3));
        let (archived_json, archived_text) = printed(&server, id, true).await;
        assert_eq!(&archived_json, json, "{id}");
        assert_eq!(&archived_text, text, "{id}");
    }
    let metrics = scrape(&server.http).await;
    let archived_total: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("sagaflow_workflows_archived_total")).collect();
    assert!(
        archived_total.contains(&"sagaflow_workflows_archived_total{workflow_type=\"quick\"} 2"),
        "{archived_total:?}"
    );
    assert!(
        archived_total.contains(&"sagaflow_workflows_archived_total{workflow_type=\"kept\"} 1"),
        "{archived_total:?}"
    );

    // An id never archived, and a read without --archived of a deleted one.
    let unknown = sagaflow(&server, &["--output", "json", "workflow", "history", "no-such", "--archived"]).await;
    assert_eq!((unknown.status.code(), error_code(&unknown).as_str()), (Some(1), "NOT_FOUND"));
    let live = sagaflow(&server, &["--output", "json", "workflow", "history", &kept]).await;
    assert_eq!(error_code(&live), "NOT_FOUND");

    // A crash in the middle of an append leaves a torn last member: cut the
    // newest file by a few bytes. The last archived record (`kept`) is lost,
    // the earlier ones of the file still read, and the server warns.
    let newest = newest_day_file(&archive);
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(len - 5).unwrap();
    for (id, (_, (json, _))) in expiring.iter().zip(&before) {
        let (archived_json, _) = printed(&server, id, true).await;
        assert_eq!(&archived_json, json, "{id} after the tear");
    }
    let torn = sagaflow(&server, &["--output", "json", "workflow", "history", &kept, "--archived"]).await;
    assert_eq!(error_code(&torn), "NOT_FOUND");
    server.logs.await_line("about the torn member", Duration::from_secs(10), |l| l.contains("cut short")).await;

    // A server without an archive refuses the read, with its own code.
    let plain = ServerProcess::start(&dir.path().join("plain"), &[]).await;
    let refused = sagaflow(&plain, &["--output", "json", "workflow", "history", &kept, "--archived"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(error_code(&refused), "FAILED_PRECONDITION");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("--archive-dir"), "{message}");
    // `--follow` makes no sense for a closed, archived workflow.
    let usage = sagaflow(&plain, &["workflow", "history", &kept, "--archived", "--follow"]).await;
    assert_eq!(usage.status.code(), Some(2));
    drop(worker);
}
