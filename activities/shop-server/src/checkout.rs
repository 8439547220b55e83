//! `sagaflow.checkout.v1.CheckoutService`: the shop's front door. A checkout
//! is a `checkout` workflow; its status is derived from its history, never
//! stored beside it. Prices come from the catalog (the saga's price-snapshot
//! step), never from the client.

use std::collections::HashMap;

use sagaflow_activities::shop::Violation;
use sagaflow_activities::shop::audit::{Captures, HeldReservations};
use sagaflow_activities::shop::payments::METHODS as PAYMENT_METHODS;
use sagaflow_proto::checkout::v1::checkout_service_server::{CheckoutService, CheckoutServiceServer};
use sagaflow_proto::checkout::v1::{
    Checkout, CheckoutStatus, GetCheckoutRequest, Line, RefundCheckoutRequest, RefundCheckoutResponse,
    StartCheckoutRequest, StartCheckoutResponse,
};
use sagaflow_proto::v1::history_event::Attributes;
use sagaflow_proto::v1::{HistoryEvent, WorkflowStatus, WorkflowSummary};
use sagaflow_workflows::shop::{CHECKOUT, REFUND};
use serde::Serialize;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use sagaflow_proto::is_terminal;
use sagaflow_server::api::{Origin, invalid};
use sagaflow_server::auth::{self, Principal, policy};
use sagaflow_server::engine::{is_side_task, timeout_leaves_outcome_unknown};
use sagaflow_server::runtime::{Error as RuntimeError, Runtime, StartRequest};
use sagaflow_server::store::ListQuery;

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

/// The reference shop's `CheckoutService`, plugged into a server
/// (`Server::builder().extension(CheckoutExtension)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckoutExtension;

impl sagaflow_server::Extension for CheckoutExtension {
    fn service_name(&self) -> &'static str {
        <CheckoutServiceServer<CheckoutApi> as tonic::server::NamedService>::NAME
    }

    fn rules(&self) -> Vec<(String, &'static [auth::Role])> {
        let method = |name: &str| format!("/{}/{name}", self.service_name());
        vec![
            // A client reads only the checkouts it started.
            (method("StartCheckout"), policy::CLIENT),
            (method("GetCheckout"), policy::CLIENT),
            // A refund moves money.
            (method("RefundCheckout"), policy::OPERATOR),
        ]
    }

    fn add_to(&self, routes: &mut tonic::service::RoutesBuilder, runtime: &Runtime, max_message_bytes: usize) {
        routes.add_service(
            CheckoutServiceServer::new(CheckoutApi::new(runtime.clone())).max_decoding_message_size(max_message_bytes),
        );
    }

    fn console_routes(&self, runtime: &Runtime) -> Option<axum::Router> {
        Some(crate::console::routes(runtime))
    }

    fn console_links(&self, summary: &WorkflowSummary) -> Vec<sagaflow_server::console::Link> {
        crate::console::links(summary)
    }

    fn job_activities(
        &self,
        worker: sagaflow_worker::WorkerBuilder,
        runtime: &Runtime,
    ) -> sagaflow_worker::WorkerBuilder {
        let runtime = runtime.clone();
        worker.activity(
            sagaflow_workflows::jobs::AUDIT_CHECKOUTS_ACTIVITY,
            move |_ctx: sagaflow_worker::ActivityContext, input: crate::jobs::AuditInput| {
                let runtime = runtime.clone();
                async move { crate::jobs::audit(&runtime, &input).await }
            },
        )
    }
}

/// Stable ids derived from the client's request id (as scoped to its
/// tenant), so that a retried request names the same checkout, reservation
/// and payment intent.
pub fn checkout_ids(client_request_id: &str) -> (String, String, String) {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("sagaflow:checkout:{client_request_id}").as_bytes()).simple();
    (format!("chk-{id}"), format!("res-{id}"), format!("pi-{id}"))
}

fn refund_workflow_id(checkout_id: &str, refund_id: &str) -> String {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("sagaflow:refund:{refund_id}").as_bytes()).simple();
    format!("{}{id}", refunds_prefix(checkout_id))
}

pub(crate) fn refunds_prefix(checkout_id: &str) -> String {
    format!("rfd-{}-", checkout_id.trim_start_matches("chk-"))
}

/// The step that takes the money.
const CAPTURE_STEP: &str = "capture";

/// What a checkout's history says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CheckoutView {
    pub workflow_status: Option<WorkflowStatus>,
    pub steps: HashMap<String, Value>,
    /// Steps that were attempted at least once, completed or not.
    pub attempted: std::collections::HashSet<String>,
    pub input: Value,
    pub shipment_delayed: bool,
    /// A capture attempt was scheduled.
    pub capture_attempted: bool,
    /// Money may have been taken without the history knowing: a capture
    /// attempt is in flight, or one timed out after a worker may have run it
    /// and no definite answer came since (ADR 0006). Such a checkout is
    /// never shown CANCELLED.
    pub capture_in_doubt: bool,
}

impl CheckoutView {
    pub fn from_history(events: &[HistoryEvent]) -> Self {
        let mut view = Self::default();
        let mut step_of: HashMap<String, String> = HashMap::new();
        let (mut in_flight, mut unknown) = (false, false);
        let is_capture = |step_of: &HashMap<String, String>, task_id: &str| {
            step_of.get(task_id).is_some_and(|step| step == CAPTURE_STEP)
        };
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
                    if s.step == CAPTURE_STEP {
                        view.capture_attempted = true;
                        in_flight = true;
                    }
                    view.attempted.insert(s.step.clone());
                }
                Some(Attributes::ActivityCompleted(c)) => {
                    if let Some(step) = step_of.get(&c.task_id) {
                        view.steps.insert(step.clone(), serde_json::from_str(&c.result).unwrap_or(Value::Null));
                    }
                    if is_capture(&step_of, &c.task_id) {
                        (in_flight, unknown) = (false, false);
                    }
                }
                Some(Attributes::ActivityFailed(f)) if is_capture(&step_of, &f.task_id) => {
                    in_flight = false;
                    // A retryable answer says nothing of an earlier attempt that timed out.
                    unknown = f.outcome_unknown || (unknown && !f.definite);
                }
                Some(Attributes::ActivityTimedOut(t)) if is_capture(&step_of, &t.task_id) => {
                    in_flight = false;
                    unknown |= timeout_leaves_outcome_unknown(&t.timeout_type);
                }
                // An operator's decision counts as the worker's answer would.
                Some(Attributes::ActivityResolved(r)) if !r.compensation => {
                    if r.outcome == "succeeded" {
                        view.steps.insert(r.step.clone(), serde_json::from_str(&r.result).unwrap_or(Value::Null));
                    }
                    if r.step == CAPTURE_STEP {
                        (in_flight, unknown) = (false, false);
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
        view.capture_in_doubt = !view.captured() && (in_flight || unknown);
        view
    }

    /// An id from the input, named only once `step` was attempted: a
    /// checkout that failed at pricing made no reservation and no payment,
    /// and a view that named them would send a reader looking for ghosts.
    /// An attempt that never answered may have taken effect, so it counts.
    pub(crate) fn id_once_attempted(&self, step: &str, field: &str) -> String {
        if self.attempted.contains(step) {
            self.input[field].as_str().unwrap_or_default().to_owned()
        } else {
            String::new()
        }
    }

    /// The history records the capture (a worker's answer or an operator's decision).
    pub fn captured(&self) -> bool {
        self.steps.contains_key(CAPTURE_STEP)
    }

    fn terminal(&self) -> bool {
        self.workflow_status.is_some_and(WorkflowStatus::is_terminal)
    }

    pub fn total_cents(&self) -> i64 {
        self.steps.get("price").and_then(|p| p["total_cents"].as_i64()).unwrap_or(0)
    }

    pub fn order_id(&self) -> String {
        self.steps.get("order").and_then(|o| o["order_id"].as_str()).unwrap_or_default().to_owned()
    }

    /// The customer-facing status, given what has been refunded so far.
    ///
    /// CANCELLED only when no money can be kept: the saga was undone (it never
    /// compensates past a capture, nor past one whose outcome is unknown), or
    /// it ended without a capture that could have happened. A checkout
    /// stopped (terminated) with its capture in doubt stays at the step it
    /// reached, for the invariants job and an operator to settle.
    pub fn status(&self, refunded_cents: i64) -> CheckoutStatus {
        let undone = matches!(
            self.workflow_status,
            Some(WorkflowStatus::Compensating | WorkflowStatus::Compensated | WorkflowStatus::Cancelled)
        );
        if undone || (self.terminal() && !self.captured() && !self.capture_in_doubt) {
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

    pub(crate) fn shipment_status(&self) -> String {
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

/// The checkout whose ids a payment intent (`pi-X`) or a reservation
/// (`res-X`) were derived from (`chk-X`, see [`checkout_ids`]).
pub fn checkout_of(id: &str) -> Option<String> {
    id.strip_prefix("pi-").or_else(|| id.strip_prefix("res-")).map(|rest| format!("chk-{rest}"))
}

/// What the audit reads of one checkout.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutFacts {
    pub view: CheckoutView,
    /// When the saga ended; 0 while it is open.
    pub closed_ms: i64,
}

/// What the `check-invariants` job's `checkouts` step found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckoutAudit {
    pub checked_captures: usize,
    pub checked_reservations: usize,
    /// Findings still inside the grace period.
    pub pending: usize,
    pub violations: Vec<Violation>,
}

/// Compares the checkouts with the payments ledger and the held stock
/// (ADR 0006): a checkout shown CANCELLED while its capture is neither
/// refunded nor voided, and a reservation still held by a checkout whose saga
/// is over. A finding younger than `grace_ms` (the capture, the close) is
/// counted as pending: the saga, or the inventory's TTL, may still settle it.
/// `facts` reads a checkout by id; ids no checkout derived are skipped.
pub fn audit_checkouts(
    captures: &Captures,
    held: &HeldReservations,
    grace_ms: u64,
    facts: impl Fn(&str) -> Option<CheckoutFacts>,
) -> CheckoutAudit {
    let mut audit = CheckoutAudit {
        checked_captures: captures.captures.len(),
        checked_reservations: held.held.len(),
        ..CheckoutAudit::default()
    };
    let settled = |as_of: u64, at: i64| at > 0 && u64::try_from(at).unwrap_or(0) < as_of.saturating_sub(grace_ms);
    for capture in captures.captures.iter().filter(|c| c.refunded_cents < c.captured_cents) {
        let Some(checkout_id) = checkout_of(&capture.payment_intent_id) else { continue };
        let Some(checkout) = facts(&checkout_id) else { continue };
        if checkout.view.input["payment_intent_id"] != capture.payment_intent_id.as_str()
            || checkout.view.status(0) != CheckoutStatus::Cancelled
        {
            continue;
        }
        let captured_at = i64::try_from(capture.captured_at_ms).unwrap_or(i64::MAX);
        let closed = if checkout.closed_ms > 0 { checkout.closed_ms } else { captured_at };
        if settled(captures.as_of_ms, captured_at) && settled(captures.as_of_ms, closed) {
            audit.violations.push(Violation {
                invariant: "cancelled_checkout_kept_no_money".into(),
                subject: checkout_id,
                detail: format!(
                    "the checkout is CANCELLED, but payment intent {} captured {} cents and refunded {}",
                    capture.payment_intent_id, capture.captured_cents, capture.refunded_cents
                ),
            });
        } else {
            audit.pending += 1;
        }
    }
    for reservation in &held.held {
        let Some(checkout_id) = checkout_of(&reservation.reservation_id) else { continue };
        let Some(checkout) = facts(&checkout_id) else { continue };
        if checkout.view.input["reservation_id"] != reservation.reservation_id.as_str() || checkout.closed_ms == 0 {
            continue;
        }
        if settled(held.as_of_ms, checkout.closed_ms) {
            audit.violations.push(Violation {
                invariant: "finished_checkout_holds_no_stock".into(),
                subject: reservation.reservation_id.clone(),
                detail: format!(
                    "checkout {checkout_id} ended {}, and its reservation still holds stock (until {})",
                    checkout.view.workflow_status.map(sagaflow_proto::status_name).unwrap_or_default(),
                    reservation.expires_at_ms
                ),
            });
        } else {
            audit.pending += 1;
        }
    }
    audit
}

/// A checkout `caller` may read, from its history: its view, its summary
/// and the history itself. Another client's checkout reads as missing: its
/// existence is not ours to tell. The API and the console page read it so.
pub(crate) async fn read_checkout(
    runtime: &Runtime,
    checkout_id: &str,
    caller: &Principal,
) -> Result<(CheckoutView, WorkflowSummary, Vec<HistoryEvent>), RuntimeError> {
    runtime.limits().id("checkout_id", checkout_id).map_err(|e| RuntimeError::InvalidArgument(e.0))?;
    let summary = runtime.describe(checkout_id).await?;
    if summary.workflow_type != CHECKOUT || !caller.may_read(&summary.labels) {
        return Err(RuntimeError::NotFound(format!("checkout {checkout_id} not found")));
    }
    let history = runtime.history(checkout_id, 1, usize::MAX).await?;
    Ok((CheckoutView::from_history(&history), summary, history))
}

/// One refund of a checkout, from its refund workflow.
#[derive(Debug, Clone)]
pub(crate) struct RefundRow {
    pub summary: WorkflowSummary,
    pub view: CheckoutView,
    pub amount_cents: i64,
    /// Its `refund` step completed: the money went back.
    pub refunded: bool,
    /// When the refund step completed.
    pub refunded_ms: i64,
}

/// The refunds of a checkout, in the order of their workflow ids.
pub(crate) async fn refund_rows(runtime: &Runtime, checkout_id: &str) -> Result<Vec<RefundRow>, RuntimeError> {
    let query = ListQuery {
        id_prefix: refunds_prefix(checkout_id),
        limit: 10_000,
        scan_budget: 10_000,
        ..ListQuery::default()
    };
    let page = runtime.list(&query).await?;
    let mut rows = Vec::with_capacity(page.workflows.len());
    for summary in page.workflows {
        let history = runtime.history(&summary.workflow_id, 1, usize::MAX).await?;
        let view = CheckoutView::from_history(&history);
        let refund_task = history.iter().find_map(|e| match &e.attributes {
            Some(Attributes::ActivityScheduled(s)) if s.step == "refund" && !s.compensation => Some(s.task_id.clone()),
            _ => None,
        });
        let refunded_ms = history
            .iter()
            .find_map(|e| match &e.attributes {
                Some(Attributes::ActivityCompleted(c)) if Some(&c.task_id) == refund_task.as_ref() => Some(e.time_ms),
                _ => None,
            })
            .unwrap_or(0);
        rows.push(RefundRow {
            amount_cents: view.input["amount_cents"].as_i64().unwrap_or(0),
            refunded: view.steps.contains_key("refund"),
            refunded_ms,
            summary,
            view,
        });
    }
    Ok(rows)
}

impl CheckoutApi {
    async fn view(&self, checkout_id: &str, caller: &Principal) -> Result<(CheckoutView, WorkflowSummary), Status> {
        let (view, summary, _) = read_checkout(&self.runtime, checkout_id, caller).await?;
        Ok((view, summary))
    }

    /// Refunds of a checkout: `(refunded by completed refunds, asked by refunds still running)`.
    async fn refunds(&self, checkout_id: &str) -> Result<(i64, i64), Status> {
        let (mut refunded, mut pending) = (0, 0);
        for refund in refund_rows(&self.runtime, checkout_id).await? {
            if refund.refunded {
                refunded += refund.amount_cents;
            } else if !is_terminal(refund.summary.status) {
                pending += refund.amount_cents;
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
        // In the caller's namespace: the ids and idempotency keys derived
        // from it (the order's key is this request id) are the caller's alone.
        let client_request_id = caller.scoped(&request.client_request_id);
        limits.id("client_request_id", &client_request_id).map_err(invalid)?;
        let (checkout_id, reservation_id, payment_intent_id) = checkout_ids(&client_request_id);
        let input = json!({
            "client_request_id": client_request_id,
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
            request_id: format!("checkout:{client_request_id}"),
            input,
            workflow_id: Some(checkout_id.clone()),
            labels: std::iter::once(("customer".to_owned(), request.customer_id.clone()))
                .chain(caller.owner_label())
                .collect(),
            correlation_id,
            traceparent,
            parent_workflow_id: String::new(),
            redrive: None,
        };
        let (checkout_id, already_started) = self.runtime.start_workflow(start).await?;
        // A new start's durable commit holds its first events and no finished
        // step: it is pending, with no second barrier or history read. Only
        // a retried request reads where its checkout got to.
        let status =
            if already_started { self.view(&checkout_id, &caller).await?.0.status(0) } else { CheckoutStatus::Pending };
        Ok(Response::new(StartCheckoutResponse { checkout_id, status: status.into(), already_started }))
    }

    async fn get_checkout(&self, request: Request<GetCheckoutRequest>) -> Result<Response<Checkout>, Status> {
        let caller = auth::principal(&request);
        let checkout_id = request.into_inner().checkout_id;
        let (view, summary) = self.view(&checkout_id, &caller).await?;
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
            stuck_reason: summary.stuck_reason,
            stuck_message: summary.stuck_message,
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
        let (view, _) = self.view(&request.checkout_id, &caller).await?;
        let workflow_id = refund_workflow_id(&request.checkout_id, &request.refund_id);
        // A refund id is the caller's within one checkout (as Stripe scopes an
        // idempotency key to its account): rf-1 on two checkouts is two
        // refunds. Refunds started before the scoping were filed under the
        // bare id; a retry of one must find it there, or it would refund twice.
        let legacy = format!("refund:{}", request.refund_id);
        let request_id = if self.runtime.workflow_for_request(&legacy).await?.as_deref() == Some(workflow_id.as_str()) {
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
            parent_workflow_id: String::new(),
            redrive: None,
        };
        // A retried refund request is not a new refund: let the start's own
        // idempotency answer it before checking amounts.
        if self.runtime.workflow_for_request(&request_id).await?.is_some() {
            let (refund_workflow_id, already_started) = self.runtime.start_workflow(start).await?;
            return Ok(Response::new(RefundCheckoutResponse { refund_workflow_id, already_started }));
        }
        // The gateway's ledger, not the history, knows what was taken: any
        // checkout that tried to capture may be refunded, a cancelled one
        // included (money an operator found kept). The refund saga's own
        // pivot refuses more than the capture (RefundExceedsCapture).
        if !view.capture_attempted {
            return Err(Status::failed_precondition(format!(
                "checkout {} has captured no payment",
                request.checkout_id
            )));
        }
        if view.order_id().is_empty() && !view.terminal() {
            let why = if view.capture_in_doubt {
                "its capture's outcome is not settled yet; let the saga retry it, or resolve it \
                 (`sagaflow workflow resolve`), then refund"
            } else {
                "it has no order yet; retry once it is ORDERED"
            };
            return Err(Status::failed_precondition(format!("checkout {}: {why}", request.checkout_id)));
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

    fn history(events: Vec<Attributes>) -> Vec<HistoryEvent> {
        use sagaflow_proto::v1::WorkflowStarted;
        let started = Attributes::WorkflowStarted(WorkflowStarted {
            input: json!({"payment_intent_id": "pi-1", "reservation_id": "res-1"}).to_string(),
            ..Default::default()
        });
        std::iter::once(started)
            .chain(events)
            .enumerate()
            .map(|(i, a)| HistoryEvent { seq: i as u64 + 1, time_ms: 0, attributes: Some(a) })
            .collect()
    }

    fn capture_attempt(attempt: u32) -> Attributes {
        Attributes::ActivityScheduled(sagaflow_proto::v1::ActivityScheduled {
            task_id: format!("2.f.{attempt}"),
            step: "capture".into(),
            ..Default::default()
        })
    }

    fn timed_out(attempt: u32, kind: &str) -> Attributes {
        Attributes::ActivityTimedOut(sagaflow_proto::v1::ActivityTimedOut {
            task_id: format!("2.f.{attempt}"),
            timeout_type: kind.into(),
            next_attempt_ms: 0,
            worker_id: "w-1".into(),
        })
    }

    fn failed(attempt: u32, definite: bool) -> Attributes {
        Attributes::ActivityFailed(sagaflow_proto::v1::ActivityFailed {
            task_id: format!("2.f.{attempt}"),
            definite,
            ..Default::default()
        })
    }

    fn terminated() -> Attributes {
        Attributes::WorkflowTerminated(sagaflow_proto::v1::WorkflowTerminated::default())
    }

    #[test]
    fn a_checkout_whose_capture_is_in_doubt_is_never_cancelled() {
        use sagaflow_proto::v1::{ActivityResolved, WorkflowCompensated};
        let cases: Vec<(&str, Vec<Attributes>, CheckoutStatus)> = vec![
            ("never tried to capture", vec![terminated()], CheckoutStatus::Cancelled),
            ("stopped mid-capture", vec![capture_attempt(1), terminated()], CheckoutStatus::Pending),
            (
                "stopped after a timeout",
                vec![capture_attempt(1), timed_out(1, "START_TO_CLOSE"), terminated()],
                CheckoutStatus::Pending,
            ),
            (
                "a retryable answer after the timeout settles nothing",
                vec![capture_attempt(1), timed_out(1, "HEARTBEAT"), capture_attempt(2), failed(2, false), terminated()],
                CheckoutStatus::Pending,
            ),
            (
                "a definite failure settles it",
                vec![
                    capture_attempt(1),
                    timed_out(1, "START_TO_CLOSE"),
                    capture_attempt(2),
                    failed(2, true),
                    terminated(),
                ],
                CheckoutStatus::Cancelled,
            ),
            (
                "never reached a worker",
                vec![capture_attempt(1), timed_out(1, "SCHEDULE_TO_START"), terminated()],
                CheckoutStatus::Cancelled,
            ),
            (
                "compensated",
                vec![
                    capture_attempt(1),
                    failed(1, true),
                    Attributes::WorkflowCompensated(WorkflowCompensated::default()),
                ],
                CheckoutStatus::Cancelled,
            ),
            (
                "resolved as captured by an operator",
                vec![
                    capture_attempt(1),
                    timed_out(1, "START_TO_CLOSE"),
                    Attributes::ActivityResolved(ActivityResolved {
                        step: "capture".into(),
                        outcome: "succeeded".into(),
                        result: "{}".into(),
                        ..Default::default()
                    }),
                ],
                CheckoutStatus::Paid,
            ),
        ];
        for (case, events, expected) in cases {
            let view = CheckoutView::from_history(&history(events));
            assert_eq!(view.status(0), expected, "{case}: {view:?}");
        }
    }

    #[test]
    fn the_audit_finds_checkouts_that_lie_and_finished_ones_that_hold_stock() {
        use sagaflow_activities::shop::audit::{CapturedPayment, HeldReservation};
        let capture = |intent: &str, refunded| CapturedPayment {
            payment_intent_id: intent.into(),
            captured_cents: 1000,
            refunded_cents: refunded,
            captured_at_ms: 1_000,
            refunds: Vec::new(),
        };
        let captures = Captures {
            as_of_ms: 100_000,
            captures: vec![
                capture("pi-cancelled", 0),
                capture("pi-refunded", 1000),
                capture("pi-shipped", 0),
                capture("pi-young", 0),
                capture("pi-stranger", 0),
            ],
            ..Captures::default()
        };
        let held = HeldReservations {
            as_of_ms: 100_000,
            held: ["res-cancelled", "res-open", "res-young"]
                .map(|id| HeldReservation { reservation_id: id.into(), created_at_ms: 1, expires_at_ms: 2 })
                .to_vec(),
        };
        let facts = |checkout_id: &str| {
            let name = checkout_id.strip_prefix("chk-")?;
            let (status, closed_ms) = match name {
                "cancelled" | "refunded" => (WorkflowStatus::Compensated, 2_000),
                "shipped" => (WorkflowStatus::Completed, 2_000),
                "young" => (WorkflowStatus::Cancelled, 99_000),
                "open" => (WorkflowStatus::Running, 0),
                _ => return None,
            };
            let mut view = CheckoutView {
                workflow_status: Some(status),
                input: json!({"payment_intent_id": format!("pi-{name}"), "reservation_id": format!("res-{name}")}),
                ..Default::default()
            };
            if name == "shipped" {
                view.steps.insert("capture".into(), json!({}));
            }
            Some(CheckoutFacts { view, closed_ms })
        };
        let audit = audit_checkouts(&captures, &held, 10_000, facts);
        let found: Vec<(&str, &str)> =
            audit.violations.iter().map(|v| (v.invariant.as_str(), v.subject.as_str())).collect();
        assert_eq!(
            found,
            [
                ("cancelled_checkout_kept_no_money", "chk-cancelled"),
                ("finished_checkout_holds_no_stock", "res-cancelled"),
            ]
        );
        assert_eq!(audit.pending, 2, "the young ones wait out the grace period");
        assert_eq!((audit.checked_captures, audit.checked_reservations), (5, 3));
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
