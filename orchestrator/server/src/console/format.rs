//! How the console writes times, durations, statuses, ids in URLs and JSON.
//! Every time is UTC, as the CLI's `--output json` and the logs give it, so
//! that an operator can compare what the page says with what they say.

use std::time::{Duration, UNIX_EPOCH};

use sagaflow_proto::v1::WorkflowStatus;

/// `2026-01-02 03:04:05.678` (UTC); empty for 0.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string().replace('T', " ").trim_end_matches('Z').to_owned()
}

/// A span, shortest first: `850 ms`, `12.3 s`, `5 m 03 s`, `2 h 05 m`, `3 d 04 h`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let (s, m, h, d) = (ms / 1000, ms / 60_000, ms / 3_600_000, ms / 86_400_000);
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{}.{} s", s, (ms % 1000) / 100)
    } else if m < 60 {
        format!("{m} m {:02} s", s % 60)
    } else if h < 24 {
        format!("{h} h {:02} m", m % 60)
    } else {
        format!("{d} d {:02} h", h % 24)
    }
}

/// `+1.2 s` from the start of a workflow, for the history and the timeline.
pub fn offset(ms: i64) -> String {
    format!("+{}", duration(ms))
}

/// The contract's name of a status (`RUNNING`), `UNKNOWN` for a number this build does not know.
pub fn status(status: i32) -> &'static str {
    WorkflowStatus::try_from(status).map_or("UNKNOWN", sagaflow_proto::status_name)
}

/// The CSS class of a status badge.
pub fn status_class(status: i32) -> &'static str {
    match WorkflowStatus::try_from(status) {
        Ok(WorkflowStatus::Running) => "st-running",
        Ok(WorkflowStatus::Compensating) => "st-compensating",
        Ok(WorkflowStatus::Completed) => "st-completed",
        Ok(WorkflowStatus::Compensated) => "st-compensated",
        Ok(WorkflowStatus::Failed) => "st-failed",
        Ok(WorkflowStatus::Cancelled | WorkflowStatus::Terminated) => "st-stopped",
        _ => "st-unknown",
    }
}

/// Percent-encodes one path segment or query value: every byte but the
/// unreserved ones (RFC 3986), so that an id holding `/`, `?` or `#` stays
/// one segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The console's URL of a workflow.
pub fn workflow_url(workflow_id: &str) -> String {
    format!("/workflows/{}", encode(workflow_id))
}

/// JSON text, indented for reading; text that is not JSON is returned as it is.
pub fn pretty_json(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A `datetime-local` value (`2026-01-02T03:04` or with seconds), read as
/// UTC, in Unix ms; `None` when empty or malformed.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let full = if text.len() == 16 { format!("{text}:00") } else { text.to_owned() };
    let at = humantime::parse_rfc3339_weak(&full).ok()?;
    i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// The `datetime-local` value of a time (UTC), for a form field.
pub fn datetime_value(ms: i64) -> String {
    timestamp(ms).get(..19).map(|t| t.replace(' ', "T")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(timestamp(0), "");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(303_000), "5 m 03 s");
        assert_eq!(duration(7_500_000), "2 h 05 m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3 d 04 h");
        assert_eq!(parse_datetime("2023-11-14T22:13"), Some(1_699_999_980_000));
        assert_eq!(parse_datetime("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        assert_eq!(parse_datetime("yesterday"), None);
        assert_eq!(datetime_value(1_700_000_000_123), "2023-11-14T22:13:20");
    }

    #[test]
    fn ids_stay_one_segment() {
        assert_eq!(encode("shop:order/42?x#y"), "shop%3Aorder%2F42%3Fx%23y");
        assert_eq!(workflow_url("chk-1.redrive-2"), "/workflows/chk-1.redrive-2");
        assert_eq!(short("héllo world", 5), "héllo…");
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("not json"), "not json");
    }
}
