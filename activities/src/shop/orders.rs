//! Orders: what the customer bought, and where it stands.
//!
//! An order is born `PAID` (the checkout creates it only after the capture)
//! and moves by a pure state machine, [`Order::apply`]:
//!
//! | from | shipped | refund (part) | refund (rest) |
//! |---|---|---|---|
//! | `PAID` | `SHIPPED` | `PARTIALLY_REFUNDED` | `REFUNDED` |
//! | `SHIPPED` | (same shipment: no change) | `PARTIALLY_REFUNDED` | `REFUNDED` |
//! | `PARTIALLY_REFUNDED` | stays, shipment recorded | `PARTIALLY_REFUNDED` | `REFUNDED` |
//! | `REFUNDED` | illegal | illegal | illegal |
//!
//! Shipping under another shipment id, refunding more than the total, and
//! anything on a fully refunded order are refused with a non-retryable error:
//! an order never lies (docs/contract.md, Principles).
//!
//! The order id is derived from the idempotency key (`client_request_id`),
//! so the same request always names the same order, even across a lost
//! reply. Records: `order/<order id>` → [`Order`]; `by_intent/<payment intent id>` → its
//! order ids; idempotency records.

use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::audit::{self, Findings, ReconcileRequest};
use super::store::{self, ServiceDb, check_id, key, now_ms, prefix, short_hash};
use super::{MAX_AMOUNT_CENTS, MAX_LINES, Shop};

pub const CREATE: &str = "orders.create";
pub const MARK_SHIPPED: &str = "orders.mark_shipped";
pub const RECORD_REFUND: &str = "orders.record_refund";
/// For the reconciliation jobs: compares the orders with a snapshot of the
/// captures ([`ReconcileRequest`]) and, when asked, records missing refunds.
pub const RECONCILE_PAYMENTS: &str = "orders.reconcile_payments";
pub const ACTIVITIES: &[&str] = &[CREATE, MARK_SHIPPED, RECORD_REFUND, RECONCILE_PAYMENTS];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    InvalidInput(String),
    #[error("amount {0} cents is not in 1..={MAX_AMOUNT_CENTS}")]
    InvalidAmount(u64),
    #[error("unknown order {0:?}")]
    UnknownOrder(String),
    #[error("order {order_id}: cannot {action} an order that is {from:?}: {reason}")]
    IllegalTransition { order_id: String, from: OrderStatus, action: &'static str, reason: String },
    #[error("order {order_id}: a refund of {requested} cents exceeds what is left ({refundable} cents)")]
    RefundExceedsTotal { order_id: String, requested: u64, refundable: u64 },
    /// Two request ids hash to one order id: astronomically unlikely, and
    /// refused rather than merged into someone else's order.
    #[error("order id {order_id} already belongs to another request")]
    OrderIdCollision { order_id: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

super::service_error!(Error {
    Self::InvalidInput(_) => "InvalidInput", Invalid;
    Self::InvalidAmount(_) => "InvalidAmount", Invalid;
    Self::UnknownOrder(_) => "UnknownOrder", NotFound;
    Self::IllegalTransition { .. } => "IllegalTransition", Conflict;
    Self::RefundExceedsTotal { .. } => "RefundExceedsTotal", Rejected;
    Self::OrderIdCollision { .. } => "OrderIdCollision", Conflict;
    @wraps Self::Store;
});

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The checkout statuses an order can have (docs/contract.md, gRPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Paid,
    Shipped,
    PartiallyRefunded,
    Refunded,
}

/// A priced line, as the price snapshot gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
    pub line_total_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRefund {
    pub refund_id: String,
    pub amount_cents: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub client_request_id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: u64,
    pub payment_intent_id: String,
    pub status: OrderStatus,
    pub shipment_id: Option<String>,
    pub refunded_cents: u64,
    pub refunds: Vec<OrderRefund>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What happens to an order after it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Shipped { shipment_id: String },
    Refunded { refund_id: String, amount_cents: u64 },
}

impl Order {
    /// What the reconciliation compares ([`audit::compare`]).
    pub fn facts(&self) -> audit::OrderFacts {
        audit::OrderFacts {
            order_id: self.order_id.clone(),
            payment_intent_id: self.payment_intent_id.clone(),
            created_at_ms: self.created_at_ms,
            refunded_cents: self.refunded_cents,
            refund_ids: self.refunds.iter().map(|r| r.refund_id.clone()).collect(),
        }
    }

    /// The order after `event`, or why `event` is illegal now. Pure: the
    /// caller stores the result.
    ///
    /// # Errors
    /// `IllegalTransition`, `RefundExceedsTotal`, `InvalidAmount`.
    pub fn apply(&self, event: &OrderEvent, at_ms: u64) -> Result<Order> {
        let illegal = |action: &'static str, reason: &str| Error::IllegalTransition {
            order_id: self.order_id.clone(),
            from: self.status,
            action,
            reason: reason.to_owned(),
        };
        let mut next = self.clone();
        match event {
            OrderEvent::Shipped { shipment_id } => {
                if let Some(existing) = &self.shipment_id {
                    if existing == shipment_id {
                        return Ok(next);
                    }
                    return Err(illegal("ship", &format!("already shipped as {existing}")));
                }
                next.status = match self.status {
                    OrderStatus::Paid => OrderStatus::Shipped,
                    OrderStatus::PartiallyRefunded => OrderStatus::PartiallyRefunded,
                    OrderStatus::Refunded => return Err(illegal("ship", "it was refunded in full")),
                    // A shipped order has a shipment id, handled above.
                    OrderStatus::Shipped => return Err(illegal("ship", "it has no shipment id")),
                };
                next.shipment_id = Some(shipment_id.clone());
            }
            OrderEvent::Refunded { refund_id, amount_cents } => {
                if self.refunds.iter().any(|r| &r.refund_id == refund_id) {
                    return Ok(next);
                }
                if *amount_cents == 0 || *amount_cents > MAX_AMOUNT_CENTS {
                    return Err(Error::InvalidAmount(*amount_cents));
                }
                if self.status == OrderStatus::Refunded {
                    return Err(illegal("refund", "it was refunded in full"));
                }
                let refundable = self.total_cents.saturating_sub(self.refunded_cents);
                if *amount_cents > refundable {
                    return Err(Error::RefundExceedsTotal {
                        order_id: self.order_id.clone(),
                        requested: *amount_cents,
                        refundable,
                    });
                }
                next.refunded_cents = self.refunded_cents + amount_cents;
                next.refunds.push(OrderRefund { refund_id: refund_id.clone(), amount_cents: *amount_cents, at_ms });
                next.status = if next.refunded_cents == next.total_cents {
                    OrderStatus::Refunded
                } else {
                    OrderStatus::PartiallyRefunded
                };
            }
        }
        next.updated_at_ms = at_ms;
        Ok(next)
    }
}

/// `orders.create` input; the key is `client_request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrder {
    pub client_request_id: String,
    pub checkout_id: String,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: u64,
    pub payment_intent_id: String,
}

/// `orders.create` result: always the status at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: String,
    pub status: OrderStatus,
}

/// `orders.mark_shipped` input; the key is `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkShipped {
    pub order_id: String,
    pub shipment_id: String,
}

/// `orders.mark_shipped` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: String,
    pub status: OrderStatus,
}

/// `orders.record_refund` input; the key is `refund_id` within `order_id`. An empty
/// `order_id` is a refund of a checkout that never got an order (cancelled with money kept, found
/// by the invariants job): there is nothing to record it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRefund {
    pub order_id: String,
    pub refund_id: String,
    pub amount_cents: u64,
}

/// `orders.record_refund` result; `status` is absent when there is no order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecorded {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    pub refunded_cents: u64,
}

/// The order id of a request: `ord-` and a digest of `client_request_id`.
pub fn order_id_for(client_request_id: &str) -> String {
    format!("ord-{}", short_hash(client_request_id))
}

fn order_key(order_id: &str) -> Vec<u8> {
    key("order", order_id)
}

/// `by_intent/<payment intent id>` → the ids of its orders (one, unless a
/// bug made two, which the reconciliation must then see).
const BY_INTENT: &str = "by_intent";
const INTENT_INDEX_BUILT: &[u8] = b"meta/by_intent_index";

fn index_order(tx: &mut store::Tx<'_>, payment_intent_id: &str, order_id: &str) -> store::Result<()> {
    let index_key = key(BY_INTENT, payment_intent_id);
    let mut order_ids: Vec<String> = tx.get(&index_key)?.unwrap_or_default();
    if !order_ids.iter().any(|id| id == order_id) {
        order_ids.push(order_id.to_owned());
        tx.put(&index_key, &order_ids)?;
    }
    Ok(())
}

/// The orders service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Orders {
    db: Arc<ServiceDb>,
}

impl Orders {
    /// Opens the orders in `dir`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> store::Result<Self> {
        let orders = Self { db: Arc::new(ServiceDb::open(dir)?) };
        orders.index_by_intent()?;
        Ok(orders)
    }

    /// Builds the index of the orders by payment intent the first time a
    /// store written before it is opened: one pass, one batch, then a
    /// marker, so that later opens cost nothing. `create` keeps it since.
    fn index_by_intent(&self) -> store::Result<()> {
        if self.db.get::<bool>(INTENT_INDEX_BUILT)?.is_some() {
            return Ok(());
        }
        let orders = self.orders()?;
        self.db.apply(|tx| {
            for order in &orders {
                index_order(tx, &order.payment_intent_id, &order.order_id)?;
            }
            tx.put(INTENT_INDEX_BUILT, &true)
        })?;
        self.db.flush_blocking()?;
        tracing::info!(orders = orders.len(), "indexed the orders by payment intent");
        Ok(())
    }

    /// The orders of the payment intents whose ids sort after `after` and up
    /// to `until` (`None`: no bound), read through the index: one page of
    /// the reconciliation reads its own orders, not every order.
    ///
    /// # Errors
    /// A storage failure.
    pub fn orders_of_intents(&self, after: Option<&str>, until: Option<&str>) -> store::Result<Vec<Order>> {
        let mut orders = Vec::new();
        for item in self.db.range::<Vec<String>>(BY_INTENT, after, until) {
            let (_, order_ids) = item?;
            for order_id in order_ids {
                orders.extend(self.order(&order_id)?);
            }
        }
        Ok(orders)
    }

    /// # Errors
    /// A storage failure.
    pub fn order(&self, order_id: &str) -> store::Result<Option<Order>> {
        self.db.get(&order_key(order_id))
    }

    /// Every order, by id.
    ///
    /// # Errors
    /// A storage failure.
    pub fn orders(&self) -> store::Result<Vec<Order>> {
        self.db.scan(&prefix("order"))
    }

    /// Creates the order of `request`, `PAID`, once per `client_request_id`.
    ///
    /// # Errors
    /// Not retryable: `InvalidInput`, `IdempotencyKeyReused` (the request id
    /// was used for another order), `OrderIdCollision`.
    pub async fn create(&self, request: CreateOrder) -> Result<OrderCreated> {
        for (field, value) in [
            ("client_request_id", &request.client_request_id),
            ("checkout_id", &request.checkout_id),
            ("customer_id", &request.customer_id),
            ("payment_intent_id", &request.payment_intent_id),
        ] {
            check_id(field, value).map_err(Error::InvalidInput)?;
        }
        if request.lines.is_empty() || request.lines.len() > MAX_LINES {
            return Err(Error::InvalidInput(format!("an order has 1 to {MAX_LINES} lines")));
        }
        if request.total_cents > MAX_AMOUNT_CENTS {
            return Err(Error::InvalidAmount(request.total_cents));
        }
        let order_id = order_id_for(&request.client_request_id);
        self.db
            .idempotent(CREATE, &request.client_request_id, &request, |tx| {
                if tx.get::<Order>(&order_key(&order_id))?.is_some() {
                    return Err(Error::OrderIdCollision { order_id: order_id.clone() });
                }
                let now = now_ms();
                let order = Order {
                    order_id: order_id.clone(),
                    client_request_id: request.client_request_id.clone(),
                    checkout_id: request.checkout_id.clone(),
                    customer_id: request.customer_id.clone(),
                    lines: request.lines.clone(),
                    total_cents: request.total_cents,
                    payment_intent_id: request.payment_intent_id.clone(),
                    status: OrderStatus::Paid,
                    shipment_id: None,
                    refunded_cents: 0,
                    refunds: Vec::new(),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                tx.put(&order_key(&order_id), &order)?;
                index_order(tx, &order.payment_intent_id, &order_id)?;
                tracing::info!(%order_id, checkout_id = %request.checkout_id, "order created");
                Ok(OrderCreated { order_id: order_id.clone(), status: OrderStatus::Paid })
            })
            .await
    }

    /// Records the shipment of an order, once per order.
    ///
    /// # Errors
    /// Not retryable: `UnknownOrder`, `IllegalTransition`, `InvalidInput`.
    pub async fn mark_shipped(&self, request: MarkShipped) -> Result<OrderShipped> {
        check_id("order_id", &request.order_id).map_err(Error::InvalidInput)?;
        check_id("shipment_id", &request.shipment_id).map_err(Error::InvalidInput)?;
        let event = OrderEvent::Shipped { shipment_id: request.shipment_id.clone() };
        self.db
            .idempotent(MARK_SHIPPED, &request.order_id, &request, |tx| {
                let order = self.transition(tx, &request.order_id, &event)?;
                Ok(OrderShipped { order_id: order.order_id, status: order.status })
            })
            .await
    }

    /// Records a refund on an order, once per `refund_id` of that order.
    ///
    /// # Errors
    /// Not retryable: `UnknownOrder`, `IllegalTransition`,
    /// `RefundExceedsTotal`, `InvalidAmount`, `InvalidInput`.
    pub async fn record_refund(&self, request: RecordRefund) -> Result<RefundRecorded> {
        check_id("refund_id", &request.refund_id).map_err(Error::InvalidInput)?;
        if request.order_id.is_empty() {
            return Ok(RefundRecorded { order_id: String::new(), status: None, refunded_cents: request.amount_cents });
        }
        check_id("order_id", &request.order_id).map_err(Error::InvalidInput)?;
        // A refund id is unique within its order, not across orders (see
        // `Payments::refund`); calls made before the scoping were recorded
        // under the bare id, and a retry of one is answered from there.
        let scoped = format!("{}/{}", request.order_id, request.refund_id);
        check_id("refund_id with its order_id", &scoped).map_err(Error::InvalidInput)?;
        if let Some(earlier) = self.db.replayed(RECORD_REFUND, &request.refund_id, &request).await? {
            return Ok(earlier);
        }
        let event = OrderEvent::Refunded { refund_id: request.refund_id.clone(), amount_cents: request.amount_cents };
        self.db
            .idempotent(RECORD_REFUND, &scoped, &request, |tx| {
                let order = self.transition(tx, &request.order_id, &event)?;
                Ok(RefundRecorded {
                    order_id: order.order_id,
                    status: Some(order.status),
                    refunded_cents: order.refunded_cents,
                })
            })
            .await
    }

    /// Compares the orders with the captures (see [`audit::compare`]) and
    /// applies the safe repairs: each missing refund is recorded through
    /// [`Orders::record_refund`], keyed by its refund id, so that a repair and
    /// the refund saga's own attempt are one effect.
    ///
    /// # Errors
    /// A storage failure; the repairs applied before it stay applied, and a
    /// retry finds them done.
    pub async fn reconcile_payments(&self, request: ReconcileRequest) -> Result<Findings> {
        // A page is compared with the orders of its own range of intents:
        // the pages' ranges cover every intent once, so their findings
        // together are those of the whole ledger.
        let captures = &request.captures;
        let orders = if captures.is_page() {
            self.orders_of_intents(captures.after.as_deref(), captures.next.as_deref())?
        } else {
            self.orders()?
        };
        let facts: Vec<audit::OrderFacts> = orders.iter().map(Order::facts).collect();
        let findings = audit::compare(&request, &facts);
        for repair in &findings.repairs {
            let recorded = RecordRefund {
                order_id: repair.order_id.clone(),
                refund_id: repair.refund_id.clone(),
                amount_cents: repair.amount_cents,
            };
            self.record_refund(recorded).await?;
            tracing::warn!(order_id = %repair.order_id, refund_id = %repair.refund_id, amount_cents = repair.amount_cents, "reconciliation recorded a refund the order lacked");
        }
        Ok(findings)
    }

    fn transition(&self, tx: &mut store::Tx<'_>, order_id: &str, event: &OrderEvent) -> Result<Order> {
        let order: Order = tx.get(&order_key(order_id))?.ok_or_else(|| Error::UnknownOrder(order_id.to_owned()))?;
        let next = order.apply(event, now_ms())?;
        if next != order {
            tx.put(&order_key(order_id), &next)?;
            tracing::info!(order_id, from = ?order.status, to = ?next.status, "order updated");
        }
        Ok(next)
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        input: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ActivityError> {
        match activity_type {
            CREATE => super::answer(self.create(super::parse(input)?)).await,
            MARK_SHIPPED => super::answer(self.mark_shipped(super::parse(input)?)).await,
            RECORD_REFUND => super::answer(self.record_refund(super::parse(input)?)).await,
            RECONCILE_PAYMENTS => super::answer(self.reconcile_payments(super::parse(input)?)).await,
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Registers the orders activities, if `shop` hosts orders.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.orders().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::shop::ServiceError;

    fn order(status: OrderStatus, shipment: Option<&str>, refunded: u64) -> Order {
        Order {
            order_id: "ord-1".into(),
            client_request_id: "req-1".into(),
            checkout_id: "co-1".into(),
            customer_id: "cust-1".into(),
            lines: Vec::new(),
            total_cents: 1_000,
            payment_intent_id: "pi-1".into(),
            status,
            shipment_id: shipment.map(str::to_owned),
            refunded_cents: refunded,
            refunds: if refunded > 0 {
                vec![OrderRefund { refund_id: "rf-0".into(), amount_cents: refunded, at_ms: 0 }]
            } else {
                Vec::new()
            },
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn ship(id: &str) -> OrderEvent {
        OrderEvent::Shipped { shipment_id: id.into() }
    }

    fn refund(id: &str, amount_cents: u64) -> OrderEvent {
        OrderEvent::Refunded { refund_id: id.into(), amount_cents }
    }

    /// Every (state, event) pair of the table in the module docs.
    #[test]
    fn the_state_machine_follows_its_table() {
        use OrderStatus::*;
        let cases: Vec<(Order, OrderEvent, std::result::Result<OrderStatus, &str>)> = vec![
            (order(Paid, None, 0), ship("s-1"), Ok(Shipped)),
            (order(Paid, None, 0), refund("rf-1", 400), Ok(PartiallyRefunded)),
            (order(Paid, None, 0), refund("rf-1", 1_000), Ok(Refunded)),
            (order(Paid, None, 0), refund("rf-1", 1_001), Err("RefundExceedsTotal")),
            (order(Paid, None, 0), refund("rf-1", 0), Err("InvalidAmount")),
            (order(Shipped, Some("s-1"), 0), ship("s-1"), Ok(Shipped)),
            (order(Shipped, Some("s-1"), 0), ship("s-2"), Err("IllegalTransition")),
            (order(Shipped, Some("s-1"), 0), refund("rf-1", 1), Ok(PartiallyRefunded)),
            (order(Shipped, Some("s-1"), 0), refund("rf-1", 1_000), Ok(Refunded)),
            (order(PartiallyRefunded, None, 400), ship("s-1"), Ok(PartiallyRefunded)),
            (order(PartiallyRefunded, None, 400), refund("rf-1", 600), Ok(Refunded)),
            (order(PartiallyRefunded, None, 400), refund("rf-1", 601), Err("RefundExceedsTotal")),
            (order(PartiallyRefunded, None, 400), refund("rf-0", 400), Ok(PartiallyRefunded)),
            (order(Refunded, None, 1_000), ship("s-1"), Err("IllegalTransition")),
            (order(Refunded, None, 1_000), refund("rf-1", 1), Err("IllegalTransition")),
            (order(Refunded, None, 1_000), refund("rf-0", 1_000), Ok(Refunded)),
        ];
        for (before, event, expected) in cases {
            let after = before.apply(&event, 7);
            match (&after, expected) {
                (Ok(after), Ok(status)) => assert_eq!(after.status, status, "{:?} + {event:?}", before.status),
                (Err(error), Err(error_type)) => {
                    assert_eq!(error.error_type(), error_type, "{:?} + {event:?}", before.status);
                }
                _ => panic!("{:?} + {event:?} gave {after:?}, expected {expected:?}", before.status),
            }
        }
    }

    #[test]
    fn a_refund_counts_once_per_refund_id_and_shipping_records_the_shipment() {
        let paid = order(OrderStatus::Paid, None, 0);
        let once = paid.apply(&refund("rf-1", 300), 1).unwrap();
        let twice = once.apply(&refund("rf-1", 300), 2).unwrap();
        assert_eq!(twice.refunded_cents, 300);
        assert_eq!(twice.refunds.len(), 1);
        let shipped = paid.apply(&ship("s-9"), 3).unwrap();
        assert_eq!(shipped.shipment_id.as_deref(), Some("s-9"));
        assert_eq!(shipped.updated_at_ms, 3);
    }

    #[test]
    fn order_ids_are_stable() {
        assert_eq!(order_id_for("req-1"), order_id_for("req-1"));
        assert_ne!(order_id_for("req-1"), order_id_for("req-2"));
        assert!(order_id_for("req-1").starts_with("ord-"));
    }
}
