//! TLS on both listeners with certificates made at test time: an mTLS
//! handshake with a certificate from the trusted CA is accepted; none, or one
//! from another CA, is refused; the CLI and the worker SDK speak TLS; and the
//! refusals do not disturb the server.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::secure::Pki;
use common::{BIN, ServerProcess, WorkerProcess, start_request};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn tls_server() -> (ServerProcess, Pki, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(dir.path());
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&dir.path().join("data"), &args).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    (server, pki, dir)
}

/// A gRPC channel that trusts the test CA and presents `identity`, if any.
async fn grpc(
    server: &ServerProcess,
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    let endpoint = Channel::from_shared(server.url.clone()).unwrap().tls_config(tls).unwrap();
    endpoint.connect_timeout(Duration::from_secs(10)).connect().await.map_err(|e| format!("{e:?}"))
}

/// Whether a start over `channel` succeeds: with TLS 1.3 a refused client
/// certificate may surface at the first call rather than at connect.
async fn can_start(channel: Result<Channel, String>, request_id: &str) -> bool {
    let Ok(channel) = channel else { return false };
    let mut client = WorkflowServiceClient::new(channel);
    let call = client.start_workflow(start_request("bench", request_id, "{}"));
    matches!(tokio::time::timeout(Duration::from_secs(10), call).await, Ok(Ok(_)))
}

#[tokio::test]
async fn grpc_mtls_accepts_the_trusted_client_and_refuses_the_others() {
    let (server, pki, _dir) = tls_server().await;
    assert!(can_start(grpc(&server, &pki, Some((&pki.client_cert, &pki.client_key))).await, "trusted").await);
    assert!(!can_start(grpc(&server, &pki, None).await, "no-cert").await, "accepted a client without a certificate");
    assert!(
        !can_start(grpc(&server, &pki, Some((&pki.rogue_cert, &pki.rogue_key))).await, "rogue").await,
        "accepted a certificate from an untrusted CA"
    );
    // Plain HTTP/2 to the TLS port is refused too.
    let plain = Channel::from_shared(server.url.replace("https://", "http://")).unwrap().connect().await;
    assert!(!can_start(plain.map_err(|e| e.to_string()), "plain").await, "accepted plaintext");
    // And the server still serves the trusted client.
    assert!(can_start(grpc(&server, &pki, Some((&pki.client_cert, &pki.client_key))).await, "after").await);
}

/// `GET /healthz` over TLS with `identity` (if any); the raw response, or
/// the error that ended the exchange.
async fn https_get(
    server: &ServerProcess,
    pki: &Pki,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let host = server.http.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let mut tls =
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test]
async fn https_metrics_need_a_trusted_client_certificate() {
    let (server, pki, _dir) = tls_server().await;
    assert!(server.http.starts_with("https://"), "{}", server.http);
    let ok = https_get(&server, &pki, Some((&pki.client_cert, &pki.client_key))).await.unwrap();
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("ok"), "{ok}");
    for (what, identity) in
        [("no certificate", None), ("a rogue certificate", Some((pki.rogue_cert.as_path(), pki.rogue_key.as_path())))]
    {
        let refused = https_get(&server, &pki, identity).await;
        assert!(!refused.as_deref().is_ok_and(|r| r.contains("200")), "{what} was served: {refused:?}");
    }
    // Plain HTTP on the TLS port gets no metrics.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        common::http(&server.http.replace("https://", "http://"), "GET", "/metrics", ""),
    )
    .await
    .unwrap_or_default();
    assert!(!plain.contains("200 OK"), "{plain}");
    let again = https_get(&server, &pki, Some((&pki.client_cert, &pki.client_key))).await.unwrap();
    assert!(again.contains("200"), "{again}");
}

#[tokio::test]
async fn the_cli_and_the_worker_speak_mtls() {
    let (server, pki, _dir) = tls_server().await;
    let tls = pki.client_args();
    let mut worker_args = vec!["--services", "bench"];
    worker_args.extend(tls.iter().map(String::as_str));
    let _worker = WorkerProcess::start(&server.url, &worker_args).await;
    let mut start =
        vec!["workflow", "start", "bench", "--request-id", "tls-1", "--output", "json", "--server", &server.url];
    start.extend(tls.iter().map(String::as_str));
    let out = tokio::process::Command::new(BIN).args(&start).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["workflow_id"].as_str().unwrap().to_owned();
    // The worker, over mTLS, runs it to the end.
    let channel = grpc(&server, &pki, Some((&pki.client_cert, &pki.client_key))).await.unwrap();
    let mut client = WorkflowServiceClient::new(channel);
    let ended = common::await_end(&mut client, &id).await;
    assert_eq!(common::status_of(&ended), "COMPLETED");
    // Without the client certificate the CLI fails in one line.
    let bare = tokio::process::Command::new(BIN)
        .args(["workflow", "list", "--server", &server.url, "--tls-ca", pki.ca.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!bare.status.success());
    assert_eq!(String::from_utf8(bare.stderr).unwrap().trim().lines().count(), 1);
}

/// The server's own jobs worker reaches it in process, so the jobs it serves
/// run under mTLS too (before, they waited for a worker that never came).
#[tokio::test]
async fn the_in_process_jobs_worker_serves_an_mtls_server() {
    let (server, pki, _dir) = tls_server().await;
    let tls = pki.client_args();
    let mut args = vec!["jobs", "run", "detect-stuck-sagas", "--server", &server.url, "--output", "json"];
    args.extend(["--timeout", "60s"]);
    args.extend(tls.iter().map(String::as_str));
    let out = tokio::process::Command::new(BIN).args(&args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stuck"], 0, "{report}");
}
