//! The standard benchmark saga's activities: they do nothing but wait the
//! configured latency, so that the orchestrator's own cost is what is measured.

use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, WorkerBuilder};

use crate::Faults;
use crate::precise_timer::PreciseTimer;

pub const ACTIVITIES: &[&str] = &["bench.reserve", "bench.release", "bench.capture", "bench.order", "bench.ship"];

/// Registers the bench activities on `builder`.
pub fn register(mut builder: WorkerBuilder, faults: &Faults, latency: Duration) -> WorkerBuilder {
    let timer = PreciseTimer::default();
    for activity_type in ACTIVITIES {
        let (faults, timer) = (faults.clone(), timer.clone());
        builder = builder.activity(*activity_type, move |ctx: ActivityContext, _input: serde_json::Value| {
            let (faults, timer) = (faults.clone(), timer.clone());
            async move {
                faults
                    .guard(ctx.activity_type(), async {
                        if !latency.is_zero() {
                            timer.sleep(latency).await;
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
