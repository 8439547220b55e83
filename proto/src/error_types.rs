//! Error types that an SDK reports and the engine reads: part of the wire
//! contract, so every SDK (Rust, Python) must spell them the same.

/// The SDK cut the attempt off because its handler panicked or raised
/// something unexpected. The worker's side effects may or may not have
/// happened.
pub const PANIC: &str = "Panic";

/// The SDK cut the attempt off at its start-to-close budget; the handler may
/// still have done its work.
pub const START_TO_CLOSE_TIMEOUT: &str = "StartToCloseTimeout";
