//! Helpers for tests that run the real `sagaflow` binary.
#![allow(dead_code, clippy::unwrap_used)]

pub mod durability;
pub mod nats;
pub mod secure;
pub mod shop;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{GetWorkflowHistoryRequest, HistoryEvent, StartWorkflowRequest};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

/// A node of a cluster under test: its address (fixed, so that workers and
/// clients know every node before it starts) and its own directory. Each
/// cluster test adds how it starts its nodes.
pub struct Node {
    pub listen: String,
    pub dir: PathBuf,
}

impl Node {
    pub fn new(root: &Path, name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self { listen: format!("127.0.0.1:{port}"), dir: root.join(name) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

/// A `sagaflow server` process on loopback ports chosen by the OS.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    pub http: String,
    pub data_dir: PathBuf,
    /// Every line the process wrote to stderr, when started with `start_logged`.
    pub logs: LogLines,
}

/// A process's stderr lines, collected as they come by a reader task: a
/// line the process wrote may not be here yet, so tests await the line they
/// look for instead of reading once.
#[derive(Clone, Default)]
pub struct LogLines(std::sync::Arc<Collected>);

#[derive(Default)]
struct Collected {
    lines: std::sync::Mutex<Vec<String>>,
    grew: tokio::sync::Notify,
}

impl LogLines {
    fn push(&self, line: String) {
        self.0.lines.lock().unwrap().push(line);
        self.0.grew.notify_waiters();
    }

    /// Every line collected so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lines.lock().unwrap().clone()
    }

    /// The first line that `matches`, once it has come; panics, showing
    /// every line, if none has within `within`.
    pub async fn await_line(&self, what: &str, within: Duration, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so that a line pushed in between still wakes it.
            let grew = self.0.grew.notified();
            if let Some(line) = self.0.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!("no log line {what} within {within:?}:\n{}", self.lines().join("\n"));
            }
        }
    }
}

/// Runs `command` with `RUST_LOG=filter`; with `capture`, its stderr lines go
/// to the returned collector instead of the test's own stderr.
fn spawn_logged(command: &mut Command, filter: &str, capture: bool) -> (Child, LogLines) {
    let logs = LogLines::default();
    let mut child = command
        .env("RUST_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(if capture { Stdio::piped() } else { Stdio::inherit() })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sagaflow");
    if let Some(stderr) = child.stderr.take() {
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.push(line);
            }
        });
    }
    (child, logs)
}

impl ServerProcess {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_listening(data_dir, "127.0.0.1:0", extra, None).await
    }

    /// Starts with `RUST_LOG=filter` and collects its stderr in `logs`.
    pub async fn start_logged(data_dir: &Path, extra: &[&str], filter: &str) -> Self {
        Self::start_listening(data_dir, "127.0.0.1:0", extra, Some(filter)).await
    }

    /// Starts with its open-file limit (soft and hard) at `open_files`, as
    /// on a host with the usual 1,024, and its stderr in `logs`.
    pub async fn start_with_open_files(data_dir: &Path, open_files: u64, filter: &str) -> Self {
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""), BIN])
            .args(["server", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        Self::spawned(command, data_dir, Some(filter)).await
    }

    async fn start_listening(data_dir: &Path, listen: &str, extra: &[&str], logged: Option<&str>) -> Self {
        Self::spawned(Self::command(data_dir, listen, extra), data_dir, logged).await
    }

    fn command(data_dir: &Path, listen: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["server", "--listen", listen, "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        command
    }

    async fn spawned(command: Command, data_dir: &Path, logged: Option<&str>) -> Self {
        Self::serving_within(command, data_dir, logged, Duration::from_secs(30)).await
    }

    /// A server on a shared store (`--store`) at `listen`: a standby until
    /// the node serving dies or stops; returns once this one serves, if it
    /// does within `within`.
    pub async fn start_standby(data_dir: &Path, listen: &str, extra: &[&str], within: Duration) -> Self {
        Self::serving_within(Self::command(data_dir, listen, extra), data_dir, Some("info"), within).await
    }

    async fn serving_within(mut command: Command, data_dir: &Path, logged: Option<&str>, within: Duration) -> Self {
        let (mut child, logs) = spawn_logged(&mut command, logged.unwrap_or("warn"), logged.is_some());
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The server prints its addresses once it listens.
        let line = tokio::time::timeout(within, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("server did not serve within {within:?}"))
            .unwrap()
            .expect("server exited before listening");
        let url = line
            .split_whitespace()
            .find(|w| (w.starts_with("http://") || w.starts_with("https://")) && !w.ends_with("/metrics"))
            .unwrap()
            .to_owned();
        let http =
            line.split_whitespace().find(|w| w.ends_with("/metrics")).unwrap().trim_end_matches("/metrics").to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, url, http, data_dir: data_dir.to_owned(), logs }
    }

    pub async fn client(&self) -> WorkflowServiceClient<Channel> {
        WorkflowServiceClient::connect(self.url.clone()).await.unwrap()
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed on the way out.
    pub async fn kill9(self) {
        kill9(self.child).await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(self) {
        terminate(self.child, "server").await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits for the process to end on its own, up to `within`.
    pub async fn exited(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {within:?}"))
            .unwrap()
    }

    pub fn host_port(&self) -> String {
        self.url.trim_start_matches("http://").trim_start_matches("https://").to_owned()
    }
}

/// A channel to the first node of a comma-separated list that answers:
/// of nodes sharing one store, only the serving one listens.
pub async fn channel_to_any(nodes: &str) -> Result<Channel, String> {
    let mut failures = Vec::new();
    for node in nodes.split(',') {
        match tonic::transport::Endpoint::from_shared(node.to_owned()).unwrap().connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => failures.push(format!("{node}: {e}")),
        }
    }
    Err(failures.join("; "))
}

pub fn start_request(kind: &str, request_id: &str, input: &str) -> StartWorkflowRequest {
    StartWorkflowRequest {
        workflow_type: kind.into(),
        request_id: request_id.into(),
        input: input.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub async fn full_history(client: &mut WorkflowServiceClient<Channel>, workflow_id: &str) -> Vec<HistoryEvent> {
    let mut events = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.into(),
                from_seq,
                page_size: 500,
                ..Default::default()
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
        assert_eq!(event.seq, i as u64 + 1, "{workflow_id}: gap or duplicate at position {i}");
    }
    assert!(
        matches!(events[0].attributes, Some(sagaflow_proto::v1::history_event::Attributes::WorkflowStarted(_))),
        "{workflow_id} does not begin with WorkflowStarted"
    );
}

impl ServerProcess {
    /// Starts on `listen` (an address, or `127.0.0.1:0`) with extra arguments
    /// and environment variables (a test build's knobs and fault points); with
    /// `logged`, its stderr (at `RUST_LOG=filter`) goes to `logs`.
    pub async fn start_with_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        logged: Option<&str>,
    ) -> Self {
        let mut command = Self::command(data_dir, listen.trim_start_matches("http://"), extra);
        command.envs(env.iter().copied());
        Self::spawned(command, data_dir, logged).await
    }

    /// Restarts on the same port, so that connected workers find it again.
    pub async fn start_on(data_dir: &Path, url: &str, extra: &[&str]) -> Self {
        Self::start_listening(data_dir, url.trim_start_matches("http://"), extra, None).await
    }
}

/// A `sagaflow worker` process.
pub struct WorkerProcess {
    child: Child,
    pub worker_id: String,
    /// `http://ADDR` of its shop admin API, when it serves one.
    pub admin: Option<String>,
    /// Every line the process wrote to stderr, when started with `start_logged`.
    pub logs: LogLines,
}

impl WorkerProcess {
    /// Waits for the process to end on its own (an injected crash).
    pub async fn exited(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the worker did not exit")
            .unwrap()
    }

    pub async fn start(server_url: &str, extra: &[&str]) -> Self {
        Self::start_with_logs(server_url, extra, None).await
    }

    /// Starts with `RUST_LOG=filter` and collects its stderr in `logs`.
    pub async fn start_logged(server_url: &str, extra: &[&str], filter: &str) -> Self {
        Self::start_with_logs(server_url, extra, Some(filter)).await
    }

    async fn start_with_logs(server_url: &str, extra: &[&str], logged: Option<&str>) -> Self {
        let mut command = Command::new(BIN);
        command.args(["worker", "--server", server_url]).args(extra);
        let (mut child, logs) = spawn_logged(&mut command, logged.unwrap_or("warn"), logged.is_some());
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("worker exited");
        let worker_id = line.split_whitespace().nth(1).unwrap().to_owned();
        let admin = line.split("admin on ").nth(1).map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned());
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, worker_id, admin, logs }
    }

    pub async fn kill9(self) {
        kill9(self.child).await;
    }

    /// SIGTERM, then wait for the drain and a clean exit.
    pub async fn stop(self) {
        terminate(self.child, "worker").await;
    }
}

async fn kill9(mut child: Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

async fn terminate(mut child: Child, what: &str) {
    let pid = child.id().unwrap();
    Command::new("kill").arg(pid.to_string()).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{what} exited with {status}");
}

/// Waits, through the history long-poll, for an event that `matches`.
pub async fn wait_for_event(
    client: &mut WorkflowServiceClient<Channel>,
    workflow_id: &str,
    within: Duration,
    matches: impl Fn(&HistoryEvent) -> bool,
) -> HistoryEvent {
    let deadline = tokio::time::Instant::now() + within;
    let mut from_seq = 1;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{workflow_id}: the awaited event did not come within {within:?}"
        );
        let page = client
            .get_workflow_history(GetWorkflowHistoryRequest {
                workflow_id: workflow_id.into(),
                from_seq,
                page_size: 500,
                wait_ms: 500,
                archived: false,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(event) = page.events.iter().find(|e| matches(e)) {
            return event.clone();
        }
        from_seq = page.next_seq;
        assert!(!page.terminal, "{workflow_id} ended before the awaited event");
    }
}

/// Waits for the workflow to end and returns its summary.
pub async fn await_end(
    client: &mut WorkflowServiceClient<Channel>,
    workflow_id: &str,
) -> sagaflow_proto::v1::AwaitWorkflowResponse {
    let response = client
        .await_workflow(sagaflow_proto::v1::AwaitWorkflowRequest {
            workflow_id: workflow_id.into(),
            timeout_ms: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.terminal, "{workflow_id} did not end within 30 s: {:?}", response.summary);
    response
}

pub fn status_of(response: &sagaflow_proto::v1::AwaitWorkflowResponse) -> &'static str {
    let status = response.summary.as_ref().map_or(0, |s| s.status);
    sagaflow_proto::status_name(sagaflow_proto::v1::WorkflowStatus::try_from(status).unwrap())
}

pub fn event_names(events: &[HistoryEvent]) -> Vec<&'static str> {
    use sagaflow_proto::EventName;
    events.iter().filter_map(|e| e.attributes.as_ref().map(EventName::event_name)).collect()
}

/// Test sagas on the bench activities, with timeouts short enough for tests.
pub fn write_test_definitions(dir: &Path) -> PathBuf {
    use sagaflow_server::workflows::{LifecycleEvents, RetryPolicy, SagaDefinition, Step, Timeouts};
    let quick = RetryPolicy {
        initial_interval_ms: 50,
        backoff_coefficient: 2.0,
        maximum_interval_ms: 500,
        maximum_attempts: 5,
        non_retryable_error_types: vec![],
    };
    let short = Timeouts { start_to_close_ms: 1_000, ..Timeouts::default() };
    let reserve = || {
        Step::activity("reserve", "bench.reserve")
            .compensate_with("bench.release")
            .retry(quick.clone())
            .timeouts(short)
            .compensation_retry(RetryPolicy { maximum_attempts: 2, ..quick.clone() })
    };
    let quick_saga = SagaDefinition::builder("quick", 1)
        .lifecycle_events(LifecycleEvents {
            started: Some("QuickStarted".into()),
            completed: Some("QuickCompleted".into()),
            compensated: Some("QuickUndone".into()),
            failed: None,
        })
        .step(reserve().emits("Reserved"))
        .step(Step::activity("capture", "bench.capture").pivot().retry(quick.clone()).timeouts(short))
        .step(
            Step::activity("order", "bench.order")
                .retriable()
                .retry(RetryPolicy { maximum_attempts: 0, ..quick.clone() })
                .timeouts(short),
        )
        .build()
        .unwrap();
    let gated = SagaDefinition::builder("gated", 1)
        .step(reserve())
        .step(Step::await_signal("approve", "approve", Duration::ZERO))
        .step(Step::activity("capture", "bench.capture").pivot().retry(quick.clone()).timeouts(short))
        .step(
            Step::activity("order", "bench.order")
                .retriable()
                .retry(RetryPolicy { maximum_attempts: 0, ..quick })
                .timeouts(short),
        )
        .build()
        .unwrap();
    let sleepy = SagaDefinition::builder("sleepy", 1)
        .step(Step::sleep("nap", Duration::from_millis(1500)))
        .step(Step::activity("order", "bench.order").timeouts(short))
        .build()
        .unwrap();
    let path = dir.join("test-sagas.json");
    let json = serde_json::to_string(&vec![quick_saga, gated, sleepy]).unwrap();
    std::fs::write(&path, json).unwrap();
    path
}

/// Writes `yaml` to a file in `dir` and applies it with `sagaflow definition apply`.
pub async fn apply_definitions(server: &ServerProcess, dir: &Path, yaml: &str) {
    let file = dir.join("definitions.yaml");
    std::fs::write(&file, yaml).unwrap();
    let applied = tokio::process::Command::new(BIN)
        .args(["--server", &server.url, "definition", "apply", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

/// Waits until a worker holds the step's task (leases are not in the
/// history, so this asks describe).
pub async fn wait_until_leased(client: &mut WorkflowServiceClient<Channel>, workflow_id: &str, step: &str) {
    for _ in 0..1000 {
        let described = client
            .describe_workflow(sagaflow_proto::v1::DescribeWorkflowRequest { workflow_id: workflow_id.into() })
            .await
            .unwrap()
            .into_inner();
        if described.pending_activities.iter().any(|p| p.step == step && p.state == "LEASED") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{workflow_id}: no worker leased step {step} within 10 s");
}

/// The sum of the samples of `name` whose labels include all of `with`, from
/// Prometheus text; `None` when no such sample exists.
pub fn metric_where(text: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then_some(())?;
            let labels: std::collections::BTreeMap<&str, &str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            with.iter().all(|(k, v)| labels.get(k) == Some(v)).then(|| value.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// GET /metrics.
pub async fn scrape(http_base: &str) -> String {
    http(http_base, "GET", "/metrics", "").await
}

/// The metrics of a server that runs with auth: they need an operator token.
pub async fn scrape_as(http_base: &str, token: &str) -> String {
    http_with(http_base, "GET", "/metrics", "", &format!("Authorization: Bearer {token}\r\n")).await
}

/// One HTTP/1.1 exchange over a fresh connection; the whole raw response.
pub async fn http(base: &str, method: &str, path: &str, body: &str) -> String {
    http_with(base, method, path, body, "").await
}

/// [`http`] with extra header lines (each ending in CRLF).
pub async fn http_with(base: &str, method: &str, path: &str, body: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// Each forward step completed exactly once (counting by step, not attempt).
pub fn assert_each_step_completed_once(workflow_id: &str, events: &[HistoryEvent]) {
    use sagaflow_proto::v1::history_event::Attributes;
    let mut step_of = std::collections::HashMap::new();
    let mut completed: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for event in events {
        match &event.attributes {
            Some(Attributes::ActivityScheduled(s)) if !s.compensation => {
                step_of.insert(s.task_id.clone(), s.step.clone());
            }
            Some(Attributes::ActivityCompleted(c)) => {
                if let Some(step) = step_of.get(&c.task_id) {
                    *completed.entry(step.clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    assert!(completed.values().all(|n| *n == 1), "{workflow_id}: a step completed twice: {completed:?}");
}

/// One JSON exchange with a shop admin API.
pub async fn admin(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = http(base, method, path, &body).await;
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()))
}
