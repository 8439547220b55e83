//! Payments: a payment gateway simulator with intents, captures, voids,
//! refunds and an append-only ledger.
//!
//! Money safety comes first (docs/contract.md, Principles): an intent is captured at most
//! once, whatever the number of calls or keys; refunds never add up to more
//! than the capture; every movement of money is a ledger entry written in the
//! same batch as the intent it changes. `payment_method: "card_declined"` is
//! the simulator's declining card.
//!
//! Records: `intent/<payment intent id>` → [`PaymentIntent`];
//! `refund/<refund id>` → [`RefundRecord`]; `ledger/<seq, 20 digits>` →
//! [`LedgerEntry`]; `meta/ledger_seq`; idempotency records.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::audit::{
    CapturedPayment, Captures, CapturesRequest, DEFAULT_PAGE_BYTES, DEFAULT_PAGE_SIZE, LedgerRefund, MAX_PAGE_SIZE,
};
use super::store::{self, ServiceDb, Tx, check_id, key, now_ms, prefix};
use super::{MAX_AMOUNT_CENTS, Shop, Violation};

pub const CAPTURE: &str = "payments.capture";
pub const REFUND: &str = "payments.refund";
/// For the `check-invariants` job: `{violations}`, as `/invariants` shows them.
pub const CHECK_INVARIANTS: &str = "payments.check_invariants";
/// For the reconciliation jobs: every capture with its refunds ([`Captures`]).
pub const CAPTURES: &str = "payments.captures";
pub const ACTIVITIES: &[&str] = &[CAPTURE, REFUND, CHECK_INVARIANTS, CAPTURES];

/// The simulator's declining payment method.
pub const DECLINED_METHOD: &str = "card_declined";
/// The payment method of a request that names none.
pub const DEFAULT_METHOD: &str = "card";
/// Every method the simulated gateway knows. The checkout API refuses any
/// other up front: an unknown method would otherwise be charged as a card.
pub const METHODS: &[&str] = &[DEFAULT_METHOD, DECLINED_METHOD];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    InvalidInput(String),
    #[error("amount {0} cents is not in 1..={MAX_AMOUNT_CENTS}")]
    InvalidAmount(i64),
    #[error("payment {0:?} declined by the card issuer")]
    PaymentDeclined(String),
    #[error("unknown payment intent {0:?}")]
    UnknownPaymentIntent(String),
    #[error("payment intent {payment_intent_id:?} was created for {expected}, not {requested}")]
    IntentMismatch { payment_intent_id: String, expected: String, requested: String },
    #[error("payment intent {0:?} was voided")]
    IntentVoided(String),
    #[error("payment intent {0:?} is already captured")]
    AlreadyCaptured(String),
    #[error("refund of {requested} cents on {payment_intent_id:?} exceeds what is refundable ({refundable} cents)")]
    RefundExceedsCapture { payment_intent_id: String, requested: u64, refundable: u64 },
    /// A write would break a money invariant: a bug, never a verdict on the
    /// input. The operation is refused and nothing is written.
    #[error("payments invariant broken on {payment_intent_id:?}: {detail}")]
    Invariant { payment_intent_id: String, detail: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

super::service_error!(Error {
    Self::InvalidInput(_) => "InvalidInput", Invalid;
    Self::InvalidAmount(_) => "InvalidAmount", Invalid;
    Self::PaymentDeclined(_) => "PaymentDeclined", Rejected;
    Self::UnknownPaymentIntent(_) => "UnknownPaymentIntent", NotFound;
    Self::IntentMismatch { .. } => "IntentMismatch", Conflict;
    Self::IntentVoided(_) => "IntentVoided", Conflict;
    Self::AlreadyCaptured(_) => "AlreadyCaptured", Conflict;
    Self::RefundExceedsCapture { .. } => "RefundExceedsCapture", Rejected;
    Self::Invariant { .. } => "InvariantViolated", Internal;
    @wraps Self::Store;
});

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    RequiresCapture,
    Captured,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub payment_intent_id: String,
    pub customer_id: String,
    pub payment_method: String,
    pub amount_cents: u64,
    pub status: IntentStatus,
    pub captured_cents: u64,
    pub refunded_cents: u64,
    pub created_at_ms: u64,
    pub captured_at_ms: Option<u64>,
    pub voided_at_ms: Option<u64>,
}

impl PaymentIntent {
    /// What may still be refunded.
    pub fn refundable_cents(&self) -> u64 {
        self.captured_cents.saturating_sub(self.refunded_cents)
    }
}

/// `create_intent` input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateIntent {
    pub payment_intent_id: String,
    pub customer_id: String,
    #[serde(default)]
    pub payment_method: Option<String>,
    pub amount_cents: i64,
}

/// `payments.capture` input; the key is `payment_intent_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub payment_intent_id: String,
    pub customer_id: String,
    /// Absent or null: [`DEFAULT_METHOD`].
    #[serde(default)]
    pub payment_method: Option<String>,
    pub amount_cents: i64,
}

/// `payments.capture` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub payment_intent_id: String,
    pub captured_cents: u64,
    pub status: IntentStatus,
}

/// `payments.refund` input; the key is `refund_id` within `payment_intent_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub refund_id: String,
    pub payment_intent_id: String,
    pub amount_cents: i64,
}

/// `payments.refund` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub payment_intent_id: String,
    pub refunded_cents: u64,
    /// The intent's refunds so far, this one included.
    pub total_refunded_cents: u64,
}

/// Where a refund is recorded: its id is the caller's, unique within the intent.
fn refund_key(payment_intent_id: &str, refund_id: &str) -> String {
    format!("{payment_intent_id}/{refund_id}")
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub refund_id: String,
    pub payment_intent_id: String,
    pub amount_cents: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Capture,
    Refund,
    Void,
}

/// One movement of money (or, for a void, the release of an authorisation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// 1, 2, 3, … with no gaps: a gap would be a lost entry.
    pub seq: u64,
    pub kind: LedgerKind,
    pub payment_intent_id: String,
    pub amount_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    pub at_ms: u64,
}

/// The payment gateway simulator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payments {
    db: Arc<ServiceDb>,
}

fn intent_key(id: &str) -> Vec<u8> {
    key("intent", id)
}

fn amount(cents: i64) -> Result<u64> {
    u64::try_from(cents).ok().filter(|c| (1..=MAX_AMOUNT_CENTS).contains(c)).ok_or(Error::InvalidAmount(cents))
}

/// Writes an intent, refusing one whose refunds exceed its capture, or that
/// holds a capture without being captured: the operations keep both by
/// construction, so a broken intent is a bug, and it stops the operation
/// instead of reaching the disk.
fn save(tx: &mut Tx<'_>, intent: &PaymentIntent) -> Result<()> {
    let broken = if intent.refunded_cents > intent.captured_cents {
        Some("refunds exceed the capture")
    } else if (intent.captured_cents > 0) != (intent.status == IntentStatus::Captured) {
        Some("captured amount and status disagree")
    } else {
        None
    };
    if let Some(detail) = broken {
        tracing::error!(?intent, detail, "refusing to write a broken payment intent");
        return Err(Error::Invariant { payment_intent_id: intent.payment_intent_id.clone(), detail: detail.into() });
    }
    Ok(tx.put(&intent_key(&intent.payment_intent_id), intent)?)
}

/// Appends an entry to the ledger, in the operation's batch.
fn append(tx: &mut Tx<'_>, mut entry: LedgerEntry) -> store::Result<()> {
    let seq = tx.get::<u64>(b"meta/ledger_seq")?.unwrap_or(0).saturating_add(1);
    entry.seq = seq;
    tx.put(&key("ledger", &format!("{seq:020}")), &entry)?;
    tx.put(b"meta/ledger_seq", &seq)
}

impl Payments {
    /// Opens the gateway's state in `dir`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> store::Result<Self> {
        Ok(Self { db: Arc::new(ServiceDb::open(dir)?) })
    }

    /// # Errors
    /// A storage failure.
    pub fn intent(&self, payment_intent_id: &str) -> store::Result<Option<PaymentIntent>> {
        self.db.get(&intent_key(payment_intent_id))
    }

    /// Every intent, by id.
    ///
    /// # Errors
    /// A storage failure.
    pub fn intents(&self) -> store::Result<Vec<PaymentIntent>> {
        self.db.scan(&prefix("intent"))
    }

    /// What the intent captured (0 if unknown or not captured).
    ///
    /// # Errors
    /// A storage failure.
    pub fn captured_cents(&self, payment_intent_id: &str) -> store::Result<u64> {
        Ok(self.intent(payment_intent_id)?.map_or(0, |i| i.captured_cents))
    }

    /// What was refunded on the intent so far.
    ///
    /// # Errors
    /// A storage failure.
    pub fn refunded_cents(&self, payment_intent_id: &str) -> store::Result<u64> {
        Ok(self.intent(payment_intent_id)?.map_or(0, |i| i.refunded_cents))
    }

    /// What may still be refunded on the intent.
    ///
    /// # Errors
    /// A storage failure.
    pub fn refundable(&self, payment_intent_id: &str) -> store::Result<u64> {
        Ok(self.intent(payment_intent_id)?.map_or(0, |i| i.refundable_cents()))
    }

    /// # Errors
    /// A storage failure.
    pub fn refund_record(&self, payment_intent_id: &str, refund_id: &str) -> store::Result<Option<RefundRecord>> {
        match self.db.get(&key("refund", &refund_key(payment_intent_id, refund_id)))? {
            Some(record) => Ok(Some(record)),
            // Recorded before refund ids were scoped to their intent.
            None => Ok(self
                .db
                .get::<RefundRecord>(&key("refund", refund_id))?
                .filter(|r| r.payment_intent_id == payment_intent_id)),
        }
    }

    /// The whole ledger, oldest first.
    ///
    /// # Errors
    /// A storage failure.
    pub fn ledger(&self) -> store::Result<Vec<LedgerEntry>> {
        self.db.scan(&prefix("ledger"))
    }

    /// Creates an intent awaiting capture. Creating the same intent again is
    /// a no-op; the same id with another customer or amount is refused.
    ///
    /// # Errors
    /// `InvalidInput`, `InvalidAmount`, `IntentMismatch`.
    pub async fn create_intent(&self, request: CreateIntent) -> Result<PaymentIntent> {
        check_id("payment_intent_id", &request.payment_intent_id).map_err(Error::InvalidInput)?;
        check_id("customer_id", &request.customer_id).map_err(Error::InvalidInput)?;
        let amount_cents = amount(request.amount_cents)?;
        self.db
            .commit(|tx| {
                let intent = existing_or_new(
                    tx,
                    &request.payment_intent_id,
                    &request.customer_id,
                    request.payment_method.as_deref(),
                    amount_cents,
                )?;
                save(tx, &intent)?;
                Ok(intent)
            })
            .await
    }

    /// Captures the intent's amount, creating the intent if needed. At most
    /// once per intent: a repeated capture returns the existing one.
    ///
    /// # Errors
    /// Not retryable: `PaymentDeclined`, `InvalidAmount`, `InvalidInput`,
    /// `IntentMismatch` (the intent is for another customer or amount),
    /// `IntentVoided`, `IdempotencyKeyReused`.
    pub async fn capture(&self, request: CaptureRequest) -> Result<Capture> {
        check_id("payment_intent_id", &request.payment_intent_id).map_err(Error::InvalidInput)?;
        check_id("customer_id", &request.customer_id).map_err(Error::InvalidInput)?;
        let amount_cents = amount(request.amount_cents)?;
        if request.payment_method.as_deref() == Some(DECLINED_METHOD) {
            tracing::info!(payment_intent_id = %request.payment_intent_id, "payment declined");
            return Err(Error::PaymentDeclined(request.payment_intent_id));
        }
        self.db
            .idempotent(CAPTURE, &request.payment_intent_id, &request, |tx| {
                let mut intent = existing_or_new(
                    tx,
                    &request.payment_intent_id,
                    &request.customer_id,
                    request.payment_method.as_deref(),
                    amount_cents,
                )?;
                match intent.status {
                    IntentStatus::Voided => return Err(Error::IntentVoided(intent.payment_intent_id)),
                    IntentStatus::Captured => {
                        // Captured by this very key is answered by the
                        // idempotency record before we get here; a capture
                        // recorded under any other key still counts once.
                        return Ok(Capture {
                            payment_intent_id: intent.payment_intent_id,
                            captured_cents: intent.captured_cents,
                            status: IntentStatus::Captured,
                        });
                    }
                    IntentStatus::RequiresCapture => {}
                }
                let now = now_ms();
                intent.status = IntentStatus::Captured;
                intent.captured_cents = amount_cents;
                intent.captured_at_ms = Some(now);
                save(tx, &intent)?;
                append(
                    tx,
                    LedgerEntry {
                        seq: 0,
                        kind: LedgerKind::Capture,
                        payment_intent_id: intent.payment_intent_id.clone(),
                        amount_cents,
                        refund_id: None,
                        at_ms: now,
                    },
                )?;
                tracing::info!(payment_intent_id = %intent.payment_intent_id, amount_cents, "payment captured");
                Ok(Capture {
                    payment_intent_id: intent.payment_intent_id,
                    captured_cents: amount_cents,
                    status: IntentStatus::Captured,
                })
            })
            .await
    }

    /// Voids an intent before capture. Voiding a voided intent is a no-op.
    ///
    /// # Errors
    /// `UnknownPaymentIntent`, `AlreadyCaptured`.
    pub async fn void(&self, payment_intent_id: &str) -> Result<PaymentIntent> {
        self.db
            .commit(|tx| {
                let mut intent: PaymentIntent = tx
                    .get(&intent_key(payment_intent_id))?
                    .ok_or_else(|| Error::UnknownPaymentIntent(payment_intent_id.to_owned()))?;
                match intent.status {
                    IntentStatus::Voided => return Ok(intent),
                    IntentStatus::Captured => return Err(Error::AlreadyCaptured(payment_intent_id.to_owned())),
                    IntentStatus::RequiresCapture => {}
                }
                let now = now_ms();
                intent.status = IntentStatus::Voided;
                intent.voided_at_ms = Some(now);
                save(tx, &intent)?;
                append(
                    tx,
                    LedgerEntry {
                        seq: 0,
                        kind: LedgerKind::Void,
                        payment_intent_id: payment_intent_id.to_owned(),
                        amount_cents: intent.amount_cents,
                        refund_id: None,
                        at_ms: now,
                    },
                )?;
                tracing::info!(payment_intent_id, "payment intent voided");
                Ok(intent)
            })
            .await
    }

    /// Refunds part or all of a capture, at most once per `refund_id`.
    ///
    /// # Errors
    /// Not retryable: `RefundExceedsCapture` (also for an intent that is not
    /// captured), `UnknownPaymentIntent`, `InvalidAmount`, `InvalidInput`,
    /// `IdempotencyKeyReused`.
    pub async fn refund(&self, request: RefundRequest) -> Result<Refund> {
        check_id("refund_id", &request.refund_id).map_err(Error::InvalidInput)?;
        check_id("payment_intent_id", &request.payment_intent_id).map_err(Error::InvalidInput)?;
        let amount_cents = amount(request.amount_cents)?;
        // A refund id is unique within its payment intent (one checkout),
        // as a Stripe idempotency key is within its account: rf-1 on two
        // checkouts is two refunds, not a reused key.
        let scoped = refund_key(&request.payment_intent_id, &request.refund_id);
        check_id("refund_id with its payment_intent_id", &scoped).map_err(Error::InvalidInput)?;
        // Refunds made before the ids were scoped were recorded under the bare
        // id; a retry of one must get that refund back, never a second one.
        if let Some(earlier) = self.db.replayed(REFUND, &request.refund_id, &request).await? {
            return Ok(earlier);
        }
        self.db
            .idempotent(REFUND, &scoped, &request, |tx| {
                let id = &request.payment_intent_id;
                let mut intent: PaymentIntent =
                    tx.get(&intent_key(id))?.ok_or_else(|| Error::UnknownPaymentIntent(id.clone()))?;
                let refundable = if intent.status == IntentStatus::Captured { intent.refundable_cents() } else { 0 };
                if amount_cents > refundable {
                    return Err(Error::RefundExceedsCapture {
                        payment_intent_id: id.clone(),
                        requested: amount_cents,
                        refundable,
                    });
                }
                let now = now_ms();
                intent.refunded_cents = intent.refunded_cents.saturating_add(amount_cents);
                save(tx, &intent)?;
                let record = RefundRecord {
                    refund_id: request.refund_id.clone(),
                    payment_intent_id: id.clone(),
                    amount_cents,
                    at_ms: now,
                };
                tx.put(&key("refund", &scoped), &record)?;
                append(
                    tx,
                    LedgerEntry {
                        seq: 0,
                        kind: LedgerKind::Refund,
                        payment_intent_id: id.clone(),
                        amount_cents,
                        refund_id: Some(request.refund_id.clone()),
                        at_ms: now,
                    },
                )?;
                tracing::info!(payment_intent_id = %id, refund_id = %request.refund_id, amount_cents, "refunded");
                Ok(Refund {
                    refund_id: request.refund_id.clone(),
                    payment_intent_id: id.clone(),
                    refunded_cents: amount_cents,
                    total_refunded_cents: intent.refunded_cents,
                })
            })
            .await
    }

    /// Every captured intent with its refunds from the ledger, as of the
    /// moment before the read: what the reconciliation compares orders with.
    ///
    /// # Errors
    /// A storage failure.
    pub fn captures(&self) -> store::Result<Captures> {
        let as_of_ms = now_ms();
        let (intents, ledger) = self.db.locked_read(|db| {
            let intents: Vec<PaymentIntent> = db.scan(&prefix("intent"))?;
            let ledger: Vec<LedgerEntry> = db.scan(&prefix("ledger"))?;
            Ok::<_, store::Error>((intents, ledger))
        })?;
        let mut refunds = BTreeMap::<String, Vec<LedgerRefund>>::new();
        for entry in ledger.into_iter().filter(|e| e.kind == LedgerKind::Refund) {
            if let Some(refund_id) = entry.refund_id {
                refunds.entry(entry.payment_intent_id).or_default().push(LedgerRefund {
                    refund_id,
                    amount_cents: entry.amount_cents,
                    at_ms: entry.at_ms,
                });
            }
        }
        let captures = intents
            .into_iter()
            .filter(|i| i.status == IntentStatus::Captured)
            .map(|i| CapturedPayment {
                refunds: refunds.remove(&i.payment_intent_id).unwrap_or_default(),
                captured_at_ms: i.captured_at_ms.unwrap_or(i.created_at_ms),
                payment_intent_id: i.payment_intent_id,
                captured_cents: i.captured_cents,
                refunded_cents: i.refunded_cents,
            })
            .collect();
        Ok(Captures { as_of_ms, captures, after: None, next: None })
    }

    /// One page of [`captures`](Self::captures): the captured intents among
    /// the (at most `page_size`) intents whose ids sort after `after`,
    /// stopping early once their JSON reaches `page_bytes`. `next` is the
    /// last intent read when more follow, so that consecutive pages split
    /// the intents into ranges with neither gap nor overlap. The work and the
    /// result are bounded: the refunds of each capture are read by its
    /// intent, not from the whole ledger (but see [`legacy_refunds`]).
    ///
    /// # Errors
    /// A storage failure.
    pub fn captures_page(&self, after: Option<&str>, page_size: usize, page_bytes: usize) -> store::Result<Captures> {
        let as_of_ms = now_ms();
        self.db.locked_read(|db| {
            let mut captures = Vec::new();
            let (mut read, mut bytes, mut last, mut more) = (0, 0, None, false);
            let mut legacy = Vec::new();
            for item in db.range::<PaymentIntent>("intent", after, None) {
                let (id, intent) = item?;
                if read >= page_size.max(1) || bytes >= page_bytes {
                    more = true;
                    break;
                }
                read += 1;
                last = Some(id);
                if intent.status != IntentStatus::Captured {
                    continue;
                }
                let scoped = key("refund", &refund_key(&intent.payment_intent_id, ""));
                let records: Vec<RefundRecord> = db.scan(&scoped)?;
                let refunds: Vec<LedgerRefund> = records
                    .into_iter()
                    .map(|r| LedgerRefund { refund_id: r.refund_id, amount_cents: r.amount_cents, at_ms: r.at_ms })
                    .collect();
                if refunds.iter().map(|r| r.amount_cents).sum::<u64>() != intent.refunded_cents {
                    legacy.push(captures.len());
                }
                let capture = CapturedPayment {
                    refunds,
                    captured_at_ms: intent.captured_at_ms.unwrap_or(intent.created_at_ms),
                    payment_intent_id: intent.payment_intent_id,
                    captured_cents: intent.captured_cents,
                    refunded_cents: intent.refunded_cents,
                };
                bytes += serde_json::to_vec(&capture).map_or(0, |json| json.len());
                captures.push(capture);
            }
            if !legacy.is_empty() {
                legacy_refunds(db, &mut captures, &legacy)?;
            }
            Ok(Captures { as_of_ms, captures, after: after.map(str::to_owned), next: if more { last } else { None } })
        })
    }

    /// Checks, from the ledger and the intents: each intent is captured at
    /// most once, for what the intent says; its refunds match the ledger and
    /// never exceed the capture; the ledger's sequence has no gap.
    ///
    /// # Errors
    /// A storage failure.
    pub fn check_invariants(&self) -> store::Result<Vec<Violation>> {
        self.db.locked_read(|db| {
            let intents: Vec<PaymentIntent> = db.scan(&prefix("intent"))?;
            let ledger: Vec<LedgerEntry> = db.scan(&prefix("ledger"))?;
            let mut violations = Vec::new();
            #[derive(Default)]
            struct Seen {
                captures: u64,
                captured: u64,
                refunded: u64,
            }
            let mut seen = BTreeMap::<&str, Seen>::new();
            for (index, entry) in ledger.iter().enumerate() {
                if entry.seq != index as u64 + 1 {
                    violations.push(Violation::new(
                        "ledger_sequence",
                        &entry.payment_intent_id,
                        format!("entry {} found where {} was expected", entry.seq, index + 1),
                    ));
                }
                let totals = seen.entry(&entry.payment_intent_id).or_default();
                match entry.kind {
                    LedgerKind::Capture => {
                        totals.captures += 1;
                        totals.captured = totals.captured.saturating_add(entry.amount_cents);
                    }
                    LedgerKind::Refund => totals.refunded = totals.refunded.saturating_add(entry.amount_cents),
                    LedgerKind::Void => {}
                }
            }
            let none = Seen::default();
            for intent in &intents {
                let id = intent.payment_intent_id.as_str();
                let totals = seen.get(id).unwrap_or(&none);
                if totals.captures > 1 {
                    violations.push(Violation::new(
                        "capture_at_most_once",
                        id,
                        format!("{} capture entries in the ledger", totals.captures),
                    ));
                }
                if totals.captured != intent.captured_cents {
                    violations.push(Violation::new(
                        "capture_matches_ledger",
                        id,
                        format!("intent captured {} but the ledger {}", intent.captured_cents, totals.captured),
                    ));
                }
                if totals.refunded != intent.refunded_cents {
                    violations.push(Violation::new(
                        "refunds_match_ledger",
                        id,
                        format!("intent refunded {} but the ledger {}", intent.refunded_cents, totals.refunded),
                    ));
                }
                if totals.refunded > totals.captured || intent.refunded_cents > intent.captured_cents {
                    violations.push(Violation::new(
                        "refunds_within_capture",
                        id,
                        format!(
                            "refunded {} of a {} capture",
                            totals.refunded.max(intent.refunded_cents),
                            intent.captured_cents
                        ),
                    ));
                }
            }
            for id in seen.keys().filter(|id| !intents.iter().any(|i| i.payment_intent_id == **id)) {
                violations.push(Violation::new(
                    "capture_matches_ledger",
                    id,
                    "ledger entries for an unknown intent".into(),
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
            CAPTURE => super::answer(self.capture(super::parse(input)?)).await,
            REFUND => super::answer(self.refund(super::parse(input)?)).await,
            CHECK_INVARIANTS => {
                super::answer(async { Ok::<_, Error>(serde_json::json!({ "violations": self.check_invariants()? })) })
                    .await
            }
            CAPTURES => {
                let request: CapturesRequest = super::parse(input)?;
                super::answer(async {
                    if request.page_size.is_none() && request.page_bytes.is_none() {
                        return Ok::<_, Error>(self.captures()?);
                    }
                    let size = request.page_size.unwrap_or(DEFAULT_PAGE_SIZE).min(MAX_PAGE_SIZE);
                    let bytes = request.page_bytes.unwrap_or(DEFAULT_PAGE_BYTES);
                    Ok(self.captures_page(request.after.as_deref(), size, bytes)?)
                })
                .await
            }
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Refunds recorded before refund ids were scoped to their intent are
/// stored under the bare refund id, so a page cannot find them by intent:
/// for the captures at `indexes` (whose scoped refunds do not add up to
/// what the intent says was refunded) the ledger answers instead, read
/// once for the page. A store written since the scoping never comes here.
fn legacy_refunds(db: &ServiceDb, captures: &mut [CapturedPayment], indexes: &[usize]) -> store::Result<()> {
    let wanted: BTreeMap<String, usize> =
        indexes.iter().filter_map(|&i| captures.get(i).map(|c| (c.payment_intent_id.clone(), i))).collect();
    let mut refunds = BTreeMap::<usize, Vec<LedgerRefund>>::new();
    for entry in db.scan::<LedgerEntry>(&prefix("ledger"))? {
        if let (LedgerKind::Refund, Some(refund_id), Some(&index)) =
            (entry.kind, entry.refund_id, wanted.get(&entry.payment_intent_id))
        {
            refunds.entry(index).or_default().push(LedgerRefund {
                refund_id,
                amount_cents: entry.amount_cents,
                at_ms: entry.at_ms,
            });
        }
    }
    for &index in wanted.values() {
        if let Some(capture) = captures.get_mut(index) {
            capture.refunds = refunds.remove(&index).unwrap_or_default();
        }
    }
    Ok(())
}

/// The intent `id`, checked against the request, or a new one.
fn existing_or_new(
    tx: &Tx<'_>,
    id: &str,
    customer_id: &str,
    payment_method: Option<&str>,
    amount_cents: u64,
) -> Result<PaymentIntent> {
    match tx.get::<PaymentIntent>(&intent_key(id))? {
        Some(intent) => {
            if intent.customer_id != customer_id || intent.amount_cents != amount_cents {
                return Err(Error::IntentMismatch {
                    payment_intent_id: id.to_owned(),
                    expected: format!("{} cents from {}", intent.amount_cents, intent.customer_id),
                    requested: format!("{amount_cents} cents from {customer_id}"),
                });
            }
            Ok(intent)
        }
        None => Ok(PaymentIntent {
            payment_intent_id: id.to_owned(),
            customer_id: customer_id.to_owned(),
            payment_method: payment_method.unwrap_or(DEFAULT_METHOD).to_owned(),
            amount_cents,
            status: IntentStatus::RequiresCapture,
            captured_cents: 0,
            refunded_cents: 0,
            created_at_ms: now_ms(),
            captured_at_ms: None,
            voided_at_ms: None,
        }),
    }
}

/// Registers the payments activities, if `shop` hosts payments.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.payments().is_some() { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn capture(id: &str) -> CaptureRequest {
        CaptureRequest {
            payment_intent_id: id.into(),
            customer_id: "alice".into(),
            payment_method: None,
            amount_cents: 1_000,
        }
    }

    /// Pages read one after the other, each from the last's `next`, hold
    /// exactly the captures of the whole snapshot, refunds included, and
    /// stop at their size or their bytes.
    #[tokio::test]
    async fn pages_split_the_snapshot_without_gap_or_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let payments = Payments::open(dir.path()).unwrap();
        for i in 0..25 {
            payments.capture(capture(&format!("pi-{i:02}"))).await.unwrap();
        }
        // An intent that is never captured still counts towards a page's size.
        payments
            .create_intent(CreateIntent {
                payment_intent_id: "pi-05x".into(),
                customer_id: "bob".into(),
                payment_method: None,
                amount_cents: 10,
            })
            .await
            .unwrap();
        let refund = RefundRequest { refund_id: "rf-1".into(), payment_intent_id: "pi-07".into(), amount_cents: 300 };
        payments.refund(refund).await.unwrap();
        let whole = payments.captures().unwrap();
        for (size, bytes) in [(7, usize::MAX), (1_000, 400)] {
            let (mut pages, mut after, mut read) = (0, None::<String>, Vec::new());
            loop {
                let page = payments.captures_page(after.as_deref(), size, bytes).unwrap();
                assert_eq!(page.after, after);
                assert!(page.captures.len() <= size, "{size}");
                pages += 1;
                read.extend(page.captures);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(read, whole.captures, "pages of {size} intents or {bytes} bytes");
            assert!(pages > 1, "{pages} pages");
        }
        let refunded = whole.captures.iter().find(|c| c.payment_intent_id == "pi-07").unwrap();
        assert_eq!(refunded.refunds.len(), 1);
    }
}
