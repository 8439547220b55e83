//! The reference shop's server side. Nothing here is part of the platform:
//! it reaches Sagaflow only through public APIs that any application could
//! use (`Extension`, the runtime's methods, the relay's `Projector`), and the
//! `sagaflow` binary assembles it with the platform.

pub mod checkout;
mod jobs;
pub mod read_model;

pub use checkout::{CheckoutApi, CheckoutExtension, CheckoutView};
pub use read_model::{FeedMessage, OrderFilter, OrderRow, Projection, ReadModel};

use sagaflow_server::Registry;

/// The definitions the `sagaflow` binary starts with: the shop's sagas
/// (checkout, refund), the bench saga, and the self-healing jobs.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    for definition in sagaflow_workflows::shop::all().into_iter().chain(sagaflow_workflows::jobs::all()) {
        // Shipped definitions are validated by their own tests.
        if let Err(e) = registry.register(definition) {
            tracing::error!(error = %e, "a shipped definition is invalid");
        }
    }
    registry
}
