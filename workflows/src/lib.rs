//! Saga definitions: the model, its builder and validation, and the sagas that
//! ship with Sagaflow. Everything here is pure data and deterministic.
//!
//! ```
//! use std::time::Duration;
//! use sagaflow_workflows::{SagaDefinition, Step};
//!
//! let saga = SagaDefinition::builder("book-trip", 1)
//!     .step(Step::activity("hotel", "hotel.book").compensate_with("hotel.cancel"))
//!     .step(Step::activity("charge", "payments.charge").pivot())
//!     .step(Step::activity("email", "mail.send").retriable().escalate_after(5, "EmailDelayed"))
//!     .build()
//!     .expect("a valid saga");
//! assert_eq!(saga.steps.len(), 3);
//! assert!(saga.to_json().contains("hotel.cancel"));
//! # let _ = Duration::from_secs(1);
//! ```

mod condition;
mod context;
mod definition;
pub mod document;
pub mod jobs;
pub mod policies;
pub mod schema;
pub mod shop;

pub use condition::Condition;
pub use context::{Context, resolve_pointer};
pub use definition::{
    Action, CHILD_ACTIVITY, CHILD_COMPENSATION, Compensation, DefinitionError, Escalation, FindingsAlert, InputSpec,
    KeySpec, LifecycleEvents, PARENT_LABEL, REDRIVE_LABEL, RetryPolicy, SagaBuilder, SagaDefinition, Source, Step,
    StepKind, Timeouts,
};
pub use policies::PolicyDefaults;
