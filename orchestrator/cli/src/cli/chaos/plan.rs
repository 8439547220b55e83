//! The fault schedule of a chaos run, derived from its seed alone: the same
//! seed, duration and broker availability give the same schedule, so that a
//! failing run can be replayed. Pure: no clock, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::link::LinkFault;

/// The worker processes, one per service group. The catalog opens the
/// coupon rules' store too (prices need them), and sled locks a store to one
/// process, so catalog and coupons share a process.
pub const GROUPS: &[&str] = &["catalog,coupons", "inventory", "payments", "orders", "shipping", "notifications"];

/// A process the run can kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Orchestrator,
    Broker,
    /// The worker of `GROUPS[i]`.
    Worker(usize),
}

impl Target {
    pub fn name(self) -> String {
        match self {
            Self::Orchestrator => "orchestrator".into(),
            Self::Broker => "nats-server".into(),
            Self::Worker(i) => format!("worker[{}]", GROUPS.get(i).copied().unwrap_or("?")),
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// `kill -9`, then a restart `down_for_ms` later. For the broker this is
    /// "the bus is away".
    Kill { target: Target, down_for_ms: u64 },
    /// A fault switch set on a worker through its admin API, cleared after
    /// `clear_after_ms` if its count has not run out by then.
    Fault { group: usize, spec: String, clear_after_ms: u64 },
    /// A fault on the network between a worker group and the orchestrator,
    /// healed after `heal_after_ms`.
    Network { group: usize, fault: LinkFault, heal_after_ms: u64 },
}

impl Action {
    /// The kind a report counts it under.
    pub fn kind(&self) -> String {
        match self {
            Self::Kill { target: Target::Orchestrator, .. } => "kill-orchestrator".into(),
            Self::Kill { target: Target::Broker, .. } => "broker-away".into(),
            Self::Kill { target: Target::Worker(_), .. } => "kill-worker".into(),
            Self::Fault { spec, .. } => {
                let kind = spec.split_once('=').map_or("", |(_, k)| k);
                format!("fault-{}", kind.split(':').next().unwrap_or(kind))
            }
            Self::Network { fault, .. } => fault.name().into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// The faults each group may get. Most are recoverable: retries, timeouts and
/// idempotency keys must absorb them. The last ones spend a retry budget or
/// fail a step for good (ADR 0006): the capture's budget on errors (the
/// checkout compensates), a step after the pivot or a compensation for good
/// (flagged stuck until the heal and the operator's `sagaflow.retry`), a
/// refund declined for good.
const FAULTS: &[(usize, &str)] = &[
    (0, "catalog.price_snapshot=error:3"),
    (0, "catalog.price_snapshot=fatal:1"),
    (1, "inventory.reserve=error:3"),
    (1, "inventory.reserve=hang-after-effect:1"),
    (1, "inventory.reserve=crash-after-effect:1"),
    (1, "inventory.commit=error:3"),
    (2, "payments.capture=error:3"),
    (2, "payments.capture=hang-after-effect:1"),
    (2, "payments.capture=crash-after-effect:1"),
    (2, "payments.refund=error:2"),
    (3, "orders.create=error:3"),
    (3, "orders.create=hang:1"),
    (3, "orders.create=crash-after-effect:1"),
    (3, "orders.record_refund=error:3"),
    (4, "shipping.create_shipment=error:6"),
    (4, "shipping.create_shipment=hang-after-effect:1"),
    (5, "notifications.send=error:3"),
    (2, "payments.capture=error:12"),
    (2, "payments.capture=hang-after-effect:3"),
    (3, "orders.create=fatal:1"),
    (1, "inventory.release=fatal:1"),
    (2, "payments.refund=fatal:1"),
];

/// splitmix64: tiny, well distributed, and stable across library versions
/// (a seed must give the same schedule in every build).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// Settings of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    pub seed: u64,
    pub duration: Duration,
    /// Mean time between two disruptions.
    pub mean_gap: Duration,
    /// Whether a broker runs (and can be taken away).
    pub broker: bool,
}

/// The schedule: disruptions from a short warm-up until a few seconds
/// before the end, never two at once on the same process.
pub fn plan(options: PlanOptions) -> Vec<Planned> {
    let mut rng = Rng::new(options.seed);
    let end = u64::try_from(options.duration.as_millis()).unwrap_or(u64::MAX);
    let gap = u64::try_from(options.mean_gap.as_millis()).unwrap_or(2_500).max(100);
    let mut busy_until: BTreeMap<Target, u64> = BTreeMap::new();
    let mut planned = Vec::new();
    let mut at = 2_000;
    // The last disruptions must be over before the heal.
    let last = end.saturating_sub(3_000);
    loop {
        at += rng.between(gap / 2, gap + gap / 2);
        if at >= last {
            break;
        }
        let roll = rng.below(100);
        let action = if roll < 50 {
            let group = usize::try_from(rng.below(GROUPS.len() as u64)).unwrap_or(0);
            Action::Kill { target: Target::Worker(group), down_for_ms: rng.between(300, 3_000) }
        } else if roll < 65 {
            Action::Kill { target: Target::Orchestrator, down_for_ms: rng.between(200, 2_500) }
        } else if roll < 73 && options.broker {
            Action::Kill { target: Target::Broker, down_for_ms: rng.between(1_000, 6_000) }
        } else if roll < 85 {
            let group = usize::try_from(rng.below(GROUPS.len() as u64)).unwrap_or(0);
            let fault = match rng.below(3) {
                0 => LinkFault::Delay { ms: rng.between(20, 400) },
                1 => LinkFault::Loss { per_mille: u16::try_from(rng.between(5, 50)).unwrap_or(5) },
                _ => LinkFault::Partition,
            };
            Action::Network { group, fault, heal_after_ms: rng.between(1_000, 6_000) }
        } else {
            let (group, spec) = FAULTS[usize::try_from(rng.below(FAULTS.len() as u64)).unwrap_or(0)];
            Action::Fault { group, spec: spec.to_owned(), clear_after_ms: rng.between(2_000, 8_000) }
        };
        let (target, busy_for) = match &action {
            Action::Kill { target, down_for_ms } => (*target, *down_for_ms),
            Action::Fault { group, clear_after_ms, .. } => (Target::Worker(*group), *clear_after_ms),
            Action::Network { group, heal_after_ms, .. } => (Target::Worker(*group), *heal_after_ms),
        };
        if busy_until.get(&target).is_some_and(|until| *until > at) {
            continue;
        }
        let until = (at + busy_for).min(last);
        busy_until.insert(target, until);
        let action = match action {
            Action::Kill { target, .. } => Action::Kill { target, down_for_ms: until - at },
            Action::Fault { group, spec, .. } => Action::Fault { group, spec, clear_after_ms: until - at },
            Action::Network { group, fault, .. } => Action::Network { group, fault, heal_after_ms: until - at },
        };
        planned.push(Planned { at_ms: at, action });
    }
    planned
}

/// How many disruptions of each kind a schedule holds.
pub fn kinds(planned: &[Planned]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for step in planned {
        *counts.entry(step.action.kind()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> PlanOptions {
        PlanOptions { seed, duration: Duration::from_secs(120), mean_gap: Duration::from_millis(2_500), broker: true }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(plan(options(42)), plan(options(42)));
        assert_ne!(plan(options(42)), plan(options(43)));
    }

    #[test]
    fn disruptions_fit_in_the_run_and_never_overlap_on_one_process() {
        for seed in 0..50 {
            let schedule = plan(options(seed));
            assert!(!schedule.is_empty());
            let mut free_at: BTreeMap<Target, u64> = BTreeMap::new();
            for step in &schedule {
                let (target, length) = match &step.action {
                    Action::Kill { target, down_for_ms } => (*target, *down_for_ms),
                    Action::Fault { group, clear_after_ms, .. } => (Target::Worker(*group), *clear_after_ms),
                    Action::Network { group, heal_after_ms, .. } => (Target::Worker(*group), *heal_after_ms),
                };
                assert!(step.at_ms >= 2_000 && step.at_ms + length <= 117_000, "seed {seed}: {step:?}");
                assert!(free_at.get(&target).is_none_or(|free| *free <= step.at_ms), "seed {seed}: {step:?}");
                free_at.insert(target, step.at_ms + length);
            }
        }
    }

    #[test]
    fn without_a_broker_the_broker_is_never_a_target() {
        let schedule = plan(PlanOptions { broker: false, ..options(7) });
        assert!(schedule.iter().all(|s| !matches!(s.action, Action::Kill { target: Target::Broker, .. })));
    }

    #[test]
    fn every_fault_spec_parses_and_kinds_are_counted() {
        for (_, spec) in FAULTS {
            assert!(spec.parse::<sagaflow_activities::FaultSpec>().is_ok(), "{spec}");
        }
        let counts = kinds(&plan(options(42)));
        assert!(counts.get("kill-worker").copied().unwrap_or(0) > 0, "{counts:?}");
        let network: u64 =
            (0..20).flat_map(|seed| plan(options(seed))).filter(|s| matches!(s.action, Action::Network { .. })).count()
                as u64;
        assert!(network > 0, "no network fault in 20 schedules");
        assert_eq!(counts.values().sum::<u64>(), plan(options(42)).len() as u64);
    }
}
