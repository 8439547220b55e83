//! Coupons: versioned discount rules.
//!
//! Setting a coupon never edits a rule: it adds the next version, and the
//! older ones stay readable. A price snapshot records the version it applied,
//! so a checkout that started under version 1 can be explained after the rule
//! changed to version 2 (docs/contract.md, Failure scenarios, scenario 7).
//!
//! Records: `rule/<CODE>/<version, 10 digits>` → [`CouponRule`];
//! `current/<CODE>` → a copy of the latest version; `meta/seeded`.

use std::path::Path;
use std::sync::Arc;

use sagaflow_worker::{ActivityError, WorkerBuilder};
use serde::{Deserialize, Serialize};

use super::store::{self, ServiceDb, key, now_ms, prefix};
use super::{MAX_AMOUNT_CENTS, Shop};

pub const VALIDATE: &str = "coupons.validate";
pub const ACTIVITIES: &[&str] = &[VALIDATE];

/// The longest coupon code, in bytes.
pub const MAX_CODE_BYTES: usize = 64;

/// The demo rules seeded on the first open: `(code, discount, minimum subtotal)`.
pub const DEMO_COUPONS: &[(&str, Discount, u64)] = &[
    ("WELCOME10", Discount::Percent { percent_off: 10 }, 0),
    ("FLAT5", Discount::Amount { amount_off_cents: 500 }, 2_000),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("coupon {code:?}: {reason}")]
    InvalidCoupon { code: String, reason: String },
    #[error("bad coupon terms: {0}")]
    InvalidTerms(String),
    #[error("no coupon {0:?}")]
    UnknownCoupon(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

super::service_error!(Error {
    Self::InvalidCoupon { .. } => "InvalidCoupon", Rejected;
    Self::UnknownCoupon(_) => "InvalidCoupon", NotFound;
    Self::InvalidTerms(_) => "InvalidInput", Invalid;
    @wraps Self::Store;
});

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a coupon takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Discount {
    Percent { percent_off: u32 },
    Amount { amount_off_cents: u64 },
}

impl Discount {
    /// The discount on `subtotal_cents`: a percentage rounds down (the shop
    /// never gives away a fraction of a cent more than the rule says), and
    /// an amount never exceeds the subtotal.
    pub fn on(self, subtotal_cents: u64) -> u64 {
        match self {
            Self::Percent { percent_off } => subtotal_cents.saturating_mul(u64::from(percent_off.min(100))) / 100,
            Self::Amount { amount_off_cents } => amount_off_cents.min(subtotal_cents),
        }
    }
}

/// The terms of a new rule version, as `PUT /coupons/{code}` takes them:
/// exactly one of `percent_off` (1..=100) and `amount_off_cents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponTerms {
    #[serde(default)]
    pub percent_off: Option<u32>,
    #[serde(default)]
    pub amount_off_cents: Option<u64>,
    #[serde(default)]
    pub min_subtotal_cents: u64,
    /// After this instant (ms since the epoch) the coupon is refused.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// An inactive version withdraws the coupon.
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

impl Default for CouponTerms {
    fn default() -> Self {
        Self { percent_off: None, amount_off_cents: None, min_subtotal_cents: 0, expires_at_ms: None, active: true }
    }
}

impl CouponTerms {
    fn discount(&self) -> Result<Discount> {
        match (self.percent_off, self.amount_off_cents) {
            (Some(percent_off), None) if (1..=100).contains(&percent_off) => Ok(Discount::Percent { percent_off }),
            (None, Some(amount_off_cents)) if (1..=MAX_AMOUNT_CENTS).contains(&amount_off_cents) => {
                Ok(Discount::Amount { amount_off_cents })
            }
            (Some(_), None) => Err(Error::InvalidTerms("percent_off is not in 1..=100".into())),
            (None, Some(_)) => Err(Error::InvalidTerms(format!("amount_off_cents is not in 1..={MAX_AMOUNT_CENTS}"))),
            _ => Err(Error::InvalidTerms("give exactly one of percent_off and amount_off_cents".into())),
        }
    }
}

/// One version of a coupon's rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRule {
    pub code: String,
    pub version: u32,
    #[serde(flatten)]
    pub discount: Discount,
    pub min_subtotal_cents: u64,
    pub expires_at_ms: Option<u64>,
    pub active: bool,
    pub created_at_ms: u64,
}

/// The rule a price snapshot applied: `{code, version, percent_off |
/// amount_off_cents, min_subtotal_cents}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedCoupon {
    pub code: String,
    pub version: u32,
    #[serde(flatten)]
    pub discount: Discount,
    pub min_subtotal_cents: u64,
}

/// `coupons.validate` input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateRequest {
    pub code: String,
    pub subtotal_cents: u64,
}

/// `coupons.validate` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validated {
    pub coupon: AppliedCoupon,
    pub discount_cents: u64,
}

/// The coupon rules. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Coupons {
    db: Arc<ServiceDb>,
}

/// Codes are case-insensitive: `welcome10` is `WELCOME10`.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

fn check_code(code: &str) -> Result<()> {
    let valid = !code.is_empty()
        && code.len() <= MAX_CODE_BYTES
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidTerms(format!(
            "coupon code {code:?} is not 1 to {MAX_CODE_BYTES} letters, digits, '-' or '_'"
        )))
    }
}

fn rule_key(code: &str, version: u32) -> Vec<u8> {
    key("rule", &format!("{code}/{version:010}"))
}

impl Coupons {
    /// Opens the rules in `dir`, seeding the demo coupons the first time.
    ///
    /// # Errors
    /// The database cannot be opened or written.
    pub fn open(dir: &Path) -> store::Result<Self> {
        let db = ServiceDb::open(dir)?;
        db.apply(|tx| {
            if tx.get::<bool>(b"meta/seeded")?.is_some() {
                return Ok(());
            }
            for &(code, discount, min_subtotal_cents) in DEMO_COUPONS {
                let rule = CouponRule {
                    code: code.to_owned(),
                    version: 1,
                    discount,
                    min_subtotal_cents,
                    expires_at_ms: None,
                    active: true,
                    created_at_ms: now_ms(),
                };
                tx.put(&rule_key(code, 1), &rule)?;
                tx.put(&key("current", code), &rule)?;
            }
            tx.put(b"meta/seeded", &true)
        })?;
        db.flush_blocking()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Adds the next version of `code`'s rule (version 1 for a new code).
    ///
    /// # Errors
    /// [`Error::InvalidTerms`] for a bad code or bad terms.
    pub async fn set(&self, code: &str, terms: CouponTerms) -> Result<CouponRule> {
        let code = normalize_code(code);
        check_code(&code)?;
        let discount = terms.discount()?;
        self.db
            .commit(|tx| {
                let latest = tx.get::<CouponRule>(&key("current", &code))?;
                let version = latest.map_or(0, |rule| rule.version).saturating_add(1);
                let rule = CouponRule {
                    code: code.clone(),
                    version,
                    discount,
                    min_subtotal_cents: terms.min_subtotal_cents,
                    expires_at_ms: terms.expires_at_ms,
                    active: terms.active,
                    created_at_ms: now_ms(),
                };
                tx.put(&rule_key(&code, version), &rule)?;
                tx.put(&key("current", &code), &rule)?;
                tracing::info!(code, version, "coupon rule set");
                Ok(rule)
            })
            .await
    }

    /// The latest version of `code`'s rule.
    ///
    /// # Errors
    /// A storage failure.
    pub fn current(&self, code: &str) -> store::Result<Option<CouponRule>> {
        let code = normalize_code(code);
        self.db.get(&key("current", &code))
    }

    /// One version of `code`'s rule.
    ///
    /// # Errors
    /// A storage failure.
    pub fn version(&self, code: &str, version: u32) -> store::Result<Option<CouponRule>> {
        self.db.get(&rule_key(&normalize_code(code), version))
    }

    /// Every version of `code`'s rule, oldest first.
    ///
    /// # Errors
    /// A storage failure.
    pub fn history(&self, code: &str) -> store::Result<Vec<CouponRule>> {
        let code = normalize_code(code);
        self.db.scan(&key("rule", &format!("{code}/")))
    }

    /// The latest version of every coupon, by code.
    ///
    /// # Errors
    /// A storage failure.
    pub fn list(&self) -> store::Result<Vec<CouponRule>> {
        self.db.scan(&prefix("current"))
    }

    /// The rule `code` would apply to `subtotal_cents` now, and its discount.
    ///
    /// # Errors
    /// [`Error::InvalidCoupon`] for an unknown, withdrawn or expired coupon, or
    /// one whose minimum subtotal is not met.
    pub fn quote(&self, code: &str, subtotal_cents: u64, now_ms: u64) -> Result<Validated> {
        let code = normalize_code(code);
        let invalid = |reason: &str| Error::InvalidCoupon { code: code.clone(), reason: reason.to_owned() };
        let rule = self.current(&code)?.ok_or_else(|| invalid("no such coupon"))?;
        if !rule.active {
            return Err(invalid("withdrawn"));
        }
        if rule.expires_at_ms.is_some_and(|expires| now_ms >= expires) {
            return Err(invalid("expired"));
        }
        if subtotal_cents < rule.min_subtotal_cents {
            return Err(invalid(&format!(
                "needs a subtotal of at least {} cents, this one is {subtotal_cents}",
                rule.min_subtotal_cents
            )));
        }
        let discount_cents = rule.discount.on(subtotal_cents);
        Ok(Validated {
            coupon: AppliedCoupon {
                code: rule.code,
                version: rule.version,
                discount: rule.discount,
                min_subtotal_cents: rule.min_subtotal_cents,
            },
            discount_cents,
        })
    }

    pub(crate) async fn dispatch(
        &self,
        activity_type: &str,
        input: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, ActivityError> {
        match activity_type {
            VALIDATE => {
                let request: ValidateRequest = super::parse(input)?;
                super::answer(async { self.quote(&request.code, request.subtotal_cents, now_ms()) }).await
            }
            other => Err(ActivityError::retryable(ActivityError::UNKNOWN_ACTIVITY, other.to_owned())),
        }
    }
}

/// Registers `coupons.validate`, if `shop` hosts the coupons service.
pub fn register(builder: WorkerBuilder, shop: &Shop) -> WorkerBuilder {
    if shop.services().contains(&"coupons") { super::register_activities(builder, shop, ACTIVITIES) } else { builder }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn discounts_round_down_and_never_exceed_the_subtotal() {
        assert_eq!(Discount::Percent { percent_off: 10 }.on(1_299), 129);
        assert_eq!(Discount::Percent { percent_off: 100 }.on(1_299), 1_299);
        assert_eq!(Discount::Amount { amount_off_cents: 500 }.on(300), 300);
    }

    #[test]
    fn rules_serialize_with_one_discount_field() {
        let rule = AppliedCoupon {
            code: "FLAT5".into(),
            version: 2,
            discount: Discount::Amount { amount_off_cents: 500 },
            min_subtotal_cents: 2_000,
        };
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "FLAT5", "version": 2, "amount_off_cents": 500, "min_subtotal_cents": 2000})
        );
        assert_eq!(serde_json::from_value::<AppliedCoupon>(json).unwrap(), rule);
    }

    #[test]
    fn terms_need_exactly_one_discount() {
        assert!(CouponTerms::default().discount().is_err());
        assert!(CouponTerms { percent_off: Some(0), ..CouponTerms::default() }.discount().is_err());
        assert!(CouponTerms { percent_off: Some(101), ..CouponTerms::default() }.discount().is_err());
        assert!(
            CouponTerms { percent_off: Some(5), amount_off_cents: Some(5), ..CouponTerms::default() }
                .discount()
                .is_err()
        );
        assert_eq!(
            CouponTerms { amount_off_cents: Some(5), ..CouponTerms::default() }.discount().unwrap(),
            Discount::Amount { amount_off_cents: 5 }
        );
    }
}
