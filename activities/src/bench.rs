//! The standard benchmark saga's activities: they do nothing but wait the
//! configured latency, so that the orchestrator's own cost is what is measured.

use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, WorkerBuilder};

use crate::Faults;

pub const ACTIVITIES: &[&str] = &["bench.reserve", "bench.release", "bench.capture", "bench.order", "bench.ship"];

/// Waits `latency`, to the microsecond where the OS allows: tokio's own timer
/// rounds up to the next millisecond tick, which would make a 5 ms activity
/// take about 6 ms and the bench measure the timer rather than the engine.
async fn wait(latency: Duration) {
    #[cfg(target_os = "linux")]
    if tokio_timerfd::sleep(latency).await.is_ok() {
        return;
    }
    tokio::time::sleep(latency).await;
}

/// Registers the bench activities on `builder`.
pub fn register(mut builder: WorkerBuilder, faults: &Faults, latency: Duration) -> WorkerBuilder {
    for activity_type in ACTIVITIES {
        let faults = faults.clone();
        builder = builder.activity(*activity_type, move |ctx: ActivityContext, _input: serde_json::Value| {
            let faults = faults.clone();
            async move {
                faults
                    .guard(ctx.activity_type(), async {
                        if !latency.is_zero() {
                            wait(latency).await;
                        }
                        Ok::<_, ActivityError>(
                            serde_json::json!({ "key": ctx.idempotency_key(), "attempt": ctx.attempt() }),
                        )
                    })
                    .await
            }
        });
    }
    builder
}
