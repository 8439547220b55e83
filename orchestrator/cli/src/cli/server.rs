//! `sagaflow server` and `sagaflow admin`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use sagaflow_server::admission::AdmissionOptions;
use sagaflow_server::auth::Tokens;
use sagaflow_server::limits::Limits;
use sagaflow_server::runtime::StuckPolicy;
use sagaflow_server::store::{Placement, SledStore, Store};
use sagaflow_server::tls::TlsFiles;
use sagaflow_server::workflows::SagaDefinition;
use sagaflow_server::{Options, Registry, Server, Storage};
use sagaflow_shop_server::CheckoutExtension;

use super::{Logging, Output};

/// How a cluster's nodes hold its shards (`--placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlacementArg {
    /// Each live node serves a share of the shards.
    Spread,
    /// One node serves every shard; the others stand by.
    OneNode,
}

impl From<PlacementArg> for Placement {
    fn from(placement: PlacementArg) -> Self {
        match placement {
            PlacementArg::Spread => Placement::Spread,
            PlacementArg::OneNode => Placement::OneNode,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where histories and indexes live (created if missing). Unused with --store, whose
    /// database holds everything.
    #[arg(long, default_value = "./sagaflow-data")]
    pub data_dir: PathBuf,
    /// Keep workflows in PostgreSQL at this URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)
    /// instead of sled under --data-dir. The schema is created and migrated at start. Several
    /// servers may share one database: they share its shards out and take over a dead node's
    /// within seconds (--placement, docs/cluster.md). TLS as libpq spells it:
    /// ?sslmode=verify-full&sslrootcert=/path/ca.pem (the database's certificate is always
    /// verified, host name included; require and verify-ca mean the same here); add
    /// &sslcert=/path/client.pem&sslkey=/path/client.key for a database that requires a client
    /// certificate.
    // The URL may hold a password: --help must not print it from the environment.
    #[arg(long, env = "SAGAFLOW_STORE", hide_env_values = true, value_name = "URL", value_parser = parse_store_url)]
    pub store: Option<String>,
    /// gRPC listen address. Loopback by default.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// With --store: the host:port other nodes reach this one at, to forward it the calls and
    /// worker sessions of the shards it serves (by default the --listen address, which must then
    /// name one host, not 0.0.0.0). With --tls-cert the nodes forward only when --tls-peer-ca is
    /// given too.
    #[arg(long, value_name = "HOST:PORT", requires = "store", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// With --store: how many shards the cluster places workflows in, 1 to 1024 (default 8). The
    /// cluster's first node sets it and it never changes; a node given another count than the
    /// cluster's refuses to start. Every shard has its own lease and epoch.
    #[arg(long, value_name = "N", requires = "store", value_parser = clap::value_parser!(u32).range(1..=i64::from(sagaflow_server::ownership::MAX_SHARDS)))]
    pub shards: Option<u32>,
    /// With --store: how the cluster's nodes hold its shards. `spread` (a new cluster's default):
    /// each live node serves a share and forwards the calls of the others' shards to them; a node
    /// that joins takes its share, and a dead node's shards are taken over when its leases run out
    /// (within 10 s); every node needs an address the others reach (--advertise, and over TLS
    /// --tls-peer-ca). `one-node`: one node serves every shard and the others stand by. It is the
    /// cluster's, kept in its database: without this flag a node takes the cluster's; with
    /// another one it refuses to start while a node of the cluster runs (stop them all to change
    /// it). See docs/cluster.md.
    #[arg(long, value_enum, value_name = "PLACEMENT", requires = "store")]
    pub placement: Option<PlacementArg>,
    /// Same as --placement spread (the default for a new cluster), kept for the scripts that
    /// gave it before.
    #[arg(long, hide = true, requires = "store", conflicts_with = "placement")]
    pub spread_shards: bool,
    /// HTTP listen address for the console (/), /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub http_listen: SocketAddr,
    /// Saga definitions to apply at start, as `sagaflow definition apply` does (YAML, or JSON
    /// when the name ends in .json; one definition or a list). They are stored: a restart
    /// without the file still knows them. Repeatable.
    #[arg(long = "definitions", value_name = "FILE")]
    pub definitions: Vec<PathBuf>,
    /// Largest JSON payload a client or worker may send, in bytes.
    #[arg(long, default_value_t = Limits::default().max_payload_bytes)]
    pub max_payload_bytes: usize,
    /// Longest id, in UTF-8 bytes.
    #[arg(long, default_value_t = Limits::default().max_id_bytes)]
    pub max_id_bytes: usize,
    /// Most events one workflow history may hold; past it the workflow fails.
    #[arg(long, default_value_t = Limits::default().max_history_events)]
    pub max_history_events: u64,
    /// Most open workflows whose state is kept in memory between decisions (about 3 KB each).
    /// Beyond it, idle ones are dropped and rebuilt from their history when next needed, so memory
    /// stays bounded however many workflows are open.
    #[arg(long, default_value_t = Limits::default().max_hot_workflows, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_hot_workflows: usize,
    /// Client calls running at once, across all callers; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = AdmissionOptions::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Client calls running at once for one token.
    #[arg(long, default_value_t = AdmissionOptions::default().max_in_flight_per_token)]
    pub max_in_flight_per_token: usize,
    /// Client calls a second across all callers (0: unlimited).
    #[arg(long, default_value_t = AdmissionOptions::default().rate_per_sec)]
    pub rate_limit: f64,
    /// Client calls a second for one token (0: unlimited).
    #[arg(long, default_value_t = AdmissionOptions::default().rate_per_token_per_sec)]
    pub rate_limit_per_token: f64,
    /// Operator calls running at once: a budget of their own, so they get through an overload.
    #[arg(long, default_value_t = AdmissionOptions::default().operator_in_flight)]
    pub operator_in_flight: usize,
    /// Flag an open workflow as stuck after this long without progress.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub no_progress_after: Duration,
    /// Flag a task as stuck when no connected worker runs its activity type for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub no_worker_after: Duration,
    /// How often the stuck-saga detector looks.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub stuck_check_interval: Duration,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Relay domain events to NATS JetStream at this URL (nats://HOST:PORT); without it they stay in the outbox.
    #[arg(long, env = "SAGAFLOW_NATS_URL", hide_env_values = true, value_parser = sagaflow_server::relay::parse_url)]
    pub nats_url: Option<String>,
    /// API tokens and their roles (JSON, hashes only; see docs/security.md). Without it the
    /// server accepts every call, so it listens on loopback only.
    #[arg(long, env = "SAGAFLOW_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Allow listening beyond loopback without --auth-file. Anyone who reaches the port can
    /// then start, cancel and complete sagas.
    #[arg(long)]
    pub insecure: bool,
    /// Serve TLS on both listeners with this certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mTLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --store and --tls-cert: the CA (PEM) that signed the other nodes' certificates. A
    /// standby then listens and forwards calls to the serving node over TLS, checking its
    /// certificate against this CA (for the host of its --advertise address) and showing its own
    /// (signed by --tls-client-ca's CA where the serving node requires client certificates).
    /// Without it a TLS standby does not listen until it serves.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "store"])]
    pub tls_peer_ca: Option<PathBuf>,
    /// Run every self-healing job this often (0s: only on demand, with `sagaflow jobs run`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub jobs_interval: Duration,
    /// How long a capture may wait for its order before the scheduled jobs call it a mismatch.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub jobs_grace: Duration,
    /// Multiply the duration of every saga definition (timeouts, retry intervals, sleeps) by this
    /// factor. For tests and the chaos matrix, which run the shipped sagas at 0.05; a workflow must
    /// resume on a server with the same factor.
    #[arg(long, default_value_t = 1.0, value_parser = parse_time_scale)]
    pub time_scale: f64,
}

/// Retention, archival and the outbox's retention: the same flags on `server` and `dev`.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// How long a closed workflow is kept before its history, index row and request id are
    /// deleted, when its saga sets no `retention_ms` (a request id then starts a new workflow).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How often closed workflows past their retention are looked for and deleted.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_check_interval: Duration,
    /// Before a closed workflow is deleted (by retention or `workflow delete`), append its
    /// history to gzip JSON Lines files here, one per UTC day (DIR/YYYY-MM-DD.jsonl.gz), synced
    /// to disk first. `workflow history ID --archived` reads them back. Without it, deleted
    /// histories are gone.
    #[arg(long, value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Without a broker (no --nats-url), how long domain events stay in the outbox: older ones
    /// are deleted by the retention pass (every --retention-check-interval). A reader resuming
    /// below what was deleted (`events tail --after N`) is told so (OUT_OF_RANGE) and where to
    /// restart. With --nats-url this does nothing: each event goes once the broker has it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,
}

impl RetentionArgs {
    pub fn policy(&self) -> sagaflow_server::runtime::retention::RetentionPolicy {
        sagaflow_server::runtime::retention::RetentionPolicy {
            default: self.retention,
            interval: self.retention_check_interval,
            outbox: Some(self.outbox_retention),
        }
    }
}

pub(super) fn parse_store_url(text: &str) -> Result<String, String> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{:?} is not a postgres:// URL; without --store, data stays in sled under --data-dir",
            redact(text)
        ))
    }
}

fn parse_advertise(text: &str) -> Result<String, String> {
    let address = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(address.to_owned()),
        _ => Err(format!("{text:?} is not host:port (the address other nodes reach this one's gRPC at)")),
    }
}

/// The URL without its credentials, to print.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, place))) => format!("{scheme}://…@{place}"),
        _ => url.to_owned(),
    }
}

fn parse_time_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(factor) if factor > 0.0 && factor <= 1.0 => Ok(factor),
        _ => Err(format!("{text:?} is not a factor in (0, 1]")),
    }
}

/// The stock sagas, each scaled by `time_scale`: compiled in, never stored.
pub fn built_in_registry(time_scale: f64) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    for definition in sagaflow_shop_server::registry().all() {
        registry.register(definition.scaled(time_scale))?;
    }
    Ok(registry)
}

/// The definitions of `files` (YAML or JSON), each scaled by `time_scale`.
pub fn definitions_in(files: &[PathBuf], time_scale: f64) -> anyhow::Result<Vec<SagaDefinition>> {
    Ok(super::definition_files::read_all(files)?.into_iter().map(|d| d.scaled(time_scale)).collect())
}

/// The stock sagas, then those of `files`, in memory only (an offline rebuild).
pub fn registry_with(files: &[PathBuf], time_scale: f64) -> anyhow::Result<Registry> {
    let mut registry = built_in_registry(time_scale)?;
    for definition in definitions_in(files, time_scale)? {
        registry.register(definition)?;
    }
    Ok(registry)
}

pub async fn run(args: ServerArgs, logging: &Logging) -> anyhow::Result<()> {
    let _telemetry = logging.init("sagaflow-orchestrator")?;
    let registry = built_in_registry(args.time_scale)?;
    // Applied at boot as `sagaflow definition apply` would: stored, so that a
    // later start needs the files no more.
    let boot_definitions = definitions_in(&args.definitions, args.time_scale)?;
    let auth = match &args.auth_file {
        Some(path) => Some(Arc::new(Tokens::load(path)?)),
        None => None,
    };
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let storage = match &args.store {
        Some(url) => Storage::Postgres {
            url: url.clone(),
            dir: args.data_dir.clone(),
            advertise: args.advertise.clone(),
            shards: args.shards,
            placement: match (args.placement, args.spread_shards) {
                (Some(placement), _) => Some(placement.into()),
                (None, true) => Some(Placement::Spread),
                (None, false) => None,
            },
        },
        None => Storage::Sled(args.data_dir.clone()),
    };
    let data_at = match &args.store {
        Some(url) => format!("PostgreSQL at {}", redact(url)),
        None => args.data_dir.display().to_string(),
    };
    let options = Options {
        storage,
        listen: args.listen,
        http_listen: Some(args.http_listen),
        limits: Limits {
            max_payload_bytes: args.max_payload_bytes,
            max_id_bytes: args.max_id_bytes.min(255),
            max_history_events: args.max_history_events,
            max_hot_workflows: args.max_hot_workflows,
            ..Limits::default()
        },
        stuck: StuckPolicy {
            no_progress_after: args.no_progress_after,
            no_worker_after: args.no_worker_after,
            interval: args.stuck_check_interval,
        },
        retention: args.retention.policy(),
        archive_dir: args.retention.archive_dir.clone(),
        jobs: sagaflow_server::jobs::JobsOptions {
            interval: Some(args.jobs_interval).filter(|i| !i.is_zero()),
            grace: args.jobs_grace,
            nats_url: None,
        },
        relay: args.nats_url.map(sagaflow_server::relay::RelayOptions::new),
        auth,
        insecure: args.insecure,
        admission: AdmissionOptions {
            max_in_flight: args.max_in_flight,
            max_in_flight_per_token: args.max_in_flight_per_token,
            rate_per_sec: args.rate_limit,
            rate_per_token_per_sec: args.rate_limit_per_token,
            operator_in_flight: args.operator_in_flight,
        },
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles::load(cert, key, args.tls_client_ca.as_deref())?;
                Some(match &args.tls_peer_ca {
                    Some(peer_ca) => files.with_peer_ca(peer_ca)?,
                    None => files,
                })
            }
            _ => None,
        },
    };
    let mut shutdown = std::pin::pin!(super::shutdown_signal());
    let starting = Server::builder()
        .options(options)
        .definitions(registry)
        .apply_definitions(boot_definitions)
        .extension(CheckoutExtension)
        .start();
    // A standby waits inside `start` for the store's lease; a stop ends the wait.
    let server = tokio::select! {
        server = starting => server?,
        () = &mut shutdown => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    outln!(
        "sagaflow listening on {} (gRPC) and {} (metrics); data in {}; console on {}",
        server.url(),
        server
            .http_addr()
            .map_or_else(|| "-".into(), |addr| sagaflow_server::http::describe_with(addr, server.is_tls())),
        data_at,
        server.http_addr().map_or_else(|| "-".into(), |addr| sagaflow_server::http::console_url(addr, server.is_tls())),
    );
    let lost = tokio::select! {
        () = &mut shutdown => None,
        reason = server.lost_store() => Some(reason),
    };
    if let Some(reason) = lost {
        // No graceful stop: its writes are refused already, a drain would
        // wait on work that can no longer commit, and serving reads from
        // memory would lie. The process ends, and its connections with it.
        anyhow::bail!("this node no longer owns the store ({reason}); stopped serving");
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Rebuild the workflow index, idempotency map, tasks and timers from the histories.
    RebuildIndex {
        #[arg(long, default_value = "./sagaflow-data")]
        data_dir: PathBuf,
        /// Extra saga definitions the histories may use.
        #[arg(long = "definitions", value_name = "FILE")]
        definitions: Vec<PathBuf>,
    },
}

pub async fn admin(command: AdminCommand, output: Output) -> anyhow::Result<()> {
    match command {
        AdminCommand::RebuildIndex { data_dir, definitions } => {
            let registry = registry_with(&definitions, 1.0)?;
            let dir = data_dir.join("orchestrator");
            anyhow::ensure!(dir.exists(), "no sagaflow data in {}", data_dir.display());
            let store: Arc<dyn Store> =
                Arc::new(SledStore::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?);
            let report = sagaflow_server::runtime::rebuild_derived(&store, &registry).await?;
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::json!({"workflows": report.workflows, "open": report.open, "tasks": report.tasks, "timers": report.timers, "skipped": report.skipped})
                ),
                Output::Text => {
                    outln!(
                        "rebuilt {} workflows ({} open, {} tasks, {} timers)",
                        report.workflows,
                        report.open,
                        report.tasks,
                        report.timers
                    );
                    if !report.skipped.is_empty() {
                        outln!("skipped (definition not registered): {}", report.skipped.join(", "));
                    }
                }
            }
            Ok(())
        }
    }
}
