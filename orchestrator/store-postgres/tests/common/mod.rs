//! The shared test helpers (`sagaflow_store_postgres::testing`).
pub use sagaflow_store_postgres::testing::*;
