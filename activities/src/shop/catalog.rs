//! The catalog and pricing: products with prices, and the price snapshot a
//! checkout takes once at its start (docs/contract.md, Saga semantics: data fixed at the start
//! lives in the history and is never recomputed).
//!
//! Prices come from here, never from the client. Every change to a product
//! bumps the catalog version, and a snapshot records the version it read, so
//! a total can always be traced to the prices and coupon rule that made it.
//!
//! Records: `product/<sku>` → [`Product`]; `meta/version` → the catalog
//! version; `meta/seeded`.

use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::coupons::{self, AppliedCoupon, Coupons};
use super::store::{self, ServiceDb, check_id, key, now_ms, prefix};
use super::{LineError, LineItem, MAX_AMOUNT_CENTS, Shop, check_lines};

pub const PRICE_SNAPSHOT: &str = "catalog.price_snapshot";
pub const ACTIVITIES: &[&str] = &[PRICE_SNAPSHOT];

/// The demo catalog seeded on the first open: `(sku, name, unit price in
/// cents)`. The inventory service stocks the same skus.
pub const DEMO_PRODUCTS: &[(&str, &str, u64)] = &[
    ("sku-mug", "Sagaflow mug", 1_299),
    ("sku-tee", "Sagaflow tee", 2_499),
    ("sku-hoodie", "Sagaflow hoodie", 5_499),
    ("sku-cap", "Sagaflow cap", 1_899),
    ("sku-stickers", "Sticker pack", 399),
    ("sku-notebook", "Saga notebook", 999),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error("{0}")]
    InvalidQuantity(LineError),
    #[error("bad request: {0}")]
    InvalidInput(String),
    #[error(transparent)]
    Coupon(#[from] coupons::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

super::service_error!(Error {
    Self::UnknownSku(_) => "UnknownSku", NotFound;
    Self::InvalidQuantity(_) => "InvalidQuantity", Invalid;
    Self::InvalidInput(_) => "InvalidInput", Invalid;
    @wraps Self::Coupon, Self::Store;
});

super::from_line_error!(Error);

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price_cents: u64,
}

/// `catalog.price_snapshot` input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRequest {
    pub items: Vec<LineItem>,
    /// Absent, null or empty: no coupon.
    #[serde(default)]
    pub coupon_code: Option<String>,
}

/// One priced line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
    pub line_total_cents: u64,
}

/// `catalog.price_snapshot` result: what the checkout will charge, fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceSnapshot {
    pub lines: Vec<PricedLine>,
    pub subtotal_cents: u64,
    pub discount_cents: u64,
    pub total_cents: u64,
    pub coupon: Option<AppliedCoupon>,
    pub catalog_version: u64,
    pub priced_at_ms: u64,
}

/// The catalog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Arc<ServiceDb>,
    coupons: Coupons,
}

impl Catalog {
    /// Opens the catalog in `dir`, seeding [`DEMO_PRODUCTS`] the first time.
    /// Pricing reads coupon rules from `coupons`.
    ///
    /// # Errors
    /// The database cannot be opened or written.
    pub fn open(dir: &Path, coupons: Coupons) -> store::Result<Self> {
        let db = ServiceDb::open(dir)?;
        db.apply(|tx| {
            if tx.get::<bool>(b"meta/seeded")?.is_some() {
                return Ok(());
            }
            for &(sku, name, unit_price_cents) in DEMO_PRODUCTS {
                let product = Product { sku: sku.to_owned(), name: name.to_owned(), unit_price_cents };
                tx.put(&key("product", sku), &product)?;
            }
            tx.put(b"meta/version", &1u64)?;
            tx.put(b"meta/seeded", &true)
        })?;
        db.flush_blocking()?;
        Ok(Self { db: Arc::new(db), coupons })
    }

    /// Every product, by sku.
    ///
    /// # Errors
    /// A storage failure.
    pub fn products(&self) -> store::Result<Vec<Product>> {
        self.db.scan(&prefix("product"))
    }

    /// # Errors
    /// A storage failure.
    pub fn product(&self, sku: &str) -> store::Result<Option<Product>> {
        self.db.get(&key("product", sku))
    }

    /// The current catalog version: it grows with every product change.
    ///
    /// # Errors
    /// A storage failure.
    pub fn version(&self) -> store::Result<u64> {
        Ok(self.db.get(b"meta/version")?.unwrap_or(0))
    }

    /// Adds or changes a product, and bumps the catalog version.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad sku, an empty name or a price out of
    /// `1..=MAX_AMOUNT_CENTS`.
    pub async fn set_product(&self, product: Product) -> Result<u64> {
        check_id("sku", &product.sku).map_err(Error::InvalidInput)?;
        if product.name.trim().is_empty() || product.name.len() > store::MAX_ID_BYTES {
            return Err(Error::InvalidInput("a product name is 1 to 255 bytes".into()));
        }
        if !(1..=MAX_AMOUNT_CENTS).contains(&product.unit_price_cents) {
            return Err(Error::InvalidInput(format!("unit_price_cents is not in 1..={MAX_AMOUNT_CENTS}")));
        }
        self.db
            .commit(|tx| {
                let version = tx.get::<u64>(b"meta/version")?.unwrap_or(0).saturating_add(1);
                tx.put(&key("product", &product.sku), &product)?;
                tx.put(b"meta/version", &version)?;
                Ok(version)
            })
            .await
    }

    /// Prices `request` with the current prices and coupon rule.
    ///
    /// # Errors
    /// Not retryable: `UnknownSku`, `InvalidQuantity` (0 or over
    /// [`MAX_QUANTITY`](super::MAX_QUANTITY)), `InvalidCoupon`, `InvalidInput`
    /// (no lines, too many).
    pub fn price_snapshot(&self, request: &PriceRequest) -> Result<PriceSnapshot> {
        check_lines(&request.items)?;
        // Read the version and the prices under the writer lock, so that the
        // version recorded is the one the prices came from.
        let (catalog_version, lines) = self.db.locked_read(|db| {
            let version = db.get::<u64>(b"meta/version")?.unwrap_or(0);
            let mut lines = Vec::with_capacity(request.items.len());
            for item in &request.items {
                let product: Product =
                    db.get(&key("product", &item.sku))?.ok_or_else(|| Error::UnknownSku(item.sku.clone()))?;
                lines.push(PricedLine {
                    line_total_cents: product.unit_price_cents.saturating_mul(u64::from(item.quantity)),
                    sku: product.sku,
                    name: product.name,
                    quantity: item.quantity,
                    unit_price_cents: product.unit_price_cents,
                });
            }
            Ok::<_, Error>((version, lines))
        })?;
        // Bounded by MAX_LINES × MAX_QUANTITY × MAX_AMOUNT_CENTS, far below
        // u64::MAX; saturating all the same, so a bug cannot wrap a total.
        let subtotal_cents = lines.iter().fold(0u64, |sum, line| sum.saturating_add(line.line_total_cents));
        let code = request.coupon_code.as_deref().map(str::trim).filter(|code| !code.is_empty());
        let now = now_ms();
        let (coupon, discount_cents) = match code {
            Some(code) => {
                let quote = self.coupons.quote(code, subtotal_cents, now)?;
                (Some(quote.coupon), quote.discount_cents)
            }
            None => (None, 0),
        };
        Ok(PriceSnapshot {
            lines,
            subtotal_cents,
            discount_cents,
            total_cents: subtotal_cents.saturating_sub(discount_cents),
            coupon,
            catalog_version,
            priced_at_ms: now,
        })
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        input: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ActivityError> {
        match activity_type {
            PRICE_SNAPSHOT => {
                let request: PriceRequest = super::parse(input)?;
                super::answer(async { self.price_snapshot(&request) }).await
            }
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Registers `catalog.price_snapshot`, if `shop` hosts the catalog.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.catalog().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}
