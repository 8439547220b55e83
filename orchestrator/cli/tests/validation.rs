//! Bad input gets a clear status and never takes the server down.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, start_request};
use sagaflow_proto::EventName;
use sagaflow_proto::v1::{
    CancelWorkflowRequest, DescribeWorkflowRequest, GetWorkflowHistoryRequest, ListWorkflowsRequest,
    SignalWorkflowRequest,
};
use tokio::io::AsyncWriteExt;
use tonic::Code;

async fn server(extra: &[&str]) -> (ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (ServerProcess::start(dir.path(), extra).await, dir)
}

#[tokio::test]
async fn an_unknown_type_names_the_known_ones() {
    let (server, _dir) = server(&[]).await;
    let status = server.client().await.start_workflow(start_request("shipping", "r", "{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("unknown workflow type \"shipping\""), "{}", status.message());
    assert!(status.message().contains("checkout") && status.message().contains("refund"), "{}", status.message());
}

#[tokio::test]
async fn ids_are_validated() {
    let (server, _dir) = server(&[]).await;
    let mut client = server.client().await;
    let cases = [
        ("", "request_id is required"),
        (&*"x".repeat(256), "request_id is 256 bytes; the limit is 255"),
        ("a\u{7}b", "control character"),
        (" padded", "whitespace"),
    ];
    for (request_id, expected) in cases {
        let status = client.start_workflow(start_request("bench", request_id, "{}")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request_id:?}");
        assert!(status.message().contains(expected), "{request_id:?}: {}", status.message());
    }
    // 255 bytes of multi-byte UTF-8 (85 × 3) is fine.
    client.start_workflow(start_request("bench", &"€".repeat(85), "{}")).await.unwrap();
    let mut long_id = start_request("bench", "r-long", "{}");
    long_id.workflow_id = "w".repeat(300);
    assert_eq!(client.start_workflow(long_id).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad_label = start_request("bench", "r-label", "{}");
    bad_label.labels.insert(String::new(), "v".into());
    assert_eq!(client.start_workflow(bad_label).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn payloads_must_be_json_within_the_limit() {
    let (server, _dir) = server(&[]).await;
    let mut client = server.client().await;
    let status = client.start_workflow(start_request("bench", "r-1", "{not json")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("not valid JSON"), "{}", status.message());
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(300 * 1024));
    let status = client.start_workflow(start_request("bench", "r-2", &big)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("the limit is 262144"), "{}", status.message());
    // A message past the transport's frame limit is refused before it is read whole.
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    assert!(client.start_workflow(start_request("bench", "r-3", &huge)).await.is_err());
    // And the server still serves.
    client.start_workflow(start_request("bench", "r-4", "{}")).await.unwrap();
}

#[tokio::test]
async fn unknown_workflows_are_not_found() {
    let (server, _dir) = server(&[]).await;
    let mut client = server.client().await;
    let describe = client.describe_workflow(DescribeWorkflowRequest { workflow_id: "nope".into() }).await.unwrap_err();
    assert_eq!(describe.code(), Code::NotFound);
    let history = client
        .get_workflow_history(GetWorkflowHistoryRequest { workflow_id: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(history.code(), Code::NotFound);
    let cancel = client
        .cancel_workflow(CancelWorkflowRequest {
            workflow_id: "nope".into(),
            reason: "r".into(),
            identity: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    let no_reason = client
        .cancel_workflow(CancelWorkflowRequest { workflow_id: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let bad_status =
        client.list_workflows(ListWorkflowsRequest { statuses: vec![99], ..Default::default() }).await.unwrap_err();
    assert_eq!(bad_status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_full_history_refuses_more_signals() {
    let (server, _dir) = server(&["--max-history-events", "6"]).await;
    let mut client = server.client().await;
    let workflow_id = client.start_workflow(start_request("bench", "r", "{}")).await.unwrap().into_inner().workflow_id;
    let mut refused = None;
    for i in 0..10 {
        let signal =
            SignalWorkflowRequest { workflow_id: workflow_id.clone(), name: format!("s{i}"), ..Default::default() };
        if let Err(status) = client.signal_workflow(signal).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("signals past the limit are refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("history limit of 6"), "{}", status.message());
    let events = common::full_history(&mut client, &workflow_id).await;
    assert!(events.len() <= 6, "history grew past its limit: {}", events.len());
    common::assert_intact(&workflow_id, &events);
}

/// Money safety first: a saga that reaches its history limit after its pivot
/// was attempted is not failed (that could keep money with no order): it
/// stops, open and flagged for an operator.
#[tokio::test]
async fn a_history_full_after_the_pivot_stops_flagged_instead_of_failing() {
    let (server, _dir) = server(&["--max-history-events", "20", "--time-scale", "0.01"]).await;
    // The step after the pivot fails on every attempt, and is retried without limit.
    let _worker =
        common::WorkerProcess::start(&server.url, &["--services", "bench", "--fault", "bench.order=error"]).await;
    let mut client = server.client().await;
    let workflow_id =
        client.start_workflow(start_request("bench", "full", "{}")).await.unwrap().into_inner().workflow_id;
    let describe = DescribeWorkflowRequest { workflow_id: workflow_id.clone() };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let summary = loop {
        let summary = client.describe_workflow(describe.clone()).await.unwrap().into_inner().summary.unwrap();
        if summary.stuck_reason == "HISTORY_LIMIT" || summary.status != 1 {
            break summary;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached the limit: {summary:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((summary.status, summary.stuck_reason.as_str()), (1, "HISTORY_LIMIT"), "{summary:?}");
    assert!(summary.stuck_message.contains("--max-history-events"), "{summary:?}");
    let events = common::full_history(&mut client, &workflow_id).await;
    assert!(events.len() <= 21, "history grew past its limit and the flag: {}", events.len());
    let names: Vec<&str> = events.iter().filter_map(|e| e.attributes.as_ref()).map(|a| a.event_name()).collect();
    assert!(!names.contains(&"WorkflowFailed") && !names.contains(&"CompensationStarted"), "{names:?}");
    common::assert_intact(&workflow_id, &events);
}

#[tokio::test]
async fn garbage_on_the_ports_does_not_take_the_server_down() {
    let (server, _dir) = server(&[]).await;
    let grpc = server.host_port();
    let http = server.http.trim_start_matches("http://").to_owned();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for target in [&grpc, &http] {
        for round in 0..20 {
            let mut bytes = vec![0u8; 64 + round * 97];
            for b in &mut bytes {
                // xorshift: deterministic noise.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if round % 5 == 0 {
                // A valid HTTP/2 preface followed by junk frames.
                bytes.splice(0..0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().copied());
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(target).await {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
        }
    }
    let mut client = server.client().await;
    client.start_workflow(start_request("bench", "after-garbage", "{}")).await.unwrap();
    let health = common::http(&http, "GET", "/healthz", "").await;
    assert!(health.contains("ok"), "{health}");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (server, _dir) = server(&[]).await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest { service: "sagaflow.v1.WorkflowService".into() };
    assert_eq!(
        health.check(check).await.unwrap().into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["sagaflow.v1.WorkflowService", "sagaflow.v1.WorkerService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn reflection_also_speaks_v1alpha() {
    // What Python's grpcio-reflection and older grpcurl send.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let (server, _dir) = server(&[]).await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("sagaflow.checkout.v1.CheckoutService".into())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("no file descriptor: {:?}", response.message_response)
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
