//! W3C trace context (`traceparent`) and the correlation id: the two pieces
//! of request metadata that tie one checkout's log lines and spans together
//! across the client, the orchestrator and the workers.

use std::fmt;

/// gRPC metadata key of the caller's correlation id.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// gRPC metadata key of the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// One `traceparent`: the trace a request belongs to and the span that is
/// the parent of whatever the receiver does for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses version `00`; all-zero ids are invalid by the spec.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ![trace, span, flags].into_iter().all(hex) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The same trace with another span as the parent.
    pub fn with_span(self, span_id: u64) -> Self {
        Self { span_id, ..self }
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

/// A span id derived from a stable name (a workflow id), so that a replay, a
/// restart or another process computes the same id without storing it.
/// FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
pub fn span_id_of(name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash.max(1)
}

/// A trace id derived from a stable name, for workflows started without a
/// caller's trace: two FNV-1a halves over different salts.
pub fn trace_id_of(name: &str) -> u128 {
    let high = span_id_of(&format!("trace-high:{name}"));
    let low = span_id_of(&format!("trace-low:{name}"));
    (u128::from(high) << 64) | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).expect("valid");
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_never_zero() {
        assert_eq!(span_id_of("checkout-1"), span_id_of("checkout-1"));
        assert_ne!(span_id_of("checkout-1"), span_id_of("checkout-2"));
        assert_ne!(trace_id_of("checkout-1"), 0);
        // Pinned: another build must derive the same ids for the same workflow.
        assert_eq!(span_id_of("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
