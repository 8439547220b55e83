//! The reference shop's server side. Nothing here is part of the platform:
//! it reaches Sagaflow only through public APIs that any application could
//! use (`Extension`, the runtime's methods, the relay's `Projector`), and the
//! `sagaflow` binary assembles it with the platform.

pub mod checkout;
mod console;
mod jobs;
pub mod read_model;

pub use checkout::{CheckoutApi, CheckoutExtension, CheckoutView};
pub use read_model::{FeedMessage, OrderFilter, OrderRow, Projection, ReadModel};

use sagaflow_server::Registry;
use sagaflow_workflows::shop;

/// The definitions the `sagaflow` binary starts with: the shop's sagas
/// (checkout, refund) as their definition files say
/// (`workflows/definitions/*.yaml`, compiled in), the bench saga, and the
/// self-healing jobs.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    let files = match shop::from_files() {
        Ok(definitions) => definitions,
        Err(e) => {
            // The files are checked by the workflows crate's tests (and this
            // crate's); should one still not parse, the shop runs without it.
            tracing::error!(error = %e, "a shipped definition file is invalid");
            Vec::new()
        }
    };
    for definition in files.into_iter().chain([shop::bench()]).chain(sagaflow_workflows::jobs::all()) {
        // Shipped definitions are validated by their own tests.
        if let Err(e) = registry.register(definition) {
            tracing::error!(error = %e, "a shipped definition is invalid");
        }
    }
    registry
}

#[cfg(test)]
mod tests {
    use sagaflow_workflows::document::{canonical_json, content_hash};

    use super::*;

    /// The server runs the files' content, which is the builders' content:
    /// `sagaflow definition apply workflows/definitions/checkout.yaml`
    /// against it changes nothing.
    #[test]
    fn the_registry_serves_the_shipped_files() {
        let registry = registry();
        let parsed = shop::from_files().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.len(), 2);
        for (from_file, built) in parsed.iter().zip([shop::checkout(), shop::refund()]) {
            let served = registry.latest(&from_file.name).unwrap_or_else(|| panic!("{} is registered", from_file.name));
            assert_eq!(served.as_ref(), from_file);
            assert_eq!(content_hash(&canonical_json(&served)), content_hash(&canonical_json(&built)));
        }
        assert!(registry.latest(shop::BENCH).is_some());
        assert_eq!(registry.all().len(), shop::all().len() + sagaflow_workflows::jobs::all().len());
    }
}
