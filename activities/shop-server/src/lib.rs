//! The reference shop's server side. Nothing here is part of the platform:
//! it reaches Sagaflow only through public APIs that any application could
//! use (`Extension`, the runtime's methods, the relay's `Projector`), and the
//! `sagaflow` binary assembles it with the platform.

pub mod read_model;

pub use read_model::{FeedMessage, OrderFilter, OrderRow, Projection, ReadModel};
