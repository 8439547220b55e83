//! Sagaflow's gRPC contract, generated from the `.proto` files beside this crate.
//!
//! - [`v1`]: `sagaflow.v1`, the workflow, worker and history messages.
//! - [`checkout::v1`]: `sagaflow.checkout.v1`, the reference shop's checkout.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sagaflow.v1");
}

pub mod checkout {
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("sagaflow.checkout.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Sagaflow proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sagaflow_descriptor");

pub mod error_types;
mod json_text;
mod names;
mod status;
pub mod trace_context;

pub use names::{EventName, status_name};
pub use status::is_terminal;
