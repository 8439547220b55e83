//! The pure core's cost: one decision (an outcome in, the next schedule out)
//! and a full history replay, on the standard four-step saga.

use criterion::{Criterion, criterion_group, criterion_main};
use sagaflow_engine::{self as engine, Input, Outcome};
use sagaflow_proto::v1::{HistoryEvent, WorkflowStarted};
use sagaflow_workflows::shop;

const NOW: i64 = 1_700_000_000_000;

fn started() -> WorkflowStarted {
    WorkflowStarted {
        workflow_type: shop::BENCH.into(),
        definition_version: 1,
        request_id: "r-1".into(),
        input: r#"{"cart":"c-1","customer":"alice"}"#.into(),
        ..Default::default()
    }
}

/// A whole saga: start, then every step completed in turn.
fn full_history() -> Vec<HistoryEvent> {
    let definition = shop::bench();
    let (mut state, mut history) = engine::start("wf-1", started(), &definition, NOW);
    for step in 0..definition.steps.len() {
        let input = Input::ActivityOutcome {
            task_id: format!("{step}.f.1"),
            worker_id: "w".into(),
            started_ms: NOW,
            outcome: Outcome::Completed(r#"{"ok":true,"id":"abc-123"}"#.into()),
        };
        history.extend(engine::run(&mut state, &definition, input, NOW).unwrap_or_default());
    }
    history
}

fn benches(c: &mut Criterion) {
    let definition = shop::bench();
    c.bench_function("engine/start", |b| b.iter(|| engine::start("wf-1", started(), &definition, NOW)));
    let (state, _) = engine::start("wf-1", started(), &definition, NOW);
    c.bench_function("engine/decide_outcome", |b| {
        b.iter_batched(
            || state.clone(),
            |mut state| {
                let input = Input::ActivityOutcome {
                    task_id: "0.f.1".into(),
                    worker_id: "w".into(),
                    started_ms: NOW,
                    outcome: Outcome::Completed(r#"{"ok":true}"#.into()),
                };
                engine::run(&mut state, &definition, input, NOW)
            },
            criterion::BatchSize::SmallInput,
        );
    });
    let history = full_history();
    c.bench_function(&format!("engine/replay_{}_events", history.len()), |b| {
        b.iter(|| engine::replay("wf-1", &history, &definition));
    });
}

criterion_group! {
    name = engine_benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(engine_benches);
