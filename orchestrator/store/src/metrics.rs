//! The store's own timings, recorded through the `metrics` facade; the server
//! describes and exports them.

use std::time::Duration;

/// One group-commit flush (log write and `fdatasync`).
pub fn record_flush(elapsed: Duration) {
    metrics::histogram!("sagaflow_store_flush_seconds").record(elapsed.as_secs_f64());
}

/// A log segment's writes moved into sled, off the commit path.
pub fn record_checkpoint(elapsed: Duration) {
    metrics::histogram!("sagaflow_store_checkpoint_seconds").record(elapsed.as_secs_f64());
}
