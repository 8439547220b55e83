//! The sagas that ship with Sagaflow: the reference shop's checkout and
//! refund, and the standard four-step benchmark saga.
//!
//! The checkout and the refund ship as definition files,
//! `workflows/definitions/checkout.yaml` and `refund.yaml`, compiled in
//! ([`CHECKOUT_YAML`], [`REFUND_YAML`]): [`from_files`] is what the shop's
//! server registers. [`checkout`] and [`refund`] build the same definitions
//! in Rust, typed; a test keeps the files and the builders equal.

use std::time::Duration;

use crate::document::{FieldError, parse_yaml};
use crate::{LifecycleEvents, RetryPolicy, SagaDefinition, Step, Timeouts};

/// `workflows/definitions/checkout.yaml`, the checkout as the server runs it.
pub const CHECKOUT_YAML: &str = include_str!("../definitions/checkout.yaml");
/// `workflows/definitions/refund.yaml`, the refund as the server runs it.
pub const REFUND_YAML: &str = include_str!("../definitions/refund.yaml");

/// A shipped definition file that does not parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflows/definitions/{file}: {error}")]
pub struct ShippedFileError {
    pub file: &'static str,
    pub error: FieldError,
}

/// The definitions of the shipped files, checkout then refund, parsed and
/// validated.
pub fn from_files() -> Result<Vec<SagaDefinition>, ShippedFileError> {
    let mut definitions = Vec::new();
    for (file, text) in [("checkout.yaml", CHECKOUT_YAML), ("refund.yaml", REFUND_YAML)] {
        definitions.extend(parse_yaml(text).map_err(|error| ShippedFileError { file, error })?);
    }
    Ok(definitions)
}

pub const CHECKOUT: &str = "checkout";
pub const REFUND: &str = "refund";
pub const BENCH: &str = "bench";
/// The API that starts the checkout and the refund, deriving their ids and keys.
pub const CHECKOUT_API: &str = "sagaflow.checkout.v1.CheckoutService";

fn quick_retries(maximum_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_interval_ms: 100,
        backoff_coefficient: 2.0,
        maximum_interval_ms: 5_000,
        maximum_attempts,
        non_retryable_error_types: Vec::new(),
    }
}

fn timeouts(start_to_close: Duration) -> Timeouts {
    Timeouts { start_to_close_ms: u64::try_from(start_to_close.as_millis()).unwrap_or(u64::MAX), ..Timeouts::default() }
}

/// The checkout of `workflows/definitions/checkout.yaml`, built in Rust.
///
/// Price snapshot, reserve inventory, capture payment (the pivot), commit the
/// stock, create the order, create the shipment, mark the order shipped,
/// notify. The checkout's ids (`reservation_id`,
/// `payment_intent_id`) are fixed in its input when it starts.
pub fn checkout() -> SagaDefinition {
    let build = SagaDefinition::builder(CHECKOUT, 1)
        .started_by(CHECKOUT_API)
        .description(
            "The reference shop's checkout: price snapshot, reservation, capture, order, shipment, notification.",
        )
        .lifecycle_events(LifecycleEvents {
            started: Some("CheckoutStarted".into()),
            completed: Some("CheckoutCompleted".into()),
            compensated: Some("CheckoutCompensated".into()),
            failed: Some("CheckoutFailed".into()),
        })
        .step(
            Step::activity("price", "catalog.price_snapshot")
                .input_from("items", "/input/items")
                .input_from("coupon_code", "/input/coupon_code")
                .retry(quick_retries(5))
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("reserve", "inventory.reserve")
                .emits("InventoryReserved")
                .input_from("reservation_id", "/input/reservation_id")
                .input_from("items", "/input/items")
                .idempotency_key_from("/input/reservation_id")
                .compensate_with("inventory.release")
                .compensation_input_from("reservation_id", "/input/reservation_id")
                .retry(quick_retries(5))
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("capture", "payments.capture")
                .emits("PaymentCaptured")
                .pivot()
                .input_from("payment_intent_id", "/input/payment_intent_id")
                .input_from("customer_id", "/input/customer_id")
                .input_from("payment_method", "/input/payment_method")
                .input_from("amount_cents", "/steps/price/total_cents")
                .idempotency_key_from("/input/payment_intent_id")
                .retry(RetryPolicy { non_retryable_error_types: vec!["PaymentDeclined".into()], ..quick_retries(5) })
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            // Turns the held stock into sold stock; after the pivot it cannot
            // be undone, only retried (or flagged if the hold expired).
            Step::activity("commit", "inventory.commit")
                .retriable()
                .input_from("reservation_id", "/input/reservation_id")
                .idempotency_key_from("/input/reservation_id")
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("order", "orders.create")
                .emits("OrderCreated")
                .retriable()
                .input_from("client_request_id", "/input/client_request_id")
                .input_from("checkout_id", "/workflow_id")
                .input_from("customer_id", "/input/customer_id")
                .input_from("lines", "/steps/price/lines")
                .input_from("total_cents", "/steps/price/total_cents")
                .input_from("payment_intent_id", "/input/payment_intent_id")
                .idempotency_key_from("/input/client_request_id")
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("ship", "shipping.create_shipment")
                .emits("ShipmentCreated")
                .retriable()
                .input_from("order_id", "/steps/order/order_id")
                .input_from("shipping_address", "/input/shipping_address")
                .input_from("customer_id", "/input/customer_id")
                .idempotency_key_from("/steps/order/order_id")
                .escalate_after(5, "ShipmentDelayed")
                .notify_on_escalation("notifications.send")
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("shipped", "orders.mark_shipped")
                .retriable()
                .input_from("order_id", "/steps/order/order_id")
                .input_from("shipment_id", "/steps/ship/shipment_id")
                .idempotency_key_from("/steps/order/order_id")
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("notify", "notifications.send")
                .retriable()
                .input_from("customer_id", "/input/customer_id")
                .input_from("order_id", "/steps/order/order_id")
                .input_literal("template", serde_json::json!("order_confirmed"))
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .build();
    // The definition is a constant of this crate; its tests prove it valid.
    build.unwrap_or_else(|e| unreachable!("the checkout definition is valid: {e}"))
}

/// The refund of `workflows/definitions/refund.yaml`, built in Rust: refund
/// the payment (the pivot: money moves), then record it on the order.
pub fn refund() -> SagaDefinition {
    let build = SagaDefinition::builder(REFUND, 1)
        .operator_only()
        .started_by(CHECKOUT_API)
        .description("Refunds part or all of a checkout's capture, then records it on the order.")
        .step(
            Step::activity("refund", "payments.refund")
                .emits("RefundRecorded")
                .pivot()
                .input_from("refund_id", "/input/refund_id")
                .input_from("payment_intent_id", "/input/payment_intent_id")
                .input_from("amount_cents", "/input/amount_cents")
                .idempotency_key_from("/input/refund_id")
                .retry(RetryPolicy {
                    non_retryable_error_types: vec!["RefundExceedsCapture".into()],
                    ..quick_retries(10)
                })
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .step(
            Step::activity("record", "orders.record_refund")
                .retriable()
                .input_from("order_id", "/input/order_id")
                .input_from("refund_id", "/input/refund_id")
                .input_from("amount_cents", "/input/amount_cents")
                .idempotency_key_from("/input/refund_id")
                .timeouts(timeouts(Duration::from_secs(10))),
        )
        .build();
    build.unwrap_or_else(|e| unreachable!("the refund definition is valid: {e}"))
}

/// The standard workload: reserve, capture, create order, ship.
pub fn bench() -> SagaDefinition {
    let build = SagaDefinition::builder(BENCH, 1)
        .description("The standard benchmark saga: four activities in sequence.")
        .step(Step::activity("reserve", "bench.reserve").compensate_with("bench.release"))
        .step(
            Step::activity("capture", "bench.capture")
                .pivot()
                .retry(RetryPolicy { maximum_attempts: 1, ..RetryPolicy::default() }),
        )
        .step(Step::activity("order", "bench.order").retriable())
        .step(Step::activity("ship", "bench.ship").retriable())
        .build();
    build.unwrap_or_else(|e| unreachable!("the bench definition is valid: {e}"))
}

/// Every saga above.
pub fn all() -> Vec<SagaDefinition> {
    vec![checkout(), refund(), bench()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::document::{canonical_json, content_hash};

    #[test]
    fn shipped_sagas_are_valid() {
        for saga in super::all() {
            assert_eq!(saga.validate(), Ok(()), "{}", saga.name);
        }
    }

    /// Each file holds exactly its builder's definition: the same struct,
    /// so the same content hash, so `sagaflow definition apply` of the file
    /// against a server running the other says IDENTICAL.
    #[test]
    fn the_shipped_files_equal_the_builders() {
        for (file, text, built) in
            [("checkout.yaml", CHECKOUT_YAML, checkout()), ("refund.yaml", REFUND_YAML, refund())]
        {
            let parsed = parse_yaml(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(parsed.len(), 1, "{file} holds one definition");
            assert_eq!(parsed[0].validate(), Ok(()), "{file}");
            assert_eq!(parsed[0], built, "{file} differs from its builder");
            assert_eq!(content_hash(&canonical_json(&parsed[0])), content_hash(&canonical_json(&built)), "{file}");
        }
        let names: Vec<String> = from_files().unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, [CHECKOUT, REFUND]);
    }
}
