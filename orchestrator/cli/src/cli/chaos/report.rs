//! What a chaos run proves: the audit of the healed system and the report.
//! Every count under "must be zero" is a broken promise of docs/contract.md, Failure scenarios.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value, json};

/// The report of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: u64,
    pub rate: f64,
    pub broker: bool,
    pub checkouts: Checkouts,
    pub refunds: Refunds,
    /// Disruptions applied, by kind (`kill-worker`, `fault-error`…).
    pub faults: BTreeMap<String, u64>,
    /// Processes that died of an injected crash and were restarted.
    pub crashes_restarted: u64,
    /// Cancels sent while checkouts ran, and accepted.
    pub cancels_sent: u64,
    pub cancels_accepted: u64,
    /// Sagas flagged stuck after the heal that the operator's
    /// `sagaflow.retry` then moved on.
    pub retried_after_heal: u64,
    pub jobs: BTreeMap<String, Value>,
    /// What the hostile client tried, and what got through.
    pub hostile: super::hostile::Hostile,
    pub must_be_zero: MustBeZero,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Checkouts {
    pub started: u64,
    pub unacknowledged: u64,
    pub completed: u64,
    pub compensated: u64,
    /// Open at the end, flagged stuck with a reason (an alert was raised).
    pub stuck_flagged: u64,
    /// Failed with nothing to undo: the engine ends a saga `FAILED` only when
    /// no compensable step had run (a `fatal` price snapshot, say).
    pub failed_before_any_effect: u64,
    /// Any other end (cancelled, terminated).
    pub other: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Refunds {
    pub started: u64,
    pub unacknowledged: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MustBeZero {
    pub acknowledged_starts_lost: u64,
    /// Checkouts whose status disagrees with the payments ledger, the orders
    /// or the stock ([`ledger_disagreements`]).
    pub status_disagrees_with_ledger: u64,
    pub double_effects: u64,
    pub leaked_reservations: u64,
    pub stuck_without_alert: u64,
    pub invariant_violations: u64,
    /// Self-healing jobs that did not complete.
    pub jobs_failed: u64,
    /// The hostile client's attacks that worked, and new clients not served
    /// during its connection flood.
    pub hostile_got_through: u64,
}

impl MustBeZero {
    pub fn total(&self) -> u64 {
        self.acknowledged_starts_lost
            + self.status_disagrees_with_ledger
            + self.double_effects
            + self.leaked_reservations
            + self.stuck_without_alert
            + self.invariant_violations
            + self.jobs_failed
            + self.hostile_got_through
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.must_be_zero.total() == 0
    }

    pub fn text(&self) -> String {
        let z = &self.must_be_zero;
        let c = &self.checkouts;
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let kills: u64 =
            self.faults.iter().filter(|(k, _)| k.starts_with("kill") || *k == "broker-away").map(|(_, n)| n).sum();
        let mut out = format!(
            "Chaos run: seed {} · {} s · {} checkouts/s · broker {}\n\
             checkouts started (acknowledged)  {}   (never acknowledged: {})\n\
             \x20 completed {} · compensated {} · failed before any effect {} · open and flagged stuck {} · other {}\n\
             refunds started {} · completed {} (never acknowledged: {})\n\
             faults injected ({} process kills): {}\n\
             crashed by a fault and restarted   {}\n\
             cancels sent while running         {} (accepted {})\n\
             flagged after the heal, retried    {}\n",
            self.seed,
            self.duration_s,
            self.rate,
            if self.broker { "nats-server" } else { "none (embedded outbox)" },
            c.started,
            c.unacknowledged,
            c.completed,
            c.compensated,
            c.failed_before_any_effect,
            c.stuck_flagged,
            c.other,
            self.refunds.started,
            self.refunds.completed,
            self.refunds.unacknowledged,
            kills,
            faults.join(", "),
            self.crashes_restarted,
            self.cancels_sent,
            self.cancels_accepted,
            self.retried_after_heal,
        );
        out.push_str("self-healing jobs after the heal:\n");
        for (job, run) in &self.jobs {
            let line =
                run.get("summary").and_then(Value::as_str).map_or_else(|| format!("{job}: {run}"), str::to_owned);
            out.push_str(&format!("  {line}\n"));
        }
        let h = &self.hostile;
        let refused: u64 = h.attacks.values().map(|a| a.refused).sum();
        let inconclusive: u64 = h.attacks.values().map(|a| a.inconclusive).sum();
        let unexpected: u64 = h.attacks.values().map(|a| a.unexpected).sum();
        out.push_str(&format!(
            "hostile client: {} attacks of {} kinds ({} refused, {} inconclusive, {} refused with another code); \
             a flood of {} idle connections ({} evicted), {} of {} new clients served ({} not judged: orchestrator down)\n",
            h.attempts(),
            h.attacks.len(),
            refused,
            inconclusive,
            unexpected,
            h.flood_connections,
            h.flood_evicted,
            h.flood_served,
            h.flood_probes,
            h.flood_not_judged,
        ));
        out.push_str(&format!(
            "acknowledged starts lost          {}\n\
             status disagrees with the ledger  {}\n\
             double effects                    {}\n\
             leaked reservations               {}\n\
             stuck without alert               {}\n\
             invariant violations              {}\n\
             jobs failed                       {}\n\
             hostile client got through        {}\n\
             result: {}",
            z.acknowledged_starts_lost,
            z.status_disagrees_with_ledger,
            z.double_effects,
            z.leaked_reservations,
            z.stuck_without_alert,
            z.invariant_violations,
            z.jobs_failed,
            z.hostile_got_through,
            if self.passed() { "PASS" } else { "FAIL" }
        ));
        out
    }

    pub fn json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(|e| json!({ "error": e.to_string() }));
        if let Some(object) = value.as_object_mut() {
            object.insert("passed".into(), json!(self.passed()));
        }
        value
    }
}

/// Effects applied more than once, counted from the services' own records:
/// a second capture of an intent, a refund id in the ledger twice, a second
/// order for one client request, a second shipment for one order.
pub fn double_effects(ledger: &Value, orders: &Value, shipments: &Value) -> (u64, Vec<String>) {
    let mut evidence = Vec::new();
    let mut count = |what: &str, keys: Vec<String>| {
        let mut seen: HashMap<String, u64> = HashMap::new();
        for key in keys {
            *seen.entry(key).or_default() += 1;
        }
        for (key, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
            evidence.push(format!("{what} {key} x{n}"));
        }
    };
    let entries = ledger.as_array().cloned().unwrap_or_default();
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    count(
        "capture of",
        entries.iter().filter(|e| e["kind"] == "capture").map(|e| field(e, "payment_intent_id")).collect(),
    );
    count("refund", entries.iter().filter(|e| e["kind"] == "refund").map(|e| field(e, "refund_id")).collect());
    count(
        "order for request",
        orders.as_array().into_iter().flatten().map(|o| field(o, "client_request_id")).collect(),
    );
    count("shipment of", shipments.as_array().into_iter().flatten().map(|s| field(s, "order_id")).collect());
    (evidence.len() as u64, evidence)
}

/// What a checkout says, for [`ledger_disagreements`].
#[derive(Debug, Clone)]
pub struct Shown<'a> {
    pub checkout_id: &'a str,
    /// `SHIPPED`, `CANCELLED`, … as GetCheckout shows it.
    pub status: &'a str,
    pub total_cents: i64,
    pub refunded_cents: i64,
    pub payment_intent_id: &'a str,
    /// Its saga is over (an open saga may show a step in between).
    pub ended: bool,
}

/// Where a checkout's status disagrees with the services' records (ADR 0006):
/// SHIPPED or REFUNDED means captured once for the total, refunds as the
/// ledger has them, one order that shows them, the stock sold; CANCELLED
/// means no money kept, no order, no stock held; an ended saga shows neither
/// in between. `reservation` is the status of the checkout's reservation
/// (`NONE` when there is none). Empty when they agree.
pub fn ledger_disagreements(shown: &Shown<'_>, ledger: &Value, orders: &Value, reservation: &str) -> Vec<String> {
    let entries: Vec<&Value> =
        ledger.as_array().into_iter().flatten().filter(|e| e["payment_intent_id"] == shown.payment_intent_id).collect();
    let sum = |kind: &str| -> i64 {
        entries.iter().filter(|e| e["kind"] == kind).map(|e| e["amount_cents"].as_i64().unwrap_or(0)).sum()
    };
    let (captured, refunded) = (sum("capture"), sum("refund"));
    let ours: Vec<&Value> =
        orders.as_array().into_iter().flatten().filter(|o| o["checkout_id"] == shown.checkout_id).collect();
    let status = shown.status;
    let mut found = Vec::new();
    match status {
        "SHIPPED" | "REFUNDED" | "PARTIALLY_REFUNDED" => {
            if captured != shown.total_cents {
                found.push(format!("{status} but the ledger captured {captured} of {}", shown.total_cents));
            }
            if refunded != shown.refunded_cents {
                found.push(format!("{status} shows {} refunded, the ledger {refunded}", shown.refunded_cents));
            }
            match ours.as_slice() {
                [order] if order["refunded_cents"].as_i64() == Some(refunded) => {}
                [order] => {
                    found.push(format!("the order shows {} refunded, the ledger {refunded}", order["refunded_cents"]))
                }
                other => found.push(format!("{status} with {} orders", other.len())),
            }
            if reservation != "COMMITTED" {
                found.push(format!("{status} with the reservation {reservation}"));
            }
        }
        "CANCELLED" => {
            if captured != refunded {
                found.push(format!("CANCELLED but the ledger kept {} (captured {captured})", captured - refunded));
            }
            if !ours.is_empty() {
                found.push("CANCELLED with an order".into());
            }
            if reservation == "HELD" || reservation == "COMMITTED" {
                found.push(format!("CANCELLED with the reservation {reservation}"));
            }
        }
        other if shown.ended => found.push(format!("its saga ended, and it shows {other}")),
        // On its way: PAID or ORDERED must not claim what the ledger lacks.
        "PAID" | "ORDERED" if captured != shown.total_cents => {
            found.push(format!("{status} but the ledger captured {captured} of {}", shown.total_cents));
        }
        _ => {}
    }
    found
}

/// Reservations still holding stock that no open checkout owns.
pub fn leaked_reservations(reservations: &Value, owned_by_open: &HashSet<String>) -> Vec<String> {
    reservations
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"] == "HELD")
        .filter_map(|r| r["reservation_id"].as_str())
        .filter(|id| !owned_by_open.contains(*id))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_effects_are_counted_per_key() {
        let ledger = json!([
            {"kind": "capture", "payment_intent_id": "pi-1"},
            {"kind": "capture", "payment_intent_id": "pi-1"},
            {"kind": "capture", "payment_intent_id": "pi-2"},
            {"kind": "refund", "payment_intent_id": "pi-2", "refund_id": "rf-1"},
        ]);
        let orders = json!([{"client_request_id": "r-1"}, {"client_request_id": "r-2"}]);
        let shipments = json!([{"order_id": "o-1"}, {"order_id": "o-1"}]);
        let (n, evidence) = double_effects(&ledger, &orders, &shipments);
        assert_eq!(n, 2, "{evidence:?}");
    }

    #[test]
    fn a_status_must_agree_with_the_ledger_orders_and_stock() {
        let ledger = json!([
            {"kind": "capture", "payment_intent_id": "pi-1", "amount_cents": 1000},
            {"kind": "capture", "payment_intent_id": "pi-2", "amount_cents": 1000},
        ]);
        let orders = json!([{"checkout_id": "chk-1", "refunded_cents": 0}]);
        let shown = |id: &'static str, intent: &'static str, status: &'static str| Shown {
            checkout_id: id,
            status,
            total_cents: 1000,
            refunded_cents: 0,
            payment_intent_id: intent,
            ended: true,
        };
        assert!(ledger_disagreements(&shown("chk-1", "pi-1", "SHIPPED"), &ledger, &orders, "COMMITTED").is_empty());
        // The checkout: cancelled, and charged.
        let lying = ledger_disagreements(&shown("chk-2", "pi-2", "CANCELLED"), &ledger, &orders, "RELEASED");
        assert_eq!(lying, ["CANCELLED but the ledger kept 1000 (captured 1000)"]);
        assert!(ledger_disagreements(&shown("chk-3", "pi-3", "CANCELLED"), &ledger, &orders, "RELEASED").is_empty());
        let unsold = ledger_disagreements(&shown("chk-1", "pi-1", "SHIPPED"), &ledger, &orders, "HELD");
        assert_eq!(unsold.len(), 1);
        let stopped = ledger_disagreements(&shown("chk-3", "pi-3", "RESERVED"), &ledger, &orders, "HELD");
        assert_eq!(stopped, ["its saga ended, and it shows RESERVED"]);
        let open = Shown { ended: false, ..shown("chk-3", "pi-3", "RESERVED") };
        assert!(ledger_disagreements(&open, &ledger, &orders, "HELD").is_empty());
    }

    #[test]
    fn a_held_reservation_of_an_open_checkout_is_not_a_leak() {
        let reservations = json!([
            {"reservation_id": "res-open", "status": "HELD"},
            {"reservation_id": "res-lost", "status": "HELD"},
            {"reservation_id": "res-done", "status": "COMMITTED"},
        ]);
        let open = HashSet::from(["res-open".to_owned()]);
        assert_eq!(leaked_reservations(&reservations, &open), ["res-lost"]);
    }

    #[test]
    fn any_broken_promise_fails_the_run() {
        let mut report = Report::default();
        assert!(report.passed());
        report.must_be_zero.leaked_reservations = 1;
        assert!(!report.passed());
        assert!(report.text().ends_with("FAIL"));
        assert_eq!(report.json()["passed"], false);
    }
}
