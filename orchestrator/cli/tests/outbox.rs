//! Domain events are written with the history that causes them and read
//! back in order, from any cursor, by a follower that resumes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, WorkerProcess, await_end, start_request, status_of, write_test_definitions};
use sagaflow_proto::v1::event_service_client::EventServiceClient;
use sagaflow_proto::v1::{DomainEvent, StreamEventsRequest};

async fn read(url: &str, after_seq: u64) -> Vec<DomainEvent> {
    let mut client = EventServiceClient::connect(url.to_owned()).await.unwrap();
    let mut stream = client.stream_events(StreamEventsRequest { after_seq, follow: false }).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_history_and_resume_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = write_test_definitions(dir.path());
    let server = ServerProcess::start(dir.path(), &["--definitions", definitions.to_str().unwrap()]).await;
    let _worker = WorkerProcess::start(&server.url, &[]).await;
    let mut client = server.client().await;

    let first = client.start_workflow(start_request("quick", "r-1", "{}")).await.unwrap().into_inner().workflow_id;
    assert_eq!(status_of(&await_end(&mut client, &first).await), "COMPLETED");
    let events = read(&server.url, 0).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["QuickStarted", "Reserved", "QuickCompleted"]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq && w[0].workflow_seq < w[1].workflow_seq));
    assert!(events.iter().all(|e| e.event_id == format!("{first}/{}", e.workflow_seq) && e.correlation_id == "r-1"));

    // A follower started at the cursor sees only what comes next.
    let cursor = events.last().unwrap().seq;
    let mut follower = EventServiceClient::connect(server.url.clone()).await.unwrap();
    let mut stream =
        follower.stream_events(StreamEventsRequest { after_seq: cursor, follow: true }).await.unwrap().into_inner();
    let second = client.start_workflow(start_request("quick", "r-2", "{}")).await.unwrap().into_inner().workflow_id;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.workflow_id, second);
        seen.push(event.event_type);
    }
    assert_eq!(seen, ["QuickStarted", "Reserved", "QuickCompleted"]);
    assert_eq!(read(&server.url, cursor).await.len(), 3);
}
