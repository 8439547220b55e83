//! `Server::builder()`: an embedding application hands the server its own
//! store, and a start through the API lands in that store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sagaflow_proto::v1::StartWorkflowRequest;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_server::store::{MemoryStore, Store};
use sagaflow_server::{Options, Registry, Server, Storage};

#[tokio::test]
async fn a_supplied_store_is_the_one_the_server_writes() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::in_memory());
    let mut registry = Registry::new();
    registry.register(sagaflow_workflows::shop::bench()).unwrap();
    let options = Options {
        storage: Storage::Memory,
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        ..Options::default()
    };
    let server =
        Server::builder().options(options).store(Arc::clone(&store)).definitions(registry).start().await.unwrap();
    let mut client = WorkflowServiceClient::connect(server.url()).await.unwrap();
    let started = client
        .start_workflow(StartWorkflowRequest {
            workflow_type: "bench".into(),
            request_id: "builder-1".into(),
            input: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let summary = store.summary(&started.workflow_id).await.unwrap().expect("the start is in the supplied store");
    assert_eq!(summary.workflow_type, "bench");
    assert_eq!(store.workflow_for_request("builder-1").await.unwrap().as_deref(), Some(started.workflow_id.as_str()));
    server.stop().await;
}
