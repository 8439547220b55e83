//! Policies as fields of a definition (docs/definitions/policies.md): the
//! retry and timeouts a step, or a compensation, takes when it sets none of
//! its own. The order is the step's own policy, then the definition's
//! [`PolicyDefaults`], then the built-in default.
//!
//! Defaults are resolved when a document is parsed ([`resolve`]): what is
//! registered, hashed and served is the *effective* policy of every step,
//! written out in full, so that the engine reads `step.retry` and
//! `step.timeouts` as ever and an operator reads what will run. The
//! `defaults` stay in the stored form too, for readers; resolving a
//! resolved definition again changes nothing, since every step then sets
//! its policies.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DefinitionError, RetryPolicy, SagaDefinition, StepKind, Timeouts};

/// A definition's default policies. Each field is optional: a field left out
/// leaves the built-in default in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct PolicyDefaults {
    /// The retry policy of a step that sets no `retry`. A retriable step
    /// takes it with `maximum_attempts: 0` (see [`retriable_retry`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The timeouts of a step that sets no `timeouts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// The retry policy of a compensation that sets no `retry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation_retry: Option<RetryPolicy>,
    /// The timeouts of a compensation that sets no `timeouts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation_timeouts: Option<Timeouts>,
}

impl PolicyDefaults {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The same checks as a step's own policies; errors name the field
    /// under `defaults`.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        for (field, retry) in [("retry", &self.retry), ("compensation_retry", &self.compensation_retry)] {
            if let Some(retry) = retry {
                check_retry(retry).map_err(|reason| DefinitionError::InvalidDefaults {
                    field: format!("{field}.backoff_coefficient"),
                    reason: reason.into(),
                })?;
            }
        }
        Ok(())
    }

    /// The same defaults with `retry` and `timeouts` applied to each policy
    /// (for [`SagaDefinition::scaled`]).
    #[must_use]
    pub(crate) fn map_durations(
        &self,
        retry: impl Fn(&RetryPolicy) -> RetryPolicy,
        timeouts: impl Fn(Timeouts) -> Timeouts,
    ) -> Self {
        Self {
            retry: self.retry.as_ref().map(&retry),
            timeouts: self.timeouts.map(&timeouts),
            compensation_retry: self.compensation_retry.as_ref().map(&retry),
            compensation_timeouts: self.compensation_timeouts.map(&timeouts),
        }
    }
}

/// The rule a step's retry policy and a default's both follow.
pub(crate) fn check_retry(retry: &RetryPolicy) -> Result<(), &'static str> {
    if retry.backoff_coefficient < 1.0 || !retry.backoff_coefficient.is_finite() {
        return Err("the backoff coefficient is at least 1");
    }
    Ok(())
}

/// What a retriable step takes from the definition's default retry: the same
/// intervals, without a limit on attempts. After the pivot a step cannot be
/// undone, so it retries until it succeeds (as `Step::retriable()` does in
/// Rust). A retriable step that wants a limit sets its own `retry`.
pub fn retriable_retry(default: &RetryPolicy) -> RetryPolicy {
    RetryPolicy { maximum_attempts: 0, ..default.clone() }
}

/// Which policies one step of a document sets itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplicitPolicies {
    pub retry: bool,
    pub timeouts: bool,
    pub compensation_retry: bool,
    pub compensation_timeouts: bool,
}

impl ExplicitPolicies {
    /// Every policy set: nothing for a default to fill in.
    pub const ALL: Self = Self { retry: true, timeouts: true, compensation_retry: true, compensation_timeouts: true };

    /// For each step of a definition document (a JSON object with `steps`),
    /// in order, which policies it writes. A step that is not an object
    /// counts as setting everything (parsing reports it anyway).
    pub fn of_document(document: &Value) -> Vec<Self> {
        let Some(steps) = document.get("steps").and_then(Value::as_array) else { return Vec::new() };
        steps
            .iter()
            .map(|step| {
                let Some(step) = step.as_object() else { return Self::ALL };
                let compensation = step.get("compensation").and_then(Value::as_object);
                let in_compensation = |key: &str| compensation.is_none_or(|c| c.contains_key(key));
                Self {
                    retry: step.contains_key("retry"),
                    timeouts: step.contains_key("timeouts"),
                    compensation_retry: in_compensation("retry"),
                    compensation_timeouts: in_compensation("timeouts"),
                }
            })
            .collect()
    }
}

/// Fills in the policies the document left out (`explicit`, one per step, as
/// [`ExplicitPolicies::of_document`] found them) from `definition.defaults`.
/// A step with no entry in `explicit` is left as it is.
pub fn resolve(definition: &mut SagaDefinition, explicit: &[ExplicitPolicies]) {
    let defaults = definition.defaults.clone();
    for (step, set) in definition.steps.iter_mut().zip(explicit) {
        if let (false, Some(retry)) = (set.retry, &defaults.retry) {
            step.retry = if step.kind == StepKind::Retriable { retriable_retry(retry) } else { retry.clone() };
        }
        if let (false, Some(timeouts)) = (set.timeouts, defaults.timeouts) {
            step.timeouts = timeouts;
        }
        if let Some(compensation) = &mut step.compensation {
            if let (false, Some(retry)) = (set.compensation_retry, &defaults.compensation_retry) {
                compensation.retry = retry.clone();
            }
            if let (false, Some(timeouts)) = (set.compensation_timeouts, defaults.compensation_timeouts) {
                compensation.timeouts = timeouts;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::document::{canonical_json, content_hash, parse_document, parse_one};

    fn document() -> Value {
        json!({
            "name": "trip",
            "version": 1,
            "defaults": {
                "retry": {"initial_interval_ms": 1000, "maximum_attempts": 3},
                "timeouts": {"start_to_close_ms": 5000},
                "compensation_retry": {"maximum_attempts": 20},
                "compensation_timeouts": {"start_to_close_ms": 60000}
            },
            "steps": [
                {"name": "hold", "action": {"type": "activity", "activity_type": "hotel.hold"},
                 "compensation": {"activity_type": "hotel.release"}},
                {"name": "charge", "kind": "pivot", "action": {"type": "activity", "activity_type": "card.charge"},
                 "retry": {"maximum_attempts": 5}},
                {"name": "book", "kind": "retriable", "action": {"type": "activity", "activity_type": "hotel.book"},
                 "timeouts": {"start_to_close_ms": 100}}
            ]
        })
    }

    #[test]
    fn a_step_takes_its_own_policy_then_the_definitions_then_the_built_in() {
        let d = parse_one(document()).unwrap();
        let hold = &d.steps[0];
        assert_eq!(
            hold.retry,
            RetryPolicy { initial_interval_ms: 1000, maximum_attempts: 3, ..RetryPolicy::default() }
        );
        assert_eq!(hold.timeouts, Timeouts { start_to_close_ms: 5000, ..Timeouts::default() });
        let compensation = hold.compensation.as_ref().unwrap();
        assert_eq!(compensation.retry, RetryPolicy { maximum_attempts: 20, ..RetryPolicy::default() });
        assert_eq!(compensation.timeouts.start_to_close_ms, 60_000);
        // Its own retry, even where it equals the built-in default: the
        // definition's default does not reach into it field by field.
        assert_eq!(d.steps[1].retry, RetryPolicy::default());
        assert_eq!(d.steps[1].timeouts.start_to_close_ms, 5000);
        // A retriable step takes the default's intervals without a limit.
        assert_eq!(d.steps[2].retry, RetryPolicy { initial_interval_ms: 1000, ..RetryPolicy::unlimited() });
        assert_eq!(d.steps[2].timeouts, Timeouts { start_to_close_ms: 100, ..Timeouts::default() });
    }

    #[test]
    fn without_defaults_the_built_ins_apply_as_before() {
        let mut doc = document();
        doc.as_object_mut().unwrap().remove("defaults");
        let d = parse_one(doc).unwrap();
        assert!(d.defaults.is_empty());
        assert_eq!(d.steps[0].retry, RetryPolicy::default());
        assert_eq!(d.steps[0].compensation.as_ref().unwrap().retry.maximum_attempts, 10);
        assert_eq!(d.steps[2].retry, RetryPolicy::default(), "a file's retriable step keeps the built-in");
        assert!(!canonical_json(&d).contains("defaults"), "no defaults, no key: the hash is as before");
        // Only some defaults: the rest are the built-ins.
        let mut doc = document();
        doc["defaults"] = json!({"timeouts": {"heartbeat_ms": 2000}});
        let d = parse_one(doc).unwrap();
        assert_eq!(d.steps[0].retry, RetryPolicy::default());
        assert_eq!(d.steps[0].timeouts.heartbeat_ms, 2000);
        assert_eq!(d.steps[0].compensation.as_ref().unwrap().timeouts, Timeouts::default());
    }

    #[test]
    fn the_effective_form_is_stable_and_resolves_to_itself() {
        let d = parse_one(document()).unwrap();
        let canonical = canonical_json(&d);
        // What is stored parses back to the same definition and hash (a
        // restart recomputes it), and so does its pretty JSON.
        let again = parse_one(serde_json::from_str(&canonical).unwrap()).unwrap();
        assert_eq!(again, d);
        assert_eq!(canonical_json(&again), canonical);
        assert_eq!(crate::SagaDefinition::from_json(&d.to_json()).unwrap(), d);
        // The defaults are kept for readers, in full.
        assert!(canonical.contains(r#""defaults":{"compensation_retry":{"#), "{canonical}");
        // The same effective policies written per step give the same steps.
        let mut spelled = serde_json::to_value(&d).unwrap();
        spelled.as_object_mut().unwrap().remove("defaults");
        let spelled = parse_one(spelled).unwrap();
        assert_eq!(spelled.steps, d.steps);
        assert_ne!(content_hash(&canonical_json(&spelled)), content_hash(&canonical));
    }

    #[test]
    fn defaults_are_validated_with_their_field_path() {
        let mut doc = document();
        doc["defaults"]["retry"]["backoff_coefficient"] = json!(0.5);
        let e = parse_document(json!([document(), doc])).unwrap_err();
        assert_eq!(e.path, "[1].defaults.retry.backoff_coefficient");
        assert_eq!(e.rule, "the backoff coefficient is at least 1");

        let mut doc = document();
        doc["defaults"]["compensation_retry"]["backoff_coefficient"] = json!(0.0);
        assert_eq!(parse_one(doc).unwrap_err().path, "defaults.compensation_retry.backoff_coefficient");

        let mut doc = document();
        doc["defaults"]["timeouts"]["start_to_close_ms"] = json!(-1);
        let e = parse_one(doc).unwrap_err();
        assert_eq!(e.path, "defaults.timeouts.start_to_close_ms");

        let mut doc = document();
        doc["defaults"]["retries"] = json!({});
        let e = parse_one(doc).unwrap_err();
        assert!(e.rule.contains("unknown field `retries`"), "{e}");
    }

    /// Definitions from before `defaults` (and `FindingsAlert::metric`)
    /// keep their content hash: a stored one still loads, a running
    /// workflow still finds the content it pinned, and applying the same
    /// file again is `IDENTICAL`.
    #[test]
    fn definitions_without_defaults_keep_their_content_hash() {
        let hash = |d: &SagaDefinition| content_hash(&canonical_json(d));
        let mut all = crate::shop::all();
        all.extend(crate::jobs::all());
        let found: Vec<(String, u32, String, String)> =
            all.iter().map(|d| (d.name.clone(), d.version, hash(d), hash(&d.scaled(0.05)))).collect();
        let pinned = [
            ("checkout", 1, "06e482e03ed43dedbd20911ead95d79317ae32a2a60c73e9ec75990f129dd071", "8a4c175e2e7e2ec3"),
            ("refund", 1, "b18f2b3d5c586d162639b445bff16ab6268f35d28237050d8c56e3513d5a9866", "01f889050fc46b84"),
            ("bench", 1, "7edb27d803311bec638c76bc84f88fa84735f314adaffddf681a467ce2cac76b", "5a5df02d8236575b"),
            (
                "job.reconcile-payments-vs-orders",
                2,
                "6914284b04c230a1d2b1d64a60f318e58f6483aed0b985bcd65409a9e52e0b12",
                "0cf220b8fd8c7c4f",
            ),
            (
                "job.release-expired-inventory",
                1,
                "a0d98669dce3e4773cbd8698a6b3d446aaadf141e88b8ad3166a19a29b621f10",
                "be3ab5edf2729978",
            ),
            (
                "job.detect-stuck-sagas",
                1,
                "45a52de7511be141b19c2e86154d82f421aa362ce21b7cc806e1972a2c77d338",
                "b7d6df783e6f30b5",
            ),
            (
                "job.replay-failed-events",
                1,
                "3c4adbe2380ff52f1b3ea74e283deb709e5ff4bb90739df1c52489ae687e66fc",
                "c8955e403835c6bd",
            ),
            (
                "job.check-invariants",
                1,
                "2dfc92492976ba39ca0595ac7d82739a6ff1bbeebba31094d5911391e3935f36",
                "42de2460fc2c428a",
            ),
            (
                "job.reconcile-payments-vs-orders",
                1,
                "d24eda382cb8085486eac93bc422f984c164a1395b38cf0e896f16850f258265",
                "bc1966fb713bf4ad",
            ),
        ];
        for (name, version, full, scaled) in pinned {
            let Some((_, _, h, s)) = found.iter().find(|(n, v, _, _)| n == name && *v == version) else {
                panic!("{name} v{version} is gone")
            };
            assert_eq!((h.as_str(), &s[..16]), (full, scaled), "{name} v{version}");
        }
        // The trip of orchestrator/cli/tests/definitions.rs, as a file writes it.
        let trip = json!({"name": "trip", "version": 1, "description": "x", "steps": [
            {"name": "hold", "kind": "compensable", "action": {"type": "activity", "activity_type": "bench.reserve"},
             "compensation": {"activity_type": "bench.release"}},
            {"name": "approve", "action": {"type": "await_signal", "signal": "approve", "timeout_ms": 0}},
            {"name": "charge", "kind": "pivot", "action": {"type": "activity", "activity_type": "bench.capture"}},
            {"name": "book", "kind": "retriable", "action": {"type": "activity", "activity_type": "bench.order"}}]});
        assert_eq!(hash(&parse_one(trip).unwrap()), "1a479a2e16daeec3143a2f3d33cd4cbcfbd3506355149bee4b4e6da9971f9415");
    }

    #[test]
    fn scaling_scales_the_defaults_too() {
        let d = parse_one(document()).unwrap().scaled(0.1);
        assert_eq!(d.defaults.retry.as_ref().unwrap().initial_interval_ms, 100);
        assert_eq!(d.defaults.timeouts.unwrap().start_to_close_ms, 500);
        assert_eq!(d.defaults.compensation_timeouts.unwrap().start_to_close_ms, 6000);
        assert_eq!(d.steps[0].timeouts.start_to_close_ms, 500);
    }
}
