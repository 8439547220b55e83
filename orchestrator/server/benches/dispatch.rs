//! Task dispatch: a scheduled task queued, matched to a worker session with
//! credit, sent on its stream, and removed once its outcome is in. This is
//! the in-memory path every activity takes between two durable decisions.
//!
//! Run: `cargo bench -p sagaflow-server --bench dispatch`

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sagaflow_proto::v1::ActivityTask;
use sagaflow_server::runtime::dispatch::Dispatch;
use sagaflow_server::runtime::lease_token::LeaseKey;
use sagaflow_server::runtime::timers::Timers;
use sagaflow_server::store::{MemoryStore, Store, TaskRecord};

const NOW: i64 = 1_700_000_000_000;
const QUEUE: &str = "bench.reserve";

fn record(i: u64) -> TaskRecord {
    TaskRecord {
        task: Some(ActivityTask {
            workflow_id: format!("wf-{i}"),
            task_id: "0.f.1".into(),
            workflow_type: "bench".into(),
            activity_type: QUEUE.into(),
            step: "reserve".into(),
            attempt: 1,
            input: r#"{"cart":"c-1"}"#.into(),
            ..Default::default()
        }),
        scheduled_ms: NOW,
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let (timers, _fired) = Timers::start();
    let dispatch = Dispatch::new(Arc::new(MemoryStore::in_memory()) as Arc<dyn Store>, timers, LeaseKey::random());
    let (outbound, mut worker) = tokio::sync::mpsc::channel(1024);
    let session = dispatch.open_session("w-1".into(), "bench".into(), HashSet::from([QUEUE.to_owned()]), outbound);

    c.bench_function("dispatch/queue_lease_send_remove", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                dispatch.grant(session, 1, NOW);
                let started = Instant::now();
                dispatch.enqueue(&record(i), NOW);
                let sent = worker.try_recv().unwrap().unwrap();
                dispatch.remove(&format!("wf-{i}"), "0.f.1", false);
                spent += started.elapsed();
                std::hint::black_box(sent);
            }
            spent
        });
    });
}

criterion_group!(dispatch, benches);
criterion_main!(dispatch);
