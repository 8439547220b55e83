//! `sagaflow dev`: the orchestrator and every shop service in one process,
//! with a seeded demo catalog. What a new user runs first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sagaflow_activities::{Faults, SERVICES};
use sagaflow_server::{Options, Server, Storage};
use sagaflow_shop_server::CheckoutExtension;
use sagaflow_worker::Worker;

use super::Logging;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where histories and the shop's data live.
    #[arg(long, default_value = "./sagaflow-data")]
    pub data_dir: PathBuf,
    /// gRPC listen address (what `--server` points the other commands at). Loopback by default.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// HTTP listen address for the console (/), /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub http_listen: SocketAddr,
    /// The shop admin API (`sagaflow shop …`, which reads it from --admin-url).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub admin_listen: SocketAddr,
    /// How long an inventory reservation holds stock before it is released on its own
    /// (when its checkout died without compensating), such as 15m or 30s.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub reservation_ttl: Duration,
    #[command(flatten)]
    pub retention: super::server::RetentionArgs,
}

/// The banner's examples, with `--server` and `--admin-url` spelled out
/// when they are not the defaults, so that each line works as printed.
fn try_lines(server_url: &str, admin_url: &str) -> String {
    let server = if server_url == "http://127.0.0.1:50051" { String::new() } else { format!(" --server {server_url}") };
    let admin = if admin_url == "http://127.0.0.1:9091" { String::new() } else { format!(" --admin-url {admin_url}") };
    format!(
        "Try:\n  sagaflow checkout start --request-id demo-1 --customer alice --item sku-mug:2 --item sku-tee:1 --wait{server}\n  \
         sagaflow shop stock{admin}\n  sagaflow workflow list{server}"
    )
}

pub async fn run(args: DevArgs, logging: &Logging) -> anyhow::Result<()> {
    let _telemetry = logging.init("sagaflow-dev")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let options = Options {
        storage: Storage::Sled(args.data_dir.clone()),
        listen: args.listen,
        http_listen: Some(args.http_listen),
        retention: args.retention.policy(),
        archive_dir: args.retention.archive_dir.clone(),
        ..Options::default()
    };
    let server = Server::builder()
        .options(options)
        .definitions(sagaflow_shop_server::registry())
        .extension(CheckoutExtension)
        .start()
        .await?;
    let mut services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    services.push("bench".into());
    let faults = Faults::default();
    let builder = Worker::builder(server.url()).worker_id("dev-shop");
    let (builder, shop) = super::worker::host(
        builder,
        &services,
        &args.data_dir,
        &faults,
        Duration::ZERO,
        args.reservation_ttl,
        sagaflow_activities::ShopOptions::default().initial_stock,
    )?;
    let shop = shop.context("the dev worker hosts the shop")?;
    let admin = super::worker::serve_admin(shop, args.admin_listen, false).await?;
    let shutdown = super::shutdown_signal();
    let worker = builder.build()?;
    let handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());
    let http = server.http_addr().unwrap_or(args.http_listen);
    println!(
        "Sagaflow dev: orchestrator on {}, console on http://{http}/, metrics on http://{http}/metrics, shop admin on http://{admin}, data in {}",
        server.url(),
        args.data_dir.display()
    );
    println!("{}", try_lines(&server.url(), &format!("http://{admin}")));
    shutdown.await;
    handle.shutdown();
    let _ = worker_task.await;
    server.stop().await;
    Ok(())
}
