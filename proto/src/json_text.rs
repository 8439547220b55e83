//! Serialises a field holding JSON text as the JSON it holds, so that
//! `--output json` shows payloads as documents rather than escaped strings.

use serde::Serializer;

pub(crate) fn serialize<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    if text.is_empty() {
        return serializer.serialize_none();
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => serde::Serialize::serialize(&value, serializer),
        // History payloads are validated on the way in; this keeps output total
        // even for a record written by a future version.
        Err(_) => serializer.serialize_str(text),
    }
}
