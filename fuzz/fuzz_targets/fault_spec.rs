//! Parsing a fault SPEC (SERVICE.OPERATION=KIND[:COUNT]). The property is in orchestrator/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_orchestrator::fuzzing::fault_spec(data));
