//! Assembles a server: the store, the runtime, the gRPC services (with
//! health and reflection) and the HTTP listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sagaflow_proto::v1::{
    definition_service_server::DefinitionServiceServer, worker_service_server::WorkerServiceServer,
    workflow_service_server::WorkflowServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::admission::{Admission, AdmissionLayer, AdmissionOptions};
use crate::api::{DefinitionApi, EventsApi, NodeApi, WorkerApi, WorkflowApi};
use crate::auth::policy::Policy;
use crate::auth::{AuthLayer, Tokens};
use crate::connections::{Gate, GatedListener};
use crate::extension::Extension;
use crate::jobs::{self, JobsOptions};
use crate::limits::Limits;
use crate::registry::Registry;
use crate::runtime::lease_token::LeaseKey;
use crate::runtime::retention::RetentionPolicy;
use crate::runtime::{Runtime, StuckPolicy};
use crate::store::{MemoryStore, Placement, SledStore, Store};
use crate::tls::TlsFiles;
use sagaflow_proto::v1::event_service_server::EventServiceServer;
use sagaflow_proto::v1::node_service_server::NodeServiceServer;
use sagaflow_workflows::SagaDefinition;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: PathBuf, source: crate::store::Error },
    #[error("cannot open the PostgreSQL store: {0}")]
    Database(crate::store::Error),
    #[error(transparent)]
    Ownership(#[from] crate::ownership::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("recovery failed: {0}")]
    Recovery(#[from] crate::runtime::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    LeaseKey(#[from] crate::runtime::lease_token::Error),
    #[error(transparent)]
    Archive(#[from] crate::archive::Error),
    #[error(
        "this node cannot take a share of the cluster's shards (its placement is spread): {0}; or run the cluster with --placement one-node, one node serving and the others standing by"
    )]
    SpreadNeedsPeers(String),
    #[error("cannot build reflection: {0}")]
    Reflection(String),
    #[error(
        "refusing to listen on {addr} without auth: anyone who reaches it could start, cancel or complete \
         sagas. Give --auth-file (see docs/security.md), listen on loopback, or pass --insecure to accept the risk"
    )]
    Exposed { addr: SocketAddr },
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Storage {
    Sled(PathBuf),
    /// A PostgreSQL database at `url`, shared with standby nodes: this node
    /// serves only while it holds the store's lease ([`crate::ownership`]).
    /// `dir` keeps what stays on the node (the key that signs task leases).
    Postgres {
        url: String,
        dir: PathBuf,
        /// The `host:port` standbys forward calls to while this node
        /// serves; by default the gRPC listener's own address.
        advertise: Option<String>,
        /// The shard count to create the cluster with, if this node is its
        /// first; a cluster created with another count refuses the node.
        shards: Option<u32>,
        /// How the nodes hold the shards, if this node says: a new cluster
        /// takes it; a cluster created otherwise takes it only while none of
        /// its nodes runs. Unsaid, the cluster's (spread for a new one).
        placement: Option<Placement>,
    },
    /// Nothing survives the process: for tests and demos.
    Memory,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub storage: Storage,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub stuck: StuckPolicy,
    /// Relay the outbox to NATS JetStream; `None` keeps events in the outbox (embedded mode).
    pub relay: Option<crate::relay::RelayOptions>,
    /// The accepted tokens; `None` runs without auth, which only loopback
    /// listeners allow unless `insecure` is set.
    pub auth: Option<Arc<Tokens>>,
    /// Allows non-loopback listeners without auth.
    pub insecure: bool,
    /// TLS on both listeners; `None` serves plain HTTP/2 and HTTP/1.1.
    pub tls: Option<TlsFiles>,
    /// Concurrency and rate limits of gRPC calls.
    pub admission: AdmissionOptions,
    /// The self-healing jobs' schedule.
    pub jobs: JobsOptions,
    /// How long closed workflows are kept, and how often expired ones go.
    pub retention: RetentionPolicy,
    /// Archive each closed workflow's history here before it is deleted
    /// (`archive.rs`); `None` deletes without a copy.
    pub archive_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            storage: Storage::Sled(PathBuf::from("sagaflow-data")),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            limits: Limits::default(),
            stuck: StuckPolicy::default(),
            relay: None,
            auth: None,
            insecure: false,
            tls: None,
            admission: AdmissionOptions::default(),
            jobs: JobsOptions::default(),
            retention: RetentionPolicy::default(),
            archive_dir: None,
        }
    }
}

impl Options {
    /// Refuses to expose an unauthenticated server beyond this machine
    /// (docs/contract.md, Limits), and warns loudly when told to anyway.
    fn check_exposure(&self) -> Result<(), Error> {
        if self.auth.is_some() {
            return Ok(());
        }
        let exposed = std::iter::once(self.listen).chain(self.http_listen).find(|addr| !addr.ip().is_loopback());
        match exposed {
            Some(addr) if !self.insecure => Err(Error::Exposed { addr }),
            Some(addr) => {
                tracing::warn!(
                    %addr,
                    "INSECURE: listening beyond loopback without auth (--insecure); anyone who reaches this port \
                     can start, cancel and complete sagas"
                );
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A running server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    tls: bool,
    runtime: Runtime,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The store's leases, when the store is shared (PostgreSQL).
    ownership: Option<Hold>,
}

/// How a node holds a shared store's shards.
enum Hold {
    /// Every shard, or (standing by) none.
    Whole(crate::ownership::Ownership),
    /// Its share ([`crate::ownership::spread`]).
    Spread(crate::ownership::spread::Spread),
}

impl Hold {
    async fn lost(&self) -> String {
        match self {
            Self::Whole(ownership) => ownership.lost().await,
            Self::Spread(spread) => spread.lost().await,
        }
    }

    async fn release(self) {
        match self {
            Self::Whole(ownership) => ownership.release().await,
            Self::Spread(spread) => spread.release().await,
        }
    }
}

/// Assembles a server: `Server::builder().options(…).definitions(…).extension(…).start()`.
#[derive(Default)]
pub struct ServerBuilder {
    options: Options,
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    apply: Vec<SagaDefinition>,
    extensions: Vec<Box<dyn Extension>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<&str> = self.extensions.iter().map(|e| e.service_name()).collect();
        f.debug_struct("ServerBuilder").field("options", &self.options).field("extensions", &services).finish()
    }
}

impl ServerBuilder {
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The store to run on, instead of the one `options.storage` names
    /// (which then only places the lease key: `Memory` draws a new one).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The saga definitions it runs.
    pub fn definitions(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Definitions registered at start as `RegisterDefinition` would (stored
    /// durably; a changed body under a registered version stops the start),
    /// unlike the built-ins of [`definitions`](Self::definitions), which live
    /// in code: `sagaflow server --definitions FILE`.
    pub fn apply_definitions(mut self, definitions: Vec<SagaDefinition>) -> Self {
        self.apply.extend(definitions);
        self
    }

    /// A gRPC service of the application's, served beside the platform's.
    pub fn extension(mut self, extension: impl Extension) -> Self {
        self.extensions.push(Box::new(extension));
        self
    }

    pub async fn start(self) -> Result<Server, Error> {
        Server::assemble(self.options, self.store, self.registry, self.apply, self.extensions).await
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with the platform's services only; see [`Server::builder`].
    pub async fn start(options: Options, registry: Registry) -> Result<Self, Error> {
        Self::builder().options(options).definitions(registry).start().await
    }

    async fn assemble(
        options: Options,
        store: Option<Arc<dyn Store>>,
        registry: Registry,
        apply: Vec<SagaDefinition>,
        extensions: Vec<Box<dyn Extension>>,
    ) -> Result<Self, Error> {
        options.check_exposure()?;
        let extensions = Arc::new(extensions);
        let policy = Arc::new(Policy::with_rules(extensions.iter().flat_map(|e| e.rules())));
        // A store handed in is taken as its options say; one connected to
        // here says its cluster's.
        let mut cluster_placement = match &options.storage {
            Storage::Postgres { placement, .. } => Some(placement.unwrap_or(Placement::Spread)),
            Storage::Sled(_) | Storage::Memory => None,
        };
        // The lease key beside the store, so that a worker running through a
        // restart (or, on PostgreSQL, a takeover) can still prove its leases
        // (runtime/lease_token.rs).
        let (store, lease_key): (Arc<dyn Store>, LeaseKey) = match (store, &options.storage) {
            (Some(store), Storage::Sled(dir) | Storage::Postgres { dir, .. }) => {
                (store, LeaseKey::load_or_create(&dir.join("lease.key"))?)
            }
            (Some(store), Storage::Memory) => (store, LeaseKey::random()),
            (None, Storage::Sled(dir)) => (
                Arc::new(
                    SledStore::open(&dir.join("orchestrator"))
                        .map_err(|source| Error::Store { dir: dir.clone(), source })?,
                ),
                LeaseKey::load_or_create(&dir.join("lease.key"))?,
            ),
            (None, Storage::Memory) => (Arc::new(MemoryStore::in_memory()), LeaseKey::random()),
            (None, Storage::Postgres { url, shards, placement, .. }) => {
                // Quiet for a lease's lifetime: no node of the cluster runs.
                let placement = placement.map(|p| (p, crate::ownership::LEASE_TTL));
                let store = sagaflow_store_postgres::PostgresStore::connect_to_cluster(url, *shards, placement)
                    .await
                    .map_err(Error::Database)?;
                cluster_placement = Some(store.placement());
                let key = store.shared_secret("lease_key", LeaseKey::fresh_bytes).await.map_err(Error::Database)?;
                (Arc::new(store), LeaseKey::from_shared(&key)?)
            }
        };
        // Before the store is taken, so that the shards' gauges it sets are recorded.
        crate::http::prometheus();
        let (mut ownership, listening) = match &options.storage {
            Storage::Postgres { advertise, .. } if cluster_placement == Some(Placement::OneNode) => {
                let (ownership, listening) = take_the_store(Arc::clone(&store), &options, advertise.as_deref()).await?;
                (Some(Hold::Whole(ownership)), listening)
            }
            Storage::Postgres { advertise, .. } => {
                let (spread, listener) = join_the_cluster(Arc::clone(&store), &options, advertise.as_deref()).await?;
                (Some(Hold::Spread(spread)), Some(listener))
            }
            Storage::Sled(_) | Storage::Memory => {
                crate::ownership::record_shards(1, 1);
                (None, None)
            }
        };
        let open_files = crate::connections::raise_open_file_limit();
        let (grpc_cap, http_cap) = crate::connections::caps(open_files);
        tracing::info!(open_files, grpc_connections = grpc_cap, http_connections = http_cap, "open-file limit");
        let archive = match &options.archive_dir {
            Some(dir) => Some(Arc::new(crate::archive::Archive::open(dir)?)),
            None => None,
        };
        // The cluster's nodes share the key, so each can prove to the others it is one.
        let node_token = lease_key.node_token();
        let runtime = Runtime::start(store, registry, apply, options.limits, options.stuck, lease_key, archive).await?;
        if let Some(Hold::Spread(spread)) = &mut ownership {
            spread.attach(runtime.clone());
        }
        let mut retention = options.retention;
        if options.relay.is_some() {
            // The relay deletes each record once the broker has it; pruning
            // would drop records the broker has not taken yet.
            retention.outbox = None;
        }
        tokio::spawn(runtime.clone().expire_closed_workflows(retention));
        let grpc = match listening {
            Some(listener) => listener,
            None => TcpListener::bind(options.listen)
                .await
                .map_err(|source| Error::Bind { addr: options.listen, source })?,
        };
        let grpc_addr = grpc.local_addr().map_err(|source| Error::Bind { addr: options.listen, source })?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let store_health = crate::health::watch_store(Arc::clone(runtime.store()), stopped.clone());
        let http_addr = match options.http_listen {
            Some(addr) => {
                let http = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
                let bound = http.local_addr().map_err(|source| Error::Bind { addr, source })?;
                let mut stopped = stopped.clone();
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let tokens = options.auth.clone();
                let health = store_health.clone();
                let console = crate::console::Setup {
                    runtime: runtime.clone(),
                    tokens: options.auth.clone(),
                    tls: options.tls.is_some(),
                    extensions: Arc::clone(&extensions),
                };
                match &options.tls {
                    Some(tls) => {
                        let listener = tls.listener(http)?;
                        tasks.push(tokio::spawn(async move {
                            if let Err(e) = crate::http::serve_tls(listener, tokens, health, console, shutdown).await {
                                tracing::error!(error = %e, "https listener failed");
                            }
                        }));
                    }
                    None => {
                        let http = GatedListener::new(Gate::new("http", http_cap), http)
                            .map_err(|source| Error::Bind { addr, source })?;
                        tasks.push(tokio::spawn(async move {
                            if let Err(e) = crate::http::serve(http, tokens, health, console, shutdown).await {
                                tracing::error!(error = %e, "http listener failed");
                            }
                        }));
                    }
                }
                Some(bound)
            }
            None => None,
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // Serving before the first call can arrive; `health::report` then follows the store.
        health_reporter.set_serving::<WorkflowServiceServer<WorkflowApi>>().await;
        health_reporter.set_serving::<WorkerServiceServer<WorkerApi>>().await;
        health_reporter.set_serving::<EventServiceServer<EventsApi>>().await;
        for extension in extensions.iter() {
            health_reporter.set_service_status(extension.service_name(), tonic_health::ServingStatus::Serving).await;
        }
        {
            use tonic::server::NamedService;
            let mut services = vec![
                WorkflowServiceServer::<WorkflowApi>::NAME,
                WorkerServiceServer::<WorkerApi>::NAME,
                EventServiceServer::<EventsApi>::NAME,
            ];
            services.extend(extensions.iter().map(|e| e.service_name()));
            tasks.push(tokio::spawn(crate::health::report(health_reporter, services, store_health)));
        }
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sagaflow_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = described().build_v1().map_err(|e| Error::Reflection(e.to_string()))?;
        // Python's grpcio-reflection, and grpcurl before 1.8, speak only v1alpha.
        let reflection_v1alpha = described().build_v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
        // The orchestrator's own jobs worker calls in like any worker; under
        // auth it holds a token minted here, known to no one else and
        // allowed to serve the `jobs.*` queues only.
        let jobs_token = options.auth.as_ref().map(|_| jobs::internal_token());
        let shared_store = runtime.store().fences().is_some();
        let auth = match (&options.auth, &jobs_token) {
            (Some(tokens), Some(token)) => {
                let tokens = tokens.with_internal_worker(jobs::WORKER_NAME, token, vec![jobs::QUEUES.to_owned()]);
                Some(Arc::new(if shared_store { tokens.with_peer_nodes(&node_token) } else { tokens }))
            }
            _ => options.auth.clone(),
        };
        let internal_auth = auth.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &options.tls {
            builder = builder.tls_config(tls.grpc()).map_err(crate::tls::Error::from)?;
        }
        let max_message = max_message_bytes(&options.limits);
        let admission = Arc::new(Admission::new(options.admission));
        // On a shared store (one fenced for the shards this node holds),
        // calls about another node's shards go there.
        // A worker's session relays to the other nodes too (api/relay.rs).
        let (route, peers) = match runtime.store().fences() {
            Some(_) => {
                let map = crate::route::ShardMap::follow(Arc::clone(runtime.store())).await;
                let dialer = Arc::new(crate::forward::Dialer::new(match &options.tls {
                    Some(files) => files.forwarding()?.map(|f| f.dial),
                    None => None,
                }));
                let (spread, own_address) = match &ownership {
                    Some(Hold::Spread(spread)) => (true, spread.address().map(str::to_owned)),
                    _ => (false, None),
                };
                let token = options.auth.as_ref().map(|_| node_token.as_str());
                runtime.reach_other_nodes(Arc::new(crate::api::NodeClient::new(
                    Arc::clone(&map),
                    Arc::clone(&dialer),
                    token,
                    own_address.clone(),
                )));
                let peers =
                    Arc::new(crate::api::Peers::new(Arc::clone(&map), Arc::clone(&dialer), spread, own_address));
                (Some(crate::route::RouteLayer::new(runtime.clone(), map, dialer, max_message)), Some(peers))
            }
            None => (None, None),
        };
        let worker_api = || match &peers {
            Some(peers) => WorkerApi::relaying(runtime.clone(), Arc::clone(peers)),
            None => WorkerApi::new(runtime.clone()),
        };
        // Auth first, so that admission knows whose budget a call is charged to.
        let mut routes = tonic::service::RoutesBuilder::default();
        for extension in extensions.iter() {
            extension.add_to(&mut routes, &runtime, max_message);
        }
        let router = builder
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            // Half-open and dead peers are found by pings (connections.rs).
            .http2_keepalive_interval(Some(crate::connections::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(crate::connections::KEEPALIVE_TIMEOUT))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .layer(tower::util::MapResponseLayer::new(crate::api::decode_errors_are_invalid_arguments))
            .layer(AuthLayer::new(auth, Arc::clone(&policy)))
            .layer(AdmissionLayer::new(admission, Arc::clone(&policy)))
            .layer(tower::util::option_layer(route))
            .add_routes(routes.routes())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(
                WorkflowServiceServer::new(WorkflowApi::new(runtime.clone())).max_decoding_message_size(max_message),
            )
            .add_service(WorkerServiceServer::new(worker_api()).max_decoding_message_size(max_message))
            .add_service(
                DefinitionServiceServer::new(DefinitionApi::new(runtime.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                EventServiceServer::new(EventsApi::new(runtime.clone())).max_decoding_message_size(max_message),
            )
            .add_service(NodeServiceServer::new(NodeApi::new(runtime.clone())).max_decoding_message_size(max_message));
        let mut jobs_options = options.jobs.clone();
        if jobs_options.nats_url.is_none() {
            jobs_options.nats_url = options.relay.as_ref().map(|r| r.url.clone());
        }
        // The in-process jobs worker reaches the worker service over an
        // in-memory transport, behind the same auth layer: it needs neither
        // the public listener's address nor its TLS.
        let (jobs_channel, jobs_incoming) = crate::in_process::channel();
        let internal = tonic::transport::Server::builder().layer(AuthLayer::new(internal_auth, policy)).add_service(
            WorkerServiceServer::new(WorkerApi::new(runtime.clone())).max_decoding_message_size(max_message),
        );
        let mut stopped_internal = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped_internal.wait_for(|s| *s).await;
            };
            if let Err(e) = internal.serve_with_incoming_shutdown(jobs_incoming, shutdown).await {
                tracing::error!(error = %e, "the in-process listener for the jobs worker failed");
            }
        }));
        match jobs::worker(runtime.clone(), jobs_channel, jobs_options.nats_url.clone(), jobs_token, &extensions) {
            Ok(worker) => {
                let mut stopped = stopped.clone();
                tasks.push(tokio::spawn(async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    };
                    if let Err(e) = worker.run_until(stop).await {
                        tracing::error!(error = %e, "the jobs worker stopped");
                    }
                }));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the jobs worker; the stuck and replay jobs will wait");
            }
        }
        tasks.push(tokio::spawn(jobs::schedule(runtime.clone(), jobs_options, stopped.clone())));
        if let Some(relay) = options.relay {
            tasks.push(tokio::spawn(relay_while_serving_shard_zero(runtime.clone(), relay, stopped.clone())));
        }
        let mut stopped_grpc = stopped;
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped_grpc.wait_for(|s| *s).await;
            };
            let incoming = ReceiverStream::new(Gate::new("grpc", grpc_cap).accept(grpc))
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                tracing::error!(error = %e, "grpc listener failed");
            }
        }));
        tracing::info!(%grpc_addr, http = ?http_addr, "sagaflow serving");
        let tls = options.tls.is_some();
        Ok(Self { grpc_addr, http_addr, tls, runtime, stop, tasks, ownership })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// `http://ADDR` (or `https://ADDR` with TLS), for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// Whether both listeners speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Stops accepting, lets in-flight calls finish, and waits for the listeners.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(ownership) = self.ownership {
            ownership.release().await;
        }
    }

    /// Resolves, with the reason, if this node loses the shared store to
    /// another (it must then stop); never, for a store of its own.
    pub async fn lost_store(&self) -> String {
        match &self.ownership {
            Some(ownership) => ownership.lost().await,
            None => std::future::pending().await,
        }
    }
}

/// Runs the outbox relay while this node serves shard 0, so that a cluster
/// has one relay whichever way its shards are spread (every node's
/// outbox records are in the one store). A node that stops serving shard 0
/// stops its relay mid-window, which is safe: what it did not delete is
/// published again by the next, and JetStream drops the copies.
async fn relay_while_serving_shard_zero(
    runtime: Runtime,
    options: crate::relay::RelayOptions,
    mut stopped: watch::Receiver<bool>,
) {
    const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    loop {
        while !runtime.serves_shard(0) {
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                () = until_stopped(&mut stopped) => return,
            }
        }
        let (stop_relay, relay_stopped) = watch::channel(false);
        let relay = crate::relay::Relay::new(options.clone(), Arc::clone(runtime.store()), runtime.outbox_changes());
        let mut relay = std::pin::pin!(relay.run(relay_stopped));
        loop {
            tokio::select! {
                // It ended by itself (it could not start): it said why.
                () = &mut relay => return,
                () = tokio::time::sleep(LOOK_EVERY) => {
                    if !runtime.serves_shard(0) {
                        tracing::info!("this node no longer serves shard 0: its outbox relay stops");
                        break;
                    }
                }
                () = until_stopped(&mut stopped) => {
                    stop_relay.send_replace(true);
                    relay.await;
                    return;
                }
            }
        }
        stop_relay.send_replace(true);
        relay.await;
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Streams one connection may have open at once: a client that opens more
/// waits for one to end (HTTP/2 flow control) instead of growing the server.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Takes the store's lease (a standby waits). Meanwhile the node listens
/// and forwards every call to the node that serves (forward.rs), unless the
/// API is served over TLS without `--tls-peer-ca` (the CA to check the
/// serving node's certificate against); the listener is returned, to serve
/// on once the store is taken.
async fn take_the_store(
    store: Arc<dyn Store>,
    options: &Options,
    advertise: Option<&str>,
) -> Result<(crate::ownership::Ownership, Option<TcpListener>), Error> {
    use crate::ownership::{Ownership, node_id, owner_name};
    let (serving, serving_now) = watch::channel(None);
    let tls = match &options.tls {
        Some(files) => match files.forwarding()? {
            Some(forwarding) => Some(forwarding),
            None => return Ok((Ownership::take(store, owner_name(&node_id(), None), &serving).await?, None)),
        },
        None => None,
    };
    let (listener, address) = listen_and_advertise(options, advertise).await?;
    let (grpc_cap, _) = crate::connections::caps(crate::connections::raise_open_file_limit());
    let forwarder = crate::forward::Forwarder::start(listener, serving_now, grpc_cap, tls);
    let taken = Ownership::take(store, owner_name(&node_id(), address.as_deref()), &serving).await;
    let listener = forwarder.stop().await.map_err(|source| Error::Bind { addr: options.listen, source })?;
    Ok((taken?, Some(listener)))
}

/// Joins a cluster whose nodes share the shards out (`--spread-shards`):
/// the node serves at once, with the share it could take, and forwards the
/// calls of the other shards. It must be able to reach the other nodes, and
/// they it: over TLS that takes `--tls-peer-ca`.
async fn join_the_cluster(
    store: Arc<dyn Store>,
    options: &Options,
    advertise: Option<&str>,
) -> Result<(crate::ownership::spread::Spread, TcpListener), Error> {
    use crate::ownership::{node_id, owner_name};
    if let Some(files) = &options.tls
        && files.forwarding()?.is_none()
    {
        return Err(Error::SpreadNeedsPeers(
            "over TLS it needs --tls-peer-ca, the CA to check the other nodes' certificates against".into(),
        ));
    }
    let (listener, address) = listen_and_advertise(options, advertise).await?;
    let Some(address) = address else {
        return Err(Error::SpreadNeedsPeers(
            "it listens on every interface: give --advertise HOST:PORT, where the other nodes reach it".into(),
        ));
    };
    let spread = crate::ownership::spread::Spread::join(store, owner_name(&node_id(), Some(&address))).await?;
    Ok((spread, listener))
}

/// Binds the gRPC listener, and says where other nodes reach it: the
/// `--advertise` address, or the bound one unless that is every interface.
async fn listen_and_advertise(
    options: &Options,
    advertise: Option<&str>,
) -> Result<(TcpListener, Option<String>), Error> {
    let bind_error = |source| Error::Bind { addr: options.listen, source };
    let listener = TcpListener::bind(options.listen).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let address = match advertise {
        Some(address) => Some(address.to_owned()),
        None if bound.ip().is_unspecified() => {
            tracing::warn!(%bound, "no --advertise: other nodes cannot forward calls to this one");
            None
        }
        None => Some(bound.to_string()),
    };
    Ok((listener, address))
}

/// Request metadata (headers) of one call; tokens and trace ids fit many times over.
const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

/// The largest request message the server decodes. Above the payload limit,
/// so that a payload slightly over it gets the clear INVALID_ARGUMENT of
/// [`Limits::json_payload`]; far below tonic's 4 MiB default, so that an
/// oversized message is refused from its length prefix before it is buffered.
pub fn max_message_bytes(limits: &Limits) -> usize {
    limits.max_payload_bytes.saturating_mul(2).saturating_add(256 * 1024)
}
