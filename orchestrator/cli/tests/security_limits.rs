//! Load shedding and hostile input, with real server processes: a flood at
//! 10x the limit is refused with retry advice, every accepted saga still
//! completes, and an operator is answered meanwhile; one tenant cannot take
//! another's slots; oversized, malformed and random input leaves the server
//! serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::secure::{self, CLIENT, OPERATOR, OTHER_CLIENT, WORKER, with_token};
use common::{ServerProcess, WorkerProcess, start_request};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, DescribeWorkflowRequest, ListWorkflowsRequest};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkflowServiceClient<Channel>;

async fn secured(extra: &[&str]) -> (ServerProcess, tempfile::TempDir) {
    secure::start_server(extra).await
}

async fn client(server: &ServerProcess) -> Client {
    WorkflowServiceClient::new(Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap())
}

fn retry_after(status: &tonic::Status) -> Duration {
    let millis = status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Duration::from_millis(millis.unwrap_or_else(|| panic!("no retry-after-ms on {status:?}")))
}

/// Starts `request_id` until it is accepted, honouring the server's retry advice.
async fn start_until_accepted(mut client: Client, request_id: String) -> (String, u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut refusals = 0;
    loop {
        match client.start_workflow(with_token(start_request("bench", &request_id, "{}"), Some(CLIENT))).await {
            Ok(started) => return (started.into_inner().workflow_id, refusals),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "{request_id} never got in");
                refusals += 1;
                tokio::time::sleep(retry_after(&status)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_flood_at_ten_times_the_rate_is_shed_and_nothing_accepted_is_lost() {
    // 20 calls a second for the client token; 200 at once is 10x that.
    let (server, _dir) = secured(&["--rate-limit-per-token", "20", "--rate-limit", "1000"]).await;
    let _worker = WorkerProcess::start(&server.url, &["--services", "bench", "--token", WORKER]).await;
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let server_url = server.url.clone();
            tokio::spawn(async move {
                let client =
                    WorkflowServiceClient::new(Channel::from_shared(server_url).unwrap().connect().await.unwrap());
                start_until_accepted(client, format!("flood-{i}")).await
            })
        })
        .collect();
    // An operator is answered while the flood is refused.
    let mut operator = client(&server).await;
    let listed = operator.list_workflows(with_token(ListWorkflowsRequest::default(), Some(OPERATOR))).await;
    assert!(listed.is_ok(), "the operator was not answered under overload: {listed:?}");
    let mut ids = HashSet::new();
    let mut refusals = 0;
    for task in flood {
        let (id, refused) = task.await.unwrap();
        ids.insert(id);
        refusals += refused;
    }
    assert_eq!(ids.len(), 200, "every request id got its own workflow");
    assert!(refusals > 0, "a flood at 10x the limit was never shed");
    let metrics = common::scrape_as(&server.http, secure::OPERATOR).await;
    assert!(metrics.contains("sagaflow_requests_shed_total{reason=\"token_rate\"}"), "not counted");
    // Every accepted saga completes.
    let mut reader = client(&server).await;
    for id in &ids {
        let ended = reader
            .await_workflow(with_token(
                AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 60_000 },
                Some(OPERATOR),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(ended.terminal, "{id} was accepted and then lost: {:?}", ended.summary);
        assert_eq!(common::status_of(&ended), "COMPLETED", "{id}");
    }
}

#[tokio::test]
async fn thousands_of_refusals_on_one_connection_leave_it_open() {
    // Refusals must not cost the connection: h2 closes one after 1,024
    // streams it had to reset, and the restart bench's fill (past the
    // per-token rate on one connection) once lost its connection mid-run.
    let (server, _dir) = secured(&["--rate-limit-per-token", "1", "--rate-limit", "100000"]).await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    // Like clients that retry at once, on one connection: 64 callers, each
    // sending its next start as soon as the last was refused.
    let callers: Vec<_> = (0..64)
        .map(|caller| {
            let mut client = WorkflowServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for attempt in 0..40 {
                    let request_id = format!("shed-{caller}-{attempt}");
                    let request = with_token(start_request("bench", &request_id, "{}"), Some(CLIENT));
                    match client.start_workflow(request).await {
                        Ok(_) => {}
                        Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
                        Err(status) => panic!("refusal {refused} broke the connection: {status:?}"),
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for caller in callers {
        refused += caller.await.unwrap();
    }
    assert!(refused > 1024, "only {refused} calls were refused");
    let mut operator = WorkflowServiceClient::new(channel);
    let listed = operator.list_workflows(with_token(ListWorkflowsRequest::default(), Some(OPERATOR))).await;
    assert!(listed.is_ok(), "the connection did not survive the refusals: {listed:?}");
}

#[tokio::test]
async fn one_tenant_cannot_take_the_others_slots() {
    let (server, _dir) = secured(&["--max-in-flight-per-token", "4", "--max-in-flight", "16"]).await;
    let mut c = client(&server).await;
    // No worker serves bench, so this workflow waits and awaits on it hold their slots.
    let id = c
        .start_workflow(with_token(start_request("bench", "held", "{}"), Some(CLIENT)))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (mut c, id) = (c.clone(), id.clone());
            tokio::spawn(async move {
                // The probe below takes a slot now and then; a holder refused
                // for it retries as advised.
                loop {
                    let wait = AwaitWorkflowRequest { workflow_id: id.clone(), timeout_ms: 30_000 };
                    match c.await_workflow(with_token(wait, Some(CLIENT))).await {
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            tokio::time::sleep(retry_after(&status)).await;
                        }
                        other => return other,
                    }
                }
            })
        })
        .collect();
    // Once the four awaits hold the token's slots, its next call is refused at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let describe = DescribeWorkflowRequest { workflow_id: id.clone() };
        match c.describe_workflow(with_token(describe, Some(CLIENT))).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "the per-token limit never engaged");
                // Paced, so that the holders (which retry when this probe
                // holds the slot they need) get their turn.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("token in flight"), "{refused:?}");
    assert!(retry_after(&refused) > Duration::ZERO);
    // Another tenant and the operator are still served.
    c.start_workflow(with_token(start_request("bench", "other", "{}"), Some(OTHER_CLIENT))).await.unwrap();
    let describe = DescribeWorkflowRequest { workflow_id: id.clone() };
    c.describe_workflow(with_token(describe, Some(OPERATOR))).await.unwrap();
    let terminate = sagaflow_proto::v1::TerminateWorkflowRequest {
        workflow_id: id,
        reason: "test".into(),
        identity: String::new(),
    };
    c.terminate_workflow(with_token(terminate, Some(OPERATOR))).await.unwrap();
    // Terminating ends the workflow, which answers the awaits and frees their slots.
    for holder in holders {
        assert!(holder.await.unwrap().unwrap().into_inner().terminal);
    }
}

/// A message whose field 1 is bytes: as a request it is invalid UTF-8 where
/// every sagaflow request has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct Raw {
    #[prost(bytes = "vec", tag = "1")]
    field: Vec<u8>,
    #[prost(uint64, tag = "2")]
    number: u64,
}

async fn send_raw(channel: &Channel, path: &str, message: Raw) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Raw, ()>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    match grpc.unary(with_token(message, Some(OPERATOR)), path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn oversized_and_malformed_payloads_get_clear_statuses() {
    let (server, _dir) = secured(&[]).await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut c = WorkflowServiceClient::new(channel.clone());
    let over = format!("{{\"blob\":\"{}\"}}", "x".repeat(300 * 1024));
    let status = c.start_workflow(with_token(start_request("bench", "big", &over), Some(CLIENT))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("the limit is 262144"), "{status:?}");
    // Past the decoding limit the message is refused from its length prefix.
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let status = c.start_workflow(with_token(start_request("bench", "huge", &huge), Some(CLIENT))).await.unwrap_err();
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
    // Invalid UTF-8 where a string belongs, and a varint where a string belongs.
    for path in [
        "/sagaflow.v1.WorkflowService/StartWorkflow",
        "/sagaflow.v1.WorkflowService/SignalWorkflow",
        "/sagaflow.checkout.v1.CheckoutService/StartCheckout",
        "/sagaflow.v1.WorkerService/OpenSession",
    ] {
        // The caller's error, said as such: not INTERNAL, which pages someone and invites retries.
        let status = send_raw(&channel, path, Raw { field: vec![0xff, 0xfe, 0x00, 0xc3], number: 0 }).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        let status = send_raw(&channel, path, Raw { field: vec![], number: u64::MAX }).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    // A huge header and a huge token are refused, not buffered.
    let mut request = with_token(start_request("bench", "hdr", "{}"), Some(CLIENT));
    request.metadata_mut().insert("x-padding", "p".repeat(64 * 1024).parse().unwrap());
    assert!(c.start_workflow(request).await.is_err());
    let long_token = "t".repeat(8 * 1024);
    let status =
        c.start_workflow(with_token(start_request("bench", "tok", "{}"), Some(&long_token))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // And the server still serves.
    let mut c = client(&server).await;
    c.start_workflow(with_token(start_request("bench", "after", "{}"), Some(CLIENT))).await.unwrap();
}

/// Deterministic noise, a valid HTTP/2 preface in front of some of it.
fn noise(seed: &mut u64, round: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; 64 + round * 131];
    for b in &mut bytes {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = *seed as u8;
    }
    match round % 4 {
        0 => bytes.splice(0..0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().copied()).for_each(drop),
        // A TLS ClientHello record header, then garbage.
        1 => bytes.splice(0..0, [0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).for_each(drop),
        2 => {
            bytes.splice(0..0, b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n".iter().copied()).for_each(drop)
        }
        _ => {}
    }
    bytes
}

async fn spray(target: &str, seed: &mut u64) {
    for round in 0..24 {
        let bytes = noise(seed, round);
        if let Ok(mut stream) = tokio::net::TcpStream::connect(target).await {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
    }
    // Connections that say nothing and stay open must not block others.
    for _ in 0..32 {
        if let Ok(stream) = tokio::net::TcpStream::connect(target).await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(stream);
            });
        }
    }
}

#[tokio::test]
async fn random_bytes_on_the_ports_leave_a_secured_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = secure::Pki::write(dir.path());
    let auth = secure::write_auth_file(dir.path());
    let mut args = pki.server_args();
    args.extend(["--auth-file".to_owned(), auth.to_str().unwrap().to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&dir.path().join("data"), &args).await;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = ServerProcess::start(plain_dir.path(), &[]).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for target in [server.host_port(), server.http.trim_start_matches("https://").to_owned(), plain.host_port()] {
        spray(&target, &mut seed).await;
    }
    spray(plain.http.trim_start_matches("http://"), &mut seed).await;
    // Both still serve, over TLS with a token and in plaintext.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&pki.client_cert).unwrap(),
            std::fs::read(&pki.client_key).unwrap(),
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(server.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut c = WorkflowServiceClient::new(channel);
    c.start_workflow(with_token(start_request("bench", "after-noise", "{}"), Some(CLIENT))).await.unwrap();
    plain.client().await.start_workflow(start_request("bench", "after-noise", "{}")).await.unwrap();
    let health = common::http(&plain.http, "GET", "/healthz", "").await;
    assert!(health.contains("ok"), "{health}");
}
