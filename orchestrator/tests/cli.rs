//! The operator CLI: help that explains, one-line errors with a non-zero
//! exit, JSON for programs, and `history --follow` that ends with the workflow.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BIN, ServerProcess, WorkerProcess, start_request};
use std::process::Output;

async fn sagaflow(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).args(args).output().await.unwrap()
}

#[tokio::test]
async fn help_explains_every_command() {
    let help = sagaflow(&["--help"]).await;
    let text = String::from_utf8(help.stdout).unwrap();
    for command in ["server", "worker", "workflow", "admin"] {
        assert!(text.contains(command), "{command} missing from --help");
    }
    let list = String::from_utf8(sagaflow(&["workflow", "list", "--help"]).await.stdout).unwrap();
    assert!(list.contains("--stuck") && list.contains("--status") && list.contains("--output"), "{list}");
}

#[tokio::test]
async fn errors_are_one_line_with_a_failing_exit() {
    let unreachable = sagaflow(&["workflow", "list", "--server", "http://127.0.0.1:1"]).await;
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8(unreachable.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot reach the server"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let missing = sagaflow(&["workflow", "describe", "nope", "--server", &server.url]).await;
    assert!(!missing.status.success());
    assert_eq!(String::from_utf8(missing.stderr).unwrap(), "error: NOT_FOUND: workflow nope not found\n");
    let bad_input =
        sagaflow(&["workflow", "start", "bench", "--request-id", "r", "--input", "{", "--server", &server.url]).await;
    assert!(!bad_input.status.success());
    assert!(String::from_utf8(bad_input.stderr).unwrap().starts_with("error: --input is not valid JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_the_timeline_until_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let id = client.start_workflow(start_request("bench", "r-follow", "{}")).await.unwrap().into_inner().workflow_id;
    let follow = tokio::spawn({
        let url = server.url.clone();
        let id = id.clone();
        async move { sagaflow(&["workflow", "history", &id, "--follow", "--server", &url]).await }
    });
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let followed = follow.await.unwrap();
    assert!(followed.status.success());
    let text = String::from_utf8(followed.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("#1") && lines[0].contains("WorkflowStarted"), "{text}");
    assert!(lines.last().unwrap().contains("WorkflowCompleted"), "{text}");

    let json = sagaflow(&["workflow", "describe", &id, "--output", "json", "--server", &server.url]).await;
    let described: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(described["status"], "COMPLETED");
    assert_eq!(described["history_length"], lines.len());
}

#[tokio::test]
async fn start_with_wait_prints_how_the_workflow_ended() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let start = |request_id: &'static str, wait: &'static str| {
        let url = server.url.clone();
        async move {
            sagaflow(&[
                "workflow",
                "start",
                "bench",
                "--request-id",
                request_id,
                "--wait",
                wait,
                "--output",
                "json",
                "--server",
                &url,
            ])
            .await
        }
    };
    // No worker: the wait runs out, the exit fails, and the workflow runs on.
    let waiting = start("r-wait-1", "300ms").await;
    assert!(!waiting.status.success());
    let stderr = String::from_utf8(waiting.stderr).unwrap();
    assert!(stderr.starts_with("error: ") && stderr.contains("is still RUNNING after 300ms"), "{stderr}");
    let running: serde_json::Value = serde_json::from_slice(&waiting.stdout).unwrap();
    assert_eq!((running["status"].as_str(), running["terminal"].as_bool()), (Some("RUNNING"), Some(false)));

    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let ended = start("r-wait-2", "30s").await;
    assert!(ended.status.success(), "{}", String::from_utf8_lossy(&ended.stderr));
    let ended: serde_json::Value = serde_json::from_slice(&ended.stdout).unwrap();
    assert_eq!((ended["status"].as_str(), ended["terminal"].as_bool()), (Some("COMPLETED"), Some(true)));
    assert_eq!(ended["already_started"].as_bool(), Some(false));
}
