//! Shipping: a carrier simulator. One shipment per order.
//!
//! The carrier always accepts; its failures ("the carrier answers 500",
//! docs/contract.md, Failure scenarios, scenario 5) are injected with
//! `--fault shipping.create_shipment=error`. The shipment id, carrier and
//! tracking number are derived from the order id, so a retried request
//! names the same parcel.
//!
//! Records: `shipment/<shipment id>` → [`Shipment`]; `order/<order id>` →
//! the shipment id; idempotency records.

use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::Shop;
use super::store::{self, ServiceDb, check_id, key, now_ms, prefix, short_hash};

pub const CREATE_SHIPMENT: &str = "shipping.create_shipment";
pub const ACTIVITIES: &[&str] = &[CREATE_SHIPMENT];

/// The simulated carriers; an order's digest picks one.
pub const CARRIERS: &[(&str, &str)] = &[("SimPost", "SP"), ("Parcel Saga Express", "PSX")];

/// The largest shipping address accepted, as JSON text.
pub const MAX_ADDRESS_BYTES: usize = 4 * 1024;

/// Bad input is this service's only failure of its own.
pub use super::InputError as Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub shipment_id: String,
    pub order_id: String,
    pub customer_id: Option<String>,
    /// As the checkout gave it (any JSON; null ships to the address on file).
    pub shipping_address: serde_json::Value,
    pub carrier: String,
    pub tracking_number: String,
    pub status: ShipmentStatus,
    pub created_at_ms: u64,
}

/// `shipping.create_shipment` input; the key is `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateShipment {
    pub order_id: String,
    #[serde(default)]
    pub shipping_address: serde_json::Value,
    #[serde(default)]
    pub customer_id: Option<String>,
}

/// `shipping.create_shipment` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCreated {
    pub shipment_id: String,
    pub carrier: String,
    pub tracking_number: String,
    pub status: ShipmentStatus,
}

/// The carrier simulator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shipping {
    db: Arc<ServiceDb>,
}

impl Shipping {
    /// Opens the shipments in `dir`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> store::Result<Self> {
        Ok(Self { db: Arc::new(ServiceDb::open(dir)?) })
    }

    /// Every shipment, by id.
    ///
    /// # Errors
    /// A storage failure.
    pub fn shipments(&self) -> store::Result<Vec<Shipment>> {
        self.db.scan(&prefix("shipment"))
    }

    /// # Errors
    /// A storage failure.
    pub fn shipment(&self, shipment_id: &str) -> store::Result<Option<Shipment>> {
        self.db.get(&key("shipment", shipment_id))
    }

    /// The shipment of an order, if it has one.
    ///
    /// # Errors
    /// A storage failure.
    pub fn shipment_of_order(&self, order_id: &str) -> store::Result<Option<Shipment>> {
        match self.db.get::<String>(&key("order", order_id))? {
            Some(shipment_id) => self.shipment(&shipment_id),
            None => Ok(None),
        }
    }

    /// Books the parcel of an order with the carrier, once per order.
    ///
    /// # Errors
    /// Not retryable: `InvalidInput`, `IdempotencyKeyReused` (the order was
    /// shipped to another address).
    pub async fn create_shipment(&self, request: CreateShipment) -> Result<ShipmentCreated> {
        check_id("order_id", &request.order_id).map_err(Error::InvalidInput)?;
        if let Some(customer_id) = &request.customer_id {
            check_id("customer_id", customer_id).map_err(Error::InvalidInput)?;
        }
        if request.shipping_address.to_string().len() > MAX_ADDRESS_BYTES {
            return Err(Error::InvalidInput(format!("shipping_address is over {MAX_ADDRESS_BYTES} bytes")));
        }
        self.db
            .idempotent(CREATE_SHIPMENT, &request.order_id, &request, |tx| {
                let digest = short_hash(&request.order_id);
                let shipment_id = format!("shp-{digest}");
                // The digest's last hex digit picks the carrier; its first 12
                // hex digits, as a number below 10^12, make the tracking number.
                let pick = usize::from(digest.as_bytes().last().copied().unwrap_or(0)) % CARRIERS.len();
                let (carrier, prefix) = CARRIERS[pick];
                let number = u64::from_str_radix(&digest[..12], 16).unwrap_or(0) % 1_000_000_000_000;
                let shipment = Shipment {
                    shipment_id: shipment_id.clone(),
                    order_id: request.order_id.clone(),
                    customer_id: request.customer_id.clone(),
                    shipping_address: request.shipping_address.clone(),
                    carrier: carrier.to_owned(),
                    tracking_number: format!("{prefix}{number:012}"),
                    status: ShipmentStatus::Created,
                    created_at_ms: now_ms(),
                };
                tx.put(&key("shipment", &shipment_id), &shipment)?;
                tx.put(&key("order", &request.order_id), &shipment_id)?;
                tracing::info!(order_id = %request.order_id, %shipment_id, carrier, "shipment created");
                Ok(ShipmentCreated {
                    shipment_id,
                    carrier: shipment.carrier,
                    tracking_number: shipment.tracking_number,
                    status: shipment.status,
                })
            })
            .await
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        input: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ActivityError> {
        match activity_type {
            CREATE_SHIPMENT => super::answer(self.create_shipment(super::parse(input)?)).await,
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Registers `shipping.create_shipment`, if `shop` hosts shipping.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.shipping().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}
