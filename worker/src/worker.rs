//! The face of the SDK: [`Worker`], its [`WorkerBuilder`], and the [`Handle`]
//! that asks a running worker to drain.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::activity::{self, ActivityContext, ActivityError, Handler};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::runner::Runner;

/// The longest worker id or activity type, in UTF-8 bytes; the orchestrator
/// refuses longer identifiers.
pub const MAX_ID_BYTES: usize = 255;

/// The highest `max_concurrency` a worker accepts. Every buffer the worker
/// keeps is sized from it, so it is bounded too.
pub const MAX_CONCURRENCY: u32 = 65_536;

const DEFAULT_MAX_CONCURRENCY: u32 = 32;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection attempt, including registration, that takes longer than this
/// is abandoned and retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find a dead orchestrator (or a dead network path) within
/// interval + timeout even while no task is running.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to the orchestrator, runs the registered activities with a
/// concurrency limit, and reports their outcomes.
///
/// Build one with [`Worker::builder`], keep a [`Handle`] if something else
/// should stop it, then [`run`](Worker::run) it.
pub struct Worker {
    pub(crate) config: Config,
    pub(crate) handlers: HashMap<String, Handler>,
    pub(crate) drain: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut activity_types: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        activity_types.sort_unstable();
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("activity_types", &activity_types)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts building a worker for the orchestrator at `endpoint`, such as
    /// `http://127.0.0.1:50051`, or at several nodes sharing one store,
    /// comma-separated (`http://a:50051,http://b:50051`): a standby serves
    /// only once it took over, so each reconnect tries the next node.
    pub fn builder(endpoint: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            endpoint: endpoint.into(),
            channel: None,
            token: None,
            tls: None,
            worker_id: None,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            activities: Vec::new(),
        }
    }

    /// A handle that can ask this worker to drain, from anywhere.
    pub fn handle(&self) -> Handle {
        Handle { drain: Arc::clone(&self.drain) }
    }

    /// This worker's id, as it registers with the orchestrator.
    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Runs until [`Handle::shutdown`] is called and the drain completes.
    ///
    /// The orchestrator being unreachable is not an error: the worker
    /// reconnects with backoff for as long as it runs.
    ///
    /// # Errors
    /// [`Error::DrainTimedOut`] if the drain did not finish within the drain
    /// timeout.
    pub async fn run(self) -> Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `signal` resolves (or [`Handle::shutdown`] is called), then
    /// drains: asks for no more tasks, lets the running ones finish, and waits
    /// for their outcomes to be acknowledged, within the drain timeout.
    ///
    /// # Errors
    /// [`Error::DrainTimedOut`] if the drain did not finish within the drain
    /// timeout.
    pub async fn run_until<F>(self, signal: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut drain_requested = self.drain.subscribe();
        let shutdown = Box::pin(async move {
            tokio::select! {
                () = signal => {}
                // The worker holds the sender, so this cannot fail while it runs.
                _ = drain_requested.wait_for(|drain| *drain) => {}
            }
        });
        // A task of the runtime rather than the caller's future: under
        // `#[tokio::main]` that future runs on the main thread, outside the
        // worker pool, and every task's start and end would wake a thread.
        let mut runner = AbortOnDrop(tokio::spawn(Runner::new(self.config, self.handlers, self.drain, shutdown).run()));
        match (&mut runner.0).await {
            Ok(result) => result,
            Err(stopped) if stopped.is_panic() => std::panic::resume_unwind(stopped.into_panic()),
            Err(_) => Err(Error::RuntimeShutdown),
        }
    }
}

/// Stops the run loop when the future awaiting it is dropped, as if it ran inline.
struct AbortOnDrop(tokio::task::JoinHandle<Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks a running [`Worker`] to drain. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    drain: Arc<watch::Sender<bool>>,
}

impl Handle {
    /// Starts a graceful shutdown: the worker asks for no more tasks, finishes
    /// the ones in flight, waits for their outcomes to be acknowledged, and then
    /// its [`run`](Worker::run) returns. Calling it again does nothing.
    pub fn shutdown(&self) {
        self.drain.send_replace(true);
    }

    /// Whether a shutdown was requested through a handle.
    pub fn is_shutting_down(&self) -> bool {
        *self.drain.borrow()
    }
}

/// Configures a [`Worker`]; see [`Worker::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct WorkerBuilder {
    endpoint: String,
    channel: Option<Channel>,
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
    worker_id: Option<String>,
    max_concurrency: u32,
    drain_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    activities: Vec<(String, Handler)>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let activity_types: Vec<&str> = self.activities.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("WorkerBuilder")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("channel", &self.channel.is_some())
            .field("worker_id", &self.worker_id)
            .field("max_concurrency", &self.max_concurrency)
            .field("drain_timeout", &self.drain_timeout)
            .field("activity_types", &activity_types)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The id this worker registers under. Default: `HOSTNAME-PID-RANDOM`.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// The API token this worker presents (`authorization: Bearer TOKEN`);
    /// needed when the orchestrator runs with auth. It must have the worker
    /// role and be allowed the queues this worker serves.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS to the orchestrator (use an `https://` endpoint): the CA that signed
    /// the server's certificate, and a client certificate when the server
    /// asks for one (mTLS).
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connects over `channel` instead of dialing the endpoint, which then
    /// only names the orchestrator in logs: for a worker inside the
    /// orchestrator's own process, or a transport of your own. TLS, if any,
    /// is the channel's; a lazy channel reconnects by itself.
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// How many tasks may run at once (default 32, at most [`MAX_CONCURRENCY`]). This is also the most
    /// credit the worker grants: it never holds more tasks than this, counting
    /// a task from its arrival until the orchestrator acknowledges its outcome.
    pub fn max_concurrency(mut self, max_concurrency: u32) -> Self {
        self.max_concurrency = max_concurrency;
        self
    }

    /// How long a drain may take before [`Worker::run`] gives up with
    /// [`Error::DrainTimedOut`] (default 30 s).
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// The reconnect delays: from `initial`, doubling up to `max`, with
    /// jitter (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Registers the handler of an activity type.
    ///
    /// The task's JSON input is deserialized into `T` (use
    /// [`serde_json::Value`] to take it as is); input that does not fit fails
    /// the attempt with the non-retryable [`ActivityError::INVALID_INPUT`].
    /// The handler's `R` is serialized to JSON as the result. A handler that
    /// panics fails the attempt with the retryable [`ActivityError::PANIC`],
    /// and the worker goes on.
    pub fn activity<T, R, F, Fut>(mut self, activity_type: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(ActivityContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, ActivityError>> + Send + 'static,
    {
        self.activities.push((activity_type.into(), activity::erase(handler)));
        self
    }

    /// Checks the settings and builds the worker. Does not connect: that
    /// happens in [`Worker::run`].
    ///
    /// # Errors
    /// [`Error::InvalidEndpoint`], [`Error::InvalidId`],
    /// [`Error::InvalidConcurrency`], [`Error::NoActivities`] or
    /// [`Error::DuplicateActivity`].
    pub fn build(self) -> Result<Worker> {
        // Several orchestrator nodes, comma-separated: a standby serves only
        // once it took over, so each reconnect tries the next one.
        let mut endpoints = Vec::new();
        for address in self.endpoint.split(',').map(str::trim) {
            let invalid = |source| Error::InvalidEndpoint { endpoint: address.to_owned(), source };
            let mut endpoint = Endpoint::from_shared(address.to_owned()).map_err(invalid)?;
            if let Some(tls) = &self.tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
            }
            endpoints.push(
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                    .keep_alive_while_idle(true),
            );
        }
        let token = match self.token {
            Some(token) => {
                let mut value =
                    MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| Error::InvalidToken)?;
                // Sensitive values print as `Sensitive` in Debug output, so a
                // logged Config never shows the token.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        check_id("worker id", &worker_id)?;
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency) {
            return Err(Error::InvalidConcurrency(self.max_concurrency));
        }
        if self.activities.is_empty() {
            return Err(Error::NoActivities);
        }
        let mut handlers = HashMap::with_capacity(self.activities.len());
        for (activity_type, handler) in self.activities {
            check_id("activity type", &activity_type)?;
            if handlers.contains_key(&activity_type) {
                return Err(Error::DuplicateActivity(activity_type));
            }
            handlers.insert(activity_type, handler);
        }
        let (drain, _) = watch::channel(false);
        Ok(Worker {
            config: Config {
                endpoints,
                channel: self.channel,
                token,
                connect_timeout: CONNECT_TIMEOUT,
                worker_id,
                max_concurrency: self.max_concurrency,
                drain_timeout: self.drain_timeout,
                backoff_initial: self.backoff_initial,
                backoff_max: self.backoff_max,
            },
            handlers,
            drain: Arc::new(drain),
        })
    }
}

fn check_id(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(Error::InvalidId { what, value: value.to_owned() });
    }
    Ok(())
}

/// `HOSTNAME-PID-RANDOM`: readable in logs, and unique even when two workers
/// start in one container.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let mut suffix = uuid::Uuid::new_v4().simple().to_string();
    suffix.truncate(8);
    let mut id = format!("{host}-{}-{suffix}", std::process::id());
    if id.len() > MAX_ID_BYTES {
        // Keep the unique tail; a hostname this long is already unreadable.
        let cut = id.len() - MAX_ID_BYTES;
        let cut = (cut..id.len()).find(|&i| id.is_char_boundary(i)).unwrap_or(0);
        id = id.split_off(cut);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> WorkerBuilder {
        Worker::builder("http://127.0.0.1:50051").activity(
            "echo",
            |_ctx: ActivityContext, input: serde_json::Value| async move { Ok::<_, ActivityError>(input) },
        )
    }

    #[test]
    fn the_default_worker_id_is_host_pid_random() {
        let worker = echo().build().expect("valid worker");
        let pid = std::process::id().to_string();
        assert!(worker.worker_id().contains(&format!("-{pid}-")), "{}", worker.worker_id());
        assert!(worker.worker_id().len() <= MAX_ID_BYTES);
        let other = echo().build().expect("valid worker");
        assert_ne!(worker.worker_id(), other.worker_id());
    }

    #[test]
    fn build_refuses_what_could_never_work() {
        assert!(matches!(Worker::builder("http://127.0.0.1:1").build(), Err(Error::NoActivities)));
        assert!(matches!(echo().max_concurrency(0).build(), Err(Error::InvalidConcurrency(0))));
        assert!(matches!(echo().worker_id("").build(), Err(Error::InvalidId { what: "worker id", .. })));
        assert!(matches!(echo().worker_id("w".repeat(256)).build(), Err(Error::InvalidId { .. })));
        let twice = echo().activity("echo", |_ctx: ActivityContext, (): ()| async move { Ok::<_, ActivityError>(()) });
        assert!(matches!(twice.build(), Err(Error::DuplicateActivity(t)) if t == "echo"));
        let noop = |_ctx: ActivityContext, (): ()| async move { Ok::<_, ActivityError>(()) };
        let nodes = Worker::builder("http://127.0.0.1:1, http://127.0.0.1:2")
            .activity("a", noop)
            .build()
            .expect("two valid nodes");
        let dialed: Vec<String> = (0..3).map(|i| nodes.config.endpoint(i).uri().to_string()).collect();
        assert_eq!(dialed, ["http://127.0.0.1:1/", "http://127.0.0.1:2/", "http://127.0.0.1:1/"]);
        let one_bad = Worker::builder("http://127.0.0.1:1,not a uri").activity("a", noop).build();
        assert!(matches!(one_bad, Err(Error::InvalidEndpoint { endpoint, .. }) if endpoint == "not a uri"));
        let bad_endpoint = Worker::builder("not a uri")
            .activity("echo", |_ctx: ActivityContext, (): ()| async move { Ok::<_, ActivityError>(()) });
        assert!(matches!(bad_endpoint.build(), Err(Error::InvalidEndpoint { .. })));
    }

    #[test]
    fn a_handle_remembers_a_shutdown_request() {
        let worker = echo().build().expect("valid worker");
        let handle = worker.handle();
        assert!(!handle.is_shutting_down());
        handle.clone().shutdown();
        assert!(handle.is_shutting_down());
    }
}
