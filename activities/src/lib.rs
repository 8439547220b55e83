//! The reference shop's services as Sagaflow activities. Each service keeps
//! its own state and honours its idempotency key; every operation passes
//! through the [`Faults`] switches so that chaos tests can break it on purpose.

pub mod bench;
mod faults;

pub use faults::{FaultKind, FaultSpec, Faults, InvalidFaultSpec};
