//! Parsing a saga definition (JSON). The property is in orchestrator/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_orchestrator::fuzzing::saga_definition_json(data));
