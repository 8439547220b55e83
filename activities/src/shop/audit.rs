//! The shop's side of the self-healing jobs: the comparison of the payments
//! ledger with the orders, as `orders.reconcile_payments` runs it for the
//! `reconcile-payments-vs-orders` and `check-invariants` jobs (ADR 0009).
//!
//! The payments and orders services keep separate stores, often in separate
//! processes, so no service can compare them on its own. The job workflow
//! carries a snapshot of the captures (`payments.captures`) to the orders
//! service, which compares it with its orders here. The comparison is pure,
//! so that it is tested with tables and gives the same findings on a retry.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Violation;

/// The grace period when a request names none: long enough for a checkout
/// to get from its capture to its order through a few retries.
pub const DEFAULT_GRACE_MS: u64 = 60_000;

/// A refund as the payments ledger has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRefund {
    pub refund_id: String,
    pub amount_cents: u64,
    pub at_ms: u64,
}

/// One captured payment intent with its refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPayment {
    pub payment_intent_id: String,
    pub captured_cents: u64,
    pub refunded_cents: u64,
    pub captured_at_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refunds: Vec<LedgerRefund>,
}

/// `payments.captures` result: the captured intents whose ids sort after
/// `after` and up to `next` (every one when both are absent), as of
/// `as_of_ms`. An order created before `as_of_ms` has its capture in the
/// list, since a checkout captures before it orders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captures {
    pub as_of_ms: u64,
    pub captures: Vec<CapturedPayment>,
    /// The page starts after this payment intent id; absent: at the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The page ends at this payment intent id, and the next page starts
    /// after it; absent: the page reaches the last intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Captures {
    /// Whether this is one page of several, not the whole ledger.
    pub fn is_page(&self) -> bool {
        self.after.is_some() || self.next.is_some()
    }
}

/// The intents a page of captures reads at most when the request names no
/// size: with the byte budget, it keeps a page far below the 256 KiB
/// default payload limit (a capture is about 130 bytes of JSON).
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
/// The JSON bytes of captures a page holds at most when the request names
/// none: half the default payload limit, so that the page fits even when
/// the next step's input carries it with its other fields.
pub const DEFAULT_PAGE_BYTES: usize = 128 * 1024;
/// The largest page a request may ask for, whatever it says.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// `payments.captures` input. Without `page_size`, the whole ledger in one
/// result, as the jobs written before pages read it (their step input is
/// the workflow's context, which has no such field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturesRequest {
    /// Start after this payment intent id (the previous page's `next`).
    #[serde(default)]
    pub after: Option<String>,
    /// Read at most this many intents (captured or not).
    #[serde(default)]
    pub page_size: Option<usize>,
    /// Stop once the page's captures reach this many bytes of JSON.
    #[serde(default)]
    pub page_bytes: Option<usize>,
}

/// A reservation that holds stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReservation {
    pub reservation_id: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// `inventory.held_reservations` result: every reservation holding stock,
/// as of `as_of_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReservations {
    pub as_of_ms: u64,
    pub held: Vec<HeldReservation>,
}

/// `orders.reconcile_payments` input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileRequest {
    pub captures: Captures,
    /// A capture younger than this may still be on its way to an order (the
    /// saga is between its pivot and CreateOrder): it is counted as pending,
    /// not as a finding. Absent or null: [`DEFAULT_GRACE_MS`].
    #[serde(default)]
    pub grace_ms: Option<u64>,
    /// Record on the orders the refunds the ledger has and they lack. Off for
    /// `check-invariants`, which only reads.
    #[serde(default)]
    pub repair: bool,
}

/// A refund recorded on its order by the reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRepair {
    pub order_id: String,
    pub refund_id: String,
    pub amount_cents: u64,
}

/// What the comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    pub checked_captures: usize,
    pub checked_orders: usize,
    /// Mismatches still inside the grace period.
    pub pending: usize,
    /// Refunds to record on their orders: safe, since `orders.record_refund`
    /// is keyed by the refund id, so the refund saga's own later attempt is
    /// answered from the same record.
    pub repairs: Vec<RefundRepair>,
    /// What nobody may repair automatically: a capture with no order and not
    /// refunded (the money is taken, the customer has nothing), an order with
    /// no capture (the shop ships unpaid goods), more refunded on an order
    /// than the ledger moved.
    pub violations: Vec<Violation>,
}

/// What the comparison reads of an order: the orders service gives these
/// (`orders::Order::facts`), so that this module stays a pure comparison
/// with no dependency on the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub order_id: String,
    pub payment_intent_id: String,
    pub created_at_ms: u64,
    pub refunded_cents: u64,
    /// The refunds recorded on the order.
    pub refund_ids: Vec<String>,
}

/// Compares `request.captures` with `orders`. With `request.repair` off, a
/// refund missing from its order past the grace period is a violation; with
/// it on, it is a repair to apply.
pub fn compare(request: &ReconcileRequest, orders: &[OrderFacts]) -> Findings {
    let snapshot = &request.captures;
    let settled_before = snapshot.as_of_ms.saturating_sub(request.grace_ms.unwrap_or(DEFAULT_GRACE_MS));
    let by_intent: BTreeMap<&str, &CapturedPayment> =
        snapshot.captures.iter().map(|c| (c.payment_intent_id.as_str(), c)).collect();
    let mut findings =
        Findings { checked_captures: snapshot.captures.len(), checked_orders: orders.len(), ..Findings::default() };
    let mut ordered = BTreeSet::new();
    for order in orders {
        ordered.insert(order.payment_intent_id.as_str());
        let Some(capture) = by_intent.get(order.payment_intent_id.as_str()) else {
            if order.created_at_ms < snapshot.as_of_ms {
                findings.violations.push(Violation::new(
                    "order_has_capture",
                    &order.order_id,
                    format!("order for payment intent {} which was never captured", order.payment_intent_id),
                ));
            }
            continue;
        };
        if order.refunded_cents > capture.refunded_cents {
            findings.violations.push(Violation::new(
                "order_refunds_match_ledger",
                &order.order_id,
                format!(
                    "the order shows {} refunded, the ledger only {} (intent {})",
                    order.refunded_cents, capture.refunded_cents, capture.payment_intent_id
                ),
            ));
            continue;
        }
        let recorded: BTreeSet<&str> = order.refund_ids.iter().map(String::as_str).collect();
        for refund in capture.refunds.iter().filter(|r| !recorded.contains(r.refund_id.as_str())) {
            if request.repair {
                findings.repairs.push(RefundRepair {
                    order_id: order.order_id.clone(),
                    refund_id: refund.refund_id.clone(),
                    amount_cents: refund.amount_cents,
                });
            } else if refund.at_ms < settled_before {
                findings.violations.push(Violation::new(
                    "order_refunds_match_ledger",
                    &order.order_id,
                    format!(
                        "refund {} of {} cents is in the ledger but not on the order",
                        refund.refund_id, refund.amount_cents
                    ),
                ));
            } else {
                findings.pending += 1;
            }
        }
    }
    for capture in &snapshot.captures {
        if ordered.contains(capture.payment_intent_id.as_str()) || capture.refunded_cents >= capture.captured_cents {
            continue;
        }
        if capture.captured_at_ms < settled_before {
            findings.violations.push(Violation::new(
                "capture_has_order_or_refund",
                &capture.payment_intent_id,
                format!(
                    "{} cents captured (and {} refunded) with no order",
                    capture.captured_cents, capture.refunded_cents
                ),
            ));
        } else {
            findings.pending += 1;
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, intent: &str, refunds: &[(&str, u64)]) -> OrderFacts {
        OrderFacts {
            order_id: id.into(),
            payment_intent_id: intent.into(),
            created_at_ms: 100,
            refunded_cents: refunds.iter().map(|r| r.1).sum(),
            refund_ids: refunds.iter().map(|(id, _)| (*id).into()).collect(),
        }
    }

    fn capture(intent: &str, at: u64, refunds: &[(&str, u64)]) -> CapturedPayment {
        CapturedPayment {
            payment_intent_id: intent.into(),
            captured_cents: 1000,
            refunded_cents: refunds.iter().map(|r| r.1).sum(),
            captured_at_ms: at,
            refunds: refunds
                .iter()
                .map(|(id, amount)| LedgerRefund { refund_id: (*id).into(), amount_cents: *amount, at_ms: at })
                .collect(),
        }
    }

    fn request(captures: Vec<CapturedPayment>, repair: bool) -> ReconcileRequest {
        ReconcileRequest {
            captures: Captures { as_of_ms: 10_000, captures, ..Captures::default() },
            grace_ms: Some(1_000),
            repair,
        }
    }

    fn invariants(findings: &Findings) -> Vec<&str> {
        findings.violations.iter().map(|v| v.invariant.as_str()).collect()
    }

    #[test]
    fn matching_ledgers_have_no_findings() {
        let findings = compare(
            &request(vec![capture("pi-1", 50, &[("rf-1", 300)])], false),
            &[order("o-1", "pi-1", &[("rf-1", 300)])],
        );
        assert_eq!(findings.violations, []);
        assert_eq!((findings.pending, findings.repairs.len()), (0, 0));
    }

    #[test]
    fn a_settled_capture_without_an_order_is_a_violation_and_a_young_one_pending() {
        let findings = compare(&request(vec![capture("pi-old", 50, &[]), capture("pi-new", 9_500, &[])], true), &[]);
        assert_eq!(invariants(&findings), ["capture_has_order_or_refund"]);
        assert_eq!(findings.violations[0].subject, "pi-old");
        assert_eq!(findings.pending, 1);
    }

    #[test]
    fn a_capture_refunded_in_full_needs_no_order() {
        let findings = compare(&request(vec![capture("pi-1", 50, &[("rf-1", 1000)])], false), &[]);
        assert_eq!(findings.violations, []);
    }

    #[test]
    fn an_order_without_a_capture_is_a_violation() {
        let findings = compare(&request(Vec::new(), true), &[order("o-1", "pi-ghost", &[])]);
        assert_eq!(invariants(&findings), ["order_has_capture"]);
    }

    #[test]
    fn a_missing_refund_is_repaired_or_reported() {
        let captures = vec![capture("pi-1", 50, &[("rf-1", 300), ("rf-2", 200)])];
        let orders = [order("o-1", "pi-1", &[("rf-1", 300)])];
        let repaired = compare(&request(captures.clone(), true), &orders);
        assert_eq!(
            repaired.repairs,
            [RefundRepair { order_id: "o-1".into(), refund_id: "rf-2".into(), amount_cents: 200 }]
        );
        assert_eq!(repaired.violations, []);
        let read_only = compare(&request(captures, false), &orders);
        assert_eq!(invariants(&read_only), ["order_refunds_match_ledger"]);
    }

    #[test]
    fn an_order_refunded_past_the_ledger_is_never_repaired() {
        let findings = compare(&request(vec![capture("pi-1", 50, &[])], true), &[order("o-1", "pi-1", &[("rf-x", 5)])]);
        assert_eq!(invariants(&findings), ["order_refunds_match_ledger"]);
        assert!(findings.repairs.is_empty());
    }
}
