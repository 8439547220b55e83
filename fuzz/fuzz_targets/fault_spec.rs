//! Parsing a fault SPEC (SERVICE.OPERATION=KIND[:COUNT]). The property is in activities/src/faults.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_activities::faults::fuzz_fault_spec(data));
