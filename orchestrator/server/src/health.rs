//! Health that tells the truth: a server whose store refuses writes (an
//! earlier flush failed: a full or failing disk) answers `NOT_SERVING` on
//! gRPC health and 503 on `/healthz`, with the reason, so that a supervisor
//! restarts it instead of sending it traffic it can only refuse.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// How often the store is asked; its answer is a lock-free read.
const POLL: Duration = Duration::from_millis(200);

/// `None` while the store takes writes; otherwise why it does not.
pub type StoreHealth = watch::Receiver<Option<String>>;

/// Watches `store` until `stopped` turns true.
pub fn watch_store(store: Arc<dyn Store>, mut stopped: watch::Receiver<bool>) -> StoreHealth {
    let (tx, rx) = watch::channel(None);
    metrics::gauge!("sagaflow_store_writable").set(1.0);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let failure = store.write_failure();
            if failure != *tx.borrow() {
                match &failure {
                    Some(reason) => tracing::error!(%reason, "the store refuses writes: health is NOT_SERVING"),
                    None => tracing::info!("the store takes writes again: health is SERVING"),
                }
                metrics::gauge!("sagaflow_store_writable").set(if failure.is_some() { 0.0 } else { 1.0 });
                tx.send_replace(failure);
            }
        }
    });
    rx
}

/// Keeps gRPC health in step with the store: the server as a whole (`""`)
/// and each of `services`.
pub async fn report(
    reporter: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    mut health: StoreHealth,
) {
    loop {
        let status = if health.borrow_and_update().is_some() {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        };
        for service in std::iter::once("").chain(services.iter().copied()) {
            reporter.set_service_status(service, status).await;
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// `/healthz`'s answer: 200 `ok`, or 503 with the reason.
pub fn http_answer(health: &StoreHealth) -> (axum::http::StatusCode, String) {
    match &*health.borrow() {
        None => (axum::http::StatusCode::OK, "ok\n".into()),
        Some(reason) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("NOT_SERVING: the store refuses writes: {reason}\n"))
        }
    }
}
