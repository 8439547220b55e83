//! Notifications: messages to customers, kept in a per-customer feed.
//!
//! `notifications.send` takes any JSON object: the checkout's confirmation
//! (`{customer_id, order_id, template}`) as well as an escalation alert
//! (`{alert, step, attempt, input, workflow_input}`, whose customer is found
//! in `input` or `workflow_input`). A message has no domain id, so it is sent
//! once per task idempotency key.
//!
//! Records: `note/<notification id>` → [`Notification`];
//! `feed/<customer id length, 3 digits>/<customer id>/<seq, 20 digits>` → the
//! notification id (the length prefix keeps customer `a` from seeing the feed
//! of customer `a/b`); `meta/seq`; idempotency records.

use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Shop;
use super::store::{self, ServiceDb, check_id, key, now_ms, prefix, short_hash};

pub const SEND: &str = "notifications.send";
pub const ACTIVITIES: &[&str] = &[SEND];

/// The largest message accepted, as JSON text.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The most entries one feed listing returns (the newest ones).
pub const MAX_FEED: usize = 1_000;

/// Bad input is this service's only failure of its own.
pub use super::InputError as Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub notification_id: String,
    /// The idempotency key it was sent under.
    pub key: String,
    pub customer_id: Option<String>,
    pub order_id: Option<String>,
    pub template: Option<String>,
    /// Set for an escalation, such as `ShipmentDelayed`.
    pub alert: Option<String>,
    /// What the customer reads. Empty on notifications sent before it was written.
    #[serde(default)]
    pub text: String,
    /// The message as it was given, for programs (it may carry internal ids).
    pub message: Value,
    pub created_at_ms: u64,
}

/// `notifications.send` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub notification_id: String,
}

/// The notifications service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifications {
    db: Arc<ServiceDb>,
}

/// The notification as a customer reads it: no internal ids beyond the
/// order's, which the customer has on their receipt.
fn customer_text(template: Option<&str>, alert: Option<&str>, order_id: Option<&str>) -> String {
    let order = order_id.map_or_else(|| "Your order".to_owned(), |id| format!("Your order {id}"));
    match (alert, template) {
        (Some("ShipmentDelayed"), _) => format!(
            "{order} is delayed: the carrier has not accepted the parcel yet. We keep trying, and will tell you when it ships."
        ),
        (Some(alert), _) => format!("{order} needs our attention ({alert}); we are on it and will keep you posted."),
        (None, Some("order_confirmed")) => format!("{order} is confirmed and paid. We will tell you when it ships."),
        (None, Some(template)) => format!("{order}: {}.", template.replace('_', " ")),
        (None, None) => format!("{order} has news."),
    }
}

/// The string at the first of `pointers` that holds one.
fn find(message: &Value, pointers: &[&str]) -> Option<String> {
    pointers.iter().find_map(|p| message.pointer(p).and_then(Value::as_str)).map(str::to_owned)
}

fn feed_prefix(customer_id: &str) -> Vec<u8> {
    key("feed", &format!("{:03}/{customer_id}/", customer_id.len()))
}

impl Notifications {
    /// Opens the notifications in `dir`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> store::Result<Self> {
        Ok(Self { db: Arc::new(ServiceDb::open(dir)?) })
    }

    /// Sends `message` once per `key`.
    ///
    /// # Errors
    /// Not retryable: `InvalidInput` (not an object, too large, a bad key),
    /// `IdempotencyKeyReused`.
    pub async fn send(&self, idempotency_key: &str, message: Value) -> Result<Sent> {
        check_id("idempotency key", idempotency_key).map_err(Error::InvalidInput)?;
        if !message.is_object() {
            return Err(Error::InvalidInput("a notification is a JSON object".into()));
        }
        if message.to_string().len() > MAX_MESSAGE_BYTES {
            return Err(Error::InvalidInput(format!("a notification is at most {MAX_MESSAGE_BYTES} bytes")));
        }
        let customer_id = find(&message, &["/customer_id", "/input/customer_id", "/workflow_input/customer_id"])
            .filter(|c| check_id("customer_id", c).is_ok());
        let order_id = find(&message, &["/order_id", "/input/order_id"]);
        let template = find(&message, &["/template"]);
        let alert = find(&message, &["/alert"]);
        let notification = Notification {
            notification_id: format!("ntf-{}", short_hash(idempotency_key)),
            key: idempotency_key.to_owned(),
            customer_id,
            text: customer_text(template.as_deref(), alert.as_deref(), order_id.as_deref()),
            order_id,
            template,
            alert,
            message: Value::Null,
            created_at_ms: 0,
        };
        self.db
            .idempotent(SEND, idempotency_key, &message, |tx| {
                let seq = tx.get::<u64>(b"meta/seq")?.unwrap_or(0).saturating_add(1);
                let notification = Notification { message: message.clone(), created_at_ms: now_ms(), ..notification };
                let customer = notification.customer_id.as_deref().unwrap_or("");
                let mut feed_key = feed_prefix(customer);
                feed_key.extend_from_slice(format!("{seq:020}").as_bytes());
                tx.put(&feed_key, &notification.notification_id)?;
                tx.put(&key("note", &notification.notification_id), &notification)?;
                tx.put(b"meta/seq", &seq)?;
                tracing::info!(
                    notification_id = %notification.notification_id,
                    customer_id = customer,
                    template = notification.template.as_deref().unwrap_or(""),
                    alert = notification.alert.as_deref().unwrap_or(""),
                    "notification sent"
                );
                Ok(Sent { notification_id: notification.notification_id })
            })
            .await
    }

    /// A customer's feed, oldest first (the newest [`MAX_FEED`]). Messages
    /// with no customer are in the feed of `""`.
    ///
    /// # Errors
    /// A storage failure.
    pub fn feed(&self, customer_id: &str) -> store::Result<Vec<Notification>> {
        let ids: Vec<String> = self.db.scan(&feed_prefix(customer_id))?;
        let newest = ids.len().saturating_sub(MAX_FEED);
        let mut feed = Vec::with_capacity(ids.len() - newest);
        for id in &ids[newest..] {
            if let Some(notification) = self.db.get(&key("note", id))? {
                feed.push(notification);
            }
        }
        Ok(feed)
    }

    /// Every notification, by id (not by time: use a feed for that).
    ///
    /// # Errors
    /// A storage failure.
    pub fn all(&self) -> store::Result<Vec<Notification>> {
        self.db.scan(&prefix("note"))
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        idempotency_key: &str,
        input: Value,
    ) -> std::result::Result<Value, ActivityError> {
        match activity_type {
            SEND => super::answer(self.send(idempotency_key, input)).await,
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Registers `notifications.send`, if `shop` hosts notifications.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.notifications().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_of_prefixed_customers_do_not_mix() {
        assert!(!feed_prefix("a/b").starts_with(&feed_prefix("a")));
    }

    #[test]
    fn escalations_find_their_customer_in_the_workflow_input() {
        let alert = serde_json::json!({
            "alert": "ShipmentDelayed", "step": "ship", "attempt": 5,
            "input": {"order_id": "ord-1"}, "workflow_input": {"customer_id": "cust-7"}
        });
        assert_eq!(
            find(&alert, &["/customer_id", "/input/customer_id", "/workflow_input/customer_id"]).as_deref(),
            Some("cust-7")
        );
        assert_eq!(find(&alert, &["/order_id", "/input/order_id"]).as_deref(), Some("ord-1"));
    }
}
