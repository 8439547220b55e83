//! Replay of, and decisions on, arbitrary stored histories. The property is in orchestrator/server/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_server::fuzzing::engine_history(data));
