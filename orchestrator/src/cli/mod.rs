//! Command-line parsing and the commands.

mod bench;
mod checkout;
mod dev;
mod events;
mod render;
mod server;
mod shop;
mod worker;
mod workflow;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "sagaflow", version, about = "Sagaflow: a durable saga orchestrator.", long_about = None)]
pub struct Cli {
    /// The orchestrator's gRPC address.
    #[arg(long, global = true, env = "SAGAFLOW_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// How read commands print: `text` for people, `json` for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Log format of long-running commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator: histories in sled under --data-dir, gRPC on --listen.
    Server(server::ServerArgs),
    /// The server and every shop worker in one process, with a demo catalog.
    Dev(dev::DevArgs),
    /// Read and steer the reference shop's services (stock, payments, orders, faults…).
    Shop(shop::ShopArgs),
    /// Run activity services against a server: a separate worker process.
    Worker(worker::WorkerArgs),
    /// Start, read and refund the reference shop's checkouts.
    #[command(subcommand)]
    Checkout(checkout::CheckoutCommand),
    /// Read the domain events of the transactional outbox.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Start, inspect and steer workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Run the standard end-to-end load (or the checkout saga) and print throughput and latency.
    Bench(bench::BenchArgs),
    /// Offline maintenance of a data directory (stop the server first).
    #[command(subcommand)]
    Admin(server::AdminCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server::run(args, cli.log_format).await,
        Command::Dev(args) => dev::run(args, cli.log_format).await,
        Command::Shop(args) => shop::run(args, cli.output).await,
        Command::Worker(args) => worker::run(args, &cli.server, cli.log_format).await,
        Command::Admin(command) => server::admin(command, cli.output).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Events(command) => events::run(command, &cli.server, cli.output).await,
        Command::Checkout(command) => checkout::run(command, &cli.server, cli.output).await,
        Command::Workflow(command) => workflow::run(command, &cli.server, cli.output).await,
    }
}

/// Installs the log subscriber for long-running commands.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,sled=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
