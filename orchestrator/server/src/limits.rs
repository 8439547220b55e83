//! Input limits (docs/contract.md, Limits) and the validation of everything a client sends.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest JSON payload (workflow input, signal input, activity result).
    pub max_payload_bytes: usize,
    /// Longest id (workflow, request, task queue), in UTF-8 bytes.
    pub max_id_bytes: usize,
    /// Most events one history may hold.
    pub max_history_events: u64,
    /// Most labels on a workflow.
    pub max_labels: usize,
    /// Most tasks waiting in one queue before new starts are refused.
    pub max_queued_tasks: usize,
    /// Most workflows whose state is kept in memory between decisions.
    /// Beyond it, idle ones are dropped and rebuilt from their history on
    /// their next decision: memory stays bounded however many are open.
    pub max_hot_workflows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_id_bytes: 255,
            max_history_events: 10_000,
            max_labels: 32,
            max_queued_tasks: 100_000,
            max_hot_workflows: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Limits {
    /// A required id: non-empty, at most `max_id_bytes`, printable.
    pub fn id(&self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() {
            return Err(Invalid(format!("{field} is required")));
        }
        self.optional_id(field, value)
    }

    pub fn optional_id(&self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.len() > self.max_id_bytes {
            return Err(Invalid(format!("{field} is {} bytes; the limit is {}", value.len(), self.max_id_bytes)));
        }
        if value.chars().any(char::is_control) {
            return Err(Invalid(format!("{field} contains a control character")));
        }
        if value.trim() != value {
            return Err(Invalid(format!("{field} has leading or trailing whitespace")));
        }
        Ok(())
    }

    /// Parses a JSON payload; empty means `null`. Returns its canonical text
    /// (compact, keys sorted) so that equal documents compare equal.
    pub fn json_payload(&self, field: &str, bytes: &[u8]) -> Result<String, Invalid> {
        if bytes.len() > self.max_payload_bytes {
            return Err(Invalid(format!("{field} is {} bytes; the limit is {}", bytes.len(), self.max_payload_bytes)));
        }
        if bytes.is_empty() {
            return Ok("null".into());
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Invalid(format!("{field} is not valid JSON: {e}")))?;
        Ok(value.to_string())
    }

    pub fn labels<'a>(&self, labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> Result<(), Invalid> {
        if labels.len() > self.max_labels {
            return Err(Invalid(format!("{} labels; the limit is {}", labels.len(), self.max_labels)));
        }
        for (key, value) in labels {
            self.id("label key", key)?;
            self.optional_id(&format!("label {key}"), value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let limits = Limits::default();
        assert!(limits.id("request_id", "").is_err());
        assert!(limits.id("request_id", &"x".repeat(256)).is_err());
        assert!(limits.id("request_id", &"é".repeat(127)).is_ok()); // 254 bytes
        assert!(limits.id("request_id", &"é".repeat(128)).is_err()); // 256 bytes
        assert!(limits.id("request_id", "a\u{0}b").is_err());
        assert!(limits.id("request_id", " padded").is_err());
    }

    #[test]
    fn payloads_are_json_within_the_limit() {
        let limits = Limits { max_payload_bytes: 16, ..Limits::default() };
        assert_eq!(limits.json_payload("input", b"").as_deref(), Ok("null"));
        assert_eq!(limits.json_payload("input", br#"{"b":1,"a":2}"#).as_deref(), Ok(r#"{"a":2,"b":1}"#));
        assert!(limits.json_payload("input", b"{nope").is_err());
        assert!(limits.json_payload("input", br#"{"a":"0123456789"}"#).is_err());
    }
}
