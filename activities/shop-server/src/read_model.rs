//! A consumer's own store: the projection it serves, and the ids of the
//! events it has processed, written in one sled batch and flushed before the
//! message is acked. A redelivered event finds its id and changes nothing.
//!
//! Layout (one tree, one-byte prefixes, like the orchestrator's store):
//! `p` event id → processed · `w` workflow id → row (JSON) · `i` payment
//! intent → checkout id · `f` customer, time, event id → feed message (JSON)
//! · `s` → the count of processed events.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sagaflow_relay::{Error, Event, Outcome, Projector, Result};

/// The read models that ship with Sagaflow, one per consumer process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// Orders (any workflow), queryable by customer and status.
    Search,
    /// Per-customer messages about their checkouts.
    Notifications,
}

impl Projection {
    /// The durable consumer's name, and the folder of its store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Notifications => "notifications",
        }
    }
}

/// One row of the search read model: a checkout, or any workflow that emits
/// events (with the order fields it happens to carry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRow {
    /// The workflow id (a checkout's id for the shop).
    pub checkout_id: String,
    pub workflow_type: String,
    pub customer: Option<String>,
    /// A checkout status for the shop's events (`PAID`, `SHIPPED`, …),
    /// otherwise the last event type.
    pub status: String,
    pub last_event: String,
    /// `workflow_seq` of `last_event`: a late, older event never moves the status back.
    pub last_seq: u64,
    pub total_cents: Option<u64>,
    pub refunded_cents: u64,
    pub order_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub shipment_delayed: bool,
    pub updated_ms: i64,
    /// Distinct events projected into this row.
    pub events: u64,
}

/// One message of a customer's notification feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedMessage {
    pub event_id: String,
    pub customer: String,
    /// The event type it came from.
    pub kind: String,
    pub checkout_id: String,
    pub order_id: Option<String>,
    pub text: String,
    pub time_ms: i64,
}

/// `GET /orders` filters; empty means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OrderFilter {
    pub customer: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

const PROCESSED: u8 = b'p';
const ROW: u8 = b'w';
const INTENT: u8 = b'i';
const FEED: u8 = b'f';
const PROCESSED_COUNT: &[u8] = b"s";
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(prefix);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The customer is length-prefixed so that no customer's keys are a prefix
/// of another's; the time is big-endian so a scan returns the feed in order.
fn feed_prefix(customer: &str) -> Vec<u8> {
    let mut key = vec![FEED];
    key.extend_from_slice(&u32::try_from(customer.len()).unwrap_or(u32::MAX).to_be_bytes());
    key.extend_from_slice(customer.as_bytes());
    key
}

fn feed_key(customer: &str, time_ms: i64, event_id: &str) -> Vec<u8> {
    let mut key = feed_prefix(customer);
    key.extend_from_slice(&u64::try_from(time_ms).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// Read access for a projection; sled in production, a map in tests.
trait Lookup {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The error for a record this version cannot read.
    fn corrupt(&self, key: &[u8], reason: String) -> Error;
}

type Writes = Vec<(Vec<u8>, Vec<u8>)>;

fn read_json<T: for<'de> Deserialize<'de>>(lookup: &dyn Lookup, key: &[u8]) -> Result<Option<T>> {
    match lookup.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| lookup.corrupt(key, e.to_string())),
    }
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

fn text_at(data: &Value, field: &str) -> Option<String> {
    data.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn cents_at(data: &Value, fields: &[&str]) -> Option<u64> {
    fields.iter().find_map(|f| data.get(*f).and_then(Value::as_u64))
}

/// The shop's checkout status after `event_type`; `None` for an alert that
/// leaves the status alone (`ShipmentDelayed`: the order stays where it is).
fn checkout_status(event_type: &str) -> Option<&str> {
    Some(match event_type {
        "CheckoutStarted" => "PENDING",
        "InventoryReserved" => "RESERVED",
        "PaymentCaptured" => "PAID",
        "OrderCreated" => "ORDERED",
        "ShipmentCreated" | "CheckoutCompleted" => "SHIPPED",
        // CheckoutFailed only while nothing was charged (see `project_search`).
        "CheckoutCompensated" | "CheckoutFailed" => "CANCELLED",
        "ShipmentDelayed" => return None,
        other => other,
    })
}

impl OrderRow {
    fn status_now(&self) -> String {
        // A cancelled checkout stays CANCELLED when an operator refunds money
        // it kept, as GetCheckout shows it.
        if self.refunded_cents > 0 && self.last_event != "CheckoutCompensated" {
            let full = self.total_cents.is_some_and(|total| self.refunded_cents >= total);
            return if full { "REFUNDED" } else { "PARTIALLY_REFUNDED" }.into();
        }
        checkout_status(&self.last_event).unwrap_or(&self.last_event).to_owned()
    }
}

/// What a projection makes of one event, before anything is written.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Write(Writes),
    Ignore,
    Reject(String),
}

/// The checkout a refund belongs to: a refund is its own workflow, linked to
/// its checkout by the payment intent that both name.
fn refunded_checkout(lookup: &dyn Lookup, data: &Value) -> Result<Result<String, String>> {
    let Some(intent) = text_at(data, "payment_intent_id") else {
        return Ok(Err("RefundRecorded without a payment_intent_id".into()));
    };
    Ok(match lookup.get(&key(INTENT, &intent))? {
        Some(checkout_id) => Ok(String::from_utf8_lossy(&checkout_id).into_owned()),
        None => Err(format!("no checkout known for payment intent {intent}")),
    })
}

/// The search projection: merge the event's fields into its workflow's row.
fn project_search(lookup: &dyn Lookup, event: &Event, payload: &Value, data: &Value) -> Result<Change> {
    if event.event_type == "RefundRecorded" {
        let checkout_id = match refunded_checkout(lookup, data)? {
            Ok(id) => id,
            Err(reason) => return Ok(Change::Reject(reason)),
        };
        let Some(mut row) = read_json::<OrderRow>(lookup, &key(ROW, &checkout_id))? else {
            return Ok(Change::Reject(format!("checkout {checkout_id} is not projected yet")));
        };
        let refunded = cents_at(data, &["total_refunded_cents", "refunded_cents"]).unwrap_or(0);
        row.refunded_cents = row.refunded_cents.max(refunded);
        row.updated_ms = row.updated_ms.max(event.time_ms);
        row.events += 1;
        row.status = row.status_now();
        return Ok(Change::Write(vec![(key(ROW, &checkout_id), json_bytes(&row))]));
    }
    let mut writes = Writes::new();
    let mut row = read_json::<OrderRow>(lookup, &key(ROW, &event.workflow_id))?
        .unwrap_or_else(|| OrderRow { checkout_id: event.workflow_id.clone(), ..OrderRow::default() });
    if row.workflow_type.is_empty() {
        row.workflow_type = text_at(payload, "workflow_type").unwrap_or_default();
    }
    if row.customer.is_none() {
        row.customer = text_at(data, "customer_id");
    }
    if let Some(total) = cents_at(data, &["total_cents", "captured_cents"]) {
        row.total_cents = Some(total);
    }
    if let Some(order_id) = text_at(data, "order_id") {
        row.order_id = Some(order_id);
    }
    if let Some(intent) = text_at(data, "payment_intent_id") {
        writes.push((key(INTENT, &intent), event.workflow_id.as_bytes().to_vec()));
        row.payment_intent_id = Some(intent);
    }
    if event.event_type == "ShipmentDelayed" {
        row.shipment_delayed = true;
    } else if event.event_type == "CheckoutFailed" && !matches!(row.status.as_str(), "PENDING" | "RESERVED") {
        // Stopped after the charge (terminated by an operator): the money
        // is kept, so the order keeps the status its steps reached rather
        // than claim a cancellation. Orders never lie.
    } else if event.workflow_seq > row.last_seq {
        // Redeliveries can reorder a workflow's events; the status follows
        // the history's order, not the arrival order.
        row.last_event.clone_from(&event.event_type);
        row.last_seq = event.workflow_seq;
    }
    row.updated_ms = row.updated_ms.max(event.time_ms);
    row.events += 1;
    row.status = row.status_now();
    writes.push((key(ROW, &event.workflow_id), json_bytes(&row)));
    Ok(Change::Write(writes))
}

/// What the notifications consumer remembers of a checkout, to address
/// messages whose own event does not name the customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Recipient {
    customer: Option<String>,
    order_id: Option<String>,
}

/// The text a customer reads for `event`, if they are told about it at all.
fn message_text(event: &Event, data: &Value, order: &str) -> Option<String> {
    Some(match event.event_type.as_str() {
        "CheckoutCompleted" => format!("Your order {order} is confirmed and on its way."),
        "ShipmentDelayed" => format!("The shipment of order {order} is delayed; we keep trying and will tell you."),
        "CheckoutCompensated" => "Your checkout was cancelled; any hold on your items or payment is released.".into(),
        "RefundRecorded" => {
            let cents = cents_at(data, &["refunded_cents"]).unwrap_or(0);
            format!("We refunded {}.{:02} for order {order}.", cents / 100, cents % 100)
        }
        _ => return None,
    })
}

/// The notifications projection: remember who a checkout belongs to, and
/// add a message for the events a customer is told about.
fn project_notifications(lookup: &dyn Lookup, event: &Event, data: &Value) -> Result<Change> {
    let refund = event.event_type == "RefundRecorded";
    let checkout_id = if refund {
        match refunded_checkout(lookup, data)? {
            Ok(id) => id,
            Err(reason) => return Ok(Change::Reject(reason)),
        }
    } else {
        event.workflow_id.clone()
    };
    let stored = read_json::<Recipient>(lookup, &key(ROW, &checkout_id))?.unwrap_or_default();
    let mut recipient = stored.clone();
    let mut writes = Writes::new();
    if !refund {
        if recipient.customer.is_none() {
            recipient.customer = text_at(data, "customer_id");
        }
        if let Some(order_id) = text_at(data, "order_id") {
            recipient.order_id = Some(order_id);
        }
        if let Some(intent) = text_at(data, "payment_intent_id") {
            writes.push((key(INTENT, &intent), checkout_id.as_bytes().to_vec()));
        }
    }
    if recipient != stored {
        writes.push((key(ROW, &checkout_id), json_bytes(&recipient)));
    }
    let order = recipient.order_id.clone().unwrap_or_else(|| checkout_id.clone());
    let Some(text) = message_text(event, data, &order) else {
        return Ok(if writes.is_empty() { Change::Ignore } else { Change::Write(writes) });
    };
    let Some(customer) = recipient.customer.clone() else {
        // Its CheckoutStarted has not been seen yet (a redelivery came
        // first); a retry later finds it.
        return Ok(Change::Reject(format!("no customer known for {checkout_id}")));
    };
    let message = FeedMessage {
        event_id: event.event_id.clone(),
        customer: customer.clone(),
        kind: event.event_type.clone(),
        checkout_id,
        order_id: recipient.order_id,
        text,
        time_ms: event.time_ms,
    };
    writes.push((feed_key(&customer, event.time_ms, &event.event_id), json_bytes(&message)));
    Ok(Change::Write(writes))
}

/// The test hook for poison events: a payload whose `data` has
/// `"poison": true` fails, unless it was re-driven by
/// `replay-failed-events` (`Sagaflow-Replayed: true`), which stands for
/// "the consumer's bug was fixed". A real consumer fails on its own bugs;
/// this lets tests make one fail on purpose.
fn poisoned(event: &Event, data: &Value) -> bool {
    !event.replayed && data.get("poison").and_then(Value::as_bool) == Some(true)
}

/// Decides what `event` does to `projection`, reading through `lookup`.
fn change(projection: Projection, lookup: &dyn Lookup, event: &Event) -> Result<Change> {
    let payload: Value = match serde_json::from_str(&event.payload) {
        Ok(payload) => payload,
        Err(e) => return Ok(Change::Reject(format!("the payload is not JSON: {e}"))),
    };
    let Some(data) = payload.get("data") else {
        return Ok(Change::Reject("the payload has no data".into()));
    };
    if poisoned(event, data) {
        return Ok(Change::Reject("poison event (test hook: data.poison = true)".into()));
    }
    match projection {
        Projection::Search => project_search(lookup, event, &payload, data),
        Projection::Notifications => project_notifications(lookup, event, data),
    }
}

/// A consumer's sled store. One consumer task writes it; HTTP handlers read it.
pub struct ReadModel {
    db: sled::Db,
    dir: PathBuf,
    projection: Projection,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel").field("dir", &self.dir).field("projection", &self.projection).finish()
    }
}

struct SledLookup<'a>(&'a ReadModel);

impl Lookup for SledLookup<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.db.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| self.0.error(e))
    }

    fn corrupt(&self, key: &[u8], reason: String) -> Error {
        self.0.error(format!("corrupt record {}: {reason}", String::from_utf8_lossy(key)))
    }
}

impl ReadModel {
    /// Opens (or creates) the store of `projection` in `dir/<name>`.
    pub fn open(dir: &Path, projection: Projection) -> Result<Self> {
        let dir = dir.join(projection.name());
        let db = sled::Config::new()
            .path(&dir)
            // Every apply flushes before its ack; a timer flush adds nothing.
            .flush_every_ms(None)
            .open()
            .map_err(|e| Error::ReadModel { dir: dir.display().to_string(), reason: e.to_string() })?;
        Ok(Self { db, dir, projection })
    }

    pub fn projection(&self) -> Projection {
        self.projection
    }

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::ReadModel { dir: self.dir.display().to_string(), reason: e.to_string() }
    }

    /// Applies `event` at most once: the projection's writes, the event's id
    /// and the processed count go in one atomic batch, flushed before this
    /// returns, so that an ack is only ever sent for what survives a crash.
    async fn apply_once(&self, event: &Event) -> Result<Outcome> {
        let processed_key = key(PROCESSED, &event.event_id);
        if self.db.contains_key(&processed_key).map_err(|e| self.error(e))? {
            return Ok(Outcome::Duplicate);
        }
        let writes = match change(self.projection, &SledLookup(self), event)? {
            Change::Write(writes) => writes,
            Change::Ignore => return Ok(Outcome::Ignored),
            Change::Reject(reason) => return Ok(Outcome::Rejected(reason)),
        };
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            batch.insert(key, value);
        }
        batch.insert(processed_key, &[][..]);
        batch.insert(PROCESSED_COUNT, &(self.processed()? + 1).to_be_bytes()[..]);
        self.db.apply_batch(batch).map_err(|e| self.error(e))?;
        self.db.flush_async().await.map_err(|e| self.error(e))?;
        Ok(Outcome::Projected)
    }

    /// How many distinct events changed this read model.
    pub fn processed(&self) -> Result<u64> {
        let bytes = self.db.get(PROCESSED_COUNT).map_err(|e| self.error(e))?;
        Ok(bytes.and_then(|b| b.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes))
    }

    /// Search rows matching `filter`, most recently updated first. A scan:
    /// the read model is small, and a customer index would come with scale.
    pub fn orders(&self, filter: &OrderFilter) -> Result<Vec<OrderRow>> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let customer = filter.customer.as_deref().filter(|c| !c.is_empty());
        let status = filter.status.as_deref().filter(|s| !s.is_empty());
        let mut rows = Vec::new();
        for entry in self.db.scan_prefix([ROW]) {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let row: OrderRow = serde_json::from_slice(&value)
                .map_err(|e| self.error(format!("corrupt row {}: {e}", String::from_utf8_lossy(&key))))?;
            if customer.is_some_and(|c| row.customer.as_deref() != Some(c)) {
                continue;
            }
            if status.is_some_and(|s| !row.status.eq_ignore_ascii_case(s)) {
                continue;
            }
            rows.push(row);
        }
        rows.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then_with(|| a.checkout_id.cmp(&b.checkout_id)));
        rows.truncate(limit);
        Ok(rows)
    }

    /// A customer's messages, oldest first.
    pub fn feed(&self, customer: &str, limit: Option<usize>) -> Result<Vec<FeedMessage>> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let mut messages = Vec::new();
        for entry in self.db.scan_prefix(feed_prefix(customer)).take(limit) {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            messages.push(
                serde_json::from_slice(&value)
                    .map_err(|e| self.error(format!("corrupt feed entry {}: {e}", String::from_utf8_lossy(&key))))?,
            );
        }
        Ok(messages)
    }
}

impl Projector for ReadModel {
    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn apply(&self, event: &Event) -> impl std::future::Future<Output = Result<Outcome>> + Send {
        self.apply_once(event)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    /// A read model in a map, to run projections without sled.
    #[derive(Default)]
    struct Map(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Lookup for Map {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self.0.get(key).cloned())
        }

        fn corrupt(&self, key: &[u8], reason: String) -> Error {
            Error::ReadModel { dir: "memory".into(), reason: format!("{key:?}: {reason}") }
        }
    }

    impl Map {
        fn apply(&mut self, projection: Projection, event: &Event) -> Change {
            let change = change(projection, self, event).unwrap();
            if let Change::Write(writes) = &change {
                self.0.extend(writes.iter().cloned());
            }
            change
        }

        fn row(&self, id: &str) -> OrderRow {
            serde_json::from_slice(&self.0[&key(ROW, id)]).unwrap()
        }

        fn feed(&self, customer: &str) -> Vec<FeedMessage> {
            let prefix = feed_prefix(customer);
            self.0
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| serde_json::from_slice(v).unwrap())
                .collect()
        }
    }

    fn event(workflow_id: &str, seq: u64, event_type: &str, data: Value) -> Event {
        Event {
            event_id: format!("{workflow_id}/{seq}"),
            event_type: event_type.into(),
            workflow_id: workflow_id.into(),
            workflow_seq: seq,
            correlation_id: String::new(),
            time_ms: i64::try_from(seq).unwrap() * 10,
            payload: json!({"workflow_id": workflow_id, "workflow_type": "checkout", "step": null, "data": data})
                .to_string(),
            replayed: false,
        }
    }

    fn checkout() -> Vec<Event> {
        vec![
            event("chk-1", 1, "CheckoutStarted", json!({"customer_id": "ann", "payment_intent_id": "pi-1"})),
            event("chk-1", 5, "InventoryReserved", json!({"reservation_id": "res-1"})),
            event("chk-1", 9, "PaymentCaptured", json!({"payment_intent_id": "pi-1", "captured_cents": 2500})),
            event("chk-1", 14, "OrderCreated", json!({"order_id": "ord-1", "status": "created"})),
            event("chk-1", 20, "ShipmentDelayed", json!({"attempt": 5})),
            event("chk-1", 25, "ShipmentCreated", json!({"shipment_id": "shp-1"})),
            event("chk-1", 40, "CheckoutCompleted", json!({})),
        ]
    }

    #[test]
    fn a_checkout_row_follows_its_events() {
        let mut map = Map::default();
        let statuses: Vec<String> = checkout()
            .iter()
            .map(|e| {
                map.apply(Projection::Search, e);
                map.row("chk-1").status
            })
            .collect();
        assert_eq!(statuses, ["PENDING", "RESERVED", "PAID", "ORDERED", "ORDERED", "SHIPPED", "SHIPPED"]);
        let row = map.row("chk-1");
        assert_eq!(row.customer.as_deref(), Some("ann"));
        assert_eq!(row.total_cents, Some(2500));
        assert_eq!(row.order_id.as_deref(), Some("ord-1"));
        assert!(row.shipment_delayed);
        assert_eq!((row.events, row.updated_ms), (7, 400));
    }

    #[test]
    fn a_late_older_event_does_not_move_the_status_back() {
        let mut map = Map::default();
        let events = checkout();
        map.apply(Projection::Search, &events[3]);
        map.apply(Projection::Search, &events[0]);
        let row = map.row("chk-1");
        assert_eq!(row.status, "ORDERED");
        assert_eq!(row.customer.as_deref(), Some("ann"), "fields merge in any order");
    }

    #[test]
    fn a_refund_updates_its_checkout_not_a_row_of_its_own() {
        let mut map = Map::default();
        for e in checkout() {
            map.apply(Projection::Search, &e);
        }
        let refund = |cents: u64| {
            event(
                "rfd-1",
                3,
                "RefundRecorded",
                json!({"payment_intent_id": "pi-1", "refunded_cents": 500, "total_refunded_cents": cents}),
            )
        };
        map.apply(Projection::Search, &refund(500));
        assert_eq!(map.row("chk-1").status, "PARTIALLY_REFUNDED");
        map.apply(Projection::Search, &refund(2500));
        assert_eq!(map.row("chk-1").status, "REFUNDED");
        assert!(!map.0.contains_key(&key(ROW, "rfd-1")));
        let unknown = event("rfd-2", 3, "RefundRecorded", json!({"payment_intent_id": "pi-9"}));
        assert!(matches!(map.apply(Projection::Search, &unknown), Change::Reject(_)));
    }

    #[test]
    fn any_workflow_is_indexed_with_its_last_event() {
        let mut map = Map::default();
        map.apply(Projection::Search, &event("q-1", 1, "QuickStarted", json!({"customer_id": "bo"})));
        map.apply(Projection::Search, &event("q-1", 4, "Reserved", json!({"key": "k"})));
        map.apply(Projection::Search, &event("q-1", 12, "QuickCompleted", json!({"reserve": {}})));
        let row = map.row("q-1");
        assert_eq!((row.status.as_str(), row.customer.as_deref(), row.events), ("QuickCompleted", Some("bo"), 3));
    }

    #[test]
    fn a_failed_checkout_reads_cancelled_unless_it_was_charged() {
        let mut map = Map::default();
        map.apply(Projection::Search, &event("chk-1", 1, "CheckoutStarted", json!({"customer_id": "ann"})));
        map.apply(Projection::Search, &event("chk-1", 5, "CheckoutFailed", json!({"reason": "UnknownSku"})));
        assert_eq!(map.row("chk-1").status, "CANCELLED");
        map.apply(Projection::Search, &event("chk-2", 1, "CheckoutStarted", json!({"customer_id": "ann"})));
        map.apply(Projection::Search, &event("chk-2", 8, "PaymentCaptured", json!({"captured_cents": 100})));
        map.apply(Projection::Search, &event("chk-2", 9, "CheckoutFailed", json!({"terminated": true})));
        assert_eq!(map.row("chk-2").status, "PAID");
    }

    #[test]
    fn customers_are_told_about_completion_delay_cancellation_and_refund() {
        let mut map = Map::default();
        let kinds: Vec<bool> =
            checkout().iter().map(|e| matches!(map.apply(Projection::Notifications, e), Change::Write(_))).collect();
        // Started, captured and ordered carry recipient facts; reserved and
        // shipment-created carry none and change nothing.
        assert_eq!(kinds, [true, false, true, true, true, false, true]);
        map.apply(
            Projection::Notifications,
            &event("rfd-1", 3, "RefundRecorded", json!({"payment_intent_id": "pi-1", "refunded_cents": 1250})),
        );
        map.apply(Projection::Notifications, &event("chk-2", 1, "CheckoutStarted", json!({"customer_id": "ann"})));
        map.apply(Projection::Notifications, &event("chk-2", 9, "CheckoutCompensated", json!({"reason": "declined"})));
        let feed = map.feed("ann");
        let kinds: Vec<&str> = feed.iter().map(|m| m.kind.as_str()).collect();
        // In event-time order (the refund's history is short, so its time is early here).
        assert_eq!(kinds, ["RefundRecorded", "CheckoutCompensated", "ShipmentDelayed", "CheckoutCompleted"]);
        assert!(feed[0].text.contains("12.50") && feed[0].text.contains("ord-1"), "{}", feed[0].text);
        assert_eq!(feed[1].checkout_id, "chk-2");
        assert!(feed[2].text.contains("delayed"));
        assert!(map.feed("an").is_empty(), "a customer's prefix is not another's");
    }

    #[test]
    fn a_message_for_an_unknown_customer_waits() {
        let mut map = Map::default();
        let completed = event("chk-9", 40, "CheckoutCompleted", json!({}));
        assert!(matches!(map.apply(Projection::Notifications, &completed), Change::Reject(_)));
    }

    #[test]
    fn poison_and_garbage_are_rejected_until_replayed() {
        let mut map = Map::default();
        let poison = event("q-1", 1, "QuickStarted", json!({"poison": true}));
        assert!(matches!(map.apply(Projection::Search, &poison), Change::Reject(r) if r.contains("poison")));
        let replayed = Event { replayed: true, ..poison };
        assert!(matches!(map.apply(Projection::Search, &replayed), Change::Write(_)));
        let garbage = Event { payload: "not json".into(), ..replayed };
        assert!(matches!(map.apply(Projection::Search, &garbage), Change::Reject(_)));
    }

    #[tokio::test]
    async fn the_sled_store_applies_an_event_once_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = event("q-1", 1, "QuickStarted", json!({"customer_id": "bo"}));
        {
            let model = ReadModel::open(dir.path(), Projection::Search).unwrap();
            assert_eq!(model.apply(&first).await.unwrap(), Outcome::Projected);
            assert_eq!(model.apply(&first).await.unwrap(), Outcome::Duplicate);
            assert_eq!(model.processed().unwrap(), 1);
        }
        let model = ReadModel::open(dir.path(), Projection::Search).unwrap();
        assert_eq!(model.apply(&first).await.unwrap(), Outcome::Duplicate, "the processed id survives a reopen");
        let filter = OrderFilter { customer: Some("bo".into()), status: Some("questarted".into()), limit: None };
        assert!(model.orders(&filter).unwrap().is_empty());
        let filter = OrderFilter { status: Some("quickstarted".into()), ..filter };
        assert_eq!(model.orders(&filter).unwrap().len(), 1);
    }
}
