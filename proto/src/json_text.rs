//! Serialises a field holding JSON text as the JSON it holds, so that
//! `--output json` shows payloads as documents rather than escaped strings.

use serde::{Deserialize, Deserializer, Serializer};

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

/// The inverse of [`serialize`], for events read back from their JSON form
/// (the archive): the document as compact text, which is the form the server
/// stores (canonical: compact, keys sorted), and `null` for no document.
///
/// Two things do not come back as they were, since the JSON form does not
/// keep them: a text that was not JSON (never stored by this version) comes
/// back as a quoted JSON string, and an empty text as `null` (use
/// [`deserialize_optional`] for a field where empty means "none").
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.to_string())
}

/// [`deserialize`] for a field that is empty when there is no document.
pub(crate) fn deserialize_optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(String::new()),
        value => Ok(value.to_string()),
    }
}
