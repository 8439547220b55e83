//! The payment gateway simulator: captured at most once, refunds within the
//! capture, every movement in the ledger.
#![allow(clippy::unwrap_used)]

mod common;

use sagaflow_activities::shop::payments::{
    CaptureRequest, CreateIntent, Error, IntentStatus, LedgerKind, RefundRequest,
};
use serde_json::json;

use common::{assert_invariants, open, restart};

fn capture(id: &str, amount_cents: i64) -> CaptureRequest {
    CaptureRequest {
        payment_intent_id: id.into(),
        customer_id: "cust-1".into(),
        payment_method: Some("card".into()),
        amount_cents,
    }
}

fn refund(refund_id: &str, id: &str, amount_cents: i64) -> RefundRequest {
    RefundRequest { refund_id: refund_id.into(), payment_intent_id: id.into(), amount_cents }
}

#[tokio::test]
async fn an_intent_is_captured_once_whatever_the_number_of_calls() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let payments = shop.payments().unwrap();
    let first = payments.capture(capture("pi-1", 5_000)).await.unwrap();
    assert_eq!(first.captured_cents, 5_000);
    assert_eq!(first.status, IntentStatus::Captured);
    assert_eq!(payments.capture(capture("pi-1", 5_000)).await.unwrap(), first);
    let shop = restart(shop, &dir);
    let payments = shop.payments().unwrap();
    assert_eq!(payments.capture(capture("pi-1", 5_000)).await.unwrap(), first);

    let ledger = payments.ledger().unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!((ledger[0].seq, ledger[0].kind, ledger[0].amount_cents), (1, LedgerKind::Capture, 5_000));
    assert_eq!(payments.captured_cents("pi-1").unwrap(), 5_000);

    // Another amount for a captured intent is a conflict, not a second charge.
    let error = shop
        .call(
            "payments.capture",
            "pi-1",
            json!({"payment_intent_id": "pi-1", "customer_id": "cust-1", "amount_cents": 6000}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "IdempotencyKeyReused");
    assert!(!error.is_retryable());
    assert_eq!(payments.ledger().unwrap().len(), 1);
    assert_invariants(&shop);
}

#[tokio::test]
async fn declined_cards_and_bad_amounts_are_refused_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    for (input, error_type) in [
        (
            json!({"payment_intent_id": "pi-1", "customer_id": "c", "payment_method": "card_declined", "amount_cents": 100}),
            "PaymentDeclined",
        ),
        (json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": 0}), "InvalidAmount"),
        (json!({"payment_intent_id": "pi-1", "customer_id": "c", "amount_cents": -5}), "InvalidAmount"),
        (json!({"payment_intent_id": "pi-1", "customer_id": "c"}), "InvalidInput"),
    ] {
        let error = shop.call("payments.capture", "pi-1", input).await.unwrap_err();
        assert_eq!(error.error_type(), error_type);
        assert!(!error.is_retryable());
    }
    let payments = shop.payments().unwrap();
    assert!(payments.intent("pi-1").unwrap().is_none());
    assert!(payments.ledger().unwrap().is_empty());
    // A null payment method is a card.
    let captured = shop
        .call(
            "payments.capture",
            "pi-1",
            json!({"payment_intent_id": "pi-1", "customer_id": "c", "payment_method": null, "amount_cents": 100}),
        )
        .await
        .unwrap();
    assert_eq!(captured["captured_cents"], 100);
    assert_eq!(payments.intent("pi-1").unwrap().unwrap().payment_method, "card");
}

#[tokio::test]
async fn refunds_are_partial_or_full_and_never_exceed_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let payments = shop.payments().unwrap();
    payments.capture(capture("pi-1", 1_000)).await.unwrap();

    let error = payments.refund(refund("rf-0", "pi-1", 1_001)).await.unwrap_err();
    assert!(matches!(error, Error::RefundExceedsCapture { requested: 1_001, refundable: 1_000, .. }));

    let partial = payments.refund(refund("rf-1", "pi-1", 300)).await.unwrap();
    assert_eq!((partial.refunded_cents, partial.total_refunded_cents), (300, 300));
    assert_eq!(payments.refundable("pi-1").unwrap(), 700);
    // The same refund again is the same refund.
    assert_eq!(payments.refund(refund("rf-1", "pi-1", 300)).await.unwrap(), partial);

    let error = shop
        .call("payments.refund", "rf-2", json!({"refund_id": "rf-2", "payment_intent_id": "pi-1", "amount_cents": 701}))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "RefundExceedsCapture");
    assert!(!error.is_retryable());

    let rest = payments.refund(refund("rf-2", "pi-1", 700)).await.unwrap();
    assert_eq!((rest.refunded_cents, rest.total_refunded_cents), (700, 1_000));
    assert_eq!(payments.refundable("pi-1").unwrap(), 0);
    assert!(payments.refund(refund("rf-3", "pi-1", 1)).await.is_err());

    let shop = restart(shop, &dir);
    let payments = shop.payments().unwrap();
    assert_eq!(payments.refund(refund("rf-2", "pi-1", 700)).await.unwrap(), rest);
    assert_eq!(payments.refunded_cents("pi-1").unwrap(), 1_000);
    let kinds: Vec<_> = payments.ledger().unwrap().iter().map(|e| (e.kind, e.amount_cents)).collect();
    assert_eq!(kinds, [(LedgerKind::Capture, 1_000), (LedgerKind::Refund, 300), (LedgerKind::Refund, 700)]);
    assert_eq!(payments.refund_record("pi-1", "rf-1").unwrap().unwrap().amount_cents, 300);

    // Nothing can be refunded on an unknown or uncaptured intent.
    assert!(matches!(payments.refund(refund("rf-4", "pi-none", 1)).await.unwrap_err(), Error::UnknownPaymentIntent(_)));
    assert_invariants(&shop);
}

#[tokio::test]
async fn a_refund_id_is_scoped_to_its_payment_intent() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let payments = shop.payments().unwrap();
    payments.capture(capture("pi-1", 1_000)).await.unwrap();
    payments.capture(capture("pi-2", 500)).await.unwrap();
    // rf-1 on two checkouts is two refunds, not a reused key.
    payments.refund(refund("rf-1", "pi-1", 300)).await.unwrap();
    let other = payments.refund(refund("rf-1", "pi-2", 200)).await.unwrap();
    assert_eq!((other.refunded_cents, other.total_refunded_cents), (200, 200));
    assert_eq!(payments.refunded_cents("pi-1").unwrap(), 300);
    assert_eq!(payments.refund_record("pi-2", "rf-1").unwrap().unwrap().amount_cents, 200);
    // Within one intent, the id still names one refund.
    assert_eq!(payments.refund(refund("rf-1", "pi-2", 200)).await.unwrap(), other);
    assert_eq!(payments.refunded_cents("pi-2").unwrap(), 200);
    assert_invariants(&shop);
}

#[tokio::test]
async fn an_intent_can_be_voided_before_capture_only() {
    let dir = tempfile::tempdir().unwrap();
    let shop = open(&dir);
    let payments = shop.payments().unwrap();
    let intent = CreateIntent {
        payment_intent_id: "pi-1".into(),
        customer_id: "cust-1".into(),
        payment_method: None,
        amount_cents: 2_000,
    };
    assert_eq!(payments.create_intent(intent.clone()).await.unwrap().status, IntentStatus::RequiresCapture);
    assert_eq!(payments.create_intent(intent.clone()).await.unwrap().status, IntentStatus::RequiresCapture);
    let other = CreateIntent { amount_cents: 2_001, ..intent };
    assert!(matches!(payments.create_intent(other).await.unwrap_err(), Error::IntentMismatch { .. }));
    // A capture must match the intent it finds.
    assert!(matches!(payments.capture(capture("pi-1", 1_999)).await.unwrap_err(), Error::IntentMismatch { .. }));

    assert_eq!(payments.void("pi-1").await.unwrap().status, IntentStatus::Voided);
    assert_eq!(payments.void("pi-1").await.unwrap().status, IntentStatus::Voided);
    assert!(matches!(payments.capture(capture("pi-1", 2_000)).await.unwrap_err(), Error::IntentVoided(_)));

    payments.capture(capture("pi-2", 500)).await.unwrap();
    assert!(matches!(payments.void("pi-2").await.unwrap_err(), Error::AlreadyCaptured(_)));
    assert!(matches!(payments.void("pi-none").await.unwrap_err(), Error::UnknownPaymentIntent(_)));

    let kinds: Vec<_> = payments.ledger().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [LedgerKind::Void, LedgerKind::Capture]);
    assert_eq!(payments.intents().unwrap().len(), 2);
    assert_invariants(&shop);
}
