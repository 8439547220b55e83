//! Definitions as documents: the canonical JSON a version's content hash is
//! taken of, parsing with errors that name the field path and the rule
//! broken (for `sagaflow definition apply` and `RegisterDefinition`), and the
//! JSON Schema of the format, derived from the definition types.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{DefinitionError, SagaDefinition};

/// Why a document is not a valid definition: where, and which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {rule}")]
pub struct FieldError {
    /// `steps[2].retry.backoff_coefficient`, say; `.` for the document itself.
    pub path: String,
    pub rule: String,
}

impl FieldError {
    /// The same error, for the definition at `index` of a list.
    #[must_use]
    pub fn at_index(self, index: usize) -> Self {
        let path = if self.path == "." { format!("[{index}]") } else { format!("[{index}].{}", self.path) };
        Self { path, ..self }
    }
}

/// Keys sorted at every level, no whitespace: two definitions with the same
/// content have the same text, whatever order their file wrote fields in.
/// Sorted here rather than by `serde_json::Map`, whose order depends on a
/// cargo feature any crate of the build may turn on.
pub fn canonical_json(definition: &SagaDefinition) -> String {
    let value = serde_json::to_value(definition).unwrap_or(Value::Null);
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Hex SHA-256 of the canonical JSON: what a `WorkflowStarted` pins.
pub fn content_hash(canonical: &str) -> String {
    Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One definition from a JSON value, parsed, its `defaults` resolved into
/// the steps that set no policy of their own ([`crate::policies`]), and
/// validated.
pub fn parse_one(value: Value) -> Result<SagaDefinition, FieldError> {
    let explicit = crate::policies::ExplicitPolicies::of_document(&value);
    let mut definition: SagaDefinition = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        FieldError { path, rule: e.into_inner().to_string() }
    })?;
    crate::policies::resolve(&mut definition, &explicit);
    definition.validate().map_err(|e| locate(&definition, e))?;
    Ok(definition)
}

/// A document holding one definition (an object) or several (an array).
pub fn parse_document(value: Value) -> Result<Vec<SagaDefinition>, FieldError> {
    match value {
        Value::Array(items) => {
            items.into_iter().enumerate().map(|(i, item)| parse_one(item).map_err(|e| e.at_index(i))).collect()
        }
        Value::Object(_) => parse_one(value).map(|d| vec![d]),
        _ => Err(FieldError { path: ".".into(), rule: "a definition (an object) or a list of them".into() }),
    }
}

/// The definitions of a YAML text: one definition or a list per document,
/// several documents separated by `---`. An error's path starts with the
/// document's index (`[1].steps[0]`) when the text holds more than one.
pub fn parse_yaml(text: &str) -> Result<Vec<SagaDefinition>, FieldError> {
    use serde::Deserialize;
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document)
            .map_err(|e| FieldError { path: ".".into(), rule: format!("not YAML: {e}") })?;
        // A trailing `---` gives an empty document: nothing to register.
        if !value.is_null() {
            values.push(value);
        }
    }
    if values.is_empty() {
        return Err(FieldError { path: ".".into(), rule: "the text holds no definition".into() });
    }
    let several = values.len() > 1;
    let mut definitions = Vec::new();
    for (n, value) in values.into_iter().enumerate() {
        // Several documents: say which, as `[n]` (counted from 0).
        let parsed = parse_document(value).map_err(|e| if several { e.at_index(n) } else { e })?;
        definitions.extend(parsed);
    }
    Ok(definitions)
}

/// The JSON Schema (draft 2020-12) of one definition, generated from the
/// definition types: their doc comments are its descriptions. It states the
/// shape of a document (fields, types, required fields, no unknown fields);
/// [`SagaDefinition::validate`] adds the rules a schema cannot express (the
/// order of step kinds, pointers naming earlier steps, unique step names).
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(SagaDefinition);
    sorted(serde_json::to_value(schema).unwrap_or(Value::Null))
}

/// [`json_schema`] as published in `docs/definitions/saga-definition.schema.json`
/// and printed by `sagaflow definition schema`: pretty, keys sorted, a final newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// The same value with the keys of every object in order, whichever map
/// `serde_json` was built with, so that the published text is stable.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        scalar => scalar,
    }
}

/// Where in `definition` a validation error lies.
fn locate(definition: &SagaDefinition, error: DefinitionError) -> FieldError {
    let step_path = |name: &str, nth: usize| {
        let index = definition.steps.iter().enumerate().filter(|(_, s)| s.name == name).nth(nth).map(|(i, _)| i);
        index.map_or_else(|| "steps".to_owned(), |i| format!("steps[{i}]"))
    };
    match error {
        DefinitionError::NoName => FieldError { path: "name".into(), rule: "a saga needs a non-blank name".into() },
        DefinitionError::NoSteps(_) => FieldError { path: "steps".into(), rule: "a saga has at least one step".into() },
        DefinitionError::DuplicateStep(name) => FieldError {
            path: format!("{}.name", step_path(&name, 1)),
            rule: format!("step names are unique; {name:?} is used twice"),
        },
        DefinitionError::InvalidStep { step, reason } => FieldError { path: step_path(&step, 0), rule: reason },
        DefinitionError::InvalidStepField { step, field, reason } => {
            FieldError { path: format!("{}.{field}", step_path(&step, 0)), rule: reason }
        }
        DefinitionError::InvalidDefaults { field, reason } => {
            FieldError { path: format!("defaults.{field}"), rule: reason }
        }
        DefinitionError::Parse(reason) => FieldError { path: ".".into(), rule: reason },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::Step;

    fn trip() -> SagaDefinition {
        SagaDefinition::builder("trip", 1)
            .step(Step::activity("hotel", "hotel.book").compensate_with("hotel.cancel"))
            .step(Step::activity("charge", "payments.charge").pivot())
            .build()
            .unwrap()
    }

    #[test]
    fn the_hash_ignores_field_order_and_whitespace_but_not_content() {
        let canonical = canonical_json(&trip());
        let reparsed: Value = serde_json::from_str(&trip().to_json()).unwrap();
        assert_eq!(canonical_json(&parse_one(reparsed).unwrap()), canonical);
        assert!(!canonical.contains(' ') && !canonical.contains('\n'));
        let mut other = trip();
        other.description = "changed".into();
        assert_ne!(content_hash(&canonical_json(&other)), content_hash(&canonical));
        assert_eq!(content_hash(&canonical).len(), 64);
    }

    #[test]
    fn yaml_documents_parse_alike_and_errors_say_which_document() {
        let one =
            "name: trip\nversion: 1\nsteps:\n  - {name: a, kind: pivot, action: {type: activity, activity_type: x}}\n";
        let parsed = parse_yaml(&format!("{one}---\n{}---\n", one.replace("version: 1", "version: 2"))).unwrap();
        assert_eq!(parsed.iter().map(|d| d.version).collect::<Vec<_>>(), vec![1, 2]);
        let e = parse_yaml(&format!("{one}---\n{}", one.replace("version: 1", "version: x"))).unwrap_err();
        assert_eq!(e.path, "[1].version");
        assert_eq!(parse_yaml("").unwrap_err().path, ".");
        assert!(parse_yaml("name: [").unwrap_err().rule.starts_with("not YAML"));
    }

    #[test]
    fn the_schema_describes_every_definition_type() {
        let schema = json_schema();
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        for name in [
            "Step",
            "Action",
            "RetryPolicy",
            "Timeouts",
            "InputSpec",
            "Source",
            "KeySpec",
            "Compensation",
            "Escalation",
            "FindingsAlert",
            "LifecycleEvents",
            "StepKind",
        ] {
            assert!(schema["$defs"].get(name).is_some(), "{name} is missing from the schema");
        }
        assert_eq!(schema["additionalProperties"], false, "a misspelt field is an error, not a silent default");
        let description = schema["$defs"]["Timeouts"]["description"].as_str().unwrap();
        assert!(description.starts_with("Budgets in milliseconds"), "{description}");
    }

    /// The published schema is what the code generates: a change to a
    /// definition type shows up in the file, in review.
    #[test]
    fn the_published_schema_is_current() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/definitions/saga-definition.schema.json");
        let published = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            published == json_schema_text(),
            "docs/definitions/saga-definition.schema.json is not what the definition types generate; \
             regenerate it with\n  cargo run -p sagaflow-cli -- definition schema > docs/definitions/saga-definition.schema.json"
        );
    }

    #[test]
    fn errors_name_the_field_path_and_the_rule() {
        let mut doc = serde_json::to_value(trip()).unwrap();
        doc["steps"][1]["retry"]["backoff_coefficient"] = json!("fast");
        let e = parse_document(json!([serde_json::to_value(trip()).unwrap(), doc])).unwrap_err();
        assert_eq!(e.path, "[1].steps[1].retry.backoff_coefficient");
        assert!(e.rule.contains("invalid type"), "{e}");

        let mut doc = serde_json::to_value(trip()).unwrap();
        doc["steps"][1]["kind"] = json!("compensable");
        doc["steps"][0]["kind"] = json!("retriable");
        let e = parse_document(doc).unwrap_err();
        assert_eq!(e.path, "steps[0]");
        assert_eq!(e.rule, "a retriable step belongs after the pivot");

        let mut doc = serde_json::to_value(trip()).unwrap();
        doc["steps"][1]["name"] = json!("hotel");
        assert_eq!(parse_document(doc).unwrap_err().path, "steps[1].name");
        assert_eq!(parse_document(json!(3)).unwrap_err().path, ".");
    }
}
