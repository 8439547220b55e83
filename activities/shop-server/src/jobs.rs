//! The shop's part of the self-healing jobs that needs the server's runtime:
//! `jobs.audit_checkouts` reads each checkout the payments and inventory
//! snapshots name from its history, as `GetCheckout` does, then compares
//! ([`audit_checkouts`](crate::checkout::audit_checkouts)). It runs on the
//! server's in-process jobs worker ([`CheckoutExtension`](crate::CheckoutExtension)).

use std::collections::HashMap;

use sagaflow_activities::shop::audit::{Captures, DEFAULT_GRACE_MS, HeldReservations};
use sagaflow_server::runtime::{self, Runtime};
use sagaflow_worker::ActivityError;
use sagaflow_workflows::shop::CHECKOUT;
use serde::Deserialize;

use crate::checkout::{CheckoutFacts, CheckoutView, audit_checkouts, checkout_of};

/// `jobs.audit_checkouts` input: the earlier steps' snapshots.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditInput {
    captures: Captures,
    reservations: HeldReservations,
    #[serde(default)]
    grace_ms: Option<u64>,
}

pub(crate) async fn audit(runtime: &Runtime, input: &AuditInput) -> Result<serde_json::Value, ActivityError> {
    let unavailable = |e: runtime::Error| ActivityError::retryable("StoreUnavailable", e.to_string());
    let named = input.captures.captures.iter().map(|c| c.payment_intent_id.as_str());
    let named = named.chain(input.reservations.held.iter().map(|r| r.reservation_id.as_str()));
    let mut checkouts = HashMap::new();
    for checkout_id in named.filter_map(checkout_of) {
        let Some(summary) = runtime.summary(&checkout_id).await.map_err(unavailable)? else { continue };
        if summary.workflow_type != CHECKOUT {
            continue;
        }
        let view =
            CheckoutView::from_history(&runtime.history(&checkout_id, 1, usize::MAX).await.map_err(unavailable)?);
        checkouts.insert(checkout_id, CheckoutFacts { view, closed_ms: summary.closed_ms });
    }
    let grace_ms = input.grace_ms.unwrap_or(DEFAULT_GRACE_MS);
    let found = audit_checkouts(&input.captures, &input.reservations, grace_ms, |id| checkouts.get(id).cloned());
    serde_json::to_value(found).map_err(|e| ActivityError::non_retryable(ActivityError::INVALID_OUTPUT, e.to_string()))
}
