//! Command-line parsing and the commands.

mod auth;
mod bench;
mod chaos;
mod checkout;
mod connection;
mod consumer;
mod dev;
mod events;
mod jobs;
mod render;
mod search;
mod server;
mod shop;
mod worker;
mod workflow;

use clap::{Parser, Subcommand, ValueEnum};
use sagaflow_orchestrator::telemetry::{self, LogFormat, Telemetry};

#[derive(Debug, Parser)]
#[command(name = "sagaflow", version, about = "Sagaflow: a durable saga orchestrator.", long_about = None)]
pub struct Cli {
    /// The orchestrator's gRPC address.
    #[arg(long, global = true, env = "SAGAFLOW_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// How read commands print: `text` for people, `json` for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(flatten)]
    pub logging: Logging,

    #[command(flatten)]
    pub client: connection::ClientArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How long-running commands log and trace.
#[derive(Debug, Clone, clap::Args)]
pub struct Logging {
    /// Log format: `text` for people, `json` (one object a line) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export spans to this OpenTelemetry collector over OTLP/gRPC (off when not given).
    #[arg(long, global = true, env = "SAGAFLOW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Logging {
    /// Installs logging (and tracing, when asked); keep the guard for the
    /// process's life, since dropping it flushes the spans not yet exported.
    pub fn init(&self, service_name: &str) -> anyhow::Result<Telemetry> {
        Ok(telemetry::init(self.log_format, self.otlp_endpoint.as_deref(), service_name)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // Boxed: its many flags would make every other command as large.
    /// Run the orchestrator: histories in sled under --data-dir, gRPC on --listen.
    Server(Box<server::ServerArgs>),
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
    /// Run a read model fed by NATS JetStream, as its own process.
    #[command(subcommand)]
    Consumer(consumer::ConsumerCommand),
    /// Query the search read model.
    #[command(subcommand)]
    Search(search::SearchCommand),
    /// Break the whole system on purpose, on a seeded schedule, and report what held.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Run a self-healing job now (each is a workflow on the server).
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// API tokens: hash one for the server's --auth-file.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    connection::install(cli.client.resolve()?);
    match cli.command {
        Command::Server(args) => server::run(*args, &cli.logging).await,
        Command::Dev(args) => dev::run(args, &cli.logging).await,
        Command::Shop(args) => shop::run(args, &cli.server, cli.output).await,
        Command::Worker(args) => worker::run(args, &cli.server, &cli.logging).await,
        Command::Admin(command) => server::admin(command, cli.output).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Events(command) => events::run(command, &cli.server, cli.output).await,
        Command::Checkout(command) => checkout::run(command, &cli.server, cli.output).await,
        Command::Workflow(command) => workflow::run(command, &cli.server, cli.output).await,
        Command::Consumer(command) => consumer::run(command, &cli.logging).await,
        Command::Search(command) => search::run(command, cli.output).await,
        Command::Chaos(command) => chaos::run(command, cli.output, &cli.logging).await,
        Command::Jobs(command) => jobs::run(command, &cli.server, cli.output).await,
        Command::Auth(command) => auth::run(command),
    }
}

/// A listener with no auth of its own (the shop admin API, a read model's
/// HTTP): loopback only, unless `--insecure` accepts the risk. The caller's
/// start-up line says which it is ([`exposure`]).
pub fn check_unauthenticated(what: &str, addr: std::net::SocketAddr, insecure: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::ensure!(
        insecure,
        "refusing to serve the {what} on {addr}: it has no auth, so anyone who reaches it could read and change \
         it. Listen on loopback (127.0.0.1), or pass --insecure to accept the risk"
    );
    tracing::warn!(%addr, "INSECURE: the {what} listens beyond loopback without auth (--insecure)");
    Ok(())
}

/// How a listener without auth is reached, for start-up lines.
pub fn exposure(addr: std::net::SocketAddr) -> &'static str {
    if addr.ip().is_loopback() { "no auth, loopback only" } else { "NO AUTH, beyond loopback (--insecure)" }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when it is first polled: a signal that arrives after the
/// process announced itself (tests wait for that line) is never missed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
