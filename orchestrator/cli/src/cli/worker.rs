//! `sagaflow worker`: hosts activity services in their own process, so that
//! one service can be killed, faulted or restarted on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sagaflow_activities::{FaultSpec, Faults, SERVICES, Shop, ShopOptions, admin, bench};
use sagaflow_worker::{Worker, WorkerBuilder};
use tokio::net::TcpListener;

use super::{Logging, Output};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
    /// Services to host, comma-separated: catalog, coupons, inventory,
    /// payments, orders, shipping, notifications, bench; `shop` for every
    /// shop service, `all` for the shop and bench. Every service a saga
    /// uses needs a worker somewhere, or its step waits (flagged NO_WORKER).
    #[arg(long, value_delimiter = ',', default_value = "bench")]
    pub services: Vec<String>,
    /// Where the services keep their state (under `shop/`).
    #[arg(long, default_value = "./sagaflow-data")]
    pub data_dir: PathBuf,
    /// Serve the shop admin API (stock, payments, orders, faults…) here. It
    /// has no auth: a loopback address, unless --insecure.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Allow --admin-listen beyond loopback, although the admin API has no auth.
    #[arg(long)]
    pub insecure: bool,
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
    /// How long an inventory reservation holds stock before it is released on its own.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub reservation_ttl: Duration,
    /// Units of each demo sku stocked when the inventory store is first created.
    #[arg(long, default_value_t = ShopOptions::default().initial_stock)]
    pub initial_stock: u64,
    /// This worker's id (default: host, pid and a random suffix).
    #[arg(long)]
    pub worker_id: Option<String>,
}

/// Without a subcommand, `sagaflow worker` runs a worker.
#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// The connected workers per task queue (activity type): their credit, the tasks they hold,
    /// and the backlog waiting for one.
    List,
}

/// `sagaflow worker list`.
async fn list(server: &str, output: Output) -> anyhow::Result<()> {
    let mut client = super::workflow::connect(server).await?;
    let queues = client
        .list_queues(sagaflow_proto::v1::ListQueuesRequest {})
        .await
        .map_err(super::workflow::status_error)?
        .into_inner()
        .queues;
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = queues
                .iter()
                .map(|q| {
                    serde_json::json!({
                        "queue": q.queue,
                        "workers": q.workers.iter().map(|w| serde_json::json!({"worker_id": w.worker_id, "credit": w.credit})).collect::<Vec<_>>(),
                        "in_flight": q.in_flight,
                        "backlog": q.backlog,
                        "paused": (!q.paused_reason.is_empty()).then(|| serde_json::json!({"reason": q.paused_reason, "by": q.paused_by, "since_ms": q.paused_ms})),
                    })
                })
                .collect();
            outln!("{}", serde_json::Value::Array(rows));
        }
        Output::Text if queues.is_empty() => outln!("no worker is connected and no task waits"),
        Output::Text => {
            let rows: Vec<[String; 6]> = queues
                .iter()
                .map(|q| {
                    let workers = if q.workers.is_empty() {
                        "(none)".to_owned()
                    } else {
                        q.workers.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>().join(", ")
                    };
                    let credit: u32 = q.workers.iter().map(|w| w.credit).sum();
                    let paused =
                        if q.paused_reason.is_empty() { String::new() } else { format!("paused: {}", q.paused_reason) };
                    [
                        q.queue.clone(),
                        workers,
                        credit.to_string(),
                        q.in_flight.to_string(),
                        q.backlog.to_string(),
                        paused,
                    ]
                })
                .collect();
            let header = ["QUEUE", "WORKERS", "CREDIT", "IN FLIGHT", "BACKLOG", "STATE"];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (i, cell) in row.iter().enumerate() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
            for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
                let cells: Vec<String> =
                    row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
                outln!("{}", cells.join("  ").trim_end());
            }
        }
    }
    Ok(())
}

/// `services` with `shop` and `all` spelled out, each service once.
pub fn expand_services(services: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for service in services {
        let names: Vec<&str> = match service.as_str() {
            "shop" => SERVICES.to_vec(),
            "all" => SERVICES.iter().copied().chain(["bench"]).collect(),
            other => vec![other],
        };
        for name in names {
            if !out.iter().any(|s| s == name) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The activities of `services`, registered on `builder`, and the shop they use.
pub fn host(
    mut builder: WorkerBuilder,
    services: &[String],
    data_dir: &std::path::Path,
    faults: &Faults,
    latency: Duration,
    reservation_ttl: Duration,
    initial_stock: u64,
) -> anyhow::Result<(WorkerBuilder, Option<Shop>)> {
    let (benches, shop_services): (Vec<&String>, Vec<&String>) = services.iter().partition(|s| *s == "bench");
    if let Some(unknown) = shop_services.iter().find(|s| !SERVICES.contains(&s.as_str())) {
        bail!(
            "unknown service {unknown:?}; known services: {}, bench, or shop (all of the shop's) or all",
            SERVICES.join(", ")
        );
    }
    let mut hosted: Vec<&str> =
        shop_services.iter().flat_map(|s| sagaflow_activities::shop::activities_of(s)).copied().collect();
    if !benches.is_empty() {
        hosted.extend_from_slice(bench::ACTIVITIES);
    }
    for spec in faults.list() {
        spec.check_target(&hosted)?;
    }
    if !benches.is_empty() {
        builder = bench::register(builder, faults, latency);
    }
    if shop_services.is_empty() {
        return Ok((builder, None));
    }
    let options = ShopOptions {
        services: shop_services.into_iter().cloned().collect(),
        reservation_ttl,
        initial_stock,
        ..ShopOptions::default()
    };
    let dir = data_dir.join("shop");
    let shop = Shop::open(&dir, options, faults.clone())
        .with_context(|| format!("cannot open the shop in {}", dir.display()))?;
    Ok((shop.register(builder), Some(shop)))
}

/// Serves the shop admin API until the process ends.
pub async fn serve_admin(shop: Shop, addr: SocketAddr, insecure: bool) -> anyhow::Result<SocketAddr> {
    super::check_unauthenticated("shop admin API", addr, insecure)?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin::router(shop)).await {
            tracing::error!(error = %e, "shop admin API failed");
        }
    });
    Ok(bound)
}

pub async fn run(mut args: WorkerArgs, server: &str, output: Output, logging: &Logging) -> anyhow::Result<()> {
    if let Some(WorkerCommand::List) = args.command {
        return list(server, output).await;
    }
    args.services = expand_services(&args.services);
    let _telemetry = logging.init("sagaflow-worker")?;
    let faults = Faults::new(args.faults.clone());
    let mut builder = Worker::builder(server).max_concurrency(args.concurrency);
    let connection = super::connection::current();
    if let Some(token) = connection.token {
        builder = builder.token(token);
    }
    if let Some(tls) = connection.tls {
        builder = builder.tls(tls);
    }
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id.clone());
    }
    let latency = Duration::from_millis(args.activity_latency_ms);
    let (builder, shop) =
        host(builder, &args.services, &args.data_dir, &faults, latency, args.reservation_ttl, args.initial_stock)?;
    let admin = match (&shop, args.admin_listen) {
        (Some(shop), Some(addr)) => Some(serve_admin(shop.clone(), addr, args.insecure).await?),
        (None, Some(_)) => bail!("--admin-listen needs a shop service in --services"),
        _ => None,
    };
    let shutdown = super::shutdown_signal();
    let worker = builder.build().context("cannot build the worker")?;
    let faults_text: Vec<String> = args.faults.iter().map(ToString::to_string).collect();
    println!(
        "worker {} hosting {} against {server}{}{}",
        worker.worker_id(),
        args.services.join(","),
        admin.map(|a| format!(", admin on http://{a} ({})", super::exposure(a))).unwrap_or_default(),
        if faults_text.is_empty() { String::new() } else { format!(" with faults {}", faults_text.join(" ")) }
    );
    worker.run_until(shutdown).await.context("worker stopped")?;
    Ok(())
}
