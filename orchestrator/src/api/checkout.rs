//! `sagaflow.checkout.v1.CheckoutService`: the shop's front door. A checkout
//! is a `checkout` workflow; its status is derived from its history, never
//! stored beside it. Prices come from the catalog (the saga's price-snapshot
//! step), never from the client.

use std::collections::HashMap;

use sagaflow_activities::shop::payments::METHODS as PAYMENT_METHODS;
use sagaflow_proto::checkout::v1::checkout_service_server::CheckoutService;
use sagaflow_proto::checkout::v1::{
    Checkout, CheckoutStatus, GetCheckoutRequest, Line, RefundCheckoutRequest, RefundCheckoutResponse,
    StartCheckoutRequest, StartCheckoutResponse,
};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{HistoryEvent, WorkflowStatus};
use sagaflow_workflows::shop::{CHECKOUT, REFUND};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Origin, invalid};
use crate::auth::{self, Principal};
use crate::engine::is_side_task;
use crate::runtime::{Runtime, StartRequest};
use crate::store::is_terminal;

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: u32 = 10_000;

pub struct CheckoutApi {
    runtime: Runtime,
}

impl CheckoutApi {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

/// Stable ids derived from the client's request id, so that a retried
/// request names the same checkout, reservation and payment intent.
fn checkout_ids(client_request_id: &str) -> (String, String, String) {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("sagaflow:checkout:{client_request_id}").as_bytes()).simple();
    (format!("chk-{id}"), format!("res-{id}"), format!("pi-{id}"))
}

fn refund_workflow_id(checkout_id: &str, refund_id: &str) -> String {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("sagaflow:refund:{refund_id}").as_bytes()).simple();
    format!("{}{id}", refunds_prefix(checkout_id))
}

fn refunds_prefix(checkout_id: &str) -> String {
    format!("rfd-{}-", checkout_id.trim_start_matches("chk-"))
}

/// What a checkout's history says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CheckoutView {
    pub workflow_status: Option<WorkflowStatus>,
    pub steps: HashMap<String, Value>,
    /// Steps that were attempted at least once, completed or not.
    pub attempted: std::collections::HashSet<String>,
    pub input: Value,
    pub shipment_delayed: bool,
}

impl CheckoutView {
    pub fn from_history(events: &[HistoryEvent]) -> Self {
        let mut view = Self::default();
        let mut step_of: HashMap<String, String> = HashMap::new();
        for event in events {
            match &event.attributes {
                Some(Attributes::WorkflowStarted(s)) => {
                    view.input = serde_json::from_str(&s.input).unwrap_or(Value::Null);
                    view.workflow_status = Some(WorkflowStatus::Running);
                }
                // The escalation's notification is a side task of the ship step; its
                // result is the notification's, not the shipment's.
                Some(Attributes::ActivityScheduled(s)) if !s.compensation && !is_side_task(&s.task_id) => {
                    step_of.insert(s.task_id.clone(), s.step.clone());
                    view.attempted.insert(s.step.clone());
                }
                Some(Attributes::ActivityCompleted(c)) => {
                    if let Some(step) = step_of.get(&c.task_id) {
                        view.steps.insert(step.clone(), serde_json::from_str(&c.result).unwrap_or(Value::Null));
                    }
                }
                Some(Attributes::StepEscalated(e)) if e.alert == "ShipmentDelayed" => view.shipment_delayed = true,
                Some(Attributes::CompensationStarted(_)) => view.workflow_status = Some(WorkflowStatus::Compensating),
                Some(Attributes::WorkflowCompleted(_)) => view.workflow_status = Some(WorkflowStatus::Completed),
                Some(Attributes::WorkflowCompensated(_)) => view.workflow_status = Some(WorkflowStatus::Compensated),
                Some(Attributes::WorkflowFailed(_)) => view.workflow_status = Some(WorkflowStatus::Failed),
                Some(Attributes::WorkflowCancelled(_)) => view.workflow_status = Some(WorkflowStatus::Cancelled),
                Some(Attributes::WorkflowTerminated(_)) => view.workflow_status = Some(WorkflowStatus::Terminated),
                _ => {}
            }
        }
        view
    }

    /// An id from the input, named only once `step` was attempted: a
    /// checkout that failed at pricing made no reservation and no payment,
    /// and a view that named them would send a reader looking for ghosts.
    /// An attempt that never answered may have taken effect, so it counts.
    fn id_once_attempted(&self, step: &str, field: &str) -> String {
        if self.attempted.contains(step) {
            self.input[field].as_str().unwrap_or_default().to_owned()
        } else {
            String::new()
        }
    }

    fn captured(&self) -> bool {
        self.steps.contains_key("capture")
    }

    pub fn total_cents(&self) -> i64 {
        self.steps.get("price").and_then(|p| p["total_cents"].as_i64()).unwrap_or(0)
    }

    pub fn order_id(&self) -> String {
        self.steps.get("order").and_then(|o| o["order_id"].as_str()).unwrap_or_default().to_owned()
    }

    /// The customer-facing status, given what has been refunded so far.
    pub fn status(&self, refunded_cents: i64) -> CheckoutStatus {
        let undone = matches!(
            self.workflow_status,
            Some(WorkflowStatus::Compensating | WorkflowStatus::Compensated | WorkflowStatus::Cancelled)
        );
        if undone || (!self.captured() && self.workflow_status.is_some_and(|s| is_terminal(s as i32))) {
            return CheckoutStatus::Cancelled;
        }
        if refunded_cents > 0 {
            return if refunded_cents >= self.total_cents() {
                CheckoutStatus::Refunded
            } else {
                CheckoutStatus::PartiallyRefunded
            };
        }
        let done = |step: &str| self.steps.contains_key(step);
        if done("ship") {
            CheckoutStatus::Shipped
        } else if done("order") {
            CheckoutStatus::Ordered
        } else if done("capture") {
            CheckoutStatus::Paid
        } else if done("reserve") {
            CheckoutStatus::Reserved
        } else {
            CheckoutStatus::Pending
        }
    }

    fn shipment_status(&self) -> String {
        match self.steps.get("ship") {
            Some(shipment) => shipment["status"].as_str().unwrap_or("CREATED").to_owned(),
            None if self.shipment_delayed => "DELAYED".into(),
            None => String::new(),
        }
    }

    fn lines(&self) -> Vec<Line> {
        let lines = self.steps.get("price").and_then(|p| p["lines"].as_array().cloned()).unwrap_or_default();
        lines
            .iter()
            .map(|l| Line {
                sku: l["sku"].as_str().unwrap_or_default().into(),
                quantity: u32::try_from(l["quantity"].as_u64().unwrap_or(0)).unwrap_or(0),
                unit_price_cents: l["unit_price_cents"].as_i64().unwrap_or(0),
                line_total_cents: l["line_total_cents"].as_i64().unwrap_or(0),
            })
            .collect()
    }
}

impl CheckoutApi {
    async fn view(&self, checkout_id: &str, caller: &Principal) -> Result<CheckoutView, Status> {
        self.runtime.limits().id("checkout_id", checkout_id).map_err(invalid)?;
        let summary = self.runtime.describe(checkout_id).await?;
        // Another client's checkout reads as missing: its existence is not ours to tell.
        if summary.workflow_type != CHECKOUT || !caller.may_read(&summary.labels) {
            return Err(Status::not_found(format!("checkout {checkout_id} not found")));
        }
        let history = self.runtime.store().history(checkout_id, 1, usize::MAX)?;
        Ok(CheckoutView::from_history(&history))
    }

    /// Refunds of a checkout: `(refunded by completed refunds, asked by refunds still running)`.
    async fn refunds(&self, checkout_id: &str) -> Result<(i64, i64), Status> {
        let page = self.runtime.store().list(&refunds_prefix(checkout_id), None, 10_000, 10_000, &|_| true)?;
        let (mut refunded, mut pending) = (0, 0);
        for summary in page.workflows {
            let history = self.runtime.store().history(&summary.workflow_id, 1, usize::MAX)?;
            let refund = CheckoutView::from_history(&history);
            let amount = refund.input["amount_cents"].as_i64().unwrap_or(0);
            if refund.steps.contains_key("refund") {
                refunded += amount;
            } else if !is_terminal(summary.status) {
                pending += amount;
            }
        }
        Ok((refunded, pending))
    }
}

#[tonic::async_trait]
impl CheckoutService for CheckoutApi {
    async fn start_checkout(
        &self,
        request: Request<StartCheckoutRequest>,
    ) -> Result<Response<StartCheckoutResponse>, Status> {
        let Origin { correlation_id, traceparent, caller } = Origin::of(&request, &request.get_ref().client_request_id);
        let request = request.into_inner();
        let limits = self.runtime.limits();
        limits.id("client_request_id", &request.client_request_id).map_err(invalid)?;
        limits.id("customer_id", &request.customer_id).map_err(invalid)?;
        limits.optional_id("coupon_code", &request.coupon_code).map_err(invalid)?;
        limits.optional_id("payment_method", &request.payment_method).map_err(invalid)?;
        if !request.payment_method.is_empty() && !PAYMENT_METHODS.contains(&request.payment_method.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown payment_method {:?}; one of {}",
                request.payment_method,
                PAYMENT_METHODS.join(", ")
            )));
        }
        if request.items.is_empty() || request.items.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!("a checkout has 1 to {MAX_ITEMS} items")));
        }
        for item in &request.items {
            limits.id("sku", &item.sku).map_err(invalid)?;
            if item.quantity == 0 || item.quantity > MAX_QUANTITY {
                return Err(Status::invalid_argument(format!("quantity of {} must be 1 to {MAX_QUANTITY}", item.sku)));
            }
        }
        let (checkout_id, reservation_id, payment_intent_id) = checkout_ids(&request.client_request_id);
        let input = json!({
            "client_request_id": request.client_request_id,
            "customer_id": request.customer_id,
            "items": request.items.iter().map(|i| json!({"sku": i.sku, "quantity": i.quantity})).collect::<Vec<_>>(),
            "coupon_code": (!request.coupon_code.is_empty()).then_some(&request.coupon_code),
            "payment_method": if request.payment_method.is_empty() { "card" } else { request.payment_method.as_str() },
            "shipping_address": request.shipping_address,
            "reservation_id": reservation_id,
            "payment_intent_id": payment_intent_id,
        });
        let input = limits.json_payload("checkout", input.to_string().as_bytes()).map_err(invalid)?;
        let start = StartRequest {
            workflow_type: CHECKOUT.into(),
            request_id: format!("checkout:{}", request.client_request_id),
            input,
            workflow_id: Some(checkout_id.clone()),
            labels: std::iter::once(("customer".to_owned(), request.customer_id.clone()))
                .chain(caller.owner_label())
                .collect(),
            correlation_id,
            traceparent,
        };
        let (checkout_id, already_started) = self.runtime.start_workflow(start).await?;
        let status = self.view(&checkout_id, &caller).await?.status(0);
        Ok(Response::new(StartCheckoutResponse { checkout_id, status: status.into(), already_started }))
    }

    async fn get_checkout(&self, request: Request<GetCheckoutRequest>) -> Result<Response<Checkout>, Status> {
        let caller = auth::principal(&request);
        let checkout_id = request.into_inner().checkout_id;
        let view = self.view(&checkout_id, &caller).await?;
        let (refunded_cents, _) = self.refunds(&checkout_id).await?;
        Ok(Response::new(Checkout {
            checkout_id,
            status: view.status(refunded_cents).into(),
            order_id: view.order_id(),
            total_cents: view.total_cents(),
            lines: view.lines(),
            payment_intent_id: view.id_once_attempted("capture", "payment_intent_id"),
            reservation_id: view.id_once_attempted("reserve", "reservation_id"),
            shipment_status: view.shipment_status(),
            refunded_cents,
            workflow_status: view.workflow_status.map(sagaflow_proto::status_name).unwrap_or_default().into(),
        }))
    }

    async fn refund_checkout(
        &self,
        request: Request<RefundCheckoutRequest>,
    ) -> Result<Response<RefundCheckoutResponse>, Status> {
        let Origin { correlation_id, traceparent, caller } = Origin::of(&request, &request.get_ref().refund_id);
        let request = request.into_inner();
        self.runtime.limits().id("refund_id", &request.refund_id).map_err(invalid)?;
        if request.amount_cents <= 0 {
            return Err(Status::invalid_argument("amount_cents must be positive"));
        }
        let view = self.view(&request.checkout_id, &caller).await?;
        let workflow_id = refund_workflow_id(&request.checkout_id, &request.refund_id);
        // A refund id is the caller's within one checkout (as Stripe scopes an
        // idempotency key to its account): rf-1 on two checkouts is two
        // refunds. Refunds started before the scoping were filed under the
        // bare id; a retry of one must find it there, or it would refund twice.
        let legacy = format!("refund:{}", request.refund_id);
        let request_id = if self.runtime.store().workflow_for_request(&legacy)?.as_deref() == Some(workflow_id.as_str())
        {
            legacy
        } else {
            format!("refund:{}:{}", request.checkout_id, request.refund_id)
        };
        self.runtime.limits().id("refund_id with its checkout_id", &request_id).map_err(invalid)?;
        let input = json!({
            "checkout_id": request.checkout_id,
            "refund_id": request.refund_id,
            "payment_intent_id": view.input["payment_intent_id"],
            "order_id": view.order_id(),
            "amount_cents": request.amount_cents,
        })
        .to_string();
        let start = StartRequest {
            workflow_type: REFUND.into(),
            request_id: request_id.clone(),
            input,
            workflow_id: Some(workflow_id),
            labels: HashMap::from([("checkout".to_owned(), request.checkout_id.clone())]),
            correlation_id,
            traceparent,
        };
        // A retried refund request is not a new refund: let the start's own
        // idempotency answer it before checking amounts.
        if self.runtime.store().workflow_for_request(&request_id)?.is_some() {
            let (refund_workflow_id, already_started) = self.runtime.start_workflow(start).await?;
            return Ok(Response::new(RefundCheckoutResponse { refund_workflow_id, already_started }));
        }
        if !view.captured() {
            return Err(Status::failed_precondition(format!(
                "checkout {} has captured no payment",
                request.checkout_id
            )));
        }
        if view.order_id().is_empty() {
            return Err(Status::failed_precondition(format!(
                "checkout {} has no order yet; retry once it is ORDERED",
                request.checkout_id
            )));
        }
        let (refunded, pending) = self.refunds(&request.checkout_id).await?;
        let captured = view.total_cents();
        if refunded + pending + request.amount_cents > captured {
            return Err(Status::failed_precondition(format!(
                "a refund of {} would exceed the captured {captured} (refunded {refunded}, in progress {pending})",
                request.amount_cents
            )));
        }
        let (refund_workflow_id, already_started) = self.runtime.start_workflow(start).await?;
        Ok(Response::new(RefundCheckoutResponse { refund_workflow_id, already_started }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_request() {
        assert_eq!(checkout_ids("r-1"), checkout_ids("r-1"));
        assert_ne!(checkout_ids("r-1").0, checkout_ids("r-2").0);
        let (checkout, _, _) = checkout_ids("r-1");
        assert!(refund_workflow_id(&checkout, "rf-1").starts_with(&refunds_prefix(&checkout)));
    }

    #[test]
    fn the_escalation_notice_is_not_the_shipment() {
        use sagaflow_proto::v1::{ActivityCompleted, ActivityScheduled, StepEscalated};
        let event = |seq, attributes| HistoryEvent { seq, time_ms: 0, attributes: Some(attributes) };
        let scheduled = |task_id: &str| {
            Attributes::ActivityScheduled(ActivityScheduled {
                task_id: task_id.into(),
                step: "ship".into(),
                ..Default::default()
            })
        };
        let history = [
            event(1, scheduled("5.f.5")),
            event(
                2,
                Attributes::StepEscalated(StepEscalated { alert: "ShipmentDelayed".into(), ..Default::default() }),
            ),
            event(3, scheduled("5.n.1")),
            event(4, Attributes::ActivityCompleted(ActivityCompleted { task_id: "5.n.1".into(), result: "{}".into() })),
        ];
        assert_eq!(CheckoutView::from_history(&history).shipment_status(), "DELAYED");
    }

    #[test]
    fn status_follows_the_steps_and_refunds() {
        let mut view = CheckoutView { workflow_status: Some(WorkflowStatus::Running), ..Default::default() };
        assert_eq!(view.status(0), CheckoutStatus::Pending);
        view.steps.insert("price".into(), json!({"total_cents": 1000}));
        view.steps.insert("reserve".into(), json!({}));
        assert_eq!(view.status(0), CheckoutStatus::Reserved);
        view.steps.insert("capture".into(), json!({}));
        assert_eq!(view.status(0), CheckoutStatus::Paid);
        view.steps.insert("order".into(), json!({"order_id": "o-1"}));
        assert_eq!(view.status(0), CheckoutStatus::Ordered);
        view.steps.insert("ship".into(), json!({"status": "CREATED"}));
        assert_eq!(view.status(0), CheckoutStatus::Shipped);
        assert_eq!(view.status(400), CheckoutStatus::PartiallyRefunded);
        assert_eq!(view.status(1000), CheckoutStatus::Refunded);
        let compensated = CheckoutView { workflow_status: Some(WorkflowStatus::Compensated), ..Default::default() };
        assert_eq!(compensated.status(0), CheckoutStatus::Cancelled);
    }
}
