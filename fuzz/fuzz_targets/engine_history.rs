//! Replay of, and decisions on, arbitrary stored histories. The property is in orchestrator/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_orchestrator::fuzzing::engine_history(data));
