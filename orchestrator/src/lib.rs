//! The Sagaflow orchestrator: durable workflow histories, the saga engine,
//! dispatch of activity tasks to gRPC workers, and the operator API.

pub mod engine;
pub mod metrics;
pub mod store;
