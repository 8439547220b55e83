//! Command-line parsing and the commands.

// The output macros come before the modules, so that every command sees them.

/// `println!` for command output: a reader that went away (`| head -1`)
/// ends the command quietly instead of panicking (see [`Failure::ClosedPipe`]).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// `print!` for command output; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*))? };
}

mod auth;
mod bench;
mod chaos;
mod checkout;
mod cluster;
mod connection;
mod consumer;
mod definition;
mod definition_files;
mod dev;
mod events;
mod jobs;
mod queue;
mod render;
mod search;
mod server;
mod shop;
mod worker;
mod workflow;

use std::fmt;
use std::io::Write;

use clap::{Parser, Subcommand, ValueEnum};
use sagaflow_server::telemetry::{self, LogFormat, Telemetry};

/// Writes to stdout. A closed pipe becomes [`Failure::ClosedPipe`], which
/// `main` turns into a quiet, successful exit: the reader had what it wanted.
pub fn write_out(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(Failure::ClosedPipe)
        } else {
            anyhow::Error::new(e).context("cannot write to stdout")
        }
    })
}

/// Why a command failed, when the caller may want more than the message:
/// `main` picks the exit code and the JSON error's `code` from it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server answered with a gRPC status.
    #[error("{code}: {message}")]
    Status { code: String, message: String },
    /// The awaited workflow ended, but not `COMPLETED`.
    #[error("{0}")]
    NotCompleted(String),
    /// The wait ran out while the workflow still runs.
    #[error("{0}")]
    StillRunning(String),
    /// Whoever read stdout closed it.
    #[error("stdout was closed")]
    ClosedPipe,
}

/// Exit codes, as `sagaflow --help` documents them.
pub mod exit {
    /// A command that failed: bad input, an unreachable server, a refusal.
    pub const ERROR: u8 = 1;
    /// The awaited workflow ended without completing (compensated, failed, cancelled, terminated).
    pub const NOT_COMPLETED: u8 = 3;
    /// The wait ran out before the workflow ended.
    pub const STILL_RUNNING: u8 = 4;
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Status { .. } => exit::ERROR,
            Self::NotCompleted(_) => exit::NOT_COMPLETED,
            Self::StillRunning(_) => exit::STILL_RUNNING,
            Self::ClosedPipe => 0,
        }
    }

    /// The `code` of the JSON error: the gRPC code, or what the wait found.
    pub fn code(&self) -> &str {
        match self {
            Self::Status { code, .. } => code,
            Self::NotCompleted(_) => "WORKFLOW_NOT_COMPLETED",
            Self::StillRunning(_) => "STILL_RUNNING",
            Self::ClosedPipe => "CLOSED_PIPE",
        }
    }
}

/// `--server 127.0.0.1:50051` means `http://127.0.0.1:50051`: without a
/// scheme the URL parser would refuse it with a message that does not say why.
/// Each node of a comma-separated list likewise.
pub fn server_url(text: &str) -> String {
    let node = |n: &str| if n.contains("://") { n.to_owned() } else { format!("http://{n}") };
    text.split(',').map(|n| node(n.trim())).collect::<Vec<_>>().join(",")
}

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "Sagaflow: a durable saga orchestrator.",
    long_about = None,
    after_help = "Exit codes: 0 success; 1 error; 2 bad usage; 3 the awaited workflow ended without completing \
                  (compensated, failed, cancelled or terminated); 4 the wait ran out while it still runs."
)]
pub struct Cli {
    /// The orchestrator's gRPC address: http://HOST:PORT, https://HOST:PORT, or HOST:PORT (plain http).
    /// Several nodes sharing one store (--store), comma-separated: the first whose health check
    /// answers SERVING is used.
    #[arg(long, global = true, env = "SAGAFLOW_SERVER", default_value = "http://127.0.0.1:50051", help_heading = GLOBAL)]
    pub server: String,

    /// How commands print: `text` for people, `json` for programs (errors too, as JSON on stderr).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text, help_heading = GLOBAL)]
    pub output: Output,

    #[command(flatten)]
    pub logging: Logging,

    #[command(flatten)]
    pub client: connection::ClientArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The heading global flags are listed under, apart from a command's own.
pub const GLOBAL: &str = "Global options";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How long-running commands log and trace.
#[derive(Debug, Clone, clap::Args)]
pub struct Logging {
    /// Log format: `text` for people, `json` (one object a line) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL)]
    pub log_format: LogFormat,

    /// Export spans to this OpenTelemetry collector over OTLP/gRPC (off when not given).
    #[arg(long, global = true, env = "SAGAFLOW_OTLP_ENDPOINT", help_heading = GLOBAL)]
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
    /// Run activity services against a server, as a separate worker process; `worker list` shows
    /// the connected workers per queue.
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
    /// Pause and resume a whole activity queue, for a downstream that is broken.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Saga definitions as data: apply YAML or JSON files to a running server, list, get,
    /// diff, deprecate.
    #[command(subcommand)]
    Definition(definition::DefinitionCommand),
    /// Run the standard end-to-end load (or the checkout saga) and print throughput and latency.
    Bench(bench::BenchArgs),
    /// Offline maintenance of a data directory (stop the server first).
    #[command(subcommand)]
    Admin(server::AdminCommand),
    /// A cluster of nodes on PostgreSQL: `cluster status` shows which node serves, read from the
    /// database.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
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

pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    connection::install(cli.client.resolve()?);
    cli.server = server_url(&cli.server);
    match cli.command {
        Command::Server(args) => server::run(*args, &cli.logging).await,
        Command::Dev(args) => dev::run(args, &cli.logging).await,
        Command::Shop(args) => shop::run(args, &cli.server, cli.output).await,
        Command::Worker(args) => worker::run(args, &cli.server, cli.output, &cli.logging).await,
        Command::Admin(command) => server::admin(command, cli.output).await,
        Command::Cluster(command) => cluster::run(command, cli.output).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Events(command) => events::run(command, &cli.server, cli.output).await,
        Command::Checkout(command) => checkout::run(command, &cli.server, cli.output).await,
        Command::Workflow(command) => workflow::run(command, &cli.server, cli.output).await,
        Command::Definition(command) => definition::run(command, &cli.server, cli.output).await,
        Command::Queue(command) => queue::run(command, &cli.server, cli.output).await,
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
