//! Properties over arbitrary bytes, shared by the cargo-fuzz targets
//! (`fuzz/`) and the proptests of the normal test suite: each function takes
//! any input and panics only when the property fails. Keeping them here means
//! the fuzzer and `cargo test` check the same thing.
//!
//! Compiled for tests and with the `fuzzing` feature only.

use std::collections::BTreeSet;

use prost::Message;
use sagaflow_proto::EventName;
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{
    ActivityCompleted, ActivityFailed, ActivityResolved, ActivityScheduled, ActivityStarted, ActivityTimedOut,
    CancelRefused, CancelRequested, CompensationStarted, HistoryEvent, SignalReceived, StepSkipped, StuckCleared,
    StuckDetected, TimerFired, TimerStarted, WorkflowCompleted, WorkflowHeld, WorkflowPaused, WorkflowStarted,
    WorkflowTerminated,
};
use sagaflow_workflows::SagaDefinition;

use crate::engine::{self, Input, Outcome, Resolution, StuckReason, TimeoutKind, WorkflowState};

/// Reads choices from the input; past its end every read is zero, so any
/// input, even an empty one, describes a finite run.
struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn done(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { usize::from(self.byte()) % n }
    }

    /// A short string: mostly from `known`, sometimes raw bytes (lossy UTF-8).
    fn text(&mut self, known: &[String]) -> String {
        let choice = self.byte();
        if choice < 200 && !known.is_empty() {
            return known[usize::from(choice) % known.len()].clone();
        }
        let len = self.below(12);
        let bytes: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Decoding a stored history event: never panics, re-encodes to the same
/// event, renders as JSON, and folds into any shipped saga's state.
pub fn history_event_bytes(data: &[u8]) {
    let Ok(event) = HistoryEvent::decode(data) else { return };
    let again = HistoryEvent::decode(event.encode_to_vec().as_slice()).expect("a re-encoded event decodes");
    assert_eq!(again, event, "decode(encode(e)) != e");
    let json = serde_json::to_string(&event).expect("every event renders as JSON");
    assert!(json.starts_with('{'));
    if let Some(attributes) = &event.attributes {
        assert!(!attributes.event_name().is_empty());
    }
    for definition in sagaflow_workflows::shop::all() {
        let state = engine::replay("wf", std::slice::from_ref(&event), &definition);
        let _ = engine::decide(&state, &definition, event.time_ms);
    }
}

/// Parsing a saga definition: never panics, and what parses is valid and
/// survives a round trip through its own JSON.
pub fn saga_definition_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(definition) = SagaDefinition::from_json(text) else { return };
    definition.validate().expect("a parsed definition is valid");
    let again = SagaDefinition::from_json(&definition.to_json()).expect("a definition's own JSON parses");
    assert_eq!(again, definition, "from_json(to_json(d)) != d");
}

fn ids(state: &WorkflowState, definition: &SagaDefinition) -> Vec<String> {
    let mut ids: Vec<String> = state.tasks.keys().cloned().collect();
    ids.extend(state.timers.keys().cloned());
    ids.extend(state.retry_timers().map(|(id, _)| id));
    for step in 0..definition.steps.len().min(6) {
        for attempt in 1..3 {
            ids.push(engine::task_id(step, false, attempt));
            ids.push(engine::task_id(step, true, attempt));
        }
    }
    ids.push("step-99-1".into());
    ids
}

/// The decision function fed an arbitrary sequence of inputs (outcomes for
/// real and made-up tasks, timers, signals, cancels, terminations, stuck
/// reports) at arbitrary times. It never panics, and:
/// - each run's events carry the next sequence numbers, without a gap;
/// - a closed workflow waits on nothing, and takes no event but the record
///   of an ignored late outcome;
/// - a task completes at most once, and only after it was scheduled;
/// - replaying the history gives the same state (determinism).
pub fn engine_inputs(data: &[u8]) {
    let mut choices = Choices::new(data);
    let definitions = sagaflow_workflows::shop::all();
    let definition = &definitions[choices.below(definitions.len())];
    let inputs = ["{}", r#"{"customer_id":"c","items":[{"sku":"s","quantity":1}]}"#, "null"];
    let started = WorkflowStarted {
        workflow_type: definition.name.clone(),
        definition_version: definition.version,
        request_id: "r".into(),
        input: inputs[choices.below(inputs.len())].into(),
        ..Default::default()
    };
    let mut now = 1_000_000;
    let (mut state, mut history) = engine::start("wf", started, definition, now);
    let mut scheduled = BTreeSet::new();
    let mut completed = BTreeSet::new();
    note(&history, &mut scheduled, &mut completed);
    for _ in 0..200 {
        if choices.done() {
            break;
        }
        now += i64::from(choices.byte()) * 100;
        let known = ids(&state, definition);
        let input = match choices.below(14) {
            0 | 1 => Input::ActivityOutcome {
                task_id: choices.text(&known),
                worker_id: "w".into(),
                started_ms: now,
                outcome: match choices.below(3) {
                    0 => Outcome::Completed(["{}", "not json", "[1]"][choices.below(3)].into()),
                    n => Outcome::Failed {
                        error_type: choices.text(&[
                            "Declined".into(),
                            "Timeout".into(),
                            sagaflow_proto::error_types::START_TO_CLOSE_TIMEOUT.into(),
                        ]),
                        message: String::new(),
                        retryable: n == 1,
                    },
                },
            },
            2 => Input::TimedOut {
                task_id: choices.text(&known),
                timeout: [
                    TimeoutKind::ScheduleToStart,
                    TimeoutKind::StartToClose,
                    TimeoutKind::Heartbeat,
                    TimeoutKind::ScheduleToClose,
                ][choices.below(4)],
                worker_id: String::new(),
            },
            3 | 4 => Input::TimerFired { timer_id: choices.text(&known) },
            5 => Input::Signal {
                name: choices.text(&[engine::RETRY_SIGNAL.into(), "approve".into()]),
                input: "{}".into(),
                identity: String::new(),
            },
            6 => Input::Cancel { reason: "r".into(), identity: String::new() },
            7 => Input::Terminate { reason: "r".into(), identity: String::new() },
            8 => Input::Resolve {
                step: choices.text(&definition.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
                resolution: if choices.byte().is_multiple_of(2) {
                    Resolution::Succeeded(["{}", "not json"][choices.below(2)].into())
                } else {
                    Resolution::Failed
                },
                reason: "r".into(),
                identity: String::new(),
            },
            9 => Input::Pause { reason: "r".into(), identity: String::new() },
            10 => Input::Resume { reason: String::new(), identity: String::new() },
            11 => Input::Release,
            12 => Input::CompensateChild { reason: "r".into() },
            _ => Input::Stuck {
                reason: [StuckReason::NoProgress, StuckReason::NoWorker][choices.below(2)],
                message: String::new(),
            },
        };
        let was_terminal = state.is_terminal();
        let before = state.last_seq;
        let Ok(events) = engine::run(&mut state, definition, input, now) else { continue };
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.seq, before + 1 + i as u64, "a gap or a repeat in the sequence");
        }
        if was_terminal {
            // A late outcome is recorded for the audit trail, and changes nothing else.
            let late = |e: &HistoryEvent| matches!(e.attributes, Some(Attributes::CompletionIgnored(_)));
            assert!(events.iter().all(late), "a closed workflow took {events:?}");
        }
        note(&events, &mut scheduled, &mut completed);
        history.extend(events);
        if state.is_terminal() {
            assert!(state.tasks.is_empty(), "a closed workflow has tasks");
            assert!(state.timers.is_empty() && state.retry_timers().next().is_none(), "a closed workflow has timers");
        }
    }
    assert_eq!(engine::replay("wf", &history, definition), state, "replay differs from the live state");
}

/// Tracks scheduled and completed tasks across runs; panics on a second
/// completion or a completion of a task never scheduled.
fn note(events: &[HistoryEvent], scheduled: &mut BTreeSet<String>, completed: &mut BTreeSet<String>) {
    for event in events {
        match &event.attributes {
            Some(Attributes::ActivityScheduled(s)) => {
                scheduled.insert(s.task_id.clone());
            }
            Some(Attributes::ActivityCompleted(c)) => {
                assert!(scheduled.contains(&c.task_id), "{} completed without being scheduled", c.task_id);
                assert!(completed.insert(c.task_id.clone()), "{} completed twice", c.task_id);
            }
            _ => {}
        }
    }
}

/// Replay of an arbitrary stored history (events in any order, about tasks
/// and timers that may not exist, as a corrupted or hand-edited store could
/// hold): folding it in and deciding on it never panics, and a closed
/// workflow decides nothing more.
pub fn engine_history(data: &[u8]) {
    let mut choices = Choices::new(data);
    let definitions = sagaflow_workflows::shop::all();
    let definition = &definitions[choices.below(definitions.len())];
    let empty = WorkflowState::empty("wf");
    let known = ids(&empty, definition);
    let steps: Vec<String> = definition.steps.iter().map(|s| s.name.clone()).collect();
    let mut history = Vec::new();
    let mut seq = 0u64;
    while !choices.done() && history.len() < 256 {
        seq = if choices.below(16) == 0 { u64::from(choices.byte()) } else { seq + 1 };
        let task_id = choices.text(&known);
        let attributes = match choices.below(21) {
            0 => Attributes::WorkflowStarted(WorkflowStarted {
                workflow_type: definition.name.clone(),
                definition_version: definition.version,
                input: "{}".into(),
                ..Default::default()
            }),
            1 => Attributes::ActivityScheduled(ActivityScheduled {
                task_id,
                step_index: u32::from(choices.byte() % 8),
                step: choices.text(&steps),
                attempt: u32::from(choices.byte() % 4),
                compensation: choices.byte().is_multiple_of(2),
                input: "{}".into(),
                ..Default::default()
            }),
            2 => Attributes::ActivityStarted(ActivityStarted { task_id, worker_id: "w".into(), started_ms: 5 }),
            3 => Attributes::ActivityCompleted(ActivityCompleted { task_id, result: "{}".into() }),
            4 => Attributes::ActivityFailed(ActivityFailed {
                task_id,
                retryable: choices.byte().is_multiple_of(2),
                next_attempt_ms: i64::from(choices.byte()),
                ..Default::default()
            }),
            5 => Attributes::ActivityTimedOut(ActivityTimedOut {
                task_id,
                timeout_type: "START_TO_CLOSE".into(),
                next_attempt_ms: i64::from(choices.byte()),
                worker_id: String::new(),
            }),
            6 => Attributes::TimerStarted(TimerStarted { timer_id: task_id, fire_at_ms: 9, purpose: String::new() }),
            7 => Attributes::TimerFired(TimerFired { timer_id: task_id }),
            8 => Attributes::SignalReceived(SignalReceived {
                name: choices.text(&[engine::RETRY_SIGNAL.into()]),
                ..Default::default()
            }),
            9 => Attributes::CancelRequested(CancelRequested::default()),
            10 => Attributes::CompensationStarted(CompensationStarted {
                reason: String::new(),
                steps: (0..choices.below(4)).map(|_| choices.text(&steps)).collect(),
            }),
            11 => Attributes::WorkflowCompleted(WorkflowCompleted::default()),
            12 => Attributes::WorkflowTerminated(WorkflowTerminated::default()),
            13 => Attributes::StuckDetected(StuckDetected { reason: "NO_WORKER".into(), message: String::new() }),
            14 => Attributes::StuckCleared(StuckCleared::default()),
            15 => Attributes::CancelRefused(CancelRefused::default()),
            16 => Attributes::ActivityResolved(ActivityResolved {
                step: choices.text(&steps),
                compensation: choices.byte().is_multiple_of(2),
                outcome: choices.text(&["succeeded".into(), "failed".into()]),
                result: "{}".into(),
                ..Default::default()
            }),
            17 => Attributes::StepSkipped(StepSkipped {
                step: choices.text(&steps),
                step_index: u32::from(choices.byte() % 8),
                condition: "{}".into(),
            }),
            19 => Attributes::WorkflowHeld(WorkflowHeld { result: "{}".into(), parent_workflow_id: "p".into() }),
            18 => Attributes::WorkflowPaused(WorkflowPaused { reason: "r".into(), identity: String::new() }),
            _ => Attributes::ActivityCompleted(ActivityCompleted { task_id, result: "not json".into() }),
        };
        history.push(HistoryEvent { seq, time_ms: i64::from(choices.byte()) * 1000, attributes: Some(attributes) });
    }
    let mut state = engine::replay("wf", &history, definition);
    if let Some(last) = history.last() {
        assert_eq!(state.last_seq, last.seq);
    }
    let decided = engine::decide(&state, definition, 1_000_000);
    if state.is_terminal() {
        assert!(decided.is_empty(), "a closed workflow decided {decided:?}");
    }
    let before = state.last_seq;
    if let Ok(events) = engine::run(&mut state, definition, Input::Wake, 1_000_000) {
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.seq, before + 1 + i as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn history_events_decode_safely(data in prop::collection::vec(any::<u8>(), 0..512)) {
            history_event_bytes(&data);
        }

        #[test]
        fn encoded_events_decode_safely(seq in any::<u64>(), task in ".{0,12}", result in ".{0,12}") {
            let event = HistoryEvent {
                seq,
                time_ms: 0,
                attributes: Some(Attributes::ActivityCompleted(ActivityCompleted { task_id: task, result })),
            };
            history_event_bytes(&event.encode_to_vec());
        }

        #[test]
        fn definitions_parse_safely(data in prop::collection::vec(any::<u8>(), 0..256)) {
            saga_definition_json(&data);
        }

        #[test]
        fn shipped_definitions_survive_mutation(pick in 0usize..8, at in any::<usize>(), byte in any::<u8>()) {
            let definitions = sagaflow_workflows::shop::all();
            let mut json = definitions[pick % definitions.len()].to_json().into_bytes();
            saga_definition_json(&json);
            let at = at % json.len();
            json[at] = byte;
            saga_definition_json(&json);
        }

        #[test]
        fn the_engine_survives_any_inputs(data in prop::collection::vec(any::<u8>(), 0..600)) {
            engine_inputs(&data);
        }

        #[test]
        fn the_engine_survives_any_history(data in prop::collection::vec(any::<u8>(), 0..600)) {
            engine_history(&data);
        }
    }

    #[test]
    fn valid_specs_round_trip() {
        for definition in sagaflow_workflows::shop::all() {
            saga_definition_json(definition.to_json().as_bytes());
        }
        engine_inputs(&[]);
        engine_history(&[]);
    }
}
