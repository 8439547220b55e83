//! The suite every `Store` backend passes, each case on a fresh database.
#![allow(clippy::unwrap_used)]

mod common;

sagaflow_store::store_conformance_suite!(common::fresh_store().await);
