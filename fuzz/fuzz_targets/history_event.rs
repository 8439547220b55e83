//! Decoding a stored history event (protobuf bytes). The property is in orchestrator/server/src/fuzzing.rs, shared with the proptests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagaflow_server::fuzzing::history_event_bytes(data));
