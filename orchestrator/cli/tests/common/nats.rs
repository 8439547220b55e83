//! Helpers for tests with a real `nats-server` and real consumer processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;

use super::BIN;

/// `nats-server` from PATH, or where Debian's package puts it. The tests
/// need it; `cargo xtask test` installs it.
fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server is not installed: these tests need it (`apt-get install -y nats-server`; `cargo xtask test` does this)")
        })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A `nats-server -js` on loopback, with its store in a directory of the test.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub url: String,
}

impl NatsServer {
    /// Starts on `port` with JetStream's store in `store_dir`, and returns
    /// once JetStream answers.
    pub async fn start_on(port: u16, store_dir: &Path) -> Self {
        std::fs::create_dir_all(store_dir).unwrap();
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        let server = Self { child, port, url: format!("nats://127.0.0.1:{port}") };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            // Any JetStream answer, even "stream not found", means it is up.
            if let Ok(client) = async_nats::connect(&self.url).await {
                match jetstream::new(client).get_stream("SAGAFLOW_READY_PROBE").await {
                    Ok(_) => return,
                    Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(_)) => return,
                    Err(_) => {}
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "nats-server on port {} did not start", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }

    pub async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// One message of a stream, as a test looks at it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub stream_seq: u64,
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: String,
}

impl Stored {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Every message of `stream`, in stream order, read by an ephemeral consumer.
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = Vec::new();
    loop {
        let mut batch = consumer.fetch().max_messages(1000).messages().await.unwrap();
        let before = stored.len();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers = message
                .headers
                .iter()
                .flat_map(|map| map.iter())
                .map(|(name, values)| {
                    (name.to_string(), values.last().map(|v| v.as_str().to_owned()).unwrap_or_default())
                })
                .collect();
            stored.push(Stored {
                stream_seq: message.info().unwrap().stream_sequence,
                subject: message.subject.to_string(),
                headers,
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
            });
        }
        if stored.len() == before {
            return stored;
        }
    }
}

/// A `sagaflow consumer search|notifications` process.
pub struct ConsumerProcess {
    child: Child,
    /// `http://ADDR` of its API.
    pub http: String,
}

impl ConsumerProcess {
    pub async fn start(kind: &str, nats_url: &str, data_dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["consumer", kind, "--nats-url", nats_url, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sagaflow consumer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("consumer did not start within 30 s")
            .unwrap()
            .expect("consumer exited before listening");
        let http = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, http }
    }

    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    pub async fn get(&self, path_and_query: &str) -> Value {
        http_get_json(&self.http, path_and_query).await
    }

    pub async fn processed(&self) -> u64 {
        self.get("/stats").await["processed"].as_u64().unwrap()
    }

    /// Rows of `GET /orders?…`.
    pub async fn orders(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/orders?{query}")).await["orders"].as_array().unwrap().clone()
    }
}

/// One `GET` over HTTP/1.0, returning the JSON body of a 200.
pub async fn http_get_json(base: &str, path_and_query: &str) -> Value {
    let text = http_get(base, path_and_query).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

pub async fn http_get(base: &str, path_and_query: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of an unlabelled metric in Prometheus text, or of the sum of
/// its labelled series.
/// `series` is a bare name or a whole series, `name{label="value",…}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let with: Vec<(&str, &str)> = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    super::metric_where(text, name, &with)
}

/// Polls `check` every 100 ms until it holds, or fails after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `n` `quick` workflows with `input` and waits until each completes.
pub async fn run_quick(server_url: &str, prefix: &str, n: usize, input: &str) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = server_url.to_owned();
        let request_id = format!("{prefix}-{i}");
        let input = input.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client =
                sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient::connect(url).await.unwrap();
            let id = client
                .start_workflow(super::start_request("quick", &request_id, &input))
                .await
                .unwrap()
                .into_inner()
                .workflow_id;
            let end = super::await_end(&mut client, &id).await;
            assert_eq!(super::status_of(&end), "COMPLETED", "{id}");
            id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids
}

/// What `sagaflow events tail` would print: the records still in the outbox.
pub async fn outbox_len(server_url: &str) -> usize {
    use sagaflow_proto::v1::StreamEventsRequest;
    use sagaflow_proto::v1::event_service_client::EventServiceClient;
    let mut client = EventServiceClient::connect(server_url.to_owned()).await.unwrap();
    let mut stream =
        client.stream_events(StreamEventsRequest { after_seq: 0, follow: false }).await.unwrap().into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    n
}

/// Starts `n` shop checkouts (one mug each) and waits until each has shipped.
pub async fn run_checkouts(server_url: &str, prefix: &str, n: usize) -> Vec<String> {
    use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
    use sagaflow_proto::checkout::v1::{Item, StartCheckoutRequest};
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = server_url.to_owned();
        let request_id = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let mut checkouts = CheckoutServiceClient::connect(url.clone()).await.unwrap();
            let request = StartCheckoutRequest {
                client_request_id: request_id,
                customer_id: "c-down".into(),
                items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
                ..Default::default()
            };
            let id = checkouts.start_checkout(request).await.unwrap().into_inner().checkout_id;
            let mut workflows =
                sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient::connect(url).await.unwrap();
            let end = super::await_end(&mut workflows, &id).await;
            assert_eq!(super::status_of(&end), "COMPLETED", "{id}");
            id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids
}
