//! The shop's admin API: JSON over HTTP, to read and steer the services of
//! one process (`sagaflow worker --admin-listen`, `sagaflow shop …`).
//!
//! Every answer is JSON. A failure is `{"error": "...", "error_type": "..."}`
//! with 400 for bad input, 404 for an unknown thing (or a service this
//! process does not host), 409 for a request a business rule or an earlier
//! request refuses, 503 when storage fails, and 500 for a broken record.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | `{services, activities}` hosted by this process |
//! | `GET /catalog` | `{version, products: [{sku, name, unit_price_cents}]}` |
//! | `GET /stock` | `[{sku, available, reserved, sold, initial, restocked}]` |
//! | `GET /stock/{sku}` | one sku's stock |
//! | `POST /stock/{sku}/restock` | body `{quantity}`: adds stock; answers the sku's stock |
//! | `GET /reservations` | every reservation (status `HELD`, `RELEASED`, `EXPIRED`, `COMMITTED`) |
//! | `GET /reservations/{id}` | one reservation |
//! | `POST /reservations/release-expired` | releases the expired ones now: `{released}` |
//! | `GET /payments` | every payment intent with `captured_cents`, `refunded_cents`, `refundable_cents` |
//! | `GET /payments/ledger` | the ledger: `[{seq, kind: capture, refund or void, payment_intent_id, amount_cents, refund_id?, at_ms}]` |
//! | `GET /payments/{id}` | one payment intent |
//! | `GET /orders` | every order |
//! | `GET /orders/{id}` | one order |
//! | `GET /shipments` | every shipment |
//! | `GET /coupons` | the latest version of every coupon rule |
//! | `GET /coupons/{code}` | every version of one rule, oldest first |
//! | `PUT /coupons/{code}` | body `{percent_off or amount_off_cents, min_subtotal_cents?, expires_at_ms?, active?}`: adds the rule's next version and answers it |
//! | `GET /faults` | the active fault switches, as specs: `["payments.capture=error:2"]` |
//! | `POST /faults` | body `{spec}` (`SERVICE.OPERATION=KIND[:COUNT]`): sets a switch; answers the active ones |
//! | `DELETE /faults?target=T` | clears the switches of target `T` (all without it); answers the active ones |
//! | `GET /notifications?customer=C` | customer `C`'s feed, oldest first; without `customer`, every notification |
//! | `GET /invariants` | `{ok, violations: [{invariant, subject, detail}]}`: stock conservation, reservation holds, capture at most once, refunds within the capture |
//! | `GET /reconciliation` | captures with no order (and not refunded in full), and orders whose refunds differ from the payment's; needs `payments` and `orders` hosted |

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::shop::coupons::CouponTerms;
use crate::shop::payments::PaymentIntent;
use crate::shop::{ErrorKind, ServiceError, Shop};
use crate::{FaultSpec, shop};

/// The admin API of `shop`'s services.
pub fn router(shop: Shop) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/catalog", get(catalog))
        .route("/stock", get(stock))
        .route("/stock/{sku}", get(stock_of))
        .route("/stock/{sku}/restock", post(restock))
        .route("/reservations", get(reservations))
        .route("/reservations/release-expired", post(release_expired))
        .route("/reservations/{id}", get(reservation))
        .route("/payments", get(payments))
        .route("/payments/ledger", get(ledger))
        .route("/payments/{id}", get(payment))
        .route("/orders", get(orders))
        .route("/orders/{id}", get(order))
        .route("/shipments", get(shipments))
        .route("/coupons", get(coupons))
        .route("/coupons/{code}", get(coupon_history).put(set_coupon))
        .route("/faults", get(faults).post(set_fault).delete(clear_faults))
        .route("/notifications", get(notifications))
        .route("/invariants", get(invariants))
        .route("/reconciliation", get(reconciliation))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shop)
}

/// A failed request, answered as `{error, error_type}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self { status, error_type, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidInput", message)
    }

    fn not_found(error_type: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error_type, message)
    }

    fn not_hosted(service: &str) -> Self {
        Self::not_found("ServiceNotHosted", format!("the {service} service is not hosted by this process"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message, "error_type": self.error_type }))).into_response()
    }
}

impl<E: ServiceError> From<E> for ApiError {
    fn from(error: E) -> Self {
        let status = match error.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Rejected | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.error_type(), error.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON body, or a 400 that says what is wrong with it (axum's own
/// rejections are plain text, and some are 415 or 422).
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

fn hosted<'a, T>(service: Option<&'a T>, name: &str) -> Result<&'a T, ApiError> {
    service.ok_or_else(|| ApiError::not_hosted(name))
}

async fn index(State(shop): State<Shop>) -> Json<serde_json::Value> {
    Json(json!({ "services": shop.services(), "activities": shop.activity_types() }))
}

async fn unknown_endpoint() -> ApiError {
    ApiError::not_found("UnknownEndpoint", "no such endpoint; GET / lists the services, the module docs the endpoints")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "this endpoint does not take that method")
}

async fn catalog(State(shop): State<Shop>) -> ApiResult<serde_json::Value> {
    let catalog = hosted(shop.catalog(), "catalog")?;
    Ok(Json(json!({ "version": catalog.version()?, "products": catalog.products()? })))
}

async fn stock(State(shop): State<Shop>) -> ApiResult<Vec<shop::inventory::StockLevel>> {
    Ok(Json(hosted(shop.inventory(), "inventory")?.stock()?))
}

async fn stock_of(State(shop): State<Shop>, Path(sku): Path<String>) -> ApiResult<shop::inventory::StockLevel> {
    let level = hosted(shop.inventory(), "inventory")?.stock_of(&sku)?;
    level.map(Json).ok_or_else(|| ApiError::not_found("UnknownSku", format!("unknown sku {sku:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    quantity: u64,
}

async fn restock(
    State(shop): State<Shop>,
    Path(sku): Path<String>,
    request: Result<Json<Restock>, JsonRejection>,
) -> ApiResult<shop::inventory::StockLevel> {
    let inventory = hosted(shop.inventory(), "inventory")?;
    let Restock { quantity } = body(request)?;
    Ok(Json(inventory.restock(&sku, quantity).await?))
}

async fn reservations(State(shop): State<Shop>) -> ApiResult<Vec<shop::inventory::Reservation>> {
    Ok(Json(hosted(shop.inventory(), "inventory")?.reservations()?))
}

async fn reservation(State(shop): State<Shop>, Path(id): Path<String>) -> ApiResult<shop::inventory::Reservation> {
    let reservation = hosted(shop.inventory(), "inventory")?.reservation(&id)?;
    reservation
        .map(Json)
        .ok_or_else(|| ApiError::not_found("UnknownReservation", format!("unknown reservation {id:?}")))
}

async fn release_expired(State(shop): State<Shop>) -> ApiResult<serde_json::Value> {
    let inventory = hosted(shop.inventory(), "inventory")?;
    let released = inventory.release_expired(shop::store::now_ms()).await?;
    Ok(Json(json!({ "released": released })))
}

/// An intent as `/payments` shows it.
#[derive(Debug, Serialize)]
struct IntentView {
    #[serde(flatten)]
    intent: PaymentIntent,
    refundable_cents: u64,
}

impl From<PaymentIntent> for IntentView {
    fn from(intent: PaymentIntent) -> Self {
        Self { refundable_cents: intent.refundable_cents(), intent }
    }
}

async fn payments(State(shop): State<Shop>) -> ApiResult<Vec<IntentView>> {
    let intents = hosted(shop.payments(), "payments")?.intents()?;
    Ok(Json(intents.into_iter().map(IntentView::from).collect()))
}

async fn payment(State(shop): State<Shop>, Path(id): Path<String>) -> ApiResult<IntentView> {
    let intent = hosted(shop.payments(), "payments")?.intent(&id)?;
    intent
        .map(|intent| Json(intent.into()))
        .ok_or_else(|| ApiError::not_found("UnknownPaymentIntent", format!("unknown payment intent {id:?}")))
}

async fn ledger(State(shop): State<Shop>) -> ApiResult<Vec<shop::payments::LedgerEntry>> {
    Ok(Json(hosted(shop.payments(), "payments")?.ledger()?))
}

async fn orders(State(shop): State<Shop>) -> ApiResult<Vec<shop::orders::Order>> {
    Ok(Json(hosted(shop.orders(), "orders")?.orders()?))
}

async fn order(State(shop): State<Shop>, Path(id): Path<String>) -> ApiResult<shop::orders::Order> {
    let order = hosted(shop.orders(), "orders")?.order(&id)?;
    order.map(Json).ok_or_else(|| ApiError::not_found("UnknownOrder", format!("unknown order {id:?}")))
}

async fn shipments(State(shop): State<Shop>) -> ApiResult<Vec<shop::shipping::Shipment>> {
    Ok(Json(hosted(shop.shipping(), "shipping")?.shipments()?))
}

async fn coupons(State(shop): State<Shop>) -> ApiResult<Vec<shop::coupons::CouponRule>> {
    Ok(Json(hosted(shop.coupons(), "coupons")?.list()?))
}

async fn coupon_history(
    State(shop): State<Shop>,
    Path(code): Path<String>,
) -> ApiResult<Vec<shop::coupons::CouponRule>> {
    let history = hosted(shop.coupons(), "coupons")?.history(&code)?;
    if history.is_empty() {
        return Err(ApiError::not_found("InvalidCoupon", format!("no coupon {code:?}")));
    }
    Ok(Json(history))
}

async fn set_coupon(
    State(shop): State<Shop>,
    Path(code): Path<String>,
    terms: Result<Json<CouponTerms>, JsonRejection>,
) -> ApiResult<shop::coupons::CouponRule> {
    let coupons = hosted(shop.coupons(), "coupons")?;
    Ok(Json(coupons.set(&code, body(terms)?).await?))
}

fn active_faults(shop: &Shop) -> Json<Vec<String>> {
    Json(shop.faults().list().iter().map(ToString::to_string).collect())
}

async fn faults(State(shop): State<Shop>) -> Json<Vec<String>> {
    active_faults(&shop)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFault {
    spec: String,
}

async fn set_fault(State(shop): State<Shop>, request: Result<Json<SetFault>, JsonRejection>) -> ApiResult<Vec<String>> {
    let spec: FaultSpec =
        body(request)?.spec.parse().map_err(|e: crate::InvalidFaultSpec| ApiError::bad_request(e.to_string()))?;
    // Only what this process runs: a switch for a service hosted elsewhere would never fire here.
    spec.check_target(&shop.activity_types()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::warn!(%spec, "fault switch set through the admin API");
    shop.faults().set(spec);
    Ok(active_faults(&shop))
}

#[derive(Debug, Deserialize)]
struct FaultTarget {
    target: Option<String>,
}

async fn clear_faults(
    State(shop): State<Shop>,
    query: Result<Query<FaultTarget>, QueryRejection>,
) -> ApiResult<Vec<String>> {
    let Query(FaultTarget { target }) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    shop.faults().clear(target.as_deref());
    Ok(active_faults(&shop))
}

#[derive(Debug, Deserialize)]
struct CustomerFilter {
    customer: Option<String>,
}

async fn notifications(
    State(shop): State<Shop>,
    query: Result<Query<CustomerFilter>, QueryRejection>,
) -> ApiResult<Vec<shop::notifications::Notification>> {
    let notifications = hosted(shop.notifications(), "notifications")?;
    let Query(CustomerFilter { customer }) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    Ok(Json(match customer {
        Some(customer) => notifications.feed(&customer)?,
        None => notifications.all()?,
    }))
}

async fn invariants(State(shop): State<Shop>) -> ApiResult<serde_json::Value> {
    let violations = shop.check_invariants()?;
    Ok(Json(json!({ "ok": violations.is_empty(), "violations": violations })))
}

async fn reconciliation(State(shop): State<Shop>) -> ApiResult<shop::Reconciliation> {
    match shop.reconciliation()? {
        Some(report) => Ok(Json(report)),
        None => Err(ApiError::not_found(
            "ServiceNotHosted",
            "reconciliation needs the payments and orders services hosted by this process",
        )),
    }
}
