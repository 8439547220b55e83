//! Parsing a saga definition (JSON). The property is in orchestrator/server/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_server::fuzzing::saga_definition_json(data));
