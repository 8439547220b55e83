//! Helpers for the failure-scenario tests: the shop with one worker process
//! per service group, checkouts, and the `check-invariants` job every
//! scenario ends with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{Checkout, GetCheckoutRequest, Item, StartCheckoutRequest};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{AwaitWorkflowRequest, ListWorkflowsRequest};
use serde_json::Value;
use tonic::transport::Channel;

use super::{
    BIN, ServerProcess, WorkerProcess, admin, assert_each_step_completed_once, assert_intact, full_history, status_of,
};

/// The shop's services, split as an operator would run them: catalog with
/// coupons (the catalog opens the coupon rules' store, which sled locks),
/// and every other service in its own process.
pub const GROUPS: &[&str] = &["catalog,coupons", "inventory", "payments", "orders", "shipping", "notifications"];

/// A server and one worker process per service group, in one temp dir.
pub struct Shop {
    server: Option<ServerProcess>,
    pub workers: HashMap<&'static str, WorkerProcess>,
    pub dir: tempfile::TempDir,
    server_args: Vec<String>,
    /// The server's URL, kept while it is down so that it returns on the same port.
    server_url: String,
}

impl Shop {
    /// Starts the server with `server_args` and every group's worker; a
    /// group's extra worker arguments (faults, a TTL) come from `extra`.
    pub async fn start(server_args: &[&str], extra: &[(&str, &[&str])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("orchestrator"), server_args).await;
        let mut shop = Self {
            server_url: server.url.clone(),
            server: Some(server),
            workers: HashMap::new(),
            dir,
            server_args: server_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        shop.start_workers(extra).await;
        shop
    }

    /// Every group's worker, with its `extra` arguments.
    async fn start_workers(&mut self, extra: &[(&str, &[&str])]) {
        for group in GROUPS {
            let args = extra.iter().find(|(g, _)| g == group).map_or(&[][..], |(_, a)| *a);
            self.start_worker(group, args).await;
        }
    }

    /// The shop's workers alone, for the orchestrator nodes at `nodes`
    /// (comma-separated), which the test runs itself.
    pub async fn workers_for(nodes: &str) -> Self {
        let mut shop = Self {
            server_url: nodes.to_owned(),
            server: None,
            workers: HashMap::new(),
            dir: tempfile::tempdir().unwrap(),
            server_args: Vec::new(),
        };
        shop.start_workers(&[]).await;
        shop
    }

    pub fn server(&self) -> &ServerProcess {
        self.server.as_ref().expect("the server runs")
    }

    pub fn worker_dir(&self) -> PathBuf {
        self.dir.path().join("workers")
    }

    /// (Re)starts the worker of `group` (one of [`GROUPS`]) with `extra` arguments.
    pub async fn start_worker(&mut self, group: &'static str, extra: &[&str]) {
        let data_dir = self.worker_dir();
        let mut args =
            vec!["--services", group, "--data-dir", data_dir.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let worker = WorkerProcess::start(&self.server_url, &args).await;
        self.workers.insert(group, worker);
    }

    /// `kill -9` of the worker of `group`.
    pub async fn kill_worker(&mut self, group: &str) {
        if let Some(worker) = self.workers.remove(group) {
            worker.kill9().await;
        }
    }

    /// `kill -9` of the orchestrator, then a restart on the same port and data.
    pub async fn restart_server(&mut self) {
        self.kill_server().await;
        self.start_server_again().await;
    }

    /// `kill -9` of the orchestrator; [`Shop::start_server_again`] brings it back.
    pub async fn kill_server(&mut self) {
        if let Some(old) = self.server.take() {
            self.server_url = old.url.clone();
            old.kill9().await;
        }
    }

    /// Starts the orchestrator on its old port and data.
    pub async fn start_server_again(&mut self) {
        let args: Vec<&str> = self.server_args.iter().map(String::as_str).collect();
        let data_dir = self.dir.path().join("orchestrator");
        self.server = Some(ServerProcess::start_on(&data_dir, &self.server_url, &args).await);
    }

    /// The admin API of the worker hosting `group`.
    pub fn admin_of(&self, group: &str) -> String {
        self.workers.get(group).and_then(|w| w.admin.clone()).unwrap()
    }

    pub async fn checkouts(&self) -> CheckoutServiceClient<Channel> {
        CheckoutServiceClient::new(super::channel_to_any(&self.server_url).await.unwrap())
    }

    pub async fn start_checkout(&self, request: StartCheckoutRequest) -> String {
        self.checkouts().await.start_checkout(request).await.unwrap().into_inner().checkout_id
    }

    /// Waits (up to `within`) for the workflow to end.
    pub async fn await_end(&self, workflow_id: &str, within: Duration) -> sagaflow_proto::v1::AwaitWorkflowResponse {
        let mut client = WorkflowServiceClient::new(super::channel_to_any(&self.server_url).await.unwrap());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = client
                .await_workflow(AwaitWorkflowRequest { workflow_id: workflow_id.into(), timeout_ms: 5_000 })
                .await
                .unwrap()
                .into_inner();
            if answer.terminal {
                return answer;
            }
            assert!(tokio::time::Instant::now() < deadline, "{workflow_id} did not end within {within:?}: {answer:?}");
        }
    }

    pub async fn get_checkout(&self, checkout_id: &str) -> Checkout {
        self.checkouts()
            .await
            .get_checkout(GetCheckoutRequest { checkout_id: checkout_id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn admin(&self, group: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        admin(&self.admin_of(group), method, path, body).await
    }

    /// Runs `sagaflow jobs run NAME --output json` and returns its report and
    /// whether it exited 0.
    pub async fn job(&self, name: &str, extra: &[&str]) -> (Value, bool) {
        run_job(&self.server_url, name, extra).await
    }

    pub async fn job_raw(&self, name: &str, extra: &[&str]) -> (String, bool) {
        run_job_raw(&self.server_url, name, extra).await
    }

    /// Ends a crash scenario: every acknowledged checkout (request id to
    /// checkout id) completed or compensated with an intact history, each
    /// step once; starts whose answer was lost ended too; no payment was
    /// captured twice, no order made twice, no reservation left held, no
    /// saga stuck, and `check-invariants` finds nothing.
    pub async fn assert_acknowledged_checkouts_ended_once(&self, acked: &HashMap<String, String>) {
        let mut workflows = WorkflowServiceClient::new(super::channel_to_any(&self.server_url).await.unwrap());
        let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
        for checkout_id in acked.values() {
            let end = self.await_end(checkout_id, Duration::from_secs(120)).await;
            let status = status_of(&end);
            assert!(matches!(status, "COMPLETED" | "COMPENSATED"), "{checkout_id} ended {status}");
            *outcomes.entry(status).or_default() += 1;
            let history = full_history(&mut workflows, checkout_id).await;
            assert_intact(checkout_id, &history);
            assert_each_step_completed_once(checkout_id, &history);
        }
        assert!(outcomes.get("COMPLETED").copied().unwrap_or(0) > 0, "{outcomes:?}");
        // Starts whose answer was cut off may have been committed too: let them end.
        let all = workflows
            .list_workflows(ListWorkflowsRequest {
                workflow_type: "checkout".into(),
                page_size: 200,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for summary in &all.workflows {
            self.await_end(&summary.workflow_id, Duration::from_secs(120)).await;
        }

        // Effects once: one capture per intent, one order per checkout request.
        let ledger = self.admin("payments", "GET", "/payments/ledger", None).await;
        let mut captures: HashMap<&str, usize> = HashMap::new();
        for entry in ledger.as_array().unwrap().iter().filter(|e| e["kind"] == "capture") {
            *captures.entry(entry["payment_intent_id"].as_str().unwrap()).or_default() += 1;
        }
        assert!(captures.values().all(|n| *n == 1), "a payment captured twice: {captures:?}");
        let orders = self.admin("orders", "GET", "/orders", None).await;
        let mut per_request: HashMap<&str, usize> = HashMap::new();
        for order in orders.as_array().unwrap() {
            *per_request.entry(order["client_request_id"].as_str().unwrap()).or_default() += 1;
        }
        assert!(per_request.values().all(|n| *n == 1), "an order made twice: {per_request:?}");
        // A start cut off after its commit also runs, unacknowledged: at least
        // one order per acknowledged completion.
        assert!(orders.as_array().unwrap().len() >= outcomes.get("COMPLETED").copied().unwrap_or(0));
        let reservations = self.admin("inventory", "GET", "/reservations", None).await;
        let held: Vec<&Value> = reservations.as_array().unwrap().iter().filter(|r| r["status"] == "HELD").collect();
        assert!(held.is_empty(), "leaked reservations: {held:?}");

        let stuck = workflows
            .list_workflows(ListWorkflowsRequest { stuck_only: true, page_size: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(stuck.workflows.is_empty(), "stuck: {:?}", stuck.workflows);
        self.assert_invariants_hold().await;
    }

    /// Ends a scenario: `check-invariants` (no grace: every saga is over)
    /// finds nothing, and exits 0.
    pub async fn assert_invariants_hold(&self) {
        let (report, ok) = self.job("check-invariants", &["--grace", "0s"]).await;
        assert_eq!(report["violations"], serde_json::json!([]), "check-invariants: {report}");
        assert!(ok, "check-invariants exited non-zero: {report}");
        assert_eq!(report["ok"], true);
    }
}

/// `sagaflow jobs run NAME` against `server_url`: its stdout (JSON when it
/// printed a report) and whether it exited 0.
pub async fn run_job_raw(server_url: &str, name: &str, extra: &[&str]) -> (String, bool) {
    let output = tokio::process::Command::new(BIN)
        .args(["jobs", "run", name, "--server", server_url, "--output", "json", "--timeout", "90s"])
        .args(extra)
        .output()
        .await
        .unwrap();
    (String::from_utf8_lossy(&output.stdout).into_owned(), output.status.success())
}

/// `sagaflow jobs run NAME --output json` against `server_url`.
pub async fn run_job(server_url: &str, name: &str, extra: &[&str]) -> (Value, bool) {
    let output = tokio::process::Command::new(BIN)
        .args(["jobs", "run", name, "--server", server_url, "--output", "json", "--timeout", "90s"])
        .args(extra)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("jobs run {name} printed no report: {stdout} / {}", String::from_utf8_lossy(&output.stderr))
    });
    (report, output.status.success())
}

/// A checkout request of `items` for `customer`.
pub fn checkout(request_id: &str, customer: &str, items: &[(&str, u32)]) -> StartCheckoutRequest {
    StartCheckoutRequest {
        client_request_id: request_id.into(),
        customer_id: customer.into(),
        items: items.iter().map(|(sku, quantity)| Item { sku: (*sku).into(), quantity: *quantity }).collect(),
        shipping_address: "1 Test Street".into(),
        ..Default::default()
    }
}

/// The ledger's entries of `kind` (`capture`, `refund`) for one intent.
pub fn ledger_entries<'a>(ledger: &'a Value, kind: &str, payment_intent_id: &str) -> Vec<&'a Value> {
    ledger
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["payment_intent_id"] == payment_intent_id)
        .collect()
}

/// Polls `check` every 100 ms until it holds, for up to `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
