//! The HTTP listener: `/healthz`, `/metrics` (Prometheus text format) and
//! the operator console (`crate::console`) on every other path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::auth::Tokens;
use crate::health::StoreHealth;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder; installed once, shared by every server in the process.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets =
                [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let handle = PrometheusBuilder::new()
                .set_buckets(&latency_buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            start_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// How often the recorder's histograms are drained without a scrape.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// How many times the recorder's upkeep has run: tests await it.
pub fn upkeeps() -> u64 {
    UPKEEPS.load(Ordering::Acquire)
}

/// The recorder keeps every histogram sample until something drains it,
/// and only a scrape of `/metrics` or an upkeep does. A server nobody
/// scrapes grew by about 170 bytes a saga (the soak found it), so a thread
/// drains them on a timer.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new().name("sagaflow-metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
            UPKEEPS.fetch_add(1, Ordering::Release);
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep: histograms grow until /metrics is scraped");
    }
}

/// `/healthz` and `/metrics`, open to anyone who reaches the port.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(|| async { prometheus().map(PrometheusHandle::render).unwrap_or_default() }))
}

/// The server's routes: `/healthz` tells whether the store takes writes,
/// and under auth the gRPC role table applies to them too (`/metrics` needs
/// an operator token; `/healthz` none). Every other path is the console,
/// behind its own sessions (`console::router`).
fn guarded(tokens: Option<Arc<Tokens>>, health: StoreHealth, console: crate::console::Setup) -> Router {
    Router::new()
        .route("/healthz", get(move || std::future::ready(crate::health::http_answer(&health))))
        .route("/metrics", get(|| async { prometheus().map(PrometheusHandle::render).unwrap_or_default() }))
        .layer(axum::middleware::from_fn_with_state(tokens, crate::auth::guard_http))
        .merge(crate::console::router(console))
}

pub async fn serve(
    listener: crate::connections::GatedListener,
    tokens: Option<Arc<Tokens>>,
    health: StoreHealth,
    console: crate::console::Setup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, guarded(tokens, health, console)).with_graceful_shutdown(shutdown).await
}

/// The same routes over TLS.
pub async fn serve_tls(
    listener: crate::tls::TlsListener,
    tokens: Option<Arc<Tokens>>,
    health: StoreHealth,
    console: crate::console::Setup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, guarded(tokens, health, console)).with_graceful_shutdown(shutdown).await
}

pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

/// Where the metrics are, with the scheme the listener speaks.
pub fn describe_with(addr: SocketAddr, tls: bool) -> String {
    if tls { format!("https://{addr}/metrics") } else { describe(addr) }
}

/// Where the console is, with the scheme the listener speaks.
pub fn console_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}
