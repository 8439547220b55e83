//! `sagaflow worker`: hosts activity services in their own process, so that
//! one service can be killed, faulted or restarted on its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sagaflow_activities::{FaultSpec, Faults, bench};
use sagaflow_worker::Worker;

use super::LogFormat;

/// Services a worker process can host.
const SERVICES: &[&str] = &["bench"];

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Services to host, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bench")]
    pub services: Vec<String>,
    /// Where the services keep their state.
    #[arg(long, default_value = "./sagaflow-data")]
    pub data_dir: PathBuf,
    /// A fault switch, SERVICE.OPERATION=KIND[:COUNT] with KIND one of error,
    /// fatal, hang, hang-after-effect, crash-after-effect; repeatable.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<FaultSpec>,
    /// Most tasks run at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Added latency of every bench activity, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub activity_latency_ms: u64,
    /// This worker's id (default: host, pid and a random suffix).
    #[arg(long)]
    pub worker_id: Option<String>,
}

pub async fn run(args: WorkerArgs, server: &str, log_format: LogFormat) -> anyhow::Result<()> {
    super::init_logs(log_format);
    let faults = Faults::new(args.faults.clone());
    let mut builder = Worker::builder(server).max_concurrency(args.concurrency);
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id.clone());
    }
    for service in &args.services {
        builder = match service.as_str() {
            "bench" => bench::register(builder, &faults, Duration::from_millis(args.activity_latency_ms)),
            other => bail!("unknown service {other:?}; known services: {}", SERVICES.join(", ")),
        };
    }
    let worker = builder.build().context("cannot build the worker")?;
    let faults_text: Vec<String> = args.faults.iter().map(ToString::to_string).collect();
    println!(
        "worker {} hosting {} against {server}{}",
        worker.worker_id(),
        args.services.join(","),
        if faults_text.is_empty() { String::new() } else { format!(" with faults {}", faults_text.join(" ")) }
    );
    worker.run_until(super::shutdown_signal()).await.context("worker stopped")?;
    Ok(())
}
