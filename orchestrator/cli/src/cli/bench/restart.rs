//! `sagaflow bench --phase restart`: how soon an orchestrator holding many
//! open workflows serves again after `kill -9`, and how much memory it needs.
//!
//! Each workflow parks on a signal, so it stays open with no task and no
//! timer: the restart cost measured is the open workflows themselves.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sagaflow_proto::v1::workflow_service_client::WorkflowServiceClient;
use sagaflow_proto::v1::{
    AwaitWorkflowRequest, DescribeWorkflowRequest, SignalWorkflowRequest, StartWorkflowRequest, WorkflowStatus,
};
use sagaflow_server::workflows::{SagaDefinition, Step};
use tokio::task::JoinSet;

use super::{Conn, READY_TIMEOUT, Spawned, connect_channel, peak_rss_mib, rss_mib, status_error};

const PARKED: &str = "bench.parked";

/// What the restart phase measured.
pub(super) struct RestartReport {
    open: u64,
    fill: Duration,
    restart: Duration,
    rss_mib: Option<f64>,
    /// The first server's resident memory when it had just started, and
    /// once every workflow was open (each open workflow's state stays in
    /// memory after its start).
    rss_empty_mib: Option<f64>,
    rss_filled_mib: Option<f64>,
    disk_mib: f64,
}

impl RestartReport {
    /// Resident bytes per open workflow held in memory by the server that started them.
    fn bytes_per_open_workflow(&self) -> Option<f64> {
        let grown = self.rss_filled_mib? - self.rss_empty_mib?;
        Some(grown * 1024.0 * 1024.0 / self.open.max(1) as f64)
    }
}

impl RestartReport {
    pub(super) fn block(&self) -> String {
        let mib = |v: Option<f64>| v.map_or_else(|| "unknown".to_owned(), |m| format!("{m:.1} MiB"));
        let per = self.bytes_per_open_workflow().map_or_else(|| "unknown".to_owned(), |b| format!("{b:.0} bytes"));
        format!(
            "\nphase restart: {} open workflows, then kill -9 and a restart\n  filled in     {:.1} s ({:.0} starts/s)\n  RSS filled    {} (from {} empty: {per} per open workflow)\n  data on disk  {:.1} MiB\n  serving again {:.3} s after the restart began\n  peak RSS      {} once serving\n",
            self.open,
            self.fill.as_secs_f64(),
            self.open as f64 / self.fill.as_secs_f64().max(f64::EPSILON),
            mib(self.rss_filled_mib),
            mib(self.rss_empty_mib),
            self.disk_mib,
            self.restart.as_secs_f64(),
            mib(self.rss_mib),
        )
    }

    pub(super) fn result_line(&self) -> String {
        format!(
            "RESULT system=sagaflow phase=restart n={} restart_ms={:.0} rss_mib={:.1} filled_rss_mib={:.1} bytes_per_open={:.0} disk_mib={:.1}",
            self.open,
            self.restart.as_secs_f64() * 1000.0,
            self.rss_mib.unwrap_or(0.0),
            self.rss_filled_mib.unwrap_or(0.0),
            self.bytes_per_open_workflow().unwrap_or(0.0),
            self.disk_mib,
        )
    }
}

fn server_args(dir: &Path, definitions: &Path) -> Vec<String> {
    [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.join("server").display().to_string(),
        "--definitions",
        &definitions.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

pub(super) async fn run(n: u64, concurrency: u32, dir: &Path) -> anyhow::Result<RestartReport> {
    let definition = SagaDefinition::builder(PARKED, 1)
        .description("Waits for the signal `go`, then ends: an open workflow that holds no task.")
        .step(Step::await_signal("park", "go", Duration::ZERO))
        .build()
        .context("the parked saga's definition")?;
    let definitions = dir.join("parked.json");
    std::fs::write(&definitions, serde_json::to_string(&definition)?).context("cannot write the definitions")?;
    let args = server_args(dir, &definitions);

    let (server, url) = Spawned::start_server(&args).await?;
    let client = WorkflowServiceClient::new(connect_channel(&url).await?);
    let rss_empty_mib = rss_mib(server.pid);
    let started = Instant::now();
    let last = fill(&client, n, concurrency).await?;
    let fill_time = started.elapsed();
    let rss_filled_mib = rss_mib(server.pid);

    let mut killed = server;
    killed.child.start_kill().context("cannot kill the server")?;
    killed.child.wait().await.context("cannot wait for the killed server")?;

    let restarting = Instant::now();
    let (server, url) = Spawned::start_server(&args).await?;
    let mut client = WorkflowServiceClient::new(connect_channel(&url).await?);
    let described = client
        .describe_workflow(DescribeWorkflowRequest { workflow_id: last.clone() })
        .await
        .map_err(|status| status_error(status).context("describe after the restart"))?
        .into_inner();
    let restart = restarting.elapsed();
    let rss_mib = peak_rss_mib(server.pid);
    let status = described.summary.map_or(0, |s| s.status);
    if status != WorkflowStatus::Running as i32 {
        bail!("{last} is not RUNNING after the restart");
    }
    wake(&mut client, &last).await?;
    server.stop().await?;
    let disk_mib = dir_size(&dir.join("server")) as f64 / (1024.0 * 1024.0);
    Ok(RestartReport { open: n, fill: fill_time, restart, rss_mib, rss_empty_mib, rss_filled_mib, disk_mib })
}

/// Starts `n` parked workflows; returns the id of one of them.
async fn fill(client: &WorkflowServiceClient<Conn>, n: u64, concurrency: u32) -> anyhow::Result<String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (mut client, next) = (client.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut last = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(last);
                }
                if i > 0 && i % (n / 10).max(1) == 0 {
                    eprintln!("  phase restart: {i}/{n} workflows open");
                }
                let request = StartWorkflowRequest {
                    workflow_type: PARKED.into(),
                    request_id: format!("parked-{i}"),
                    input: b"{}".to_vec(),
                    ..Default::default()
                };
                let started = start_with_pushback(&mut client, request).await?;
                last = Some(started);
            }
        });
    }
    let mut last = None;
    while let Some(joined) = tasks.join_next().await {
        last = joined.context("a client task failed")??.or(last);
    }
    last.context("no workflow was started")
}

/// Starts a workflow, waiting out the server's load shedding: the fill runs
/// faster than the admission limit's default rate, and a refused start was
/// not applied, so sending it again after the pushback is safe.
async fn start_with_pushback(
    client: &mut WorkflowServiceClient<Conn>,
    request: StartWorkflowRequest,
) -> anyhow::Result<String> {
    loop {
        match client.start_workflow(request.clone()).await {
            Ok(started) => return Ok(started.into_inner().workflow_id),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let pushback_ms = status
                    .metadata()
                    .get("grpc-retry-pushback-ms")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(10);
                tokio::time::sleep(Duration::from_millis(pushback_ms.max(1))).await;
            }
            Err(status) => return Err(status_error(status).context("start")),
        }
    }
}

/// The parked workflow still works after the restart: signal it and see it end.
async fn wake(client: &mut WorkflowServiceClient<Conn>, workflow_id: &str) -> anyhow::Result<()> {
    let signal = SignalWorkflowRequest { workflow_id: workflow_id.into(), name: "go".into(), ..Default::default() };
    client.signal_workflow(signal).await.map_err(|s| status_error(s).context("signal"))?;
    let timeout_ms = u32::try_from(READY_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let ended = client
        .await_workflow(AwaitWorkflowRequest { workflow_id: workflow_id.into(), timeout_ms })
        .await
        .map_err(|s| status_error(s).context("await"))?
        .into_inner();
    if !ended.terminal {
        bail!("{workflow_id} did not end after its signal");
    }
    Ok(())
}

/// Bytes in the files under `path`, recursively (what `du` would count, less
/// the blocks' rounding).
pub(super) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
