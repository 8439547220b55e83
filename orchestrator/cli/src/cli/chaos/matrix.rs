//! `sagaflow chaos matrix`: every step of the checkout and refund sagas
//! (compensation included) × every fault kind × once or past the step's retry
//! budget × with or without a cancel while the step runs (ADR 0006).
//!
//! Each cell runs one checkout (and, for the refund's steps, one refund of
//! it), sets the fault, sends the cancel once the step has been attempted,
//! waits for the saga to end or to be flagged stuck, then heals: it clears the
//! faults and, if the saga is flagged, sends `sagaflow.retry` as an operator
//! would, and waits for the end. Then it checks money, stock and orders
//! against the services' ledgers, and that the checkout's status agrees with
//! them. Cells run in lanes, each an independent system (a server at
//! `--time-scale`, and one worker with every shop service), one cell at a
//! time per lane, since a fault switch is per process.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{
    Checkout, CheckoutStatus, GetCheckoutRequest, Item, RefundCheckoutRequest, StartCheckoutRequest,
};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    CancelWorkflowRequest, DescribeWorkflowRequest, GetWorkflowHistoryRequest, HistoryEvent, SignalWorkflowRequest,
    WorkflowStatus, WorkflowSummary,
};
use sagaflow_server::jobs::JobInput;
use sagaflow_server::workflows::jobs;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::load;
use super::report::{Shown, ledger_disagreements};
use super::system::free_ports;
use crate::cli::shop::request;

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Multiply every saga's durations by this: at 0.05 the capture's 10 s
    /// start-to-close is 500 ms, and its five attempts time out in 3 s.
    #[arg(long, default_value_t = 0.05)]
    pub time_scale: f64,
    /// Independent systems (a server and a shop worker each) running cells side by side.
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
    /// Only the cells whose name contains this, such as `capture/hang` or `/cancel`.
    #[arg(long)]
    pub only: Option<String>,
    /// Where to write the table of cells and outcomes.
    #[arg(long, default_value = "docs/chaos/fault-matrix.md")]
    pub out: PathBuf,
    /// Where the processes keep their data and logs (default: a new temp dir, removed after a pass).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Saga {
    Checkout,
    Refund,
}

/// A step under test: its saga, its name in the definition, the activity the
/// fault hits, and its retry budget (0: unlimited).
#[derive(Debug, Clone, Copy)]
struct StepUnderTest {
    saga: Saga,
    step: &'static str,
    activity: &'static str,
    budget: u32,
    /// The fault hits the step's compensation (the checkout is declined to get there).
    compensation: bool,
}

const fn step(saga: Saga, step: &'static str, activity: &'static str, budget: u32) -> StepUnderTest {
    StepUnderTest { saga, step, activity, budget, compensation: false }
}

/// Every step of the shipped checkout and refund sagas, with the budgets of
/// `sagaflow_workflows::shop`; `reserve`'s compensation is the one undo.
const STEPS: &[StepUnderTest] = &[
    step(Saga::Checkout, "price", "catalog.price_snapshot", 5),
    step(Saga::Checkout, "reserve", "inventory.reserve", 5),
    step(Saga::Checkout, "capture", "payments.capture", 5),
    step(Saga::Checkout, "commit", "inventory.commit", 0),
    step(Saga::Checkout, "order", "orders.create", 0),
    step(Saga::Checkout, "ship", "shipping.create_shipment", 0),
    step(Saga::Checkout, "shipped", "orders.mark_shipped", 0),
    step(Saga::Checkout, "notify", "notifications.send", 0),
    StepUnderTest {
        saga: Saga::Checkout,
        step: "reserve",
        activity: "inventory.release",
        budget: 10,
        compensation: true,
    },
    step(Saga::Refund, "refund", "payments.refund", 10),
    step(Saga::Refund, "record", "orders.record_refund", 0),
];

const KINDS: &[&str] = &["error", "fatal", "hang", "hang-after-effect", "crash-after-effect"];

/// "More than the budget" for a step retried without limit: past the
/// shipment's escalation threshold (5).
const UNLIMITED_STAND_IN: u32 = 6;

/// How long a cell may take to end or be flagged, and then to end after the heal.
const CELL_DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
struct Cell {
    number: usize,
    target: StepUnderTest,
    kind: &'static str,
    over_budget: bool,
    cancel: bool,
}

impl Cell {
    /// How many calls the fault hits.
    fn hits(&self) -> u32 {
        match (self.over_budget, self.target.budget) {
            (false, _) => 1,
            (true, 0) => UNLIMITED_STAND_IN,
            (true, budget) => budget + 1,
        }
    }

    fn step_label(&self) -> String {
        if self.target.compensation { format!("undo {}", self.target.step) } else { self.target.step.to_owned() }
    }

    fn name(&self) -> String {
        let saga = match self.target.saga {
            Saga::Checkout => "checkout",
            Saga::Refund => "refund",
        };
        let count = if self.over_budget { "over-budget" } else { "once" };
        let step = self.step_label().replace(' ', "-");
        format!("{saga}/{step}/{}/{count}{}", self.kind, if self.cancel { "/cancel" } else { "" })
    }

    fn spec(&self, hits: u32) -> String {
        format!("{}={}:{hits}", self.target.activity, self.kind)
    }
}

fn cells() -> Vec<Cell> {
    let mut all = Vec::new();
    for target in STEPS {
        for kind in KINDS {
            for over_budget in [false, true] {
                for cancel in [false, true] {
                    all.push(Cell { number: all.len() + 1, target: *target, kind, over_budget, cancel });
                }
            }
        }
    }
    all
}

/// What one cell did and found.
#[derive(Debug, Clone)]
struct CellResult {
    cell: Cell,
    /// What happened on the way: attempts, flags, the cancel's fate, the heal.
    path: String,
    /// The checkout's final status (and the refund's, for refund cells).
    end: String,
    /// Broken promises; empty when the cell passed.
    failures: Vec<String>,
    elapsed: Duration,
}

/// A server and a worker hosting every shop service, on fixed loopback ports.
struct Lane {
    number: usize,
    exe: PathBuf,
    dir: PathBuf,
    grpc_port: u16,
    admin_port: u16,
    time_scale: f64,
    server: Option<Child>,
    worker: Option<Child>,
    /// Crash-after-effect hits left, restored on each restart of the worker
    /// (a switch set through the admin API dies with the process).
    crashes_left: Option<(String, u32)>,
    workflows: WorkflowServiceClient<Channel>,
    checkouts: CheckoutServiceClient<Channel>,
}

const ALL_SERVICES: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";

impl Lane {
    async fn start(number: usize, exe: &Path, root: &Path, time_scale: f64) -> anyhow::Result<Self> {
        let dir = root.join(format!("lane-{number}"));
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
        let [grpc_port, http_port, admin_port] = free_ports(3)?[..] else { bail!("no free ports") };
        let url = format!("http://127.0.0.1:{grpc_port}");
        let channel = load::channel(&url)?;
        let mut lane = Self {
            number,
            exe: exe.to_owned(),
            dir,
            grpc_port,
            admin_port,
            time_scale,
            server: None,
            worker: None,
            crashes_left: None,
            workflows: WorkflowServiceClient::new(channel.clone()),
            checkouts: CheckoutServiceClient::new(channel),
        };
        let mut server = Command::new(&lane.exe);
        server
            .args(["server", "--listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .arg("--data-dir")
            .arg(lane.dir.join("orchestrator"))
            .args(["--time-scale", &lane.time_scale.to_string()])
            .args(["--jobs-interval", "0s", "--stuck-check-interval", "200ms", "--no-progress-after", "1h"]);
        lane.server = Some(lane.spawn(server, "orchestrator", grpc_port).await?);
        lane.start_worker(&[]).await?;
        Ok(lane)
    }

    fn log(&self, name: &str) -> anyhow::Result<Stdio> {
        let path = self.dir.join("logs").join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Stdio::from(file))
    }

    async fn spawn(&self, mut command: Command, name: &str, port: u16) -> anyhow::Result<Child> {
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(self.log(name)?).stderr(self.log(name)?);
        command.kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("lane {}: {name} exited at start ({status}); see {}", self.number, self.dir.display());
            }
            if Instant::now() > deadline {
                bail!("lane {}: {name} did not listen on {port} within 60 s", self.number);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(child)
    }

    async fn start_worker(&mut self, faults: &[String]) -> anyhow::Result<()> {
        let mut worker = Command::new(&self.exe);
        worker
            .args(["worker", "--server", &format!("http://127.0.0.1:{}", self.grpc_port), "--services", ALL_SERVICES])
            .arg("--data-dir")
            .arg(self.dir.join("shop"))
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port), "--initial-stock", "1000000"]);
        for fault in faults {
            worker.args(["--fault", fault]);
        }
        self.worker = Some(self.spawn(worker, "worker", self.admin_port).await?);
        Ok(())
    }

    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        request(&self.admin_url(), method, path, body).await
    }

    /// Restarts the worker if an injected crash took it down; true if it did.
    async fn supervise(&mut self) -> anyhow::Result<bool> {
        let exited = match self.worker.as_mut() {
            Some(child) => child.try_wait()?.is_some(),
            None => true,
        };
        if !exited {
            return Ok(false);
        }
        let faults = match self.crashes_left.take() {
            Some((activity, left)) if left > 1 => {
                self.crashes_left = Some((activity.clone(), left - 1));
                vec![format!("{activity}=crash-after-effect:{}", left - 1)]
            }
            _ => Vec::new(),
        };
        self.start_worker(&faults).await?;
        Ok(true)
    }

    async fn set_fault(&mut self, cell: &Cell) -> anyhow::Result<()> {
        let hits = cell.hits();
        self.admin("POST", "/faults", Some(&json!({ "spec": cell.spec(hits) }))).await?;
        if cell.kind == "crash-after-effect" {
            self.crashes_left = Some((cell.target.activity.to_owned(), hits));
        }
        Ok(())
    }

    /// The heal: no fault left, the worker up.
    async fn heal(&mut self) -> anyhow::Result<()> {
        self.crashes_left = None;
        self.supervise().await?;
        // The worker may be restarting from a crash this very moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.admin("DELETE", "/faults", None).await {
            self.supervise().await?;
            if Instant::now() > deadline {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn summary(&mut self, workflow_id: &str) -> anyhow::Result<WorkflowSummary> {
        let described =
            self.workflows.describe_workflow(DescribeWorkflowRequest { workflow_id: workflow_id.into() }).await?;
        Ok(described.into_inner().summary.unwrap_or_default())
    }

    async fn history(&mut self, workflow_id: &str) -> anyhow::Result<Vec<HistoryEvent>> {
        let request = GetWorkflowHistoryRequest {
            workflow_id: workflow_id.into(),
            from_seq: 1,
            page_size: 10_000,
            wait_ms: 0,
            archived: false,
        };
        Ok(self.workflows.get_workflow_history(request).await?.into_inner().events)
    }

    /// Waits until the workflow ends or is flagged stuck, restarting a
    /// crashed worker meanwhile; returns its summary.
    async fn settle(&mut self, workflow_id: &str) -> anyhow::Result<WorkflowSummary> {
        let deadline = Instant::now() + CELL_DEADLINE;
        loop {
            self.supervise().await?;
            let summary = self.summary(workflow_id).await?;
            if sagaflow_proto::is_terminal(summary.status) || !summary.stuck_reason.is_empty() {
                return Ok(summary);
            }
            if Instant::now() > deadline {
                bail!("{workflow_id} neither ended nor was flagged within {CELL_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends the cancel once the step under test has been attempted.
    async fn cancel_during(&mut self, workflow_id: &str, cell: &Cell) -> anyhow::Result<String> {
        let deadline = Instant::now() + CELL_DEADLINE;
        loop {
            self.supervise().await?;
            let attempted = self.history(workflow_id).await?.iter().any(|e| {
                matches!(&e.attributes, Some(Attributes::ActivityScheduled(s))
                    if s.step == cell.target.step && s.compensation == cell.target.compensation)
            });
            if attempted {
                break;
            }
            let summary = self.summary(workflow_id).await?;
            if sagaflow_proto::is_terminal(summary.status) {
                return Ok("cancel: the step never ran".into());
            }
            if Instant::now() > deadline {
                bail!("step {} of {workflow_id} was not attempted within {CELL_DEADLINE:?}", cell.step_label());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let request = CancelWorkflowRequest {
            workflow_id: workflow_id.into(),
            reason: "matrix".into(),
            identity: "matrix".into(),
        };
        Ok(match self.workflows.cancel_workflow(request).await {
            Ok(_) => "cancel accepted".into(),
            Err(status) if status.code() == tonic::Code::FailedPrecondition && status.message().contains("pivot") => {
                "cancel refused at once (past the pivot)".into()
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                "cancel too late (the saga had ended)".into()
            }
            Err(status) => bail!("cancel of {workflow_id}: {status}"),
        })
    }

    /// The saga under test from its fault to its end: wait, heal, and if
    /// it was flagged, the retry signal. Returns what happened.
    async fn drive(&mut self, workflow_id: &str, cell: &Cell) -> anyhow::Result<Vec<String>> {
        let mut path = Vec::new();
        if cell.cancel {
            path.push(self.cancel_during(workflow_id, cell).await?);
        }
        let first = self.settle(workflow_id).await?;
        self.heal().await?;
        if !first.stuck_reason.is_empty() && !sagaflow_proto::is_terminal(first.status) {
            path.push(format!("flagged {}", first.stuck_reason));
            let retry = SignalWorkflowRequest {
                workflow_id: workflow_id.into(),
                name: "sagaflow.retry".into(),
                input: Vec::new(),
                identity: "matrix".into(),
            };
            self.workflows.signal_workflow(retry).await?;
            path.push("healed, retried".into());
            let second = self.settle(workflow_id).await?;
            if !sagaflow_proto::is_terminal(second.status) {
                bail!("{workflow_id} flagged {} again after the heal and the retry", second.stuck_reason);
            }
        }
        Ok(path)
    }

    async fn start_checkout(&mut self, cell: &Cell, declined: bool) -> anyhow::Result<String> {
        let request = StartCheckoutRequest {
            client_request_id: format!("matrix-{}", cell.number),
            customer_id: format!("cust-{}", cell.number),
            items: vec![Item { sku: "sku-mug".into(), quantity: 2 }, Item { sku: "sku-tee".into(), quantity: 1 }],
            payment_method: if declined { "card_declined".into() } else { String::new() },
            shipping_address: "1 Matrix Road".into(),
            ..Default::default()
        };
        Ok(self.checkouts.start_checkout(request).await?.into_inner().checkout_id)
    }

    async fn get_checkout(&mut self, checkout_id: &str) -> anyhow::Result<Checkout> {
        let request = GetCheckoutRequest { checkout_id: checkout_id.into() };
        Ok(self.checkouts.get_checkout(request).await?.into_inner())
    }

    async fn run_cell(&mut self, cell: &Cell) -> anyhow::Result<(Vec<String>, String, Vec<String>)> {
        let mut path = Vec::new();
        let (checkout_id, refund) = match cell.target.saga {
            Saga::Checkout => {
                self.set_fault(cell).await?;
                // The undo runs when the card is declined.
                let checkout_id = self.start_checkout(cell, cell.target.compensation).await?;
                path.extend(self.drive(&checkout_id, cell).await?);
                (checkout_id, None)
            }
            Saga::Refund => {
                let checkout_id = self.start_checkout(cell, false).await?;
                let shipped = self.settle(&checkout_id).await?;
                if shipped.status != WorkflowStatus::Completed as i32 {
                    bail!("the checkout to refund ended {}", status_name(shipped.status));
                }
                let total = self.get_checkout(&checkout_id).await?.total_cents;
                self.set_fault(cell).await?;
                let refund_id = format!("matrix-refund-{}", cell.number);
                let request = RefundCheckoutRequest {
                    checkout_id: checkout_id.clone(),
                    refund_id: refund_id.clone(),
                    amount_cents: total,
                };
                let workflow_id = self.checkouts.refund_checkout(request).await?.into_inner().refund_workflow_id;
                path.extend(self.drive(&workflow_id, cell).await?);
                (checkout_id, Some((workflow_id, refund_id)))
            }
        };
        let watched = refund.as_ref().map_or(checkout_id.as_str(), |(id, _)| id.as_str()).to_owned();
        let history = self.history(&watched).await?;
        let attempts = history
            .iter()
            .filter(|e| {
                matches!(&e.attributes, Some(Attributes::ActivityScheduled(s))
                    if s.step == cell.target.step && s.compensation == cell.target.compensation)
            })
            .count();
        path.insert(0, format!("{attempts} attempt{}", if attempts == 1 { "" } else { "s" }));
        if history.iter().any(|e| matches!(e.attributes, Some(Attributes::CancelRefused(_)))) {
            path.push("cancel refused (CancelRefused)".into());
        }
        if history.iter().any(|e| matches!(e.attributes, Some(Attributes::CompensationStarted(_)))) {
            path.push("compensated".into());
        }
        let (end, failures) = self.check(&checkout_id, refund.as_ref()).await?;
        Ok((path, end, failures))
    }

    /// Money, stock and orders against the ledgers, and the checkout's
    /// status against all three.
    async fn check(
        &mut self,
        checkout_id: &str,
        refund: Option<&(String, String)>,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let checkout = self.get_checkout(checkout_id).await?;
        let saga = self.summary(checkout_id).await?;
        let ledger = self.admin("GET", "/payments/ledger", None).await?;
        let orders = self.admin("GET", "/orders", None).await?;
        let reservation = self
            .admin("GET", &format!("/reservations/{}", checkout.reservation_id), None)
            .await
            .map_or_else(|_| "NONE".to_owned(), |r| r["status"].as_str().unwrap_or("NONE").to_owned());
        let status = CheckoutStatus::try_from(checkout.status).unwrap_or_default();
        let ended = sagaflow_proto::is_terminal(saga.status);
        let shown = Shown {
            checkout_id,
            status: status_label(status),
            total_cents: checkout.total_cents,
            refunded_cents: checkout.refunded_cents,
            payment_intent_id: &checkout.payment_intent_id,
            ended,
        };
        let mut failures = ledger_disagreements(&shown, &ledger, &orders, &reservation);
        let entries: Vec<&Value> = ledger
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["payment_intent_id"] == checkout.payment_intent_id.as_str())
            .collect();
        let captures = entries.iter().filter(|e| e["kind"] == "capture").count();
        if captures > 1 {
            failures.push(format!("captured {captures} times"));
        }
        if !ended {
            failures.push(format!("the checkout's saga is still {} ({})", status_name(saga.status), saga.stuck_reason));
        }
        let mut fail = |what: String| failures.push(what);
        let mut end = format!("{} ({})", status_label(status), status_name(saga.status));
        if let Some((workflow_id, refund_id)) = refund {
            let summary = self.summary(workflow_id).await?;
            let ours = entries.iter().filter(|e| e["refund_id"] == refund_id.as_str()).count();
            match (WorkflowStatus::try_from(summary.status).unwrap_or_default(), ours) {
                (WorkflowStatus::Completed, 1) => {}
                (WorkflowStatus::Failed | WorkflowStatus::Compensated | WorkflowStatus::Cancelled, 0) => {}
                (other, n) => fail(format!("the refund ended {} with {n} ledger entries", status_name(other as i32))),
            }
            end = format!("{end}; refund {}", status_name(summary.status));
        }
        Ok((end, failures))
    }

    async fn stop(mut self) {
        for child in [self.worker.take(), self.server.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn status_name(status: i32) -> &'static str {
    WorkflowStatus::try_from(status).map_or("UNKNOWN", sagaflow_proto::status_name)
}

fn status_label(status: CheckoutStatus) -> &'static str {
    status.as_str_name().trim_start_matches("CHECKOUT_STATUS_")
}

/// Runs `cells` one after another on a fresh lane, then the invariants job
/// on what they left.
async fn run_lane(
    number: usize,
    exe: PathBuf,
    root: PathBuf,
    time_scale: f64,
    cells: Vec<Cell>,
) -> anyhow::Result<(Vec<CellResult>, Vec<String>)> {
    let mut lane = Lane::start(number, &exe, &root, time_scale).await?;
    let mut results = Vec::new();
    for cell in cells {
        let started = Instant::now();
        let outcome = lane.run_cell(&cell).await;
        let (path, end, failures) = match outcome {
            Ok(found) => found,
            Err(e) => (Vec::new(), "-".into(), vec![format!("{e:#}")]),
        };
        if !failures.is_empty() {
            tracing::error!(cell = %cell.name(), ?failures, "matrix: a cell failed");
            // Leave nothing behind for the next cell.
            let _ = lane.heal().await;
        }
        eprintln!(
            "matrix: lane {number} {} {} in {:.1} s",
            cell.name(),
            if failures.is_empty() { "ok" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        results.push(CellResult { cell, path: path.join("; "), end, failures, elapsed: started.elapsed() });
    }
    let input = JobInput { grace_ms: Some(0), ..JobInput::default() };
    let url = format!("http://127.0.0.1:{}", lane.grpc_port);
    let invariants = match crate::cli::jobs::run_job(&url, jobs::CHECK_INVARIANTS, &input, Duration::from_secs(120))
        .await
    {
        Ok(report) => {
            report.violations.iter().map(|v| format!("{} {}: {}", v["invariant"], v["subject"], v["detail"])).collect()
        }
        Err(e) => vec![format!("check-invariants failed: {e:#}")],
    };
    lane.stop().await;
    Ok((results, invariants))
}

pub async fn run(args: MatrixArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut chosen = cells();
    if let Some(only) = &args.only {
        chosen.retain(|c| c.name().contains(only.as_str()));
    }
    if chosen.is_empty() {
        bail!("no cell matches {:?}", args.only);
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sagaflow-matrix-{}", std::process::id())));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Restarts run this very binary: a link in the run's directory survives a rebuild mid-run.
    let exe = root.join("sagaflow");
    let _ = std::fs::remove_file(&exe);
    let current = std::env::current_exe().context("cannot find the sagaflow binary")?;
    if std::fs::hard_link(&current, &exe).is_err() {
        std::fs::copy(&current, &exe).with_context(|| format!("cannot copy {}", current.display()))?;
    }
    let lanes = args.lanes.clamp(1, chosen.len());
    eprintln!(
        "matrix: {} cells on {lanes} lanes at time scale {}; data in {}",
        chosen.len(),
        args.time_scale,
        root.display()
    );
    // Deal the cells round-robin, so that the slow kinds spread over the lanes.
    let mut dealt: Vec<Vec<Cell>> = vec![Vec::new(); lanes];
    for (i, cell) in chosen.into_iter().enumerate() {
        dealt[i % lanes].push(cell);
    }
    let mut running = Vec::new();
    for (number, cells) in dealt.into_iter().enumerate() {
        running.push(tokio::spawn(run_lane(number + 1, exe.clone(), root.clone(), args.time_scale, cells)));
    }
    let mut results = Vec::new();
    let mut invariants = Vec::new();
    for (number, lane) in running.into_iter().enumerate() {
        let (cells, found) = lane.await.context("a lane panicked")??;
        results.extend(cells);
        invariants.extend(found.into_iter().map(|v| format!("lane {}: {v}", number + 1)));
    }
    results.sort_by_key(|r| r.cell.number);
    let passed = results.iter().all(|r| r.failures.is_empty()) && invariants.is_empty();
    let table = markdown(&results, &invariants, args.time_scale, lanes, started.elapsed());
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&args.out, table).with_context(|| format!("cannot write {}", args.out.display()))?;
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    println!(
        "fault matrix: {} cells, {} passed, {failed} failed, {} invariant violations, in {:.0} s; table in {}",
        results.len(),
        results.len() - failed,
        invariants.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    if passed && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("matrix: logs and data in {}", root.display());
    }
    Ok(passed)
}

fn markdown(results: &[CellResult], invariants: &[String], time_scale: f64, lanes: usize, took: Duration) -> String {
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The fault matrix\n\n\
         Written by `sagaflow chaos matrix` (ADR 0006). Every step of the checkout and refund sagas, the\n\
         reservation's compensation (`undo reserve`, reached by a declined card) included, crossed with every\n\
         fault kind, hitting once or more times than the step's retry budget (budget + 1; 6 for a step retried\n\
         without limit), with and without a `workflow cancel` sent once the step has been attempted.\n\n\
         Each cell runs one checkout (and one full refund of it for the refund's steps), waits for the saga to\n\
         end or to be flagged stuck (the flag is the alert: `sagaflow_stuck_workflows{{reason}}`), heals (clears\n\
         the faults, restarts a crashed worker), sends `sagaflow.retry` to a flagged saga as an operator would,\n\
         and waits for the end. It then checks the checkout's status against the payments ledger, the orders and\n\
         the reservation: SHIPPED or REFUNDED means captured once, ordered once, refunds as the ledger has them,\n\
         stock sold; CANCELLED means no money kept, no order, no stock held. After the last cell of a lane,\n\
         `check-invariants` runs with no grace period.\n\n\
         Sagas at time scale {time_scale} (the capture's 10 s start-to-close is {} ms), {lanes} lanes: \
         {} cells, {} passed, {failed} failed, {} invariant violations, in {:.0} s.\n",
        (10_000.0 * time_scale).round(),
        results.len(),
        results.len() - failed,
        invariants.len(),
        took.as_secs_f64(),
    );
    out.push_str("| # | saga | step | fault | hits | cancel | what happened | ends | result |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let saga = if r.cell.target.saga == Saga::Checkout { "checkout" } else { "refund" };
        let result =
            if r.failures.is_empty() { "ok".to_owned() } else { format!("**FAIL**: {}", r.failures.join("; ")) };
        let _ = writeln!(
            out,
            "| {} | {saga} | {} | {} | {} | {} | {} | {} | {} |",
            r.cell.number,
            r.cell.step_label(),
            r.cell.kind,
            r.cell.hits(),
            if r.cell.cancel { "yes" } else { "no" },
            r.path.replace('|', "/"),
            r.end,
            result.replace('|', "/"),
        );
    }
    out.push_str("\n## Invariants after each lane\n\n");
    if invariants.is_empty() {
        out.push_str("`check-invariants --grace 0s`: no violation in any lane.\n");
    } else {
        for v in invariants {
            let _ = writeln!(out, "- {v}");
        }
    }
    let slowest = results.iter().map(|r| r.elapsed).max().unwrap_or_default();
    let _ = writeln!(out, "\nThe slowest cell took {:.1} s.", slowest.as_secs_f64());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_crosses_every_step_kind_count_and_cancel() {
        let all = cells();
        assert_eq!(all.len(), STEPS.len() * KINDS.len() * 2 * 2);
        let names: std::collections::BTreeSet<String> = all.iter().map(Cell::name).collect();
        assert_eq!(names.len(), all.len(), "names are unique");
        let capture = all.iter().find(|c| c.name() == "checkout/capture/hang-after-effect/over-budget").unwrap();
        assert_eq!(capture.spec(capture.hits()), "payments.capture=hang-after-effect:6");
        let undo = all.iter().find(|c| c.name() == "checkout/undo-reserve/hang/over-budget/cancel").unwrap();
        assert_eq!(undo.hits(), 11);
        let ship = all.iter().find(|c| c.name() == "checkout/ship/error/over-budget").unwrap();
        assert_eq!(ship.hits(), UNLIMITED_STAND_IN);
    }
}
