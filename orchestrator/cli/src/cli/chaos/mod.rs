//! `sagaflow chaos run`: the whole system on loopback, a steady load, and a
//! seed-derived schedule of `kill -9`s, fault switches and broker outages;
//! then the heal, the self-healing jobs and a report of every promise of
//! the failure scenarios (docs/contract.md) that was kept or broken.
//! `docs/chaos/` describes the experiments.

mod disrupt;
mod hostile;
mod link;
mod load;
mod matrix;
mod plan;
mod report;
mod system;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use sagaflow_proto::checkout::v1::GetCheckoutRequest;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{DescribeWorkflowRequest, ListWorkflowsRequest, SignalWorkflowRequest, WorkflowStatus};
use sagaflow_server::jobs::JobInput;
use sagaflow_server::workflows::jobs;
use serde_json::json;

use super::Output;
use super::shop::request;
use plan::PlanOptions;
use report::Report;
use system::{System, SystemOptions, Tokens};

/// A channel that carries a token: the chaos run's clients have auth on.
pub type Conn = super::connection::Conn;

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Run the system under a steady load and seeded faults, heal it, run the
    /// jobs, and report. Exits non-zero on any broken promise.
    Run(RunArgs),
    /// Print the fault schedule a seed gives, without running anything.
    Plan(RunArgs),
    /// Every step of the checkout and refund sagas × every fault kind × once or past the retry
    /// budget × with or without a cancel; checks each cell against the ledgers and writes the
    /// table (docs/chaos/fault-matrix.md). Exits non-zero if a cell fails.
    Matrix(matrix::MatrixArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How long the load and the faults last.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The seed of the fault schedule and the load (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkouts started per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Mean time between two disruptions.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    pub mean_gap: Duration,
    /// Run without nats-server even if it is installed.
    #[arg(long)]
    pub no_broker: bool,
    /// How long, after the heal, sagas may take to end (or be flagged stuck).
    #[arg(long, default_value = "240s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Where the processes keep their data and logs (default: a new temp dir, removed after a pass).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub async fn run(command: ChaosCommand, output: Output, logging: &super::Logging) -> anyhow::Result<()> {
    match command {
        ChaosCommand::Plan(args) => {
            let seed = args.seed.unwrap_or(0);
            let broker = !args.no_broker && system::find_nats_server().is_some();
            let schedule = plan::plan(PlanOptions { seed, duration: args.duration, mean_gap: args.mean_gap, broker });
            match output {
                Output::Json => println!("{}", serde_json::to_string(&schedule)?),
                Output::Text => {
                    for step in &schedule {
                        println!("{:>8} ms  {}", step.at_ms, serde_json::to_string(&step.action)?);
                    }
                    println!("{:?}", plan::kinds(&schedule));
                }
            }
            Ok(())
        }
        ChaosCommand::Matrix(args) => {
            let _telemetry = logging.init("sagaflow-chaos-matrix")?;
            if !matrix::run(args).await? {
                bail!("the fault matrix has failing cells");
            }
            Ok(())
        }
        ChaosCommand::Run(args) => {
            let _telemetry = logging.init("sagaflow-chaos")?;
            let report = run_experiment(args).await?;
            match output {
                Output::Json => println!("{}", report.json()),
                Output::Text => println!("{}", report.text()),
            }
            if !report.passed() {
                bail!("the chaos run broke {} promises", report.must_be_zero.total());
            }
            Ok(())
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
}

async fn run_experiment(args: RunArgs) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let chosen_dir = args.dir.clone();
    let dir = chosen_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sagaflow-chaos-{seed}-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let nats_binary = if args.no_broker { None } else { system::find_nats_server() };
    // Auth on, so that the hostile client is a tenant of its own (issue 26),
    // and the orchestrator at the usual 1,024 open files, so that its flood
    // meets the connection caps.
    let tokens = Tokens::generate();
    let mut system = System::new(SystemOptions {
        dir: dir.clone(),
        nats_binary,
        jobs_interval: Duration::from_secs(30),
        tokens: Some(tokens.clone()),
        open_files: Some(1024),
    })?;
    let outcome = experiment(&mut system, &args, seed, tokens).await;
    system.stop_all().await;
    let report = outcome?;
    eprintln!("chaos: logs and data in {}", dir.display());
    if report.passed() && chosen_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

async fn experiment(system: &mut System, args: &RunArgs, seed: u64, tokens: Tokens) -> anyhow::Result<Report> {
    system.start_all().await?;
    let schedule =
        plan::plan(PlanOptions { seed, duration: args.duration, mean_gap: args.mean_gap, broker: system.has_broker() });
    eprintln!(
        "chaos: seed {seed}, {} s, {} checkouts/s, {} disruptions planned; data in {}",
        args.duration.as_secs(),
        args.rate,
        schedule.len(),
        system.dir().display()
    );
    let shared = load::Shared::default();
    let base = load::channel(&system.server_url())?;
    let channel = super::connection::with_token(base.clone(), Some(&tokens.operator))?;
    let shop = super::connection::with_token(base.clone(), Some(&tokens.shop))?;
    let load = tokio::spawn(load::run(shop, channel.clone(), seed, args.rate, args.duration, Arc::clone(&shared)));
    let (grpc, http) = system.listeners();
    let reach = hostile::Reach { channel: base, grpc, http, server_url: system.server_url() };
    let down = hostile::orchestrator_down(&schedule);
    let hostile = tokio::spawn(hostile::run(reach, tokens, seed, Arc::clone(&shared), down, args.duration));
    let mut disruptor = disrupt::Disruptor::default();
    disruptor.play(system, &schedule, args.duration).await;
    eprintln!("chaos: healing");
    disruptor.heal(system).await?;
    load.await.context("the load task failed")?;
    let hostile = hostile.await.context("the hostile client's task failed")?;
    let ledger = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();

    let mut report = Report {
        seed,
        duration_s: args.duration.as_secs(),
        rate: args.rate,
        broker: system.has_broker(),
        faults: disruptor.applied.clone(),
        ..Report::default()
    };
    report.must_be_zero.hostile_got_through = hostile.got_through();
    report.hostile = hostile;
    eprintln!("chaos: waiting for {} checkouts and {} refunds to end", ledger.checkouts.len(), ledger.refunds.len());
    let mut open = settle(system, &mut disruptor, channel.clone(), args.settle).await?;
    // The operator's part of the heal: a saga flagged stuck (a pivot whose
    // outcome is unknown, a step or an undo that failed for good) gets the
    // retry signal now that every fault is gone.
    report.retried_after_heal = retry_flagged(channel.clone(), &open).await;
    if report.retried_after_heal > 0 {
        open = settle(system, &mut disruptor, channel.clone(), args.settle).await?;
    }
    report.cancels_sent = ledger.cancels_sent;
    report.cancels_accepted = ledger.cancels_accepted;
    report.crashes_restarted = disruptor.crashes_restarted;
    audit_workflows(&mut report, channel.clone(), &ledger).await?;
    report.must_be_zero.stuck_without_alert = open.iter().filter(|(_, stuck)| !stuck).count() as u64;
    audit_effects(&mut report, system, channel.clone(), &open, &ledger).await?;
    run_jobs(&mut report, system, channel).await;
    Ok(report)
}

/// Waits until every workflow has ended or is flagged stuck, restarting what
/// crashes meanwhile. Returns the workflows still open: (id, flagged).
async fn settle(
    system: &mut System,
    disruptor: &mut disrupt::Disruptor,
    channel: Conn,
    within: Duration,
) -> anyhow::Result<Vec<(String, bool)>> {
    let mut client = WorkflowServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        disruptor.supervise(system).await;
        let open = open_workflows(&mut client).await;
        match open {
            Ok(open) if open.iter().all(|(_, stuck)| *stuck) => return Ok(open),
            Ok(open) if tokio::time::Instant::now() >= deadline => return Ok(open),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Sends `sagaflow.retry` to every workflow flagged stuck; returns how many took it.
async fn retry_flagged(channel: Conn, open: &[(String, bool)]) -> u64 {
    let mut client = WorkflowServiceClient::new(channel);
    let mut retried = 0;
    for (workflow_id, _) in open.iter().filter(|(_, stuck)| *stuck) {
        let signal = SignalWorkflowRequest {
            workflow_id: workflow_id.clone(),
            name: "sagaflow.retry".into(),
            input: Vec::new(),
            identity: "chaos-operator".into(),
        };
        match client.signal_workflow(signal).await {
            Ok(_) => retried += 1,
            Err(status) => tracing::warn!(%workflow_id, %status, "chaos: the retry signal was refused"),
        }
    }
    retried
}

async fn open_workflows(client: &mut WorkflowServiceClient<Conn>) -> anyhow::Result<Vec<(String, bool)>> {
    let mut open = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_workflows(ListWorkflowsRequest {
                statuses: vec![WorkflowStatus::Running as i32, WorkflowStatus::Compensating as i32],
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        open.extend(page.workflows.into_iter().map(|w| (w.workflow_id, !w.stuck_reason.is_empty())));
        if page.next_page_token.is_empty() {
            return Ok(open);
        }
        page_token = page.next_page_token;
    }
}

/// How every acknowledged start ended; a start the server cannot find is lost.
async fn audit_workflows(report: &mut Report, channel: Conn, ledger: &load::Ledger) -> anyhow::Result<()> {
    let mut client = WorkflowServiceClient::new(channel);
    report.checkouts.started = ledger.checkouts.len() as u64;
    report.checkouts.unacknowledged = ledger.unacknowledged;
    report.refunds.started = ledger.refunds.len() as u64;
    report.refunds.unacknowledged = ledger.refunds_unacknowledged;
    let ids = ledger.checkouts.iter().map(|(_, id)| (id, true)).chain(ledger.refunds.iter().map(|id| (id, false)));
    for (workflow_id, is_checkout) in ids {
        let described = client.describe_workflow(DescribeWorkflowRequest { workflow_id: workflow_id.clone() }).await;
        let summary = match described {
            Ok(answer) => answer.into_inner().summary.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::error!(%workflow_id, "an acknowledged start is lost");
                report.must_be_zero.acknowledged_starts_lost += 1;
                continue;
            }
            Err(status) => bail!("describe {workflow_id}: {status}"),
        };
        let status = WorkflowStatus::try_from(summary.status).unwrap_or(WorkflowStatus::Unspecified);
        if !is_checkout {
            report.refunds.completed += u64::from(status == WorkflowStatus::Completed);
            continue;
        }
        let c = &mut report.checkouts;
        match status {
            WorkflowStatus::Completed => c.completed += 1,
            WorkflowStatus::Compensated => c.compensated += 1,
            WorkflowStatus::Failed => c.failed_before_any_effect += 1,
            WorkflowStatus::Running | WorkflowStatus::Compensating if !summary.stuck_reason.is_empty() => {
                c.stuck_flagged += 1;
            }
            WorkflowStatus::Running | WorkflowStatus::Compensating => {}
            _ => c.other += 1,
        }
    }
    Ok(())
}

/// Double effects and leaked reservations, from the services' own records.
async fn audit_effects(
    report: &mut Report,
    system: &System,
    channel: Conn,
    open: &[(String, bool)],
    started: &load::Ledger,
) -> anyhow::Result<()> {
    let group = |name: &str| plan::GROUPS.iter().position(|g| *g == name).unwrap_or(0);
    let read = |name: &str, path: &'static str| {
        let admin = system.admin_url(group(name));
        async move { request(&admin, "GET", path, None).await }
    };
    let ledger = read("payments", "/payments/ledger").await?;
    let orders = read("orders", "/orders").await?;
    let shipments = read("shipping", "/shipments").await?;
    let (doubles, evidence) = report::double_effects(&ledger, &orders, &shipments);
    for line in &evidence {
        tracing::error!(evidence = %line, "chaos: an effect was applied twice");
    }
    report.must_be_zero.double_effects = doubles;
    // A checkout still open (flagged stuck) may rightly hold its stock.
    let mut checkouts = CheckoutServiceClient::new(channel);
    let mut owned = HashSet::new();
    for (workflow_id, _) in open {
        if let Ok(checkout) = checkouts.get_checkout(GetCheckoutRequest { checkout_id: workflow_id.clone() }).await {
            owned.insert(checkout.into_inner().reservation_id);
        }
    }
    let reservations = read("inventory", "/reservations").await?;
    // Every checkout's status against the ledger, the orders and the stock.
    let reservation_of = |id: &str| {
        reservations
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["reservation_id"] == id)
            .and_then(|r| r["status"].as_str())
            .unwrap_or("NONE")
            .to_owned()
    };
    let still_open: HashSet<&str> = open.iter().map(|(id, _)| id.as_str()).collect();
    for (_, checkout_id) in &started.checkouts {
        let Ok(checkout) = checkouts.get_checkout(GetCheckoutRequest { checkout_id: checkout_id.clone() }).await else {
            continue;
        };
        let checkout = checkout.into_inner();
        let status = super::checkout::checkout_status_name(checkout.status);
        let shown = report::Shown {
            checkout_id,
            status,
            total_cents: checkout.total_cents,
            refunded_cents: checkout.refunded_cents,
            payment_intent_id: &checkout.payment_intent_id,
            ended: !still_open.contains(checkout_id.as_str()),
        };
        let found = report::ledger_disagreements(&shown, &ledger, &orders, &reservation_of(&checkout.reservation_id));
        if !found.is_empty() {
            tracing::error!(%checkout_id, status, ?found, "chaos: a checkout's status disagrees with the ledger");
            report.must_be_zero.status_disagrees_with_ledger += 1;
        }
    }
    let leaked = report::leaked_reservations(&reservations, &owned);
    for id in &leaked {
        tracing::error!(reservation_id = %id, "chaos: a reservation holds stock nobody will release");
    }
    report.must_be_zero.leaked_reservations = leaked.len() as u64;
    Ok(())
}

/// Runs every self-healing job once, repairs first, `check-invariants` last.
async fn run_jobs(report: &mut Report, system: &System, channel: Conn) {
    for name in jobs::NAMES {
        if *name == jobs::REPLAY_FAILED_EVENTS && !system.has_broker() {
            continue;
        }
        let input = JobInput { grace_ms: Some(0), ..JobInput::default() };
        let client = WorkflowServiceClient::new(channel.clone());
        match super::jobs::run_job_on(client, name, &input, Duration::from_secs(180)).await {
            Ok(found) => {
                if *name == jobs::CHECK_INVARIANTS {
                    report.must_be_zero.invariant_violations = found.violations.len() as u64;
                }
                let summary = json!({
                    "summary": found.headline(),
                    "workflow_id": found.workflow_id,
                    "violations": found.violations,
                });
                report.jobs.insert((*name).to_owned(), summary);
            }
            Err(e) => {
                tracing::error!(job = name, error = %e, "chaos: a self-healing job failed");
                report.must_be_zero.jobs_failed += 1;
                report.jobs.insert((*name).to_owned(), json!({ "error": e.to_string() }));
            }
        }
    }
}
