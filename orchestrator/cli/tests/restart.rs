//! A clean restart keeps everything, and the derived records rebuilt from
//! the histories alone equal the ones written along the way.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BIN, ServerProcess, start_request};
use sagaflow_proto::v1::{ListWorkflowsRequest, SignalWorkflowRequest, TerminateWorkflowRequest, WorkflowSummary};

async fn all(server: &ServerProcess) -> Vec<WorkflowSummary> {
    let request = ListWorkflowsRequest { page_size: 1000, ..Default::default() };
    server.client().await.list_workflows(request).await.unwrap().into_inner().workflows
}

#[tokio::test]
async fn a_restart_keeps_everything_and_a_rebuild_reproduces_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut request = start_request(
            if i % 2 == 0 { "bench" } else { "job.release-expired-inventory" },
            &format!("r-{i}"),
            &format!(r#"{{"i":{i}}}"#),
        );
        request.labels.insert("tenant".into(), format!("t{}", i % 3));
        ids.push(client.start_workflow(request).await.unwrap().into_inner().workflow_id);
    }
    for id in ids.iter().take(5) {
        client
            .signal_workflow(SignalWorkflowRequest {
                workflow_id: id.clone(),
                name: "poke".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .terminate_workflow(TerminateWorkflowRequest {
            workflow_id: ids[7].clone(),
            reason: "test".into(),
            identity: "t".into(),
        })
        .await
        .unwrap();
    let before = all(&server).await;
    assert_eq!(before.len(), 20);
    server.stop().await;

    let server = ServerProcess::start(dir.path(), &[]).await;
    assert_eq!(all(&server).await, before, "a clean restart changes nothing");
    server.stop().await;

    let rebuilt = tokio::process::Command::new(BIN)
        .args(["admin", "rebuild-index", "--output", "json", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let report: serde_json::Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    assert_eq!(report["workflows"], 20);
    assert_eq!(report["open"], 19);

    let server = ServerProcess::start(dir.path(), &[]).await;
    assert_eq!(all(&server).await, before, "the rebuilt index equals the one written along the way");
    // The idempotency map was rebuilt too.
    let again =
        server.client().await.start_workflow(start_request("bench", "r-0", r#"{"i":0}"#)).await.unwrap().into_inner();
    assert!(again.already_started);
    assert_eq!(again.workflow_id, ids[0]);
}
