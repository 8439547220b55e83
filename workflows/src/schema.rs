//! Checks a definition document against the JSON Schema of the format
//! ([`json_schema`]) before it is parsed, so that a misspelt field, a wrong
//! type or a broken bound is named with its path and the schema's rule.
//! `sagaflow definition apply` and `diff` run it on every definition file.
//!
//! It is a checker for the subset of JSON Schema 2020-12 that the schema
//! generated from the definition types uses (`type`, `const`, `properties`,
//! `required`, `additionalProperties`, `items`, `oneOf`, `anyOf`, `$ref` into
//! `$defs`, `minimum`, `minLength`, `minItems` and the `uint32`/`uint64`
//! formats), not a general validator: a test fails if the schema ever uses a
//! keyword it does not know, rather than letting that rule go unchecked. A
//! general validator crate was weighed and left out: it brought some 25
//! crates and turned on `serde_json` features for the whole server build,
//! which changes how the server parses numbers.
//!
//! The rules a schema cannot express (step kinds in order, pointers naming
//! earlier steps, unique step names) are [`SagaDefinition::validate`]'s.
//!
//! [`SagaDefinition::validate`]: crate::SagaDefinition::validate

use serde_json::Value;

use crate::document::{FieldError, json_schema};

/// Every keyword the checker acts on, and the annotations it may ignore.
pub const KNOWN_KEYWORDS: &[&str] = &[
    "$defs",
    "$ref",
    "$schema",
    "additionalProperties",
    "anyOf",
    "const",
    "default",
    "description",
    "format",
    "items",
    "minItems",
    "minLength",
    "minimum",
    "oneOf",
    "properties",
    "required",
    "title",
    "type",
];

/// Checks one document (a definition, or a list of them) against the
/// schema, and names the first rule it breaks. A document of another kind is
/// left to the parser, which says "a definition (an object) or a list of them".
pub fn check(document: &Value) -> Result<(), FieldError> {
    let schema = json_schema();
    let checker = Checker { root: &schema };
    let check_one = |definition: &Value| {
        checker.check(&schema, definition, &mut Vec::new()).map_err(|v| FieldError { path: v.path(), rule: v.rule })
    };
    match document {
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_one(item).map_err(|e| e.at_index(i)))
        }
        Value::Object(_) => check_one(document),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

/// What kind of rule was broken: a wrong type or constant says the value is
/// of another form altogether, which matters when choosing between forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Type,
    Const,
    Other,
}

#[derive(Debug, Clone)]
struct Violation {
    at: Vec<Segment>,
    kind: Kind,
    /// For a wrong type or constant: what was expected (`an integer`, `"pivot"`).
    expected: Option<String>,
    rule: String,
}

impl Violation {
    /// `steps[0].retry.backoff_coefficient`; `.` for the document itself.
    fn path(&self) -> String {
        let mut path = String::new();
        for segment in &self.at {
            match segment {
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Field(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                }
            }
        }
        if path.is_empty() { ".".into() } else { path }
    }
}

struct Checker<'s> {
    root: &'s Value,
}

impl Checker<'_> {
    fn check(&self, schema: &Value, value: &Value, at: &mut Vec<Segment>) -> Result<(), Violation> {
        let fail = |at: &[Segment], kind: Kind, expected: Option<String>, rule: String| Violation {
            at: at.to_vec(),
            kind,
            expected,
            rule,
        };
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err(fail(at, Kind::Other, None, "no value is allowed here".into())),
            Value::Object(schema) => schema,
            _ => return Ok(()),
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let target = reference.strip_prefix("#/$defs/").and_then(|name| self.root["$defs"].get(name));
            match target {
                Some(target) => self.check(target, value, at)?,
                None => return Err(fail(at, Kind::Other, None, format!("the schema's {reference:?} is unknown"))),
            }
        }
        if let Some(expected) = schema.get("const") {
            if value != expected {
                return Err(fail(
                    at,
                    Kind::Const,
                    Some(expected.to_string()),
                    format!("expected {expected}, found {value}"),
                ));
            }
        } else if let Some(types) = schema.get("type") {
            let names: Vec<&str> = match types {
                Value::String(name) => vec![name.as_str()],
                Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !names.iter().any(|name| is_type(value, name)) {
                let expected = names.iter().map(|n| article(n)).collect::<Vec<_>>().join(" or ");
                let rule = format!("expected {expected}, found {}", describe(value));
                return Err(fail(at, Kind::Type, Some(expected), rule));
            }
        }
        for keyword in ["oneOf", "anyOf"] {
            if let Some(Value::Array(forms)) = schema.get(keyword) {
                self.one_of(forms, value, at)?;
            }
        }
        if let (Some(format), Some(n)) = (schema.get("format").and_then(Value::as_str), value.as_u64()) {
            let max = match format {
                "uint32" => u64::from(u32::MAX),
                _ => u64::MAX,
            };
            if n > max {
                return Err(fail(at, Kind::Other, None, format!("{n} is more than the maximum of {max}")));
            }
        }
        if let (Some(minimum), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64())
            && n < minimum
        {
            return Err(fail(at, Kind::Other, None, format!("{value} is less than the minimum of {minimum}")));
        }
        if let (Some(min), Some(text)) = (schema.get("minLength").and_then(Value::as_u64), value.as_str())
            && (text.chars().count() as u64) < min
        {
            let rule = if min == 1 { "must not be empty".into() } else { format!("needs at least {min} characters") };
            return Err(fail(at, Kind::Other, None, rule));
        }
        if let Value::Array(items) = value {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                let rule =
                    if min == 1 { "needs at least one item".into() } else { format!("needs at least {min} items") };
                return Err(fail(at, Kind::Other, None, rule));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    at.push(Segment::Index(i));
                    let result = self.check(item_schema, item, at);
                    at.pop();
                    result?;
                }
            }
        }
        if let Value::Object(fields) = value {
            let properties = schema.get("properties").and_then(Value::as_object);
            // The known fields first, so that a tag (`type: sleep`) that
            // differs is what a form of the wrong kind reports.
            for (name, field_schema) in properties.into_iter().flatten() {
                if let Some(field) = fields.get(name) {
                    at.push(Segment::Field(name.clone()));
                    let result = self.check(field_schema, field, at);
                    at.pop();
                    result?;
                }
            }
            let is_unknown = |name: &String| !properties.is_some_and(|p| p.contains_key(name));
            if let Some(Value::Array(required)) = schema.get("required")
                && let Some(missing) =
                    required.iter().filter_map(Value::as_str).find(|name| !fields.contains_key(*name))
            {
                // A misspelling of the missing field reads best beside it.
                let strays: Vec<String> = fields.keys().filter(|n| is_unknown(n)).map(|n| format!("`{n}`")).collect();
                let rule = match (schema.get("additionalProperties"), strays.is_empty()) {
                    (Some(Value::Bool(false)), false) => {
                        format!("missing field `{missing}` (unknown: {})", strays.join(", "))
                    }
                    _ => format!("missing field `{missing}`"),
                };
                return Err(fail(at, Kind::Other, None, rule));
            }
            let unknown = fields.iter().filter(|(name, _)| is_unknown(name));
            for (name, field) in unknown {
                match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<String> =
                            properties.map(|p| p.keys().map(|k| format!("`{k}`")).collect()).unwrap_or_default();
                        let rule = if known.is_empty() {
                            format!("unknown field `{name}`")
                        } else {
                            format!("unknown field `{name}`, expected one of {}", known.join(", "))
                        };
                        return Err(fail(at, Kind::Other, None, rule));
                    }
                    Some(other) => {
                        at.push(Segment::Field(name.clone()));
                        let result = self.check(other, field, at);
                        at.pop();
                        result?;
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// One of several forms (an action, an input, a source, a step kind):
    /// when none fits, the rule broken is that of the form the value came
    /// closest to, or, when it is of none of them at all, the forms expected.
    fn one_of(&self, forms: &[Value], value: &Value, at: &mut Vec<Segment>) -> Result<(), Violation> {
        let mut violations = Vec::with_capacity(forms.len());
        for form in forms {
            match self.check(form, value, at) {
                Ok(()) => return Ok(()),
                Err(violation) => violations.push(violation),
            }
        }
        let here = |v: &Violation| v.at.len() == at.len() && matches!(v.kind, Kind::Type | Kind::Const);
        if !violations.is_empty() && violations.iter().all(here) {
            let expected: Vec<String> = violations.iter().filter_map(|v| v.expected.clone()).collect();
            return Err(Violation {
                at: at.clone(),
                kind: Kind::Type,
                expected: Some(expected.join(" or ")),
                rule: format!("expected {}, found {}", expected.join(" or "), describe(value)),
            });
        }
        // A tag (`type: sleep`) one level down that differs says "not this form".
        let tag_mismatch = |v: &Violation| v.kind == Kind::Const && v.at.len() == at.len() + 1;
        if let Some(tags) = Some(violations.iter().filter(|v| tag_mismatch(v)).collect::<Vec<_>>())
            .filter(|tags| tags.len() == violations.len())
            .filter(|tags| tags.iter().all(|v| v.at == tags[0].at))
        {
            let expected: Vec<String> = tags.iter().filter_map(|v| v.expected.clone()).collect();
            let found = tags[0].at.last().and_then(|field| match field {
                Segment::Field(name) => value.get(name),
                Segment::Index(_) => None,
            });
            return Err(Violation {
                at: tags[0].at.clone(),
                kind: Kind::Other,
                expected: None,
                rule: format!("expected {}, found {}", expected.join(" or "), found.map_or("nothing".into(), describe)),
            });
        }
        let rank = |v: &Violation| (here(v), tag_mismatch(v), std::cmp::Reverse(v.at.len()));
        violations.into_iter().min_by_key(rank).map_or(Ok(()), Err)
    }
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" | "object" => format!("an {type_name}"),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "a list".into(),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn trip() -> Value {
        json!({"name": "trip", "version": 1, "steps": [
            {"name": "hold", "action": {"type": "activity", "activity_type": "bench.reserve"},
             "compensation": {"activity_type": "bench.release"}},
            {"name": "charge", "kind": "pivot", "action": {"type": "activity", "activity_type": "bench.capture"},
             "input": {"fields": {"amount": {"pointer": "/input/amount"}, "currency": {"literal": "EUR"}}}}
        ]})
    }

    fn broken(document: &Value) -> FieldError {
        check(document).unwrap_err()
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut doc = trip();
        let mut at = &mut doc;
        for key in path {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        *at = value;
        doc
    }

    /// Every keyword of the generated schema is one the checker knows: a
    /// new one (a `pattern`, a `maximum`) must be taught to it, not skipped.
    #[test]
    fn the_checker_knows_every_keyword_of_the_schema() {
        fn walk(schema: &Value, unknown: &mut Vec<String>) {
            let Value::Object(map) = schema else { return };
            for (key, value) in map {
                if !KNOWN_KEYWORDS.contains(&key.as_str()) {
                    unknown.push(key.clone());
                }
                match key.as_str() {
                    "$defs" | "properties" => {
                        value.as_object().into_iter().flatten().for_each(|(_, s)| walk(s, unknown))
                    }
                    "oneOf" | "anyOf" => value.as_array().into_iter().flatten().for_each(|s| walk(s, unknown)),
                    "items" | "additionalProperties" => walk(value, unknown),
                    _ => {}
                }
            }
        }
        let mut unknown = Vec::new();
        walk(&json_schema(), &mut unknown);
        assert!(unknown.is_empty(), "the schema uses keywords the checker does not know: {unknown:?}");
    }

    #[test]
    fn valid_definitions_and_the_shipped_sagas_pass() {
        assert_eq!(check(&trip()), Ok(()));
        assert_eq!(check(&json!([trip(), trip()])), Ok(()));
        for saga in crate::shop::all().into_iter().chain(crate::jobs::all()) {
            assert_eq!(check(&serde_json::to_value(&saga).unwrap()), Ok(()), "{}", saga.name);
        }
        let every_action = with(&["steps", "0", "action"], json!({"type": "sleep", "duration_ms": 5}));
        assert_eq!(check(&every_action), Ok(()));
        let wait = with(&["steps", "0", "action"], json!({"type": "await_signal", "signal": "go", "timeout_ms": 0}));
        assert_eq!(check(&wait), Ok(()));
    }

    #[test]
    fn errors_name_the_path_and_the_rule() {
        let e = broken(&with(&["steps", "1", "retry"], json!({"backoff_coefficient": 0.5})));
        assert_eq!(
            (e.path.as_str(), e.rule.as_str()),
            ("steps[1].retry.backoff_coefficient", "0.5 is less than the minimum of 1")
        );

        let e = broken(&with(&["steps", "0", "retyr"], json!({"maximum_attempts": 3})));
        assert_eq!(e.path, "steps[0]");
        assert!(e.rule.starts_with("unknown field `retyr`, expected one of `action`, "), "{e}");

        let e = broken(&with(&["version"], json!("one")));
        assert_eq!((e.path.as_str(), e.rule.as_str()), ("version", "expected an integer, found \"one\""));
        let e = broken(&with(&["version"], json!(1u64 << 40)));
        assert_eq!(
            (e.path.as_str(), e.rule.as_str()),
            ("version", "1099511627776 is more than the maximum of 4294967295")
        );

        let e = broken(&with(&["steps", "1", "action"], json!({"type": "activity", "activity": "x"})));
        assert_eq!(
            (e.path.as_str(), e.rule.as_str()),
            ("steps[1].action", "missing field `activity_type` (unknown: `activity`)")
        );

        let e = broken(&with(&["steps", "1", "action"], json!({"type": "sleep", "duration_ms": "soon"})));
        assert_eq!(
            (e.path.as_str(), e.rule.as_str()),
            ("steps[1].action.duration_ms", "expected an integer, found \"soon\"")
        );

        let e = broken(&with(&["steps", "1", "action"], json!({"type": "activty", "activity_type": "x"})));
        assert_eq!(e.path, "steps[1].action.type");
        assert_eq!(e.rule, "expected \"activity\" or \"sleep\" or \"await_signal\" or \"child\", found \"activty\"");

        let e = broken(&with(&["steps", "1", "kind"], json!("pivit")));
        assert_eq!(e.path, "steps[1].kind");
        assert_eq!(e.rule, "expected \"compensable\" or \"pivot\" or \"retriable\", found \"pivit\"");

        let e = broken(&with(&["steps", "1", "input"], json!(5)));
        assert_eq!(e.rule, "expected \"context\" or an object, found 5");

        let e = broken(&with(&["steps", "1", "input", "fields", "amount"], json!({"pointr": "/input/amount"})));
        assert_eq!(e.path, "steps[1].input.fields.amount");
        assert_eq!(e.rule, "missing field `pointer` (unknown: `pointr`)");

        let e = broken(&with(&["steps", "0", "compensation"], json!({"activity": "bench.release"})));
        assert_eq!(
            (e.path.as_str(), e.rule.as_str()),
            ("steps[0].compensation", "missing field `activity_type` (unknown: `activity`)")
        );

        let e = broken(&with(&["steps"], json!([])));
        assert_eq!((e.path.as_str(), e.rule.as_str()), ("steps", "needs at least one item"));
        let e = broken(&with(&["name"], json!("")));
        assert_eq!((e.path.as_str(), e.rule.as_str()), ("name", "must not be empty"));
        let e = broken(&json!({"version": 1, "steps": trip()["steps"]}));
        assert_eq!((e.path.as_str(), e.rule.as_str()), (".", "missing field `name`"));

        let e = broken(&json!([trip(), with(&["steps", "0", "escalation"], json!({"alert": "Late"}))]));
        assert_eq!((e.path.as_str(), e.rule.as_str()), ("[1].steps[0].escalation", "missing field `after_attempts`"));
    }
}
