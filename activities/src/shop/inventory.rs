//! Inventory: stock levels and reservations with a time to live.
//!
//! A reservation takes stock from `available` to `reserved`, all lines or
//! none. It ends in one of three ways: released (by the saga's compensation:
//! back to `available`), committed (the checkout was paid: to `sold`), or
//! expired (nobody came back within the TTL: the service releases it itself,
//! so that a checkout whose orchestrator and workers all died leaks no stock;
//! docs/contract.md, Failure scenarios, scenario 2). Per sku, at every moment:
//!
//! `available + reserved + sold = initial + restocked`, and `reserved` is the
//! sum of the held reservations' quantities.
//!
//! A release for a reservation that does not exist yet leaves a tombstone: a
//! late `inventory.reserve` for that id (an attempt the saga had given up on)
//! is then refused instead of holding stock nobody will release.
//!
//! Records: `stock/<sku>` → [`StockLevel`]; `res/<reservation id>` →
//! [`Reservation`]; `exp/<expiry, 20 digits>/<reservation id>` → the expiry
//! index of held reservations; `meta/seeded`; idempotency records.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::audit::{HeldReservation, HeldReservations};
use super::catalog::DEMO_PRODUCTS;
use super::store::{self, ServiceDb, Tx, check_id, key, now_ms, prefix};
use super::{LineError, LineItem, Shop, Violation, check_lines, merge_lines};

pub const RESERVE: &str = "inventory.reserve";
pub const RELEASE: &str = "inventory.release";
pub const COMMIT: &str = "inventory.commit";
/// For the `check-invariants` job: `{violations}`, as `/invariants` shows them.
pub const CHECK_INVARIANTS: &str = "inventory.check_invariants";
/// For the `release-expired-inventory` job: `{released, leaks}`, the
/// reservations past their TTL released now (the background sweep's
/// backstop), each also a leak finding.
pub const RELEASE_EXPIRED: &str = "inventory.release_expired";
/// For the `check-invariants` job: the reservations that hold stock now
/// ([`HeldReservations`]), which no finished checkout may own.
pub const HELD_RESERVATIONS: &str = "inventory.held_reservations";
pub const ACTIVITIES: &[&str] = &[RESERVE, RELEASE, COMMIT, CHECK_INVARIANTS, RELEASE_EXPIRED, HELD_RESERVATIONS];

/// Most reservations one expiry sweep releases in one batch; a sweep loops
/// over batches until nothing due is left.
const SWEEP_BATCH: usize = 256;
/// The most units one restock adds.
pub const MAX_RESTOCK: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidQuantity(LineError),
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error("not enough {sku}: {requested} requested, {available} available")]
    OutOfStock { sku: String, requested: u64, available: u64 },
    #[error("unknown reservation {0:?}")]
    UnknownReservation(String),
    #[error("reservation {reservation_id:?} expired and its stock is gone: {detail}")]
    ReservationExpired { reservation_id: String, detail: String },
    #[error("reservation {0:?} was released")]
    ReservationReleased(String),
    /// A stock level would go negative or overflow: a bug, never a verdict on
    /// the input. The operation is refused and nothing is written.
    #[error("stock invariant broken for {sku}: {detail}")]
    Invariant { sku: String, detail: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

super::service_error!(Error {
    Self::InvalidInput(_) => "InvalidInput", Invalid;
    Self::InvalidQuantity(_) => "InvalidQuantity", Invalid;
    Self::UnknownSku(_) => "UnknownSku", NotFound;
    Self::OutOfStock { .. } => "OutOfStock", Rejected;
    Self::UnknownReservation(_) => "UnknownReservation", NotFound;
    Self::ReservationExpired { .. } => "ReservationExpired", Rejected;
    Self::ReservationReleased(_) => "ReservationReleased", Rejected;
    // A bug, never a verdict on the input.
    Self::Invariant { .. } => "InvariantViolated", Internal;
    @wraps Self::Store;
});

super::from_line_error!(Error);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One sku's stock. The four counters move together; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub sku: String,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub initial: u64,
    pub restocked: u64,
}

impl StockLevel {
    /// Whether `available + reserved + sold = initial + restocked`.
    pub fn is_conserved(&self) -> bool {
        let held = self.available.checked_add(self.reserved).and_then(|n| n.checked_add(self.sold));
        let supplied = self.initial.checked_add(self.restocked);
        held.is_some() && held == supplied
    }

    fn broken(&self, detail: &str) -> Error {
        Error::Invariant { sku: self.sku.clone(), detail: detail.to_owned() }
    }

    /// `available → reserved`.
    fn hold(&mut self, quantity: u64) -> Result<()> {
        self.available = self.available.checked_sub(quantity).ok_or_else(|| self.broken("available below 0"))?;
        self.reserved = self.reserved.checked_add(quantity).ok_or_else(|| self.broken("reserved overflows"))?;
        Ok(())
    }

    /// `reserved → available`.
    fn unhold(&mut self, quantity: u64) -> Result<()> {
        self.reserved = self.reserved.checked_sub(quantity).ok_or_else(|| self.broken("reserved below 0"))?;
        self.available = self.available.checked_add(quantity).ok_or_else(|| self.broken("available overflows"))?;
        Ok(())
    }

    /// `reserved → sold`.
    fn sell_held(&mut self, quantity: u64) -> Result<()> {
        self.reserved = self.reserved.checked_sub(quantity).ok_or_else(|| self.broken("reserved below 0"))?;
        self.sold = self.sold.checked_add(quantity).ok_or_else(|| self.broken("sold overflows"))?;
        Ok(())
    }

    /// `available → sold`, for a reservation committed after it expired.
    fn sell_available(&mut self, quantity: u64) -> Result<()> {
        self.available = self.available.checked_sub(quantity).ok_or_else(|| self.broken("available below 0"))?;
        self.sold = self.sold.checked_add(quantity).ok_or_else(|| self.broken("sold overflows"))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    /// Holds its stock until it is released, committed, or it expires.
    Held,
    /// Given back on request (or a tombstone: released before it existed).
    Released,
    /// Given back by the service when its TTL ran out.
    Expired,
    /// Its stock is sold.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    /// One line per sku, in sku order. Empty for a tombstone.
    pub items: Vec<LineItem>,
    pub status: ReservationStatus,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// When it left `HELD`.
    pub closed_at_ms: Option<u64>,
    /// Committed after it had expired, by taking the stock again.
    #[serde(default)]
    pub committed_after_expiry: bool,
}

/// `inventory.reserve` input; the key is `reservation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub reservation_id: String,
    pub items: Vec<LineItem>,
}

/// `inventory.reserve` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub reservation_id: String,
    pub expires_at_ms: u64,
}

/// `inventory.release` and `inventory.commit` input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRef {
    pub reservation_id: String,
}

/// `inventory.release` result: `released` is whether this call gave stock
/// back (false for an unknown, expired, released or committed reservation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub reservation_id: String,
    pub released: bool,
}

/// `inventory.commit` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub reservation_id: String,
    pub committed: bool,
}

/// How the inventory service behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reservation_ttl: Duration,
    /// How often the background task releases expired reservations.
    pub sweep_interval: Duration,
    /// Units of each demo sku stocked on the first open.
    pub initial_stock: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(15 * 60),
            sweep_interval: Duration::from_secs(1),
            initial_stock: 100,
        }
    }
}

/// The inventory service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inventory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: ServiceDb,
    ttl_ms: u64,
}

fn expiry_key(expires_at_ms: u64, reservation_id: &str) -> Vec<u8> {
    // Zero-padded, so that byte order is time order and a scan of `exp/`
    // meets the earliest expiry first.
    key("exp", &format!("{expires_at_ms:020}/{reservation_id}"))
}

fn stock_key(sku: &str) -> Vec<u8> {
    key("stock", sku)
}

fn reservation_key(reservation_id: &str) -> Vec<u8> {
    key("res", reservation_id)
}

impl Inventory {
    /// Opens the inventory in `dir`, stocking each demo sku with
    /// `settings.initial_stock` units the first time. Inside a tokio runtime
    /// it also starts the task that releases expired reservations every
    /// `settings.sweep_interval`; the task ends when the last clone of the
    /// service is dropped.
    ///
    /// # Errors
    /// The database cannot be opened or written.
    pub fn open(dir: &Path, settings: Settings) -> store::Result<Self> {
        let db = ServiceDb::open(dir)?;
        db.apply(|tx| {
            if tx.get::<bool>(b"meta/seeded")?.is_some() {
                return Ok(());
            }
            for &(sku, _, _) in DEMO_PRODUCTS {
                let level = StockLevel {
                    sku: sku.to_owned(),
                    available: settings.initial_stock,
                    reserved: 0,
                    sold: 0,
                    initial: settings.initial_stock,
                    restocked: 0,
                };
                tx.put(&stock_key(sku), &level)?;
            }
            tx.put(b"meta/seeded", &true)
        })?;
        db.flush_blocking()?;
        let ttl_ms = u64::try_from(settings.reservation_ttl.as_millis()).unwrap_or(u64::MAX);
        let inventory = Self { inner: Arc::new(Inner { db, ttl_ms }) };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(sweep(
                    Arc::downgrade(&inventory.inner),
                    settings.sweep_interval.max(Duration::from_millis(10)),
                ));
            }
            Err(_) => tracing::warn!(
                "inventory opened outside a tokio runtime: expired reservations are released only by release_expired"
            ),
        }
        Ok(inventory)
    }

    fn db(&self) -> &ServiceDb {
        &self.inner.db
    }

    /// Every sku's stock, by sku.
    ///
    /// # Errors
    /// A storage failure.
    pub fn stock(&self) -> store::Result<Vec<StockLevel>> {
        self.db().scan(&prefix("stock"))
    }

    /// # Errors
    /// A storage failure.
    pub fn stock_of(&self, sku: &str) -> store::Result<Option<StockLevel>> {
        self.db().get(&stock_key(sku))
    }

    /// # Errors
    /// A storage failure.
    pub fn reservation(&self, reservation_id: &str) -> store::Result<Option<Reservation>> {
        self.db().get(&reservation_key(reservation_id))
    }

    /// Every reservation (tombstones included), by id.
    ///
    /// # Errors
    /// A storage failure.
    pub fn reservations(&self) -> store::Result<Vec<Reservation>> {
        self.db().scan(&prefix("res"))
    }

    /// The reservations holding stock now, as of the moment before the read.
    ///
    /// # Errors
    /// A storage failure.
    pub fn held_reservations(&self) -> store::Result<HeldReservations> {
        let as_of_ms = now_ms();
        let held = self
            .reservations()?
            .into_iter()
            .filter(|r| r.status == ReservationStatus::Held)
            .map(|r| HeldReservation {
                reservation_id: r.reservation_id,
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect();
        Ok(HeldReservations { as_of_ms, held })
    }

    /// Holds the stock of every line, or of none.
    ///
    /// # Errors
    /// Not retryable: `OutOfStock` (nothing is held), `UnknownSku`,
    /// `InvalidQuantity`, `InvalidInput`, `ReservationReleased` (the id was
    /// released before it was reserved), `IdempotencyKeyReused` (the id was
    /// reserved with other lines).
    pub async fn reserve(&self, request: ReserveRequest) -> Result<Reserved> {
        check_id("reservation_id", &request.reservation_id).map_err(Error::InvalidInput)?;
        check_lines(&request.items)?;
        let ttl_ms = self.inner.ttl_ms;
        self.db()
            .idempotent(RESERVE, &request.reservation_id, &request, |tx| {
                let id = &request.reservation_id;
                if tx.get::<Reservation>(&reservation_key(id))?.is_some() {
                    // No idempotency record but a reservation: the tombstone
                    // of a release that came first.
                    return Err(Error::ReservationReleased(id.clone()));
                }
                let items = merge_lines(&request.items);
                // Check every line before touching any: all or nothing.
                let mut levels = Vec::with_capacity(items.len());
                for item in &items {
                    let level: StockLevel =
                        tx.get(&stock_key(&item.sku))?.ok_or_else(|| Error::UnknownSku(item.sku.clone()))?;
                    let requested = u64::from(item.quantity);
                    if level.available < requested {
                        return Err(Error::OutOfStock { sku: item.sku.clone(), requested, available: level.available });
                    }
                    levels.push((level, requested));
                }
                for (mut level, quantity) in levels {
                    level.hold(quantity)?;
                    save(tx, &level)?;
                }
                let now = now_ms();
                let expires_at_ms = now.saturating_add(ttl_ms);
                let reservation = Reservation {
                    reservation_id: id.clone(),
                    items,
                    status: ReservationStatus::Held,
                    created_at_ms: now,
                    expires_at_ms,
                    closed_at_ms: None,
                    committed_after_expiry: false,
                };
                tx.put(&reservation_key(id), &reservation)?;
                tx.put(&expiry_key(expires_at_ms, id), &())?;
                tracing::info!(reservation_id = %id, expires_at_ms, "stock reserved");
                Ok(Reserved { reservation_id: id.clone(), expires_at_ms })
            })
            .await
    }

    /// Gives a held reservation's stock back. Never fails on the
    /// reservation's state: an unknown, expired, released or committed one
    /// answers `released: false` (a committed one's stock stays sold). An
    /// unknown one is tombstoned, so that a late reserve for it is refused.
    ///
    /// # Errors
    /// `InvalidInput`, or a storage failure.
    pub async fn release(&self, reservation_id: &str) -> Result<Released> {
        check_id("reservation_id", reservation_id).map_err(Error::InvalidInput)?;
        let request = ReservationRef { reservation_id: reservation_id.to_owned() };
        self.db()
            .idempotent(RELEASE, reservation_id, &request, |tx| {
                let now = now_ms();
                let released = match tx.get::<Reservation>(&reservation_key(reservation_id))? {
                    None => {
                        let tombstone = Reservation {
                            reservation_id: reservation_id.to_owned(),
                            items: Vec::new(),
                            status: ReservationStatus::Released,
                            created_at_ms: now,
                            expires_at_ms: now,
                            closed_at_ms: Some(now),
                            committed_after_expiry: false,
                        };
                        tx.put(&reservation_key(reservation_id), &tombstone)?;
                        false
                    }
                    Some(reservation) if reservation.status == ReservationStatus::Held => {
                        give_back(tx, reservation, ReservationStatus::Released, now)?;
                        true
                    }
                    Some(_) => false,
                };
                tracing::info!(reservation_id, released, "release requested");
                Ok(Released { reservation_id: reservation_id.to_owned(), released })
            })
            .await
    }

    /// Turns a reservation's held stock into sold stock. A reservation that
    /// expired is committed if its stock can be taken again, all lines or none.
    ///
    /// # Errors
    /// Not retryable: `ReservationExpired` (expired and the stock is gone),
    /// `ReservationReleased`, `UnknownReservation`, `InvalidInput`.
    pub async fn commit(&self, reservation_id: &str) -> Result<Committed> {
        check_id("reservation_id", reservation_id).map_err(Error::InvalidInput)?;
        let request = ReservationRef { reservation_id: reservation_id.to_owned() };
        self.db()
            .idempotent(COMMIT, reservation_id, &request, |tx| {
                let mut reservation: Reservation = tx
                    .get(&reservation_key(reservation_id))?
                    .ok_or_else(|| Error::UnknownReservation(reservation_id.to_owned()))?;
                let now = now_ms();
                match reservation.status {
                    ReservationStatus::Committed => {}
                    ReservationStatus::Released => return Err(Error::ReservationReleased(reservation_id.to_owned())),
                    ReservationStatus::Held => {
                        for item in &reservation.items {
                            let mut level = stock(tx, &item.sku)?;
                            level.sell_held(u64::from(item.quantity))?;
                            save(tx, &level)?;
                        }
                        tx.remove(&expiry_key(reservation.expires_at_ms, reservation_id));
                        reservation.status = ReservationStatus::Committed;
                        reservation.closed_at_ms = Some(now);
                        tx.put(&reservation_key(reservation_id), &reservation)?;
                    }
                    ReservationStatus::Expired => {
                        let mut levels = Vec::with_capacity(reservation.items.len());
                        for item in &reservation.items {
                            let level = stock(tx, &item.sku)?;
                            if level.available < u64::from(item.quantity) {
                                return Err(Error::ReservationExpired {
                                    reservation_id: reservation_id.to_owned(),
                                    detail: format!(
                                        "{} of {} needed, {} available",
                                        item.quantity, item.sku, level.available
                                    ),
                                });
                            }
                            levels.push((level, u64::from(item.quantity)));
                        }
                        for (mut level, quantity) in levels {
                            level.sell_available(quantity)?;
                            save(tx, &level)?;
                        }
                        reservation.status = ReservationStatus::Committed;
                        reservation.closed_at_ms = Some(now);
                        reservation.committed_after_expiry = true;
                        tx.put(&reservation_key(reservation_id), &reservation)?;
                        tracing::warn!(reservation_id, "reservation committed after it expired: stock taken again");
                    }
                }
                tracing::info!(reservation_id, "reservation committed");
                Ok(Committed { reservation_id: reservation_id.to_owned(), committed: true })
            })
            .await
    }

    /// Releases every held reservation whose expiry is at or before `now_ms`
    /// (ms since the epoch), and returns how many it released.
    ///
    /// # Errors
    /// A storage failure; what was released before it stays released.
    pub async fn release_expired(&self, now_ms: u64) -> Result<usize> {
        Ok(self.release_expired_ids(now_ms).await?.len())
    }

    /// [`Inventory::release_expired`], returning the ids it released.
    ///
    /// # Errors
    /// A storage failure; what was released before it stays released.
    pub async fn release_expired_ids(&self, now_ms: u64) -> Result<Vec<String>> {
        let mut released = Vec::new();
        loop {
            let batch = self.db().apply(|tx| {
                let mut ids = Vec::new();
                let due = tx.committed_keys(&prefix("exp"), SWEEP_BATCH)?;
                for index_key in due.iter() {
                    let Some((expires_at_ms, reservation_id)) = parse_expiry_key(index_key) else {
                        // Not ours to interpret: drop the index entry rather
                        // than stop every later sweep on it.
                        tracing::error!(key = %String::from_utf8_lossy(index_key), "malformed expiry index entry");
                        tx.remove(index_key);
                        continue;
                    };
                    if expires_at_ms > now_ms {
                        break;
                    }
                    tx.remove(index_key);
                    match tx.get::<Reservation>(&reservation_key(&reservation_id))? {
                        Some(reservation) if reservation.status == ReservationStatus::Held => {
                            give_back(tx, reservation, ReservationStatus::Expired, now_ms)?;
                            tracing::info!(%reservation_id, expires_at_ms, "reservation expired; stock released");
                            ids.push(reservation_id);
                        }
                        _ => {}
                    }
                }
                let more = due.len() == SWEEP_BATCH
                    && due.last().and_then(|k| parse_expiry_key(k)).is_some_and(|(at, _)| at <= now_ms);
                Ok::<_, Error>((ids, more))
            })?;
            released.extend(batch.0);
            if !batch.1 {
                break;
            }
        }
        self.db().flush().await?;
        Ok(released)
    }

    /// Adds `quantity` units of an existing sku.
    ///
    /// # Errors
    /// `UnknownSku`, or `InvalidQuantity` for 0 or more than [`MAX_RESTOCK`].
    pub async fn restock(&self, sku: &str, quantity: u64) -> Result<StockLevel> {
        if quantity == 0 || quantity > MAX_RESTOCK {
            return Err(Error::InvalidQuantity(LineError::Quantity {
                sku: sku.to_owned(),
                quantity: u32::try_from(quantity).unwrap_or(u32::MAX),
            }));
        }
        self.db()
            .commit(|tx| {
                let mut level: StockLevel =
                    tx.get(&stock_key(sku))?.ok_or_else(|| Error::UnknownSku(sku.to_owned()))?;
                level.restocked =
                    level.restocked.checked_add(quantity).ok_or_else(|| level.broken("restocked overflows"))?;
                level.available =
                    level.available.checked_add(quantity).ok_or_else(|| level.broken("available overflows"))?;
                save(tx, &level)?;
                tracing::info!(sku, quantity, "restocked");
                Ok(level)
            })
            .await
    }

    /// Checks, per sku, that stock is conserved and that `reserved` equals
    /// the held reservations' quantities (a difference is a leak).
    ///
    /// # Errors
    /// A storage failure.
    pub fn check_invariants(&self) -> store::Result<Vec<Violation>> {
        // Read under the writer lock, so that no reservation moves between
        // reading the stock and reading the reservations.
        self.db().locked_read(|db| {
            let levels: Vec<StockLevel> = db.scan(&prefix("stock"))?;
            let reservations: Vec<Reservation> = db.scan(&prefix("res"))?;
            let mut held = std::collections::BTreeMap::<&str, u64>::new();
            for reservation in reservations.iter().filter(|r| r.status == ReservationStatus::Held) {
                for item in &reservation.items {
                    *held.entry(&item.sku).or_default() += u64::from(item.quantity);
                }
            }
            let mut violations = Vec::new();
            for level in &levels {
                if !level.is_conserved() {
                    violations.push(Violation::new(
                        "stock_conservation",
                        &level.sku,
                        format!(
                            "available {} + reserved {} + sold {} != initial {} + restocked {}",
                            level.available, level.reserved, level.sold, level.initial, level.restocked
                        ),
                    ));
                }
                let holds = held.remove(level.sku.as_str()).unwrap_or(0);
                if holds != level.reserved {
                    violations.push(Violation::new(
                        "reservation_holds",
                        &level.sku,
                        format!("reserved {} but held reservations hold {holds}", level.reserved),
                    ));
                }
            }
            for (sku, holds) in held {
                violations.push(Violation::new(
                    "reservation_holds",
                    sku,
                    format!("held reservations hold {holds} of a sku with no stock record"),
                ));
            }
            Ok(violations)
        })
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        input: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ActivityError> {
        match activity_type {
            RESERVE => super::answer(self.reserve(super::parse(input)?)).await,
            RELEASE => {
                let request: ReservationRef = super::parse(input)?;
                super::answer(self.release(&request.reservation_id)).await
            }
            COMMIT => {
                let request: ReservationRef = super::parse(input)?;
                super::answer(self.commit(&request.reservation_id)).await
            }
            CHECK_INVARIANTS => {
                super::answer(async { Ok::<_, Error>(serde_json::json!({ "violations": self.check_invariants()? })) })
                    .await
            }
            RELEASE_EXPIRED => {
                // The service's own sweep releases expired holds within a
                // second; one this job still finds outlived that: a leak.
                let released = self.release_expired_ids(now_ms()).await?;
                let leaks: Vec<Violation> = released
                    .iter()
                    .map(|id| {
                        Violation::new("reservation_released_in_time", id, "held past its TTL until the job".into())
                    })
                    .collect();
                Ok(serde_json::json!({ "released": released.len(), "leaks": leaks }))
            }
            HELD_RESERVATIONS => super::answer(async { Ok::<_, Error>(self.held_reservations()?) }).await,
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Writes a stock level, refusing one that breaks conservation: the moves
/// above keep it by construction, so a broken level is a bug, and it stops
/// the operation instead of reaching the disk.
fn save(tx: &mut Tx<'_>, level: &StockLevel) -> Result<()> {
    if !level.is_conserved() {
        tracing::error!(?level, "refusing to write a stock level that breaks conservation");
        return Err(level.broken("available + reserved + sold != initial + restocked"));
    }
    Ok(tx.put(&stock_key(&level.sku), level)?)
}

fn stock(tx: &Tx<'_>, sku: &str) -> Result<StockLevel> {
    // A reservation names only skus that had a stock record when it was
    // made, and stock records are never deleted.
    tx.get(&stock_key(sku))?.ok_or_else(|| Error::Invariant {
        sku: sku.to_owned(),
        detail: "a reservation names a sku with no stock".into(),
    })
}

/// Moves a held reservation's stock back to `available` and closes it.
fn give_back(tx: &mut Tx<'_>, mut reservation: Reservation, status: ReservationStatus, now: u64) -> Result<()> {
    for item in &reservation.items {
        let mut level = stock(tx, &item.sku)?;
        level.unhold(u64::from(item.quantity))?;
        save(tx, &level)?;
    }
    tx.remove(&expiry_key(reservation.expires_at_ms, &reservation.reservation_id));
    reservation.status = status;
    reservation.closed_at_ms = Some(now);
    tx.put(&reservation_key(&reservation.reservation_id), &reservation).map_err(Error::from)
}

fn parse_expiry_key(index_key: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(index_key).ok()?.strip_prefix("exp/")?;
    let (at, id) = text.split_once('/')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// The background release of expired reservations. Holds the service only
/// weakly, so that dropping the shop ends it.
async fn sweep(inner: Weak<Inner>, every: Duration) {
    // The first sweep comes one interval after the open rather than at once,
    // so that a caller who drives expiry by hand (`release_expired`) right
    // after opening is not raced by it.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let inventory = Inventory { inner };
        if let Err(error) = inventory.release_expired(now_ms()).await {
            tracing::warn!(%error, "releasing expired reservations failed; trying again next sweep");
        }
    }
}

/// Registers the inventory activities, if `shop` hosts the inventory.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.inventory().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_time_and_parse_back() {
        let early = expiry_key(9, "r/1");
        let late = expiry_key(10, "a");
        assert!(early < late);
        assert_eq!(parse_expiry_key(&early), Some((9, "r/1".to_owned())));
        assert_eq!(parse_expiry_key(b"exp/x/y"), None);
    }

    #[test]
    fn stock_moves_keep_the_counters_conserved_or_refuse() {
        let mut level = StockLevel { sku: "s".into(), available: 5, reserved: 0, sold: 0, initial: 5, restocked: 0 };
        assert!(level.hold(3).is_ok());
        assert!(level.unhold(1).is_ok());
        assert!(level.sell_held(2).is_ok());
        assert!(level.sell_available(3).is_ok());
        assert!(level.is_conserved());
        assert_eq!((level.available, level.reserved, level.sold), (0, 0, 5));
        assert!(matches!(level.hold(1), Err(Error::Invariant { .. })));
        assert!(matches!(level.unhold(1), Err(Error::Invariant { .. })));
        assert!(level.is_conserved());
    }
}
