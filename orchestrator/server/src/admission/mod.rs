//! Load shedding: how many calls run at once and how fast they may come, in
//! total and per token. A call over a limit is answered `RESOURCE_EXHAUSTED`
//! at once, with the wait to retry after, instead of queueing: a queue
//! would only turn overload into latency and memory.
//!
//! One [`Admission`] serves the whole server. tonic builds the layer stack
//! once per connection, so the layer holds an `Arc` to it: a limit kept per
//! connection would let a client open more connections to get more budget.
//!
//! Budgets by caller:
//! - clients (and everyone when auth is off) share the global budget, and
//!   each token also has its own, so one tenant cannot take all of it;
//! - operators, and operator-only methods, have a separate budget, so cancel
//!   and terminate still get through while clients flood the server;
//! - worker sessions and probes are not limited here: workers finish work the
//!   server already accepted, and each holds one long stream.

mod bucket;
mod layer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::bucket::Bucket;
pub use layer::AdmissionLayer;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdmissionOptions {
    /// Client calls running at once, across all callers.
    pub max_in_flight: usize,
    /// Client calls running at once for one token.
    pub max_in_flight_per_token: usize,
    /// Client calls a second across all callers; 0 is unlimited.
    pub rate_per_sec: f64,
    /// Client calls a second for one token; 0 is unlimited.
    pub rate_per_token_per_sec: f64,
    /// Operator calls running at once, a budget of their own.
    pub operator_in_flight: usize,
}

impl Default for AdmissionOptions {
    fn default() -> Self {
        // Far above what the standard workload needs (the standard
        // workload: a few hundred sagas a second), low enough that a flood is refused before
        // it exhausts memory or the store's group commit.
        Self {
            max_in_flight: 2048,
            max_in_flight_per_token: 1024,
            rate_per_sec: 20_000.0,
            rate_per_token_per_sec: 10_000.0,
            operator_in_flight: 64,
        }
    }
}

/// Which budget a call is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Budget {
    /// Not limited: worker sessions and probes.
    Exempt,
    Operator,
    /// A client call, charged to the global budget and to this token's.
    Client {
        token: String,
    },
}

/// Why a call was refused; the `reason` label of `sagaflow_requests_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Rate,
    TokenRate,
    InFlight,
    TokenInFlight,
    OperatorInFlight,
}

impl Shed {
    pub fn reason(self) -> &'static str {
        match self {
            Shed::Rate => "rate",
            Shed::TokenRate => "token_rate",
            Shed::InFlight => "in_flight",
            Shed::TokenInFlight => "token_in_flight",
            Shed::OperatorInFlight => "operator_in_flight",
        }
    }
}

/// Held while an admitted call runs; dropping it frees the slots.
#[derive(Debug)]
pub struct Admitted {
    _permits: Vec<OwnedSemaphorePermit>,
}

/// A refusal and how long the caller should wait before retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub shed: Shed,
    pub retry_after: Duration,
}

/// A refused caller retries after this when a slot, not a rate, ran out:
/// slots free up as calls finish, usually within milliseconds.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(50);

/// One token's budget.
#[derive(Debug)]
struct TokenBudget {
    in_flight: Arc<Semaphore>,
    rate: Option<Bucket>,
}

#[derive(Debug)]
pub struct Admission {
    options: AdmissionOptions,
    in_flight: Arc<Semaphore>,
    operator: Arc<Semaphore>,
    rate: Mutex<Option<Bucket>>,
    /// Keyed by token name: bounded by the auth file (at most 1024 entries),
    /// or the single `anonymous` caller when auth is off.
    tokens: Mutex<HashMap<String, TokenBudget>>,
}

impl Admission {
    pub fn new(options: AdmissionOptions) -> Self {
        let now = Instant::now();
        Self {
            options,
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            operator: Arc::new(Semaphore::new(options.operator_in_flight.max(1))),
            rate: Mutex::new(bucket(options.rate_per_sec, now)),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &AdmissionOptions {
        &self.options
    }

    /// Admits a call to `budget` now, or refuses it; never waits.
    pub fn admit(&self, budget: &Budget) -> Result<Admitted, Refused> {
        match budget {
            Budget::Exempt => Ok(Admitted { _permits: Vec::new() }),
            Budget::Operator => {
                let permit = Arc::clone(&self.operator)
                    .try_acquire_owned()
                    .map_err(|_| Refused { shed: Shed::OperatorInFlight, retry_after: IN_FLIGHT_RETRY })?;
                Ok(Admitted { _permits: vec![permit] })
            }
            Budget::Client { token } => self.admit_client(token),
        }
    }

    fn admit_client(&self, token: &str) -> Result<Admitted, Refused> {
        let now = Instant::now();
        // A poisoned lock only means another call panicked mid-update of a
        // counter; the counters are still usable.
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let budget = tokens.entry(token.to_owned()).or_insert_with(|| TokenBudget {
            in_flight: Arc::new(Semaphore::new(self.options.max_in_flight_per_token.max(1))),
            rate: bucket(self.options.rate_per_token_per_sec, now),
        });
        if let Some(rate) = &mut budget.rate {
            rate.take(now).map_err(|retry_after| Refused { shed: Shed::TokenRate, retry_after })?;
        }
        let refund = |budget: &mut TokenBudget| {
            if let Some(rate) = &mut budget.rate {
                rate.refund();
            }
        };
        let mut global = self.rate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rate) = global.as_mut()
            && let Err(retry_after) = rate.take(now)
        {
            refund(budget);
            return Err(Refused { shed: Shed::Rate, retry_after });
        }
        let Ok(mine) = Arc::clone(&budget.in_flight).try_acquire_owned() else {
            refund(budget);
            if let Some(rate) = global.as_mut() {
                rate.refund();
            }
            return Err(Refused { shed: Shed::TokenInFlight, retry_after: IN_FLIGHT_RETRY });
        };
        let Ok(shared) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            refund(budget);
            if let Some(rate) = global.as_mut() {
                rate.refund();
            }
            return Err(Refused { shed: Shed::InFlight, retry_after: IN_FLIGHT_RETRY });
        };
        Ok(Admitted { _permits: vec![mine, shared] })
    }
}

fn bucket(rate: f64, now: Instant) -> Option<Bucket> {
    // One second's worth of burst: smooths clients that send in batches.
    (rate > 0.0).then(|| Bucket::new(rate, rate, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(token: &str) -> Budget {
        Budget::Client { token: token.into() }
    }

    #[test]
    fn in_flight_limits_are_global_and_per_token() {
        let admission = Admission::new(AdmissionOptions {
            max_in_flight: 3,
            max_in_flight_per_token: 2,
            rate_per_sec: 0.0,
            rate_per_token_per_sec: 0.0,
            operator_in_flight: 1,
        });
        let a1 = admission.admit(&client("a")).expect("a1");
        let _a2 = admission.admit(&client("a")).expect("a2");
        assert_eq!(admission.admit(&client("a")).map(|_| ()).expect_err("refused").shed, Shed::TokenInFlight);
        let _b1 = admission.admit(&client("b")).expect("b1");
        assert_eq!(admission.admit(&client("b")).map(|_| ()).expect_err("refused").shed, Shed::InFlight);
        // Operators have their own slots, and workers are not counted.
        let op = admission.admit(&Budget::Operator).expect("operator");
        assert_eq!(admission.admit(&Budget::Operator).map(|_| ()).expect_err("refused").shed, Shed::OperatorInFlight);
        admission.admit(&Budget::Exempt).expect("exempt");
        drop((a1, op));
        admission.admit(&client("b")).expect("a slot was freed");
        admission.admit(&Budget::Operator).expect("operator slot freed");
    }

    #[test]
    fn rates_refuse_with_the_wait() {
        let admission = Admission::new(AdmissionOptions {
            max_in_flight: 100,
            max_in_flight_per_token: 100,
            rate_per_sec: 4.0,
            rate_per_token_per_sec: 2.0,
            operator_in_flight: 1,
        });
        let mut held = Vec::new();
        held.push(admission.admit(&client("a")).expect("a"));
        held.push(admission.admit(&client("a")).expect("a"));
        let refused = admission.admit(&client("a")).map(|_| ()).expect_err("refused");
        assert_eq!(refused.shed, Shed::TokenRate);
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(500));
        held.push(admission.admit(&client("b")).expect("b"));
        held.push(admission.admit(&client("b")).expect("b"));
        assert_eq!(admission.admit(&client("c")).map(|_| ()).expect_err("refused").shed, Shed::Rate);
    }
}
