//! Fault switches: `SERVICE.OPERATION=KIND[:COUNT]` (docs/contract.md, CLI).
//!
//! The target is an activity type (`payments.capture`), or `SERVICE.*` for
//! every operation of a service. COUNT is how many calls are hit; without it,
//! every call is.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sagaflow_worker::ActivityError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A retryable failure, before the effect.
    Error,
    /// A non-retryable failure, before the effect.
    Fatal,
    /// Never answers, and applies nothing.
    Hang,
    /// Applies the effect, then never answers.
    HangAfterEffect,
    /// Applies the effect, then the process exits at once.
    CrashAfterEffect,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Fatal => "fatal",
            Self::Hang => "hang",
            Self::HangAfterEffect => "hang-after-effect",
            Self::CrashAfterEffect => "crash-after-effect",
        }
    }

    fn after_effect(self) -> bool {
        matches!(self, Self::HangAfterEffect | Self::CrashAfterEffect)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    pub target: String,
    pub kind: FaultKind,
    /// `None`: every call.
    pub count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad fault spec {spec:?}: {reason} (expected SERVICE.OPERATION=KIND[:COUNT], KIND one of error, fatal, hang, hang-after-effect, crash-after-effect)"
)]
pub struct InvalidFaultSpec {
    pub spec: String,
    pub reason: String,
}

impl FromStr for FaultSpec {
    type Err = InvalidFaultSpec;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| InvalidFaultSpec { spec: spec.into(), reason: reason.into() };
        let (target, rest) = spec.split_once('=').ok_or_else(|| invalid("no '='"))?;
        let (service, operation) = target.split_once('.').ok_or_else(|| invalid("the target has no '.'"))?;
        let name_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok(service) || !(operation == "*" || name_ok(operation)) {
            return Err(invalid(
                "SERVICE and OPERATION are names of letters, digits, '_' or '-' (OPERATION may be '*')",
            ));
        }
        let (kind, count) = match rest.split_once(':') {
            Some((kind, count)) => {
                let count: u32 = count.parse().map_err(|_| invalid("COUNT is a positive number"))?;
                if count == 0 {
                    return Err(invalid("COUNT is a positive number"));
                }
                (kind, Some(count))
            }
            None => (rest, None),
        };
        let kind = match kind {
            "error" => FaultKind::Error,
            "fatal" => FaultKind::Fatal,
            "hang" => FaultKind::Hang,
            "hang-after-effect" => FaultKind::HangAfterEffect,
            "crash-after-effect" => FaultKind::CrashAfterEffect,
            _ => return Err(invalid("unknown KIND")),
        };
        Ok(Self { target: target.into(), kind, count })
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.target, self.kind.name())?;
        if let Some(count) = self.count {
            write!(f, ":{count}")?;
        }
        Ok(())
    }
}

impl FaultSpec {
    /// Refuses a target that names no activity among `known` (activity types
    /// such as `payments.capture`): a switch on `payment.capture`, a typo,
    /// would be accepted and never fire, and the test it was meant for
    /// would pass for the wrong reason.
    pub fn check_target(&self, known: &[&str]) -> Result<(), InvalidFaultSpec> {
        let invalid = |reason: String| InvalidFaultSpec { spec: self.to_string(), reason };
        let (service, operation) = self.target.split_once('.').unwrap_or((self.target.as_str(), ""));
        let operations: Vec<&str> =
            known.iter().filter_map(|t| t.split_once('.')).filter(|(s, _)| *s == service).map(|(_, o)| o).collect();
        if operations.is_empty() {
            let mut services: Vec<&str> = known.iter().filter_map(|t| t.split_once('.').map(|(s, _)| s)).collect();
            services.dedup();
            return Err(invalid(format!("no service {service:?} here; one of {}", services.join(", "))));
        }
        if operation != "*" && !operations.contains(&operation) {
            return Err(invalid(format!(
                "{service} has no operation {operation:?}; one of {} (or * for all)",
                operations.join(", ")
            )));
        }
        Ok(())
    }

    fn matches(&self, activity_type: &str) -> bool {
        match self.target.strip_suffix(".*") {
            Some(service) => activity_type.split_once('.').is_some_and(|(s, _)| s == service),
            None => self.target == activity_type,
        }
    }
}

/// The active switches of one process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    active: Arc<Mutex<Vec<FaultSpec>>>,
}

impl Faults {
    pub fn new(specs: impl IntoIterator<Item = FaultSpec>) -> Self {
        Self { active: Arc::new(Mutex::new(specs.into_iter().collect())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultSpec>> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a switch; a later switch for the same target replaces the earlier one.
    pub fn set(&self, spec: FaultSpec) {
        let mut active = self.lock();
        active.retain(|s| s.target != spec.target);
        active.push(spec);
    }

    /// Clears the switches of one target, or all of them.
    pub fn clear(&self, target: Option<&str>) {
        self.lock().retain(|s| target.is_some_and(|t| s.target != t));
    }

    pub fn list(&self) -> Vec<FaultSpec> {
        self.lock().clone()
    }

    /// Takes one hit of the first switch that matches, counting it down.
    fn take(&self, activity_type: &str, after_effect: bool) -> Option<FaultKind> {
        let mut active = self.lock();
        let index = active.iter().position(|s| s.matches(activity_type) && s.kind.after_effect() == after_effect)?;
        let kind = active[index].kind;
        match &mut active[index].count {
            Some(1) => {
                active.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(kind)
    }

    /// Runs `effect` for `activity_type` under the active switches.
    pub async fn guard<T, F>(&self, activity_type: &str, effect: F) -> Result<T, ActivityError>
    where
        F: Future<Output = Result<T, ActivityError>>,
    {
        match self.take(activity_type, false) {
            Some(FaultKind::Error) => {
                return Err(ActivityError::retryable("InjectedFault", format!("{activity_type}: injected error")));
            }
            Some(FaultKind::Fatal) => {
                return Err(ActivityError::non_retryable(
                    "InjectedFault",
                    format!("{activity_type}: injected fatal error"),
                ));
            }
            Some(FaultKind::Hang) => {
                tracing::warn!(activity_type, "injected hang");
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        let result = effect.await?;
        match self.take(activity_type, true) {
            Some(FaultKind::HangAfterEffect) => {
                tracing::warn!(activity_type, "effect applied; injected hang");
                std::future::pending::<()>().await;
            }
            Some(FaultKind::CrashAfterEffect) => {
                tracing::error!(activity_type, "effect applied; injected crash");
                // No destructors, no flush of anything not already durable:
                // as close to a kill as a process can do to itself.
                std::process::abort();
            }
            _ => {}
        }
        Ok(result)
    }
}

/// Parsing a fault SPEC: never panics, and what parses prints back to a
/// SPEC that parses to the same fault.
#[doc(hidden)]
pub fn fuzz_fault_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = FaultSpec::from_str(text) else { return };
    let printed = spec.to_string();
    let again = FaultSpec::from_str(&printed).expect("a printed SPEC parses");
    assert_eq!(again, spec, "{printed}");
    assert!(spec.count != Some(0), "COUNT 0 would be a fault that never fires");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Text close to a fault SPEC, so that the parser's accepting paths are reached.
    fn spec_like() -> impl Strategy<Value = String> {
        "[a-z*._=:-]{0,6}[.][a-z*]{0,4}=(error|fatal|hang|hang-after-effect|crash-after-effect|x)(:[0-9]{0,11})?"
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn fault_specs_parse_safely(spec in spec_like(), data in prop::collection::vec(any::<u8>(), 0..64)) {
            fuzz_fault_spec(spec.as_bytes());
            fuzz_fault_spec(&data);
        }
    }

    #[test]
    fn valid_specs_round_trip() {
        fuzz_fault_spec(b"payments.capture=hang-after-effect:3");
        fuzz_fault_spec(b"orders.*=error");
    }

    #[test]
    fn specs_parse_and_print() {
        let spec: FaultSpec = "payments.capture=crash-after-effect:2".parse().unwrap();
        assert_eq!(
            spec,
            FaultSpec { target: "payments.capture".into(), kind: FaultKind::CrashAfterEffect, count: Some(2) }
        );
        assert_eq!(spec.to_string(), "payments.capture=crash-after-effect:2");
        assert_eq!("orders.*=error".parse::<FaultSpec>().unwrap().count, None);
        for bad in [
            "payments",
            "payments.capture",
            "payments.capture=boom",
            "payments.capture=error:0",
            ".x=error",
            "a.b=error:x",
        ] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn counted_faults_run_out_and_wildcards_match() {
        let faults = Faults::new(["orders.*=error:2".parse().unwrap()]);
        for _ in 0..2 {
            let failed = faults.guard("orders.create", async { Ok(()) }).await.unwrap_err();
            assert!(failed.is_retryable());
        }
        faults.guard("orders.create", async { Ok(()) }).await.unwrap();
        faults.set("payments.capture=fatal".parse().unwrap());
        assert!(!faults.guard("payments.capture", async { Ok(()) }).await.unwrap_err().is_retryable());
        faults.guard("payments.refund", async { Ok(()) }).await.unwrap();
        faults.clear(None);
        faults.guard("payments.capture", async { Ok(()) }).await.unwrap();
    }
}
