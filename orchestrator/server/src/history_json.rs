//! The JSON form of a history event, both ways: what
//! `sagaflow workflow history --output json` prints, what the archive stores
//! (`archive.rs`), and how the server reads an archived event back. One
//! converter, so that an archived history prints as the live one did.
//!
//! `{"seq": 3, "time": "2026-12-02T10:11:12.123Z", "type": "ActivityCompleted",
//! "attributes": {"task_id": "0.f.1", "result": {"ok": true}}}`: fields that
//! hold JSON text are nested documents, not escaped strings.

use std::time::{Duration, UNIX_EPOCH};

use sagaflow_proto::EventName;
use sagaflow_proto::v1::HistoryEvent;
use sagaflow_proto::v1::history_event::Attributes;
use serde_json::{Value, json};

/// Why a JSON event does not read back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an event needs a numeric `seq`")]
    NoSeq,
    #[error("event {seq}: `time` {text:?} is not an RFC 3339 time")]
    Time { seq: u64, text: String },
    #[error("event {seq}: `type` is missing")]
    NoType { seq: u64 },
    #[error("event {seq}: a {kind} does not read back: {source}")]
    Attributes { seq: u64, kind: String, source: serde_json::Error },
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds; empty for none (0).
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The inverse of [`timestamp`]: empty is 0.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() {
        return Some(0);
    }
    let at = humantime::parse_rfc3339(text).ok()?;
    i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// The UTC day of a time, `YYYY-MM-DD`.
pub fn day(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string().chars().take(10).collect()
}

/// One event as JSON.
pub fn event_json(event: &HistoryEvent) -> Value {
    let (kind, attributes) = match &event.attributes {
        Some(a) => {
            let inner =
                serde_json::to_value(a).ok().and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()));
            (a.event_name(), inner.unwrap_or(Value::Null))
        }
        None => ("Unknown", Value::Null),
    };
    json!({"seq": event.seq, "time": timestamp(event.time_ms), "type": kind, "attributes": attributes})
}

/// One event read back from [`event_json`]'s form. What the JSON form does
/// not keep comes back as the server would store it: a JSON text field holds
/// its document as compact text with sorted keys, and `null` for an empty
/// one (`proto/src/json_text.rs`).
pub fn event_from_json(value: &Value) -> Result<HistoryEvent, Error> {
    let seq = value.get("seq").and_then(Value::as_u64).ok_or(Error::NoSeq)?;
    let text = value.get("time").and_then(Value::as_str).unwrap_or_default();
    let time_ms = parse_timestamp(text).ok_or_else(|| Error::Time { seq, text: text.to_owned() })?;
    let kind = value.get("type").and_then(Value::as_str).ok_or(Error::NoType { seq })?;
    let attributes = match kind {
        // What `event_json` writes for an event this version did not know.
        "Unknown" => None,
        kind => {
            // Serde's external tag is the variant's name, which is the event's name.
            let inner = match value.get("attributes") {
                None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
                Some(inner) => inner.clone(),
            };
            let tagged = Value::Object(std::iter::once((kind.to_owned(), inner)).collect());
            Some(serde_json::from_value::<Attributes>(tagged).map_err(|source| Error::Attributes {
                seq,
                kind: kind.to_owned(),
                source,
            })?)
        }
    };
    Ok(HistoryEvent { seq, time_ms, attributes })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use sagaflow_proto::v1::{
        ActivityCompleted, ActivityFailed, ActivityResolved, ActivityScheduled, CarriedStep, StepSkipped,
        WorkflowCompleted, WorkflowStarted,
    };

    use super::*;

    fn at(seq: u64, attributes: Attributes) -> HistoryEvent {
        HistoryEvent { seq, time_ms: 1_764_670_272_123 + seq as i64, attributes: Some(attributes) }
    }

    #[test]
    fn every_kind_of_event_reads_back_as_it_was_stored() {
        let events = vec![
            at(
                1,
                Attributes::WorkflowStarted(WorkflowStarted {
                    workflow_type: "checkout".into(),
                    definition_version: 2,
                    request_id: "r-1".into(),
                    input: r#"{"a":[1,2.5,"x"],"b":null}"#.into(),
                    labels: HashMap::from([("sagaflow.owner".into(), "shop".into())]),
                    correlation_id: "c".into(),
                    traceparent: "00-ab-cd-01".into(),
                    definition_hash: "h".into(),
                    parent_workflow_id: String::new(),
                    redrive_of: "wf-0".into(),
                    redrive: 1,
                    carried_steps: vec![CarriedStep {
                        step_index: 0,
                        step: "quote".into(),
                        result: r#"{"cents":1200}"#.into(),
                        skipped: false,
                    }],
                }),
            ),
            at(
                2,
                Attributes::ActivityScheduled(ActivityScheduled {
                    task_id: "0.f.1".into(),
                    step_index: 0,
                    step: "reserve".into(),
                    activity_type: "inventory.reserve".into(),
                    attempt: 1,
                    compensation: false,
                    input: "null".into(),
                    idempotency_key: "k".into(),
                }),
            ),
            at(
                3,
                Attributes::ActivityCompleted(ActivityCompleted { task_id: "0.f.1".into(), result: "\"ok\"".into() }),
            ),
            at(
                4,
                Attributes::ActivityFailed(ActivityFailed {
                    task_id: "1.f.1".into(),
                    error_type: "CardDeclined".into(),
                    message: "no".into(),
                    retryable: false,
                    next_attempt_ms: 0,
                    definite: true,
                    outcome_unknown: false,
                }),
            ),
            // A failed resolution has no result: empty, not `null`.
            at(
                5,
                Attributes::ActivityResolved(ActivityResolved {
                    step: "capture".into(),
                    compensation: false,
                    outcome: "failed".into(),
                    result: String::new(),
                    reason: "checked by hand".into(),
                    identity: "ops".into(),
                }),
            ),
            at(6, Attributes::StepSkipped(StepSkipped { step: "s".into(), step_index: 3, condition: "{}".into() })),
            at(7, Attributes::WorkflowCompleted(WorkflowCompleted { result: r#"{"n":12345678901234}"#.into() })),
            HistoryEvent { seq: 8, time_ms: 0, attributes: None },
        ];
        for event in events {
            let json = event_json(&event);
            // Through text, as the archive stores it.
            let text = json.to_string();
            let back = event_from_json(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back, event, "{text}");
            assert_eq!(event_json(&back), json);
        }
    }

    #[test]
    fn a_field_a_later_version_added_or_dropped_does_not_stop_a_read() {
        let old = json!({"seq": 1, "time": "", "type": "WorkflowCompleted", "attributes": {}});
        assert_eq!(event_from_json(&old).unwrap().attributes, Some(Attributes::WorkflowCompleted(Default::default())));
        let newer = json!({"seq": 1, "time": "", "type": "WorkflowCompleted", "attributes": {"result": 1, "by": "x"}});
        let completed = WorkflowCompleted { result: "1".into() };
        assert_eq!(event_from_json(&newer).unwrap().attributes, Some(Attributes::WorkflowCompleted(completed)));
        let bad = json!({"seq": 1, "time": "yesterday", "type": "WorkflowCompleted"});
        assert!(matches!(event_from_json(&bad), Err(Error::Time { .. })));
        let unknown = json!({"seq": 1, "time": "", "type": "Teleported", "attributes": {}});
        assert!(matches!(event_from_json(&unknown), Err(Error::Attributes { .. })));
    }

    #[test]
    fn days_and_times_are_utc() {
        assert_eq!(day(1_764_633_599_999), "2025-12-01");
        assert_eq!(day(1_764_633_600_000), "2025-12-02");
        assert_eq!(parse_timestamp(&timestamp(1_764_633_600_123)), Some(1_764_633_600_123));
        assert_eq!(parse_timestamp(""), Some(0));
    }
}
