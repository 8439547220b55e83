//! The reference shop: seven services, each with its own sled database under
//! `<data_dir>/<service>/`, its own idempotency records, and its activities
//! run through the process's [`Faults`].
//!
//! | service | activities |
//! |---|---|
//! | `catalog` | `catalog.price_snapshot` |
//! | `coupons` | `coupons.validate` |
//! | `inventory` | `inventory.reserve`, `inventory.release`, `inventory.commit`; jobs: `inventory.check_invariants`, `inventory.release_expired` |
//! | `payments` | `payments.capture`, `payments.refund`; jobs: `payments.check_invariants`, `payments.captures` |
//! | `orders` | `orders.create`, `orders.mark_shipped`, `orders.record_refund`; jobs: `orders.reconcile_payments` |
//! | `shipping` | `shipping.create_shipment` |
//! | `notifications` | `notifications.send` |
//!
//! Every mutating activity applies its effect at most once per idempotency
//! key, in the same atomic batch as the record of its result, and flushes
//! before it answers; a repeated call gets the first call's result. The key
//! of each activity is the domain id the checkout and refund sagas pass as the
//! task's key (docs/contract.md, Saga semantics): `reservation_id`, `payment_intent_id`,
//! `refund_id`, `client_request_id`, `order_id`. Keying the effect on the
//! domain id rather than on whatever key a task carries means that a
//! reservation id is reserved once, whoever asks. Notifications have no
//! domain id and use the task's key.

pub mod audit;
pub mod catalog;
pub mod coupons;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod shipping;
pub mod store;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sagaflow_worker::{ActivityContext, ActivityError, WorkerBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use catalog::Catalog;
pub use coupons::Coupons;
pub use inventory::Inventory;
pub use notifications::Notifications;
pub use orders::Orders;
pub use payments::Payments;
pub use shipping::Shipping;

use crate::Faults;

/// Every service a shop process can host, in the order they are opened.
pub const SERVICES: &[&str] = &["catalog", "coupons", "inventory", "payments", "orders", "shipping", "notifications"];

/// Most lines in one request: a bound on the work and the batch one call makes.
pub const MAX_LINES: usize = 100;
/// Most units of one sku in one line.
pub const MAX_QUANTITY: u32 = 10_000;
/// Largest amount of money one call handles, in cents (ten million units).
/// Keeps every sum of amounts far from overflowing.
pub const MAX_AMOUNT_CENTS: u64 = 1_000_000_000;

/// How a failure should be treated, by a saga (retry or not) and by the admin
/// API (which HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or out of bounds: 400, not retryable.
    Invalid,
    /// The thing named does not exist: 404, not retryable.
    NotFound,
    /// A business rule says no (out of stock, declined, over-refund): 409, not
    /// retryable. Nothing was applied.
    Rejected,
    /// The request contradicts an earlier one (a reused key, an illegal state
    /// transition): 409, not retryable.
    Conflict,
    /// Storage is failing; another attempt may succeed: 503, retryable.
    Unavailable,
    /// A stored record is broken: 500, not retryable; someone must look.
    Internal,
}

/// What every service's error tells its callers.
pub trait ServiceError: std::error::Error {
    /// The machine-readable type a saga's retry policy matches on, such as
    /// `OutOfStock`. Stable: renaming one breaks saga definitions.
    fn error_type(&self) -> &'static str;
    fn kind(&self) -> ErrorKind;
}

/// The activity failure of a service error: retryable only when the storage
/// failed, since every other kind would fail the same way next time.
pub(crate) fn activity_error(error: &impl ServiceError) -> ActivityError {
    if error.kind() == ErrorKind::Unavailable {
        ActivityError::retryable(error.error_type(), error.to_string())
    } else {
        ActivityError::non_retryable(error.error_type(), error.to_string())
    }
}

/// Lets a service's handlers return its own `Error` where the SDK expects an
/// `ActivityError` (the orphan rule rules out one blanket impl).
macro_rules! into_activity_error {
    ($error:ty) => {
        impl From<$error> for sagaflow_worker::ActivityError {
            fn from(error: $error) -> Self {
                $crate::shop::activity_error(&error)
            }
        }
    };
}
pub(crate) use into_activity_error;

/// A service error's [`ServiceError`] impl from one table: each variant's
/// error type (the name a workflow's retry policy sees) and kind side by
/// side, and the variants that wrap another service's error and answer as
/// it does. Also makes it an `ActivityError` ([`into_activity_error`]).
macro_rules! service_error {
    ($error:ty {
        $($variant:pat => $name:literal, $kind:ident;)*
        $(@wraps $($inner:path),+;)?
    }) => {
        impl $crate::shop::ServiceError for $error {
            fn error_type(&self) -> &'static str {
                match self {
                    $($variant => $name,)*
                    $($($inner(e) => e.error_type(),)+)?
                }
            }

            fn kind(&self) -> $crate::shop::ErrorKind {
                match self {
                    $($variant => $crate::shop::ErrorKind::$kind,)*
                    $($($inner(e) => e.kind(),)+)?
                }
            }
        }

        $crate::shop::into_activity_error!($error);
    };
}
pub(crate) use service_error;

/// `From<LineError>` for a service whose error has `InvalidQuantity` and
/// `InvalidInput` variants: a bad quantity keeps its own error type.
macro_rules! from_line_error {
    ($error:ty) => {
        impl From<$crate::shop::LineError> for $error {
            fn from(error: $crate::shop::LineError) -> Self {
                match error {
                    $crate::shop::LineError::Quantity { .. } => Self::InvalidQuantity(error),
                    other => Self::InvalidInput(other.to_string()),
                }
            }
        }
    };
}
pub(crate) use from_line_error;

/// The errors of a service that fails only on bad input or its store
/// (shipping, notifications).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("bad request: {0}")]
    InvalidInput(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

service_error!(InputError {
    Self::InvalidInput(_) => "InvalidInput", Invalid;
    @wraps Self::Store;
});

/// `{sku, quantity}`: a line of a checkout, a price request or a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: u32,
}

/// A broken invariant, as `/invariants` and the `check-invariants` job show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// `stock_conservation`, `reservation_holds`, `capture_at_most_once`,
    /// `capture_matches_ledger`, `refunds_within_capture` or
    /// `refunds_match_ledger`.
    pub invariant: String,
    /// The sku or payment intent concerned.
    pub subject: String,
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(invariant: &str, subject: &str, detail: String) -> Self {
        Self { invariant: invariant.to_owned(), subject: subject.to_owned(), detail }
    }
}

/// How a shop process is set up.
#[derive(Debug, Clone)]
pub struct ShopOptions {
    /// The services to open, by name (see [`SERVICES`]). Default: all.
    /// Opening `catalog` also opens `coupons`' database, since prices need the
    /// coupon rules; its activities are registered only if it is listed.
    pub services: Vec<String>,
    /// How long a reservation holds stock before the inventory service
    /// releases it on its own (default 15 minutes).
    pub reservation_ttl: Duration,
    /// How often the inventory service looks for expired reservations
    /// (default 1 second).
    pub expiry_sweep_interval: Duration,
    /// Units of each demo sku stocked on the first open (default 100).
    pub initial_stock: u64,
}

impl Default for ShopOptions {
    fn default() -> Self {
        Self {
            services: SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            reservation_ttl: Duration::from_secs(15 * 60),
            expiry_sweep_interval: Duration::from_secs(1),
            initial_stock: 100,
        }
    }
}

/// Why a shop could not open.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown service {0:?}; known services: {known}", known = SERVICES.join(", "))]
    UnknownService(String),
    #[error("no service to open")]
    NoServices,
    #[error("cannot open the {service} service at {path}: {source}")]
    Open { service: &'static str, path: PathBuf, source: store::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The services of one process. Cheap to clone; clones share the services.
#[derive(Debug, Clone)]
pub struct Shop {
    data_dir: PathBuf,
    hosted: Vec<&'static str>,
    faults: Faults,
    catalog: Option<Catalog>,
    coupons: Option<Coupons>,
    inventory: Option<Inventory>,
    payments: Option<Payments>,
    orders: Option<Orders>,
    shipping: Option<Shipping>,
    notifications: Option<Notifications>,
}

impl Shop {
    /// Opens the services named in `options` under `data_dir`, seeding the
    /// demo catalog, coupons and stock the first time.
    ///
    /// Call it inside a tokio runtime to have expired reservations released
    /// in the background; outside one, only [`Inventory::release_expired`]
    /// releases them.
    ///
    /// # Errors
    /// An unknown service name, or a database that cannot be opened (another
    /// process holding it, say: sled locks its directory).
    pub fn open(data_dir: impl AsRef<Path>, options: ShopOptions, faults: Faults) -> Result<Self> {
        let data_dir = data_dir.as_ref().to_owned();
        let mut hosted = Vec::new();
        for name in &options.services {
            let known =
                SERVICES.iter().find(|s| **s == name.trim()).ok_or_else(|| Error::UnknownService(name.clone()))?;
            if !hosted.contains(known) {
                hosted.push(*known);
            }
        }
        if hosted.is_empty() {
            return Err(Error::NoServices);
        }
        // Keep the canonical order, so that registration and listings do not
        // depend on how the operator spelled the list.
        hosted.sort_by_key(|s| SERVICES.iter().position(|k| k == s));
        let wants = |service: &str| hosted.contains(&service);
        let dir = |service: &'static str| data_dir.join(service);
        let opened = |service: &'static str| {
            let path = dir(service);
            move |source: store::Error| Error::Open { service, path, source }
        };

        let coupons = if wants("coupons") || wants("catalog") {
            Some(Coupons::open(&dir("coupons")).map_err(opened("coupons"))?)
        } else {
            None
        };
        let catalog = match (&coupons, wants("catalog")) {
            (Some(coupons), true) => Some(Catalog::open(&dir("catalog"), coupons.clone()).map_err(opened("catalog"))?),
            _ => None,
        };
        let inventory = if wants("inventory") {
            let settings = inventory::Settings {
                reservation_ttl: options.reservation_ttl,
                sweep_interval: options.expiry_sweep_interval,
                initial_stock: options.initial_stock,
            };
            Some(Inventory::open(&dir("inventory"), settings).map_err(opened("inventory"))?)
        } else {
            None
        };
        let payments =
            if wants("payments") { Some(Payments::open(&dir("payments")).map_err(opened("payments"))?) } else { None };
        let orders = if wants("orders") { Some(Orders::open(&dir("orders")).map_err(opened("orders"))?) } else { None };
        let shipping =
            if wants("shipping") { Some(Shipping::open(&dir("shipping")).map_err(opened("shipping"))?) } else { None };
        let notifications = if wants("notifications") {
            Some(Notifications::open(&dir("notifications")).map_err(opened("notifications"))?)
        } else {
            None
        };
        tracing::info!(data_dir = %data_dir.display(), services = ?hosted, "shop opened");
        Ok(Self { data_dir, hosted, faults, catalog, coupons, inventory, payments, orders, shipping, notifications })
    }

    /// The services this process hosts, in [`SERVICES`] order.
    pub fn services(&self) -> &[&'static str] {
        &self.hosted
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_ref()
    }

    /// Open when `coupons` or `catalog` is hosted.
    pub fn coupons(&self) -> Option<&Coupons> {
        self.coupons.as_ref()
    }

    pub fn inventory(&self) -> Option<&Inventory> {
        self.inventory.as_ref()
    }

    pub fn payments(&self) -> Option<&Payments> {
        self.payments.as_ref()
    }

    pub fn orders(&self) -> Option<&Orders> {
        self.orders.as_ref()
    }

    pub fn shipping(&self) -> Option<&Shipping> {
        self.shipping.as_ref()
    }

    pub fn notifications(&self) -> Option<&Notifications> {
        self.notifications.as_ref()
    }

    /// Every activity type of the hosted services.
    pub fn activity_types(&self) -> Vec<&'static str> {
        self.hosted.iter().flat_map(|service| activities_of(service).iter().copied()).collect()
    }

    /// Registers the activities of every hosted service on `builder`.
    pub fn register(&self, mut builder: WorkerBuilder) -> WorkerBuilder {
        for service in &self.hosted {
            builder = match *service {
                "catalog" => catalog::register(builder, self),
                "coupons" => coupons::register(builder, self),
                "inventory" => inventory::register(builder, self),
                "payments" => payments::register(builder, self),
                "orders" => orders::register(builder, self),
                "shipping" => shipping::register(builder, self),
                "notifications" => notifications::register(builder, self),
                _ => builder,
            };
        }
        builder
    }

    /// Runs one activity exactly as a worker does (the fault switches
    /// included): the registered handlers call this, and so can tests and
    /// tools.
    ///
    /// # Errors
    /// The activity's failure; a retryable `UnknownActivityType` for an
    /// activity whose service this process does not host.
    pub async fn call(
        &self,
        activity_type: &str,
        idempotency_key: &str,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, ActivityError> {
        let unknown = || {
            ActivityError::retryable(
                ActivityError::UNKNOWN_ACTIVITY,
                format!("{activity_type} is not run by this shop process (it hosts {})", self.hosted.join(", ")),
            )
        };
        let service = activity_type.split_once('.').map_or("", |(service, _)| service);
        if !self.hosted.contains(&service) || !activities_of(service).contains(&activity_type) {
            return Err(unknown());
        }
        // The hosted check above makes a missing service unreachable; it
        // still answers, rather than panics, should the two ever disagree.
        macro_rules! hosted {
            ($service:expr, |$s:ident| $call:expr) => {
                match &$service {
                    Some($s) => $call.await,
                    None => Err(unknown()),
                }
            };
        }
        let effect = async {
            match service {
                "catalog" => hosted!(self.catalog, |s| s.dispatch(activity_type, input)),
                "coupons" => hosted!(self.coupons, |s| s.dispatch(activity_type, input)),
                "inventory" => hosted!(self.inventory, |s| s.dispatch(activity_type, input)),
                "payments" => hosted!(self.payments, |s| s.dispatch(activity_type, input)),
                "orders" => hosted!(self.orders, |s| s.dispatch(activity_type, input)),
                "shipping" => hosted!(self.shipping, |s| s.dispatch(activity_type, input)),
                "notifications" => hosted!(self.notifications, |s| s.dispatch(activity_type, idempotency_key, input)),
                _ => Err(unknown()),
            }
        };
        self.faults.guard(activity_type, effect).await
    }

    /// Every shop invariant the hosted services can check on their own: stock
    /// conservation and reservation holds (inventory), capture at most once
    /// and refunds within the capture (payments).
    ///
    /// # Errors
    /// A storage failure while reading.
    pub fn check_invariants(&self) -> Result<Vec<Violation>, store::Error> {
        let mut violations = Vec::new();
        if let Some(inventory) = &self.inventory {
            violations.extend(inventory.check_invariants()?);
        }
        if let Some(payments) = &self.payments {
            violations.extend(payments.check_invariants()?);
        }
        Ok(violations)
    }

    /// Compares payments with orders: captures that have no order and were
    /// not refunded in full, and orders whose refunded total differs from
    /// their payment's. `None` unless this process hosts both services.
    ///
    /// A checkout between its capture and its order shows up here for a
    /// moment; a capture that stays here is what the
    /// `reconcile-payments-vs-orders` job looks for.
    ///
    /// # Errors
    /// A storage failure while reading.
    pub fn reconciliation(&self) -> Result<Option<Reconciliation>, store::Error> {
        let (Some(payments), Some(orders)) = (&self.payments, &self.orders) else { return Ok(None) };
        let intents = payments.intents()?;
        let orders = orders.orders()?;
        let mut report = Reconciliation::default();
        for intent in intents.iter().filter(|i| i.status == payments::IntentStatus::Captured) {
            let order = orders.iter().find(|o| o.payment_intent_id == intent.payment_intent_id);
            match order {
                None if intent.refunded_cents < intent.captured_cents => {
                    report.captures_without_order.push(UnmatchedCapture {
                        payment_intent_id: intent.payment_intent_id.clone(),
                        captured_cents: intent.captured_cents,
                        refunded_cents: intent.refunded_cents,
                        captured_at_ms: intent.captured_at_ms,
                    });
                }
                Some(order) if order.refunded_cents != intent.refunded_cents => {
                    report.refund_mismatches.push(RefundMismatch {
                        order_id: order.order_id.clone(),
                        payment_intent_id: intent.payment_intent_id.clone(),
                        order_refunded_cents: order.refunded_cents,
                        payment_refunded_cents: intent.refunded_cents,
                    });
                }
                _ => {}
            }
        }
        Ok(Some(report))
    }
}

/// What `/reconciliation` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub captures_without_order: Vec<UnmatchedCapture>,
    pub refund_mismatches: Vec<RefundMismatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmatchedCapture {
    pub payment_intent_id: String,
    pub captured_cents: u64,
    pub refunded_cents: u64,
    pub captured_at_ms: Option<u64>,
}

/// An order whose refunds the payments ledger does not agree with: a refund
/// that was made but not yet recorded on the order (docs/contract.md, Failure scenarios, scenario 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundMismatch {
    pub order_id: String,
    pub payment_intent_id: String,
    pub order_refunded_cents: u64,
    pub payment_refunded_cents: u64,
}

/// The activity types of one service.
pub fn activities_of(service: &str) -> &'static [&'static str] {
    match service {
        "catalog" => catalog::ACTIVITIES,
        "coupons" => coupons::ACTIVITIES,
        "inventory" => inventory::ACTIVITIES,
        "payments" => payments::ACTIVITIES,
        "orders" => orders::ACTIVITIES,
        "shipping" => shipping::ACTIVITIES,
        "notifications" => notifications::ACTIVITIES,
        _ => &[],
    }
}

/// Registers `activities` on `builder`, each handled by [`Shop::call`].
pub(crate) fn register_activities(
    mut builder: WorkerBuilder,
    shop: &Shop,
    activities: &'static [&'static str],
) -> WorkerBuilder {
    for activity_type in activities {
        let shop = shop.clone();
        builder = builder.activity(*activity_type, move |ctx: ActivityContext, input: serde_json::Value| {
            let shop = shop.clone();
            async move { shop.call(activity_type, ctx.idempotency_key(), input).await }
        });
    }
    builder
}

/// Decodes an activity's input into its request type; malformed input fails
/// the attempt for good, as the worker SDK does for typed handlers.
pub(crate) fn parse<T: DeserializeOwned>(input: serde_json::Value) -> Result<T, ActivityError> {
    serde_json::from_value(input).map_err(|e| ActivityError::non_retryable(ActivityError::INVALID_INPUT, e.to_string()))
}

/// Runs a service method and turns its result into an activity outcome.
pub(crate) async fn answer<R, E, F>(operation: F) -> Result<serde_json::Value, ActivityError>
where
    R: Serialize,
    E: ServiceError,
    F: Future<Output = Result<R, E>>,
{
    let result = operation.await.map_err(|e| activity_error(&e))?;
    serde_json::to_value(result).map_err(|e| ActivityError::non_retryable(ActivityError::INVALID_OUTPUT, e.to_string()))
}

/// Checks a request's lines: at least one, at most [`MAX_LINES`], each with a
/// valid sku and a quantity in `1..=MAX_QUANTITY`.
pub(crate) fn check_lines(items: &[LineItem]) -> std::result::Result<(), LineError> {
    if items.is_empty() {
        return Err(LineError::Empty);
    }
    if items.len() > MAX_LINES {
        return Err(LineError::TooMany(items.len()));
    }
    for item in items {
        store::check_id("sku", &item.sku).map_err(LineError::BadSku)?;
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(LineError::Quantity { sku: item.sku.clone(), quantity: item.quantity });
        }
    }
    Ok(())
}

/// Why a request's lines are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no items")]
    Empty,
    #[error("{0} lines; at most {MAX_LINES}")]
    TooMany(usize),
    #[error("{0}")]
    BadSku(String),
    #[error("quantity {quantity} of {sku} is not in 1..={MAX_QUANTITY}")]
    Quantity { sku: String, quantity: u32 },
}

/// The lines with the same sku added up, in sku order (the order stock is
/// checked and taken in).
pub(crate) fn merge_lines(items: &[LineItem]) -> Vec<LineItem> {
    let mut merged = std::collections::BTreeMap::<&str, u32>::new();
    for item in items {
        let quantity = merged.entry(&item.sku).or_default();
        *quantity = quantity.saturating_add(item.quantity);
    }
    merged.into_iter().map(|(sku, quantity)| LineItem { sku: sku.to_owned(), quantity }).collect()
}
