//! The self-healing jobs (docs/contract.md, Self-healing jobs) as sagas, so that each run is
//! durable, observable (`sagaflow workflow history`) and idempotent like any
//! other workflow (ADR 0009). Every step only reads, or repairs through an
//! idempotent activity, so no step needs a compensation and none is a pivot:
//! a run that fails part-way is simply run again.
//!
//! The activities are served by the shop's workers (`inventory.*`,
//! `payments.*`, `orders.*`) and by the orchestrator itself (`jobs.*`, which
//! needs its runtime or its broker).

use std::time::Duration;

use crate::{RetryPolicy, SagaDefinition, Step, Timeouts};

pub const RECONCILE_PAYMENTS_VS_ORDERS: &str = "reconcile-payments-vs-orders";
pub const RELEASE_EXPIRED_INVENTORY: &str = "release-expired-inventory";
pub const DETECT_STUCK_SAGAS: &str = "detect-stuck-sagas";
pub const REPLAY_FAILED_EVENTS: &str = "replay-failed-events";
pub const CHECK_INVARIANTS: &str = "check-invariants";

/// Every job, in the order a scheduled round runs them: repairs first, so
/// that the invariants are checked on the healed state.
pub const NAMES: &[&str] = &[
    RELEASE_EXPIRED_INVENTORY,
    RECONCILE_PAYMENTS_VS_ORDERS,
    DETECT_STUCK_SAGAS,
    REPLAY_FAILED_EVENTS,
    CHECK_INVARIANTS,
];

/// The domain event of a broken invariant.
pub const INVARIANT_VIOLATED: &str = "InvariantViolated";
/// The domain event of a reservation the inventory's own sweep left held
/// past its TTL.
pub const RESERVATION_LEAKED: &str = "ReservationLeaked";
/// The domain event of a payment and order mismatch the reconciliation could
/// not repair.
pub const PAYMENT_MISMATCH: &str = "PaymentMismatch";

/// The counter of `PaymentMismatch` findings (docs/ops/alerts.yml pages on it).
pub const PAYMENT_MISMATCHES_METRIC: &str = "sagaflow_payment_mismatches_total";
/// The counter of `ReservationLeaked` findings (docs/ops/alerts.yml pages on it).
pub const RESERVATION_LEAKS_METRIC: &str = "sagaflow_reservation_leaks_total";
/// The counter of `InvariantViolated` findings: the default of an alert.
pub const INVARIANT_VIOLATIONS_METRIC: &str = crate::FindingsAlert::DEFAULT_METRIC;

/// The activities the orchestrator serves itself.
pub const DETECT_STUCK_ACTIVITY: &str = "jobs.detect_stuck";
pub const REPLAY_FAILED_EVENTS_ACTIVITY: &str = "jobs.replay_failed_events";
/// Compares the checkouts' statuses with the payments ledger and the held
/// stock; the orchestrator serves it, since only it reads the histories.
pub const AUDIT_CHECKOUTS_ACTIVITY: &str = "jobs.audit_checkouts";

/// A job's workflow type is its name under this prefix.
pub const PREFIX: &str = "job.";

/// The workflow type of job `name`: `job.NAME`.
pub fn workflow_type(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// A job step: a few quick retries (a service restarting is the common
/// failure), then the run fails and the next round tries again.
fn step(name: &str, activity_type: &str) -> Step {
    Step::activity(name, activity_type)
        .retry(RetryPolicy {
            initial_interval_ms: 200,
            backoff_coefficient: 2.0,
            maximum_interval_ms: 5_000,
            maximum_attempts: 10,
            non_retryable_error_types: Vec::new(),
        })
        .timeouts(Timeouts { start_to_close_ms: millis(Duration::from_secs(30)), ..Timeouts::default() })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the run's next page, if the page just read has a `next` cursor:
/// the orchestrator serves it, since only it starts workflows.
pub const NEXT_PAGE_ACTIVITY: &str = "jobs.next_page";

/// Compares one page of the payments with the orders of the same payment
/// intents, records on the orders the refunds they lack, reports (with a
/// `PaymentMismatch` alert) what it may not repair, and starts the next
/// page's run of this job. A run is the chain of its pages (ADR 0009): each
/// page's captures are one bounded activity result, whatever the size of
/// the ledger. Input: `{grace_ms?, after?, page?, run?, page_size?}`; the
/// first page names no cursor. Version 3 names its alert's counter,
/// `sagaflow_payment_mismatches_total`, in the definition.
pub fn reconcile_payments_vs_orders() -> SagaDefinition {
    reconcile_paged(3, Some(PAYMENT_MISMATCHES_METRIC))
}

/// Version 2 of the reconciliation, from before an alert named its counter:
/// kept, with its content and hash, so that a run started on it loads and
/// replays; never started again. Its alert counts on the default counter.
fn reconcile_payments_vs_orders_v2() -> SagaDefinition {
    reconcile_paged(2, None)
}

/// The paged reconciliation, whose alert counts on `metric` (the default
/// counter when `None`).
fn reconcile_paged(version: u32, metric: Option<&str>) -> SagaDefinition {
    let mismatches = |step: Step| {
        let step = step.alert_on_findings("/violations", PAYMENT_MISMATCH);
        match metric {
            Some(metric) => step.alert_metric(metric),
            None => step,
        }
    };
    let build = SagaDefinition::builder(workflow_type(RECONCILE_PAYMENTS_VS_ORDERS), version)
        .operator_only()
        .description("Captured payments without an order, orders without a payment, a page at a time; repairs missing refund records.")
        .step(
            step("captures", "payments.captures")
                .input_from("after", "/input/after")
                .input_from("page_size", "/input/page_size")
                .input_literal("page_bytes", serde_json::json!(PAGE_BYTES)),
        )
        .step(mismatches(
            step("orders", "orders.reconcile_payments")
                .input_from("captures", "/steps/captures")
                .input_from("grace_ms", "/input/grace_ms")
                .input_literal("repair", serde_json::json!(true)),
        ))
        .step(
            step("next", NEXT_PAGE_ACTIVITY)
                .input_from("next", "/steps/captures/next")
                .input_from("input", "/input")
                .input_from("workflow_id", "/workflow_id"),
        )
        .build();
    build.unwrap_or_else(|e| unreachable!("the reconcile job is valid: {e}"))
}

/// The JSON bytes of captures in one page: half the default payload limit
/// (256 KiB), so that the page also fits as the next step's input.
const PAGE_BYTES: usize = 128 * 1024;

/// Version 1 of the reconciliation, one snapshot of every capture: kept so
/// that a run started before version 2 replays, and never started again.
fn reconcile_payments_vs_orders_v1() -> SagaDefinition {
    let build = SagaDefinition::builder(workflow_type(RECONCILE_PAYMENTS_VS_ORDERS), 1)
        .operator_only()
        .description("Captured payments without an order, orders without a payment; repairs missing refund records.")
        .step(step("captures", "payments.captures"))
        .step(
            step("orders", "orders.reconcile_payments")
                .input_from("captures", "/steps/captures")
                .input_from("grace_ms", "/input/grace_ms")
                .input_literal("repair", serde_json::json!(true))
                .alert_on_findings("/violations", PAYMENT_MISMATCH),
        )
        .build();
    build.unwrap_or_else(|e| unreachable!("the reconcile job is valid: {e}"))
}

/// Releases the reservations past their TTL (a backstop of the inventory
/// service's own sweep); each one it finds is a `ReservationLeaked` alert,
/// counted on `sagaflow_reservation_leaks_total` (since version 2).
pub fn release_expired_inventory() -> SagaDefinition {
    release_expired(2, Some(RESERVATION_LEAKS_METRIC))
}

/// Version 1, from before an alert named its counter: kept so that a run
/// started on it loads; never started again.
fn release_expired_inventory_v1() -> SagaDefinition {
    release_expired(1, None)
}

fn release_expired(version: u32, metric: Option<&str>) -> SagaDefinition {
    let release = step("release", "inventory.release_expired").alert_on_findings("/leaks", RESERVATION_LEAKED);
    let build = SagaDefinition::builder(workflow_type(RELEASE_EXPIRED_INVENTORY), version)
        .operator_only()
        .description("Releases inventory reservations held past their TTL.")
        .step(match metric {
            Some(metric) => release.alert_metric(metric),
            None => release,
        })
        .build();
    build.unwrap_or_else(|e| unreachable!("the release job is valid: {e}"))
}

/// Runs the stuck-saga detector now and lists what is flagged.
pub fn detect_stuck_sagas() -> SagaDefinition {
    let build = SagaDefinition::builder(workflow_type(DETECT_STUCK_SAGAS), 1)
        .operator_only()
        .description("Flags sagas without progress or without a worker, and lists the flagged ones.")
        .step(step("detect", DETECT_STUCK_ACTIVITY))
        .build();
    build.unwrap_or_else(|e| unreachable!("the stuck job is valid: {e}"))
}

/// Re-drives dead-lettered domain events, on the broker of the server's own
/// relay: its input names no address, so that no caller can make the server
/// connect where it chooses.
pub fn replay_failed_events() -> SagaDefinition {
    let build = SagaDefinition::builder(workflow_type(REPLAY_FAILED_EVENTS), 1)
        .operator_only()
        .description("Re-drives the domain events the consumers dead-lettered.")
        .step(step("replay", REPLAY_FAILED_EVENTS_ACTIVITY))
        .build();
    build.unwrap_or_else(|e| unreachable!("the replay job is valid: {e}"))
}

/// The invariants of docs/contract.md (Self-healing jobs and invariants):
/// stock conserved and held by live reservations, each intent captured at most once, refunds within the
/// capture, every capture with an order or a refund, every order with a
/// capture; and a checkout never lies (ADR 0006): none is CANCELLED while it
/// kept money, and none that ended still holds stock. Each finding raises
/// `InvariantViolated`. Input: `{grace_ms?}`. The checkout steps come last,
/// so that a run started before they existed replays unchanged.
pub fn check_invariants() -> SagaDefinition {
    let build = SagaDefinition::builder(workflow_type(CHECK_INVARIANTS), 1)
        .operator_only()
        .description("Checks the shop's invariants; a violation is an alert.")
        .step(step("inventory", "inventory.check_invariants").alert_on_findings("/violations", INVARIANT_VIOLATED))
        .step(step("payments", "payments.check_invariants").alert_on_findings("/violations", INVARIANT_VIOLATED))
        .step(step("captures", "payments.captures"))
        .step(
            step("orders", "orders.reconcile_payments")
                .input_from("captures", "/steps/captures")
                .input_from("grace_ms", "/input/grace_ms")
                .input_literal("repair", serde_json::json!(false))
                .alert_on_findings("/violations", INVARIANT_VIOLATED),
        )
        .step(step("reservations", "inventory.held_reservations"))
        .step(
            step("checkouts", AUDIT_CHECKOUTS_ACTIVITY)
                .input_from("captures", "/steps/captures")
                .input_from("reservations", "/steps/reservations")
                .input_from("grace_ms", "/input/grace_ms")
                .alert_on_findings("/violations", INVARIANT_VIOLATED),
        )
        .build();
    build.unwrap_or_else(|e| unreachable!("the invariants job is valid: {e}"))
}

/// Every job's definition.
pub fn all() -> Vec<SagaDefinition> {
    vec![
        reconcile_payments_vs_orders(),
        release_expired_inventory(),
        detect_stuck_sagas(),
        replay_failed_events(),
        check_invariants(),
        reconcile_payments_vs_orders_v1(),
        reconcile_payments_vs_orders_v2(),
        release_expired_inventory_v1(),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn jobs_are_valid_and_named_after_their_workflow_type() {
        let all = super::all();
        // The current version of each job, in NAMES order, then retired versions.
        assert_eq!(all.len(), super::NAMES.len() + 3);
        for (job, name) in all.iter().zip([
            super::RECONCILE_PAYMENTS_VS_ORDERS,
            super::RELEASE_EXPIRED_INVENTORY,
            super::DETECT_STUCK_SAGAS,
            super::REPLAY_FAILED_EVENTS,
            super::CHECK_INVARIANTS,
        ]) {
            assert_eq!(job.validate(), Ok(()), "{}", job.name);
            assert_eq!(job.name, super::workflow_type(name));
            assert!(job.pivot_index().is_none(), "a job only reads or repairs idempotently");
        }
    }

    /// The counters docs/ops/alerts.yml pages on are named by the jobs'
    /// definitions, not by the server.
    #[test]
    fn each_alert_names_its_counter() {
        let metrics = |d: crate::SagaDefinition| -> Vec<(String, String)> {
            d.steps.iter().filter_map(|s| s.alert.as_ref()).map(|a| (a.event.clone(), a.metric.clone())).collect()
        };
        let one = |event: &str, metric: &str| vec![(event.to_owned(), metric.to_owned())];
        assert_eq!(
            metrics(super::reconcile_payments_vs_orders()),
            one("PaymentMismatch", "sagaflow_payment_mismatches_total")
        );
        assert_eq!(
            metrics(super::release_expired_inventory()),
            one("ReservationLeaked", "sagaflow_reservation_leaks_total")
        );
        let invariants = metrics(super::check_invariants());
        assert_eq!(invariants.len(), 4);
        assert!(invariants.iter().all(|(e, m)| e == "InvariantViolated" && m == "sagaflow_invariant_violations_total"));
    }
}
