//! The reference shop's services as Sagaflow activities. Each service keeps
//! its own state and honours its idempotency key; every operation passes
//! through the [`Faults`] switches so that chaos tests can break it on purpose.
//!
//! [`Shop`] opens the services of one process and registers their activities
//! on a worker; [`admin::router`] lets operators and tests read and steer
//! them over HTTP.

pub mod admin;
pub mod bench;
pub mod faults;
mod precise_timer;
pub mod shop;

pub use faults::{FaultKind, FaultSpec, Faults, InvalidFaultSpec};
pub use shop::{SERVICES, Shop, ShopOptions};
