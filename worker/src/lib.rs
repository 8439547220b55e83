//! The Sagaflow worker SDK.
//!
//! A worker connects to the orchestrator, registers the activity types it
//! runs, and asks for as many tasks as it has free slots. It runs each task's
//! handler, reports the outcome, and keeps the outcome until the orchestrator
//! acknowledges that it is durable, re-sending it after a reconnect if needed.
//! It reconnects with backoff whenever the orchestrator is unreachable, and on
//! shutdown it drains: no new tasks, the running ones finish, their outcomes
//! are acknowledged, then [`Worker::run`] returns.
//!
//! Activities run at least once, so a handler must apply its effect at most
//! once per [`ActivityContext::idempotency_key`].
//!
//! ```no_run
//! use sagaflow_worker::{ActivityContext, ActivityError, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Reserve {
//!     sku: String,
//!     quantity: u32,
//! }
//!
//! #[derive(Serialize)]
//! struct Reservation {
//!     reservation_id: String,
//! }
//!
//! # async fn example() -> Result<(), sagaflow_worker::Error> {
//! let worker = Worker::builder("http://127.0.0.1:50051")
//!     .worker_id("inventory-1")
//!     .max_concurrency(32)
//!     .activity("inventory.reserve", |ctx: ActivityContext, input: Reserve| async move {
//!         if input.quantity == 0 {
//!             return Err(ActivityError::non_retryable("InvalidQuantity", "quantity is 0"));
//!         }
//!         ctx.heartbeat(serde_json::json!({ "sku": input.sku }));
//!         // Reserve at most once per key: this may be a retry.
//!         Ok(Reservation { reservation_id: ctx.idempotency_key().to_owned() })
//!     })
//!     .activity("inventory.release", |_ctx: ActivityContext, input: serde_json::Value| async move {
//!         Ok::<_, ActivityError>(input)
//!     })
//!     .build()?;
//!
//! let handle = worker.handle(); // call handle.shutdown() to drain
//! worker
//!     .run_until(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # drop(handle);
//! # Ok(())
//! # }
//! ```
//!
//! Each handler runs in a `tracing` span named `activity`, with the fields
//! `workflow_id`, `task_id`, `activity_type`, `attempt` and `correlation_id`.

mod activity;
mod backoff;
mod config;
mod error;
mod runner;
pub mod trace;
mod worker;

pub use activity::{ActivityContext, ActivityError};
pub use backoff::Backoff;
pub use error::{Error, Result};
pub use worker::{Handle, MAX_CONCURRENCY, MAX_ID_BYTES, Worker, WorkerBuilder};
