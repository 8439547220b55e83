//! `sagaflow bench`: the end-to-end load generator.
//!
//! The standard workload is a saga of four activities in sequence (the `bench`
//! workflow type), each run by a separate worker process over gRPC on
//! loopback. A client starts each saga with a fresh request id and awaits its
//! end; a saga's latency runs from the start call to the end the client sees.
//! Without `--server`, every phase gets a fresh orchestrator and worker, so
//! that one phase's history cannot slow the next one down.

mod restart;
mod soak;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, ValueEnum};
use hdrhistogram::Histogram;
use sagaflow_proto::checkout::v1::checkout_service_client::CheckoutServiceClient;
use sagaflow_proto::checkout::v1::{Item, StartCheckoutRequest};
use sagaflow_proto::status_name;
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, AwaitWorkflowResponse, ExecuteWorkflowRequest, StartWorkflowRequest, WorkflowStatus,
};
use sagaflow_server::ownership::{address_of, cluster_view};
use sagaflow_server::store::ShardLease;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::server::PlacementArg;
use super::workflow::{Conn, connect_channel, status_error};

/// The server's own bound on an await; past it a saga counts as an error.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// A client-side bound a little past the server's, so that a lost reply cannot hang a client task.
const AWAIT_GRACE: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fresh server or worker may take to come up (the warm-up saga included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Latencies are recorded in microseconds, up to this bound (larger values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// The worker runs far more tasks at once than there are clients, so that its
/// slots are never what limits a phase.
const MIN_WORKER_CONCURRENCY: u32 = 256;
/// How many error messages a phase keeps to show.
const ERROR_SAMPLES: usize = 5;
/// The services the reference shop's checkout needs.
const SHOP_SERVICES: &str = "catalog,coupons,inventory,payments,orders,shipping,notifications";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseChoice {
    A,
    B,
    C,
    D,
    All,
    /// Not part of `all`: N workflows left open (100,000 by default), then
    /// `kill -9` and a restart; reports how soon the server serves again and
    /// its memory.
    Restart,
    /// Not part of `all`: phase c's load for `--duration`, on a server with a short retention;
    /// samples its RSS and data size and fails if either keeps growing.
    Soak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchWorkflow {
    /// The standard four-step saga on the bench activities.
    Bench,
    /// The reference shop's checkout, started through CheckoutService.
    Checkout,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which phase to run: a (N=2000, C=1), b (N=10000, C=64), c (N=3000,
    /// C=64, 5 ms per activity), d (200 sagas whose capture fails, all must
    /// end COMPENSATED), or all of them in order.
    #[arg(long, value_enum, default_value_t = PhaseChoice::All)]
    pub phase: PhaseChoice,
    /// Sagas per phase (overrides the phase's own).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub n: Option<u64>,
    /// Client tasks, each with one saga in flight (overrides the phase's own).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: Option<u32>,
    /// Latency of every activity, in milliseconds (overrides the phase's own; spawned workers only).
    #[arg(long)]
    pub activity_latency_ms: Option<u64>,
    /// The saga to run.
    #[arg(long, value_enum, default_value_t = BenchWorkflow::Bench)]
    pub workflow: BenchWorkflow,
    /// With --server: the orchestrator's pid, to report its peak RSS and CPU.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Where spawned servers and workers keep their data, one folder per phase
    /// (default: a fresh temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data of the spawned servers and workers instead of removing it.
    #[arg(long)]
    pub keep_data: bool,
    /// Spawned servers keep their workflows in PostgreSQL at this URL (as `server --store`)
    /// instead of sled. Phases share the database: their request ids differ.
    #[arg(long, value_name = "URL", value_parser = super::server::parse_store_url)]
    pub store: Option<String>,
    /// With --store: how many servers share it (the server's CPU and RSS are summed over them).
    /// By default they share the shards out, each serving its share and forwarding calls about
    /// the others'; on one small machine (2 cores, PostgreSQL on them too) that shows the
    /// overhead of spreading, not scaling. With --placement one-node one serves and the others
    /// stand by, which measures what standbys cost.
    #[arg(long, default_value_t = 1, requires = "store", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub nodes: u32,
    /// With --store: the spawned servers' `server --placement`. With `spread` every node serves
    /// at once: the phase starts once they have shared the shards out, the worker gets every
    /// node, and the client sends its sagas round-robin over them.
    #[arg(long, value_enum, default_value_t = PlacementArg::Spread, requires = "store")]
    pub placement: PlacementArg,
    /// Serve the bench activities from the Python SDK's worker (`PYTHON -m sagaflow.bench`) instead
    /// of `sagaflow worker`; PYTHON is an interpreter with `pip install ./worker/python` done.
    /// Spawned workers and the bench saga only.
    #[arg(long, value_name = "PYTHON")]
    pub python_worker: Option<PathBuf>,
    /// Soak phase: how long the load runs (e.g. `30m`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Soak phase: the server's `--retention` (and `--outbox-retention`), short so that deletions
    /// keep pace with the load and the store can plateau.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub soak_retention: Duration,
    /// Soak phase: fail if the server's resident memory ever exceeds this many MiB.
    #[arg(long, default_value_t = 1024)]
    pub max_rss_mib: u64,
    /// Soak phase: fail if the server's data folder ever exceeds this many MiB.
    #[arg(long, default_value_t = 4096)]
    pub max_disk_mib: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let target = Target::from_command_line(&args)?;
    if args.python_worker.is_some() {
        ensure!(matches!(target, Target::Spawn), "--python-worker starts its own workers: leave out --server");
        ensure!(args.workflow == BenchWorkflow::Bench, "--python-worker serves the bench saga only");
        ensure!(args.phase != PhaseChoice::Restart, "the restart phase runs no worker: leave out --python-worker");
    }
    if args.store.is_some() {
        ensure!(matches!(target, Target::Spawn), "--store sets the spawned servers' store: leave out --server");
        ensure!(
            !matches!(args.phase, PhaseChoice::Restart | PhaseChoice::Soak),
            "the restart and soak phases measure sled's data folder: leave out --store"
        );
    }
    if args.phase == PhaseChoice::Restart {
        return run_restart(&args, &target).await;
    }
    if args.phase == PhaseChoice::Soak {
        ensure!(matches!(target, Target::Spawn), "the soak phase sets its server's retention: leave out --server");
        ensure!(args.python_worker.is_none(), "the soak phase runs `sagaflow worker`: leave out --python-worker");
        // The shop's stock runs out within minutes of phase c's load.
        ensure!(args.workflow == BenchWorkflow::Bench, "the soak phase runs the bench saga: leave out --workflow");
        let mut data = DataDir::create(args.data_dir.clone(), args.keep_data)?;
        return soak::run(&args, &mut data, &Interrupt::listen()).await;
    }
    run_phases(&args, &target, Interrupt::listen()).await
}

/// Ctrl-C, remembered: the phase under way stops its processes with SIGTERM
/// as usual, removes its data, and no later phase starts.
#[derive(Debug, Clone)]
struct Interrupt(watch::Receiver<bool>);

impl Interrupt {
    fn listen() -> Self {
        let (interrupted, receiver) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = interrupted.send(true);
            }
        });
        Self(receiver)
    }

    /// Runs `work` unless Ctrl-C comes first (or came already).
    async fn guard<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        let mut interrupted = self.0.clone();
        tokio::select! {
            result = work => result,
            // If the listener is gone (no signal handling), the pattern fails and only `work` counts.
            Ok(_) = interrupted.wait_for(|interrupted| *interrupted) => bail!("interrupted"),
        }
    }
}

/// What a phase runs: the standard values, then the command line's overrides.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    n: u64,
    concurrency: u32,
    activity_latency_ms: u64,
    /// The capture fails non-retryably, so every saga must compensate.
    fatal_capture: bool,
}

impl Phase {
    const fn standard(name: &'static str, n: u64, concurrency: u32, latency_ms: u64, fatal: bool) -> Self {
        Self { name, n, concurrency, activity_latency_ms: latency_ms, fatal_capture: fatal }
    }

    fn expected_status(&self) -> WorkflowStatus {
        if self.fatal_capture { WorkflowStatus::Compensated } else { WorkflowStatus::Completed }
    }
}

/// The standard workload; keep it so, or results stop being comparable.
const STANDARD_PHASES: [Phase; 4] = [
    Phase::standard("a", 2_000, 1, 0, false),
    Phase::standard("b", 10_000, 64, 0, false),
    Phase::standard("c", 3_000, 64, 5, false),
    Phase::standard("d", 200, 64, 0, true),
];

fn selected_phases(args: &BenchArgs) -> Vec<Phase> {
    STANDARD_PHASES
        .iter()
        .filter(|phase| match args.phase {
            PhaseChoice::All => true,
            PhaseChoice::A => phase.name == "a",
            PhaseChoice::B => phase.name == "b",
            PhaseChoice::C => phase.name == "c",
            PhaseChoice::D => phase.name == "d",
            PhaseChoice::Restart | PhaseChoice::Soak => false,
        })
        .map(|phase| Phase {
            n: args.n.unwrap_or(phase.n),
            concurrency: args.concurrency.unwrap_or(phase.concurrency),
            activity_latency_ms: args.activity_latency_ms.unwrap_or(phase.activity_latency_ms),
            ..phase.clone()
        })
        .collect()
}

/// Either fresh processes per phase, or an orchestrator the user runs.
#[derive(Debug)]
enum Target {
    Spawn,
    Running { url: String, server_pid: Option<u32> },
}

impl Target {
    /// `--server` is a global flag with a default, so its value alone cannot
    /// say whether the user chose a server: parse the command line again and
    /// ask clap where the value came from (the flag, or `SAGAFLOW_SERVER`).
    fn from_command_line(args: &BenchArgs) -> anyhow::Result<Self> {
        let matches = super::Cli::command()
            .try_get_matches_from(std::env::args_os())
            .context("cannot read the command line again")?;
        let chosen =
            matches!(matches.value_source("server"), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        let url = matches.get_one::<String>("server").cloned();
        match url {
            Some(url) if chosen => Ok(Self::Running { url, server_pid: args.server_pid }),
            _ => {
                if args.server_pid.is_some() {
                    eprintln!("note: --server-pid is ignored without --server (the spawned server's pid is known)");
                }
                Ok(Self::Spawn)
            }
        }
    }
}

async fn run_phases(args: &BenchArgs, target: &Target, interrupt: Interrupt) -> anyhow::Result<()> {
    let phases = selected_phases(args);
    let clock_ticks = clock_ticks_per_second();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut data = match target {
        Target::Spawn => Some(DataDir::create(args.data_dir.clone(), args.keep_data)?),
        Target::Running { url, .. } => {
            eprintln!(
                "bench against the running orchestrator at {url}: phase c's activity latency and phase d's \
                 failing capture are up to its workers"
            );
            None
        }
    };
    if let Some(python) = &args.python_worker {
        eprintln!("the bench activities run in the Python SDK's worker: {} -m sagaflow.bench", python.display());
    }
    let mut reports = Vec::new();
    let mut failure = None;
    for phase in &phases {
        let plan = Plan {
            phase: phase.clone(),
            workflow: args.workflow,
            run_id: run_id.clone(),
            store: args.store.clone().map(|url| StorePlan {
                url,
                nodes: args.nodes,
                spread: args.placement == PlacementArg::Spread,
            }),
            python_worker: args.python_worker.clone(),
        };
        let result = match (target, data.as_mut()) {
            (Target::Running { url, server_pid }, _) => {
                let probe = Probe { server_pids: server_pid.iter().copied().collect(), worker_pid: None, clock_ticks };
                interrupt.guard(measure(&plan, std::slice::from_ref(url), probe)).await
            }
            (Target::Spawn, Some(data)) => run_spawned(&plan, data, clock_ticks, &interrupt).await,
            (Target::Spawn, None) => Err(anyhow::anyhow!("no data folder for the spawned processes")),
        };
        match result {
            Ok(report) => {
                print!("{}", report.block());
                reports.push(report);
            }
            Err(e) => {
                // Later phases would meet the same broken setup; report what ran.
                failure = Some(e.context(format!("phase {}", phase.name)));
                break;
            }
        }
    }
    if let Some(data) = &data
        && args.keep_data
    {
        println!("data kept in {}", data.root.display());
    }
    for report in &reports {
        println!("{}", report.result_line());
    }
    let _ = std::io::stdout().flush();
    if let Some(e) = failure {
        return Err(e);
    }
    let failed: Vec<String> =
        reports.iter().filter(|r| r.errors > 0).map(|r| format!("phase {} had {} errors", r.name, r.errors)).collect();
    if !failed.is_empty() {
        bail!("{}", failed.join(", "));
    }
    Ok(())
}

async fn run_restart(args: &BenchArgs, target: &Target) -> anyhow::Result<()> {
    if matches!(target, Target::Running { .. }) {
        bail!("the restart phase kills its server, so it runs only on a server it spawns (leave out --server)");
    }
    let mut data = DataDir::create(args.data_dir.clone(), args.keep_data)?;
    let dir = data.phase_dir("restart")?;
    let report = Interrupt::listen()
        .guard(restart::run(args.n.unwrap_or(100_000), args.concurrency.unwrap_or(64), &dir))
        .await?;
    print!("{}", report.block());
    println!("{}", report.result_line());
    Ok(())
}

/// One phase's settings plus what makes its request ids fresh.
#[derive(Debug, Clone)]
struct Plan {
    phase: Phase,
    workflow: BenchWorkflow,
    run_id: String,
    /// The spawned servers' PostgreSQL store (`--store`), and how its nodes share it.
    store: Option<StorePlan>,
    /// The interpreter that runs the Python SDK's bench worker, instead of `sagaflow worker`.
    python_worker: Option<PathBuf>,
}

/// The spawned servers' PostgreSQL store and its nodes.
#[derive(Debug, Clone)]
struct StorePlan {
    url: String,
    /// How many servers share the store (`--nodes`).
    nodes: u32,
    /// They share the shards out (`--placement spread`) instead of one serving and the others standing by.
    spread: bool,
}

impl Plan {
    fn request_id(&self, index: u64) -> String {
        format!("bench-{}-{}-{index}", self.phase.name, self.run_id)
    }

    /// One warm-up saga per node: a start without a workflow id is served
    /// in the shards of the node it reaches, so each runs its own saga, and
    /// the worker's path to every node is open before the clock starts.
    fn warm_up_request_id(&self, node: usize) -> String {
        format!("bench-{}-{}-warm-up-{node}", self.phase.name, self.run_id)
    }
}

async fn run_spawned(
    plan: &Plan,
    data: &mut DataDir,
    clock_ticks: f64,
    interrupt: &Interrupt,
) -> anyhow::Result<PhaseReport> {
    let dir = data.phase_dir(plan.phase.name)?;
    // Interrupted while starting, the half-started processes are killed on drop.
    let cluster = interrupt.guard(Cluster::start(plan, &dir, &[])).await?;
    let probe = Probe { server_pids: cluster.server_pids(), worker_pid: Some(cluster.worker.pid), clock_ticks };
    let measured = interrupt.guard(measure(plan, &cluster.urls, probe)).await;
    // Stop even when the phase failed; a stop error matters less than the phase's own.
    let stopped = cluster.stop().await;
    // The phase's data stays until the bench ends; without this, the
    // kernel would write its dirty pages back during the next phase, whose
    // log syncs would then queue behind them. Run alone, a phase never
    // meets that.
    let _ = tokio::task::spawn_blocking(rustix::fs::sync).await;
    let report = measured?;
    stopped?;
    Ok(report)
}

/// Whose costs a phase reports, and the unit of /proc's CPU times.
#[derive(Debug, Clone)]
struct Probe {
    /// Every node of the cluster: their costs are summed, so that the CPU
    /// per saga stays honest when several nodes share the work.
    server_pids: Vec<u32>,
    worker_pid: Option<u32>,
    clock_ticks: f64,
}

/// Warms up, then runs the phase's load over the nodes at `urls` and reads
/// the processes' costs around it.
async fn measure(plan: &Plan, urls: &[String], probe: Probe) -> anyhow::Result<PhaseReport> {
    let mut clients = Vec::new();
    for (node, url) in urls.iter().enumerate() {
        let client = SagaClient::connect(url).await?;
        warm_up(&client, plan, node).await?;
        clients.push(client);
    }
    let cpu_before = Usage::snapshot(&probe);
    let started = Instant::now();
    let tally = drive(plan, &clients).await?;
    let wall = started.elapsed();
    let cpu_after = Usage::snapshot(&probe);
    Ok(PhaseReport {
        name: plan.phase.name,
        workflow: plan.workflow,
        phase: plan.phase.clone(),
        wall,
        ok: tally.ok,
        errors: tally.errors,
        error_samples: tally.error_samples,
        histogram: tally.histogram,
        server_nodes: probe.server_pids.len(),
        server_peak_rss_mib: sum_over(&probe.server_pids, peak_rss_mib),
        cpu: cpu_before.until(&cpu_after),
    })
}

fn await_timeout_ms() -> u32 {
    u32::try_from(AWAIT_TIMEOUT.as_millis()).unwrap_or(u32::MAX)
}

/// How a saga ended, from an await's answer; still running is an error.
fn ended(workflow_id: &str, response: AwaitWorkflowResponse) -> anyhow::Result<Ended> {
    let status = response.summary.as_ref().map_or(0, |s| s.status);
    let status = WorkflowStatus::try_from(status).unwrap_or(WorkflowStatus::Unspecified);
    if !response.terminal {
        bail!("{workflow_id} is still {} after {}s", status_name(status), AWAIT_TIMEOUT.as_secs());
    }
    Ok(Ended { workflow_id: workflow_id.to_owned(), status, reason: response.reason })
}

/// One saga through both the fresh worker and the server: once it ends, the
/// worker is connected and every code path is warm.
async fn warm_up(client: &SagaClient, plan: &Plan, node: usize) -> anyhow::Result<()> {
    let mut client = client.clone();
    let request_id = plan.warm_up_request_id(node);
    let ended = tokio::time::timeout(READY_TIMEOUT, client.execute(plan.workflow, request_id))
        .await
        .with_context(|| format!("the warm-up saga did not end within {}s", READY_TIMEOUT.as_secs()))?;
    ended.context("the warm-up saga failed")?;
    Ok(())
}

/// The gRPC clients a client task needs; cloning shares the connection.
#[derive(Clone)]
struct SagaClient {
    workflows: WorkflowServiceClient<Conn>,
    checkout: CheckoutServiceClient<Conn>,
}

/// How a saga ended, as far as the client can see.
struct Ended {
    workflow_id: String,
    status: WorkflowStatus,
    reason: String,
}

impl SagaClient {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let channel = connect_channel(url).await?;
        Ok(Self {
            workflows: WorkflowServiceClient::new(channel.clone()),
            checkout: CheckoutServiceClient::new(channel),
        })
    }

    /// Runs one saga to its end: the bench saga with one `ExecuteWorkflow`
    /// call (start and await), a checkout with `StartCheckout` then
    /// `AwaitWorkflow`. Not ending within the await timeout is an error.
    async fn execute(&mut self, workflow: BenchWorkflow, request_id: String) -> anyhow::Result<Ended> {
        match workflow {
            BenchWorkflow::Bench => {
                let start = StartWorkflowRequest {
                    workflow_type: "bench".into(),
                    request_id,
                    input: b"{}".to_vec(),
                    ..Default::default()
                };
                let request = ExecuteWorkflowRequest { start: Some(start), timeout_ms: await_timeout_ms() };
                let response = tokio::time::timeout(
                    START_TIMEOUT + AWAIT_TIMEOUT + AWAIT_GRACE,
                    self.workflows.execute_workflow(request),
                )
                .await
                .context("execute: no reply")?
                .map_err(|status| status_error(status).context("execute"))?
                .into_inner();
                ended(&response.workflow_id, response.outcome.unwrap_or_default())
            }
            BenchWorkflow::Checkout => {
                let request = StartCheckoutRequest {
                    client_request_id: request_id,
                    customer_id: "bench".into(),
                    items: vec![Item { sku: "sku-mug".into(), quantity: 1 }],
                    ..Default::default()
                };
                let checkout_id = tokio::time::timeout(START_TIMEOUT, self.checkout.start_checkout(request))
                    .await
                    .context("start timed out")?
                    .map_err(|status| status_error(status).context("start"))?
                    .into_inner()
                    .checkout_id;
                self.await_end(&checkout_id).await
            }
        }
    }

    async fn await_end(&mut self, workflow_id: &str) -> anyhow::Result<Ended> {
        let request = AwaitWorkflowRequest { workflow_id: workflow_id.to_owned(), timeout_ms: await_timeout_ms() };
        let response = tokio::time::timeout(AWAIT_TIMEOUT + AWAIT_GRACE, self.workflows.await_workflow(request))
            .await
            .with_context(|| format!("await {workflow_id}: no reply"))?
            .map_err(|status| status_error(status).context(format!("await {workflow_id}")))?
            .into_inner();
        ended(workflow_id, response)
    }

    /// One saga of the load: start, await, and check how it ended.
    async fn run_saga(&mut self, plan: &Plan, request_id: String) -> anyhow::Result<()> {
        let ended = self.execute(plan.workflow, request_id).await?;
        let expected = plan.phase.expected_status();
        if ended.status != expected {
            let reason = if ended.reason.is_empty() { String::new() } else { format!(" ({})", ended.reason) };
            bail!(
                "{} ended {}, expected {}{reason}",
                ended.workflow_id,
                status_name(ended.status),
                status_name(expected)
            );
        }
        Ok(())
    }
}

/// Counters the client tasks and the progress line share.
#[derive(Default)]
struct Shared {
    /// The next saga index to take; a task stops once it reaches N.
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

impl Shared {
    fn record_error(&self, error: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.error_samples.lock()
            && samples.len() < ERROR_SAMPLES
        {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            samples.push(chain.join(": "));
        }
    }
}

/// What a phase's load produced.
struct Tally {
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    histogram: Histogram<u64>,
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a latency histogram")
}

/// Runs C client tasks until N sagas are done, then merges their histograms.
/// Saga i goes to node i % nodes: per saga rather than per task, so that
/// phase a's single client task reaches every node too.
async fn drive(plan: &Plan, nodes: &[SagaClient]) -> anyhow::Result<Tally> {
    drive_nodes(plan, nodes, Arc::new(Shared::default())).await
}

/// [`drive`] on one node, with counters the caller also reads, and may stop
/// early by moving `next` to N.
async fn drive_shared(plan: &Plan, client: &SagaClient, shared: Arc<Shared>) -> anyhow::Result<Tally> {
    drive_nodes(plan, std::slice::from_ref(client), shared).await
}

async fn drive_nodes(plan: &Plan, nodes: &[SagaClient], shared: Arc<Shared>) -> anyhow::Result<Tally> {
    ensure!(!nodes.is_empty(), "no server to drive");
    let (stop_progress, stopped) = oneshot::channel();
    let progress = tokio::spawn(show_progress(Arc::clone(&shared), plan.phase.name, plan.phase.n, stopped));
    let plan = Arc::new(plan.clone());
    let mut tasks = JoinSet::new();
    for _ in 0..plan.phase.concurrency {
        tasks.spawn(client_task(nodes.to_vec(), Arc::clone(&plan), Arc::clone(&shared)));
    }
    let mut histogram = new_histogram()?;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a client task panicked").and_then(|task| task) {
            Ok(task_histogram) => histogram.add(&task_histogram).context("cannot merge latency histograms")?,
            Err(e) => failure = Some(e),
        }
    }
    let _ = stop_progress.send(());
    let _ = progress.await;
    if let Some(e) = failure {
        return Err(e);
    }
    let error_samples = shared.error_samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Tally { ok: histogram.len(), errors: shared.errors.load(Ordering::Relaxed), error_samples, histogram })
}

/// Takes saga indexes from the shared counter until N are taken, one saga in
/// flight at a time; saga i goes to node i % nodes (clones share each node's connection).
async fn client_task(
    mut nodes: Vec<SagaClient>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = new_histogram()?;
    let count = nodes.len() as u64;
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= plan.phase.n {
            return Ok(histogram);
        }
        let client = &mut nodes[(index % count) as usize];
        let started = Instant::now();
        match client.run_saga(&plan, plan.request_id(index)).await {
            Ok(()) => histogram.saturating_record(micros(started.elapsed())),
            Err(e) => shared.record_error(&e),
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Shows done/N, the current throughput and the errors on stderr until told to stop.
/// On a terminal the line is rewritten in place four times a second; in a log
/// (not a terminal) a plain line every few seconds keeps the log readable.
async fn show_progress(shared: Arc<Shared>, phase: &'static str, n: u64, mut stop: oneshot::Receiver<()>) {
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last = (Instant::now(), 0_u64);
    let mut width = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let done = shared.done.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, done);
        let errors = shared.errors.load(Ordering::Relaxed);
        // A phase stopped by the clock (the soak) has no N to show.
        let of_n = if n >= u64::MAX / 2 { String::new() } else { format!("/{n}") };
        let line = format!("  phase {phase}: {done}{of_n} sagas, {rate:.0} sagas/s, {errors} errors");
        if terminal {
            eprint!("\r{line:<width$}");
            width = width.max(line.len());
        } else {
            eprintln!("{line}");
        }
    }
    if terminal && width > 0 {
        eprint!("\r{:width$}\r", "");
    }
}

/// CPU seconds of the processes around a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    server: Option<f64>,
    worker: Option<f64>,
    client: Option<f64>,
}

impl Usage {
    fn snapshot(probe: &Probe) -> Self {
        let seconds = |pid: u32| cpu_seconds(&pid.to_string(), probe.clock_ticks);
        Self {
            server: sum_over(&probe.server_pids, seconds),
            worker: probe.worker_pid.and_then(seconds),
            client: cpu_seconds("self", probe.clock_ticks),
        }
    }

    fn until(&self, later: &Self) -> Self {
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Self {
            server: delta(self.server, later.server),
            worker: delta(self.worker, later.worker),
            client: delta(self.client, later.client),
        }
    }
}

/// `read` summed over `pids`; unknown if any is unknown, or there are none.
fn sum_over(pids: &[u32], read: impl Fn(u32) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| read(pid)).sum()
}

/// utime + stime of a process, in seconds. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last ')':
/// there the state (field 3) comes first, utime is field 14, stime field 15.
fn cpu_seconds(pid: &str, clock_ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks)
}

/// The process's peak resident set (VmHWM), in MiB. It is the peak over the
/// process's life: per phase for a spawned server, since its start for a running one.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM:")
}

fn rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field counted in KiB, in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The kernel's clock tick, which /proc/PID/stat counts CPU time in. Without
/// libc there is no sysconf(_SC_CLK_TCK), so ask `getconf`; if that fails,
/// assume 100 Hz, the value on every mainstream Linux architecture.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

struct PhaseReport {
    name: &'static str,
    workflow: BenchWorkflow,
    phase: Phase,
    wall: Duration,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    histogram: Histogram<u64>,
    /// How many server processes the server's RSS and CPU are summed over.
    server_nodes: usize,
    server_peak_rss_mib: Option<f64>,
    cpu: Usage,
}

impl PhaseReport {
    /// Sagas that ended as expected, per second of the phase's wall time.
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.histogram.max() as f64 / 1000.0
    }

    fn cpu_text(&self, seconds: Option<f64>) -> String {
        match seconds {
            Some(s) => format!("{s:.2} CPU s ({:.2} cores)", s / self.wall.as_secs_f64().max(1e-9)),
            None => "unknown".into(),
        }
    }

    /// The readable per-phase block.
    fn block(&self) -> String {
        let workflow = match self.workflow {
            BenchWorkflow::Bench => "bench",
            BenchWorkflow::Checkout => "checkout",
        };
        let phase = &self.phase;
        let mut out = format!(
            "\nphase {}: {} x {workflow}, concurrency {}, activity latency {} ms, expecting {}\n",
            self.name,
            phase.n,
            phase.concurrency,
            phase.activity_latency_ms,
            status_name(phase.expected_status())
        );
        out.push_str(&format!("  wall time     {:.3} s\n", self.wall.as_secs_f64()));
        out.push_str(&format!("  throughput    {:.1} sagas/s\n", self.throughput()));
        out.push_str(&format!(
            "  latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.max_ms()
        ));
        out.push_str(&format!("  errors        {}\n", self.errors));
        for sample in &self.error_samples {
            out.push_str(&format!("    {sample}\n"));
        }
        let rss = self.server_peak_rss_mib.map_or_else(|| "unknown".into(), |mib| format!("{mib:.1} MiB"));
        // Each node's own peak, added up: at most, not exactly, the cluster's peak.
        let summed = match self.server_nodes {
            0 | 1 => String::new(),
            nodes => format!(", summed over its {nodes} nodes"),
        };
        out.push_str(&format!("  server        peak RSS {rss}, {}{summed}\n", self.cpu_text(self.cpu.server)));
        if self.cpu.worker.is_some() {
            out.push_str(&format!("  worker        {}\n", self.cpu_text(self.cpu.worker)));
        }
        out.push_str(&format!("  bench client  {}\n", self.cpu_text(self.cpu.client)));
        out
    }

    /// The machine-readable line; its shape is fixed.
    fn result_line(&self) -> String {
        format!(
            "RESULT system=sagaflow phase={} n={} c={} throughput={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} \
             max_ms={:.3} errors={}",
            self.name,
            self.phase.n,
            self.phase.concurrency,
            self.throughput(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.max_ms(),
            self.errors
        )
    }
}

/// The root folder of the spawned processes' data; removes what it created
/// when dropped, unless told to keep it.
struct DataDir {
    root: PathBuf,
    /// The root is our temporary folder (remove it whole), not the user's.
    owns_root: bool,
    created: Vec<PathBuf>,
    keep: bool,
}

impl DataDir {
    fn create(chosen: Option<PathBuf>, keep: bool) -> anyhow::Result<Self> {
        let (root, owns_root) = match chosen {
            Some(dir) => (dir, false),
            None => (std::env::temp_dir().join(format!("sagaflow-bench-{}", uuid::Uuid::new_v4().simple())), true),
        };
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Self { root, owns_root, created: Vec::new(), keep })
    }

    /// A fresh, empty folder for one phase.
    fn phase_dir(&mut self, phase: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(format!("phase-{phase}"));
        if dir.exists() {
            bail!(
                "{} already exists; a phase starts on fresh data (remove it or choose another --data-dir)",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.created.push(dir.clone());
        Ok(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let doomed = if self.owns_root { vec![self.root.clone()] } else { std::mem::take(&mut self.created) };
        for dir in doomed {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("warning: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// A child process of this bench; killed if dropped without `stop`.
struct Spawned {
    child: Child,
    pid: u32,
    what: &'static str,
}

impl Spawned {
    /// Runs this binary with `args`; its first stdout line says it is up.
    async fn start(what: &'static str, args: &[String]) -> anyhow::Result<(Self, String)> {
        let exe = std::env::current_exe().context("cannot find the sagaflow binary")?;
        Self::start_program(what, &exe, args).await
    }

    /// Runs `program` with `args`; its first stdout line says it is up.
    async fn start_program(what: &'static str, program: &Path, args: &[String]) -> anyhow::Result<(Self, String)> {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        // Their info logs would bury the progress line; warnings still show.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command.spawn().with_context(|| format!("cannot start the {what}"))?;
        let pid = child.id().with_context(|| format!("the {what} exited at once"))?;
        let stdout = child.stdout.take().with_context(|| format!("no stdout from the {what}"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .with_context(|| format!("the {what} printed nothing within {}s", READY_TIMEOUT.as_secs()))?
            .with_context(|| format!("cannot read the {what}'s output"))?
            .with_context(|| format!("the {what} exited before it was ready"))?;
        drain(lines);
        Ok((Self { child, pid, what }, first))
    }

    /// Runs `sagaflow server …` as a standby, which prints nothing until it
    /// serves: it is not waited for.
    fn start_standby(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the sagaflow binary")?;
        let mut command = Command::new(exe);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let child = command.spawn().context("cannot start a standby server")?;
        let pid = child.id().context("a standby server exited at once")?;
        Ok(Self { child, pid, what: "standby server" })
    }

    /// Runs `sagaflow server …` and returns it with its gRPC URL.
    async fn start_server(args: &[String]) -> anyhow::Result<(Self, String)> {
        let (server, line) = Self::start("server", args).await?;
        let url = server_url(&line).with_context(|| format!("unexpected first line from the server: {line:?}"))?;
        Ok((server, url))
    }

    /// SIGTERM, so that it shuts down as in production; SIGKILL if it hangs.
    async fn stop(mut self) -> anyhow::Result<()> {
        // No libc here (and no unsafe), so the `kill` command sends the signal.
        let sent = Command::new("kill").arg(self.pid.to_string()).stderr(Stdio::null()).status().await;
        if !sent.is_ok_and(|status| status.success()) {
            self.child.start_kill().with_context(|| format!("cannot stop the {}", self.what))?;
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("the {} exited with {status}", self.what),
            Ok(Err(e)) => Err(e).with_context(|| format!("cannot wait for the {}", self.what)),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the {} did not stop within {}s of SIGTERM and was killed", self.what, STOP_TIMEOUT.as_secs())
            }
        }
    }
}

/// Reads a child's stdout to the end, so that a full pipe never blocks it.
fn drain(mut lines: Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// A fresh orchestrator and one worker process for one phase.
struct Cluster {
    /// The first node: one of those that serve, or with --placement one-node the one that does.
    server: Spawned,
    worker: Spawned,
    /// The first node's gRPC URL.
    url: String,
    /// The gRPC URL of every serving node, the first node's first.
    urls: Vec<String>,
    /// The other servers on the same store (`--nodes`): serving their
    /// share, or with --placement one-node standing by.
    others: Vec<Spawned>,
}

impl Cluster {
    async fn start(plan: &Plan, dir: &Path, extra_server_args: &[String]) -> anyhow::Result<Self> {
        let mut server_args = vec![
            "server".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.join("server").display().to_string(),
        ];
        server_args.extend_from_slice(extra_server_args);
        let (nodes, spread) = plan.store.as_ref().map_or((1, false), |store| (store.nodes, store.spread));
        if let Some(store) = &plan.store {
            server_args.extend(["--store".to_owned(), store.url.clone()]);
            let placement = if spread { "spread" } else { "one-node" };
            server_args.extend(["--placement".to_owned(), placement.to_owned()]);
        }
        let (server, url) = Spawned::start_server(&server_args).await?;
        let mut urls = vec![url.clone()];
        let mut others = Vec::new();
        for n in 1..nodes {
            let mut args = server_args.clone();
            if let Some(dir_arg) = args.iter().position(|a| a == "--data-dir") {
                let name = if spread { format!("node-{}", n + 1) } else { format!("standby-{n}") };
                args[dir_arg + 1] = dir.join(name).display().to_string();
            }
            if spread {
                // A spread node serves at once (on 127.0.0.1 it advertises the
                // address it bound, which the others forward to): wait for it.
                let (node, node_url) = Spawned::start_server(&args).await?;
                others.push(node);
                urls.push(node_url);
            } else {
                others.push(Spawned::start_standby(&args)?);
            }
        }
        if let Some(store) = plan.store.as_ref().filter(|store| store.spread && store.nodes > 1) {
            shards_shared_out(&store.url, &urls).await?;
        }
        // The worker gets every serving node; it connects to the first, whose
        // session is relayed to the others' shards, and moves on if it drops.
        let servers = urls.join(",");
        let (worker, _) = match &plan.python_worker {
            Some(python) => {
                Spawned::start_program("Python worker", python, &python_worker_args(plan, &servers)).await?
            }
            None => Spawned::start("worker", &worker_args(plan, &servers, dir)).await?,
        };
        Ok(Self { server, worker, url, urls, others })
    }

    /// Every node, whose CPU and memory a phase adds up.
    fn server_pids(&self) -> Vec<u32> {
        std::iter::once(&self.server).chain(&self.others).map(|node| node.pid).collect()
    }

    /// Standbys, then the worker, then the serving node: a standby must not
    /// take over, nor the worker spin reconnecting to a stopped server. Spread
    /// nodes after the worker: each holds a session of it, relayed from the
    /// first node, and does not stop while that session lasts.
    async fn stop(self) -> anyhow::Result<()> {
        let mut worker = Some(self.worker);
        let mut worker_stopped = Ok(());
        // Several URLs: the nodes are spread.
        if self.urls.len() > 1
            && let Some(worker) = worker.take()
        {
            worker_stopped = worker.stop().await;
        }
        for node in self.others {
            node.stop().await?;
        }
        if let Some(worker) = worker {
            worker_stopped = worker.stop().await;
        }
        self.server.stop().await?;
        worker_stopped
    }
}

/// Waits until the spread nodes at `urls` hold a fair share of the shards
/// each (8 over 3: 3, 3 and 2). Each node starts with what it could take
/// (the first all of them) and hands its surplus over within a second or
/// two of seeing the others; a phase started earlier would time that handover.
async fn shards_shared_out(store: &str, urls: &[String]) -> anyhow::Result<()> {
    // A node's lease names the address it advertises: its URL's host:port.
    let addresses: Vec<&str> = urls.iter().map(|url| url.trim_start_matches("http://")).collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let view = cluster_view(store).await.context("cannot read the cluster's shards")?;
        let held: Vec<usize> = addresses
            .iter()
            .map(|address| {
                let live = |lease: &&ShardLease| lease.expires_ms > view.now_ms;
                view.leases.iter().filter(live).filter(|lease| address_of(&lease.owner) == Some(address)).count()
            })
            .collect();
        let shards = view.leases.len();
        let fair = shards / addresses.len();
        if held.iter().sum::<usize>() == shards && held.iter().all(|&n| n == fair || n == fair + 1) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the {} nodes did not share the {shards} shards out within {}s (they hold {held:?})",
            urls.len(),
            READY_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn worker_args(plan: &Plan, url: &str, dir: &Path) -> Vec<String> {
    let phase = &plan.phase;
    let (services, capture) = match plan.workflow {
        BenchWorkflow::Bench => ("bench", "bench.capture"),
        BenchWorkflow::Checkout => (SHOP_SERVICES, "payments.capture"),
    };
    let mut args = vec![
        "worker".to_owned(),
        "--server".into(),
        url.to_owned(),
        "--services".into(),
        services.into(),
        "--data-dir".into(),
        dir.join("worker").display().to_string(),
        "--concurrency".into(),
        phase.concurrency.saturating_mul(2).max(MIN_WORKER_CONCURRENCY).to_string(),
        "--activity-latency-ms".into(),
        phase.activity_latency_ms.to_string(),
    ];
    if phase.fatal_capture {
        args.extend(["--fault".to_owned(), format!("{capture}=fatal")]);
    }
    args
}

/// `sagaflow.bench` (worker/python) with the same settings `worker_args` gives `sagaflow worker`.
fn python_worker_args(plan: &Plan, url: &str) -> Vec<String> {
    let phase = &plan.phase;
    let mut args = vec![
        "-m".to_owned(),
        "sagaflow.bench".into(),
        "--server".into(),
        url.to_owned(),
        "--concurrency".into(),
        phase.concurrency.saturating_mul(2).max(MIN_WORKER_CONCURRENCY).to_string(),
        "--activity-latency-ms".into(),
        phase.activity_latency_ms.to_string(),
    ];
    if phase.fatal_capture {
        args.extend(["--fault".to_owned(), "bench.capture=fatal".to_owned()]);
    }
    args
}

/// The gRPC URL in `sagaflow listening on http://ADDR (gRPC) and http://ADDR/metrics (metrics); data in D`.
fn server_url(line: &str) -> Option<String> {
    line.split_whitespace().find(|word| word.starts_with("http://") && !word.ends_with("/metrics")).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_grpc_url_in_the_servers_first_line() {
        let line = "sagaflow listening on http://127.0.0.1:4000 (gRPC) and http://127.0.0.1:4001/metrics (metrics); data in /d";
        assert_eq!(server_url(line).as_deref(), Some("http://127.0.0.1:4000"));
        assert_eq!(server_url("something else"), None);
    }

    #[test]
    fn the_python_worker_gets_the_settings_of_sagaflow_worker() {
        let plan = Plan {
            phase: STANDARD_PHASES[3].clone(),
            workflow: BenchWorkflow::Bench,
            run_id: "r".into(),
            store: None,
            python_worker: Some("python3".into()),
        };
        let rust = worker_args(&plan, "http://x", Path::new("/d"));
        let python = python_worker_args(&plan, "http://x");
        let value = |args: &[String], flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(python[..2], ["-m", "sagaflow.bench"]);
        for flag in ["--server", "--concurrency", "--activity-latency-ms", "--fault"] {
            assert_eq!(value(&python, flag), value(&rust, flag), "{flag}");
        }
    }

    #[test]
    fn overrides_apply_to_every_selected_phase() {
        let args = BenchArgs {
            phase: PhaseChoice::All,
            n: Some(7),
            concurrency: None,
            activity_latency_ms: None,
            workflow: BenchWorkflow::Bench,
            server_pid: None,
            data_dir: None,
            keep_data: false,
            store: None,
            nodes: 1,
            placement: PlacementArg::Spread,
            python_worker: None,
            duration: Duration::from_secs(60),
            soak_retention: Duration::from_secs(60),
            max_rss_mib: 1024,
            max_disk_mib: 4096,
        };
        let phases = selected_phases(&args);
        assert_eq!(phases.iter().map(|p| p.name).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert!(phases.iter().all(|p| p.n == 7));
        assert_eq!(phases.iter().map(|p| p.concurrency).collect::<Vec<_>>(), [1, 64, 64, 64]);
        assert_eq!(phases[2].activity_latency_ms, 5);
        assert_eq!(phases[3].expected_status(), WorkflowStatus::Compensated);
    }

    #[test]
    fn costs_add_up_over_the_nodes_and_are_unknown_if_one_is() {
        assert_eq!(sum_over(&[1, 2], |pid| Some(f64::from(pid))), Some(3.0));
        assert_eq!(sum_over(&[1, 2], |pid| (pid == 1).then_some(1.0)), None);
        assert_eq!(sum_over(&[], |_| Some(1.0)), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_cpu_and_rss_of_this_process() {
        assert!(cpu_seconds("self", 100.0).is_some());
        assert!(peak_rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
    }

    #[test]
    fn phase_d_faults_the_capture_of_the_chosen_workflow() {
        let plan = Plan {
            phase: STANDARD_PHASES[3].clone(),
            workflow: BenchWorkflow::Checkout,
            run_id: "r".into(),
            store: None,
            python_worker: None,
        };
        let args = worker_args(&plan, "http://x", Path::new("/d"));
        assert!(args.windows(2).any(|w| w[0] == "--fault" && w[1] == "payments.capture=fatal"));
        assert!(args.windows(2).any(|w| w[0] == "--concurrency" && w[1] == "256"));
    }
}
