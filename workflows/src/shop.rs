//! The reference shop sagas (checkout, refund) and the standard benchmark saga.
