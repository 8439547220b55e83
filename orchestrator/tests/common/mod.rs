//! Helpers for tests that run the real `sagaflow` binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{GetWorkflowHistoryRequest, HistoryEvent, StartWorkflowRequest};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

/// A `sagaflow server` process on loopback ports chosen by the OS.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    pub http: String,
    pub data_dir: PathBuf,
}

impl ServerProcess {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sagaflow server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The server prints its addresses once it listens.
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server did not start within 30 s")
            .unwrap()
            .expect("server exited before listening");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") && !w.ends_with("/metrics"))
            .unwrap()
            .to_owned();
        let http = line
            .split_whitespace()
            .find(|w| w.ends_with("/metrics"))
            .unwrap()
            .trim_end_matches("/metrics")
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            http,
            data_dir: data_dir.to_owned(),
        }
    }

    pub async fn client(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed on the way out.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub fn host_port(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }
}

pub fn start_request(kind: &str, request_id: &str, input: &str) -> StartWorkflowRequest {
    StartWorkflowRequest {
        workflow_type: kind.into(),
        request_id: request_id.into(),
        input: input.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub async fn full_history(
    client: &mut WorkflowServiceClient<Channel>,
    workflow_id: &str,
) -> Vec<HistoryEvent> {
    let mut events = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.into(),
                from_seq,
                page_size: 500,
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let done = page.events.len() < 500;
        events.extend(page.events);
        from_seq = page.next_seq;
        if done {
            return events;
        }
    }
}

/// Sequence numbers run 1, 2, 3… and the first event starts the workflow.
pub fn assert_intact(workflow_id: &str, events: &[HistoryEvent]) {
    assert!(!events.is_empty(), "{workflow_id} has no history");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            i as u64 + 1,
            "{workflow_id}: gap or duplicate at position {i}"
        );
    }
    assert!(
        matches!(
            events[0].attributes,
            Some(sagaflow_proto::v1::history_event::Attributes::WorkflowStarted(_))
        ),
        "{workflow_id} does not begin with WorkflowStarted"
    );
}
