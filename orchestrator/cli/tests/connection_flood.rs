//! Idle connections cannot take the server down: with the usual open-file
//! limit of 1,024, a flood of silent TCP connections (no token needed) on
//! both listeners leaves a new client served at once, and the silent ones are
//! closed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ServerProcess, start_request};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SILENT_GRPC: usize = 1_100;
const SILENT_HTTP: usize = 200;

#[tokio::test]
async fn a_flood_of_silent_connections_leaves_a_new_client_served() {
    // The flood needs 1,300 descriptors on this side.
    sagaflow_server::connections::raise_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_open_files(dir.path(), 1024, "info").await;
    // The server says which open-file limit it runs with.
    server
        .logs
        .await_line("with the limit", Duration::from_secs(10), |l| l.contains("open-file limit") && l.contains("1024"))
        .await;

    let http_host = server.http.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..SILENT_GRPC {
        silent.push(TcpStream::connect(server.host_port()).await.unwrap());
    }
    for _ in 0..SILENT_HTTP {
        silent.push(TcpStream::connect(&http_host).await.unwrap());
    }

    // While they are held, a new client is served, at once.
    let served = async {
        let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel);
        let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        assert_eq!(status.status, 1, "SERVING");
        let mut client = server.client().await;
        client.start_workflow(start_request("bench", "during-the-flood", "{}")).await.unwrap();
        let healthz = common::http(&server.http, "GET", "/healthz", "").await;
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    };
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("a new client was not served within 5 s");

    // The silent ones are closed: evicted to make room, or past the greeting
    // timeout. (The HTTP/2 side greets first with its settings: read to the end.)
    let closed = async {
        for mut stream in silent {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("silent connections still open after 30 s");
    let metrics = common::scrape(&server.http).await;
    assert!(metrics.contains("sagaflow_connections_evicted_total{listener=\"grpc\"}"), "{metrics}");
    assert!(metrics.contains("sagaflow_connections_evicted_total{listener=\"http\"}"), "{metrics}");
}
