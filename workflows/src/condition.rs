//! The condition language of a step's `when`: a small, deterministic tree of
//! tests on the saga's [`Context`](crate::Context) (the input, earlier
//! results, signals). No functions, no arithmetic, no clock: the same context
//! always gives the same answer, and the answer is recorded in the history
//! (the step is scheduled, or `StepSkipped`), so a replay never evaluates it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How deep `all`/`any`/`not` may nest: a bound for hostile documents, far
/// beyond any condition a person writes.
pub const MAX_DEPTH: usize = 16;

/// A test on the saga's context; see the module's documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The pointer resolves to a value other than `null`.
    Exists(String),
    /// The value at the pointer equals `value` (numbers compare by value: `1` equals `1.0`).
    Equals { pointer: String, value: Value },
    /// The value at the pointer equals one of `values`.
    In { pointer: String, values: Vec<Value> },
    /// The value at the pointer is a number greater than `value`.
    GreaterThan { pointer: String, value: f64 },
    /// The value at the pointer is a number less than `value`.
    LessThan { pointer: String, value: f64 },
    /// Every condition holds (an empty list holds).
    All(Vec<Condition>),
    /// At least one condition holds (an empty list does not).
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
}

impl Condition {
    /// Whether the condition holds on `context`. A pointer that resolves to
    /// nothing makes every test on it false (and `not` of it true).
    pub fn holds(&self, context: &Value) -> bool {
        let at = |pointer: &str| context.pointer(pointer).filter(|v| !v.is_null());
        let number = |pointer: &str| at(pointer).and_then(Value::as_f64);
        match self {
            Self::Exists(pointer) => at(pointer).is_some(),
            Self::Equals { pointer, value } => at(pointer).is_some_and(|v| same(v, value)),
            Self::In { pointer, values } => at(pointer).is_some_and(|v| values.iter().any(|x| same(v, x))),
            Self::GreaterThan { pointer, value } => number(pointer).is_some_and(|n| n > *value),
            Self::LessThan { pointer, value } => number(pointer).is_some_and(|n| n < *value),
            Self::All(all) => all.iter().all(|c| c.holds(context)),
            Self::Any(any) => any.iter().any(|c| c.holds(context)),
            Self::Not(inner) => !inner.holds(context),
        }
    }

    /// Every pointer the condition reads, for validation.
    pub fn pointers(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_pointers(&mut out);
        out
    }

    fn collect_pointers<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Self::Exists(pointer)
            | Self::Equals { pointer, .. }
            | Self::In { pointer, .. }
            | Self::GreaterThan { pointer, .. }
            | Self::LessThan { pointer, .. } => out.push(pointer),
            Self::All(list) | Self::Any(list) => list.iter().for_each(|c| c.collect_pointers(out)),
            Self::Not(inner) => inner.collect_pointers(out),
        }
    }

    /// Checks the rules serde cannot: the nesting bound, a non-empty `in`,
    /// finite bounds.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(1)
    }

    fn check_at(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("a condition nests at most {MAX_DEPTH} deep"));
        }
        match self {
            Self::In { values, .. } if values.is_empty() => Err("an `in` condition lists at least one value".into()),
            Self::GreaterThan { value, .. } | Self::LessThan { value, .. } if !value.is_finite() => {
                Err("a comparison needs a finite number".into())
            }
            Self::All(list) | Self::Any(list) => list.iter().try_for_each(|c| c.check_at(depth + 1)),
            Self::Not(inner) => inner.check_at(depth + 1),
            _ => Ok(()),
        }
    }
}

/// JSON equality, except that numbers compare by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(text: &str) -> Condition {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn each_test_reads_its_pointer() {
        let ctx = json!({"input": {"express": true, "total": 120, "country": "FR", "none": null}});
        let cases = [
            (r#"{"exists": "/input/express"}"#, true),
            (r#"{"exists": "/input/none"}"#, false),
            (r#"{"exists": "/input/missing"}"#, false),
            (r#"{"equals": {"pointer": "/input/express", "value": true}}"#, true),
            (r#"{"equals": {"pointer": "/input/total", "value": 120.0}}"#, true),
            (r#"{"equals": {"pointer": "/input/missing", "value": null}}"#, false),
            (r#"{"in": {"pointer": "/input/country", "values": ["DE", "FR"]}}"#, true),
            (r#"{"in": {"pointer": "/input/country", "values": ["DE"]}}"#, false),
            (r#"{"greater_than": {"pointer": "/input/total", "value": 100}}"#, true),
            (r#"{"greater_than": {"pointer": "/input/country", "value": 100}}"#, false),
            (r#"{"less_than": {"pointer": "/input/total", "value": 100}}"#, false),
            (r#"{"all": []}"#, true),
            (r#"{"any": []}"#, false),
            (r#"{"not": {"exists": "/input/missing"}}"#, true),
            (
                r#"{"all": [{"exists": "/input/express"}, {"any": [{"less_than": {"pointer": "/input/total", "value": 10}}, {"equals": {"pointer": "/input/country", "value": "FR"}}]}]}"#,
                true,
            ),
        ];
        for (text, expected) in cases {
            let condition = parse(text);
            assert_eq!(condition.holds(&ctx), expected, "{text}");
        }
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let mut deep = json!({"exists": "/input/x"});
        for _ in 0..MAX_DEPTH {
            deep = json!({ "not": deep });
        }
        let condition: Condition = serde_json::from_value(deep).unwrap();
        assert!(condition.check().unwrap_err().contains("nests at most"));
        assert!(parse(r#"{"in": {"pointer": "/input/x", "values": []}}"#).check().is_err());
        assert!(serde_json::from_str::<Condition>(r#"{"matches": "/input/x"}"#).is_err());
        assert_eq!(parse(r#"{"all": [{"exists": "/a"}, {"not": {"exists": "/b"}}]}"#).pointers(), ["/a", "/b"]);
    }
}
