//! Metric names and recorders, exported in Prometheus format on `/metrics`.

use std::time::Duration;

pub fn record_flush(elapsed: Duration) {
    metrics::histogram!("sagaflow_store_flush_seconds").record(elapsed.as_secs_f64());
}
