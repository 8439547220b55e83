//! The Sagaflow orchestrator: durable workflow histories, the saga engine,
//! dispatch of activity tasks to gRPC workers, and the operator API.

pub mod admission;
pub mod api;
pub mod archive;
pub mod auth;
pub mod connections;
pub mod console;
pub mod extension;
mod forward;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod history_json;
pub mod http;
pub mod in_process;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod os_tuning;
pub mod ownership;
pub mod registry;
mod route;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use extension::Extension;
pub use registry::Registry;
pub use sagaflow_engine as engine;
pub use sagaflow_relay as relay;
pub use sagaflow_store as store;
pub use sagaflow_workflows as workflows;
pub use server::{Options, Server, Storage};
