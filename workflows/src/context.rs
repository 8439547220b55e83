//! The document a step's input, key and the workflow result are read from:
//! `{"workflow_id", "input", "steps": {name: result}, "signals": {name: input}}`.

use serde_json::{Map, Value};

use crate::{InputSpec, KeySpec, Source};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Context(pub Value);

impl Context {
    pub fn new(workflow_id: &str, input: Value) -> Self {
        let mut doc = Map::new();
        doc.insert("workflow_id".into(), Value::String(workflow_id.into()));
        doc.insert("input".into(), input);
        doc.insert("steps".into(), Value::Object(Map::new()));
        doc.insert("signals".into(), Value::Object(Map::new()));
        Self(Value::Object(doc))
    }

    pub fn set_step_result(&mut self, step: &str, result: Value) {
        self.section("steps").insert(step.into(), result);
    }

    pub fn set_signal(&mut self, name: &str, input: Value) {
        self.section("signals").insert(name.into(), input);
    }

    pub fn steps(&self) -> Value {
        self.0.get("steps").cloned().unwrap_or(Value::Null)
    }

    fn section(&mut self, name: &str) -> &mut Map<String, Value> {
        if !self.0.is_object() {
            self.0 = Value::Object(Map::new());
        }
        let Value::Object(doc) = &mut self.0 else { unreachable!("made an object just above") };
        let entry = doc.entry(name).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => map,
            _ => unreachable!("made an object just above"),
        }
    }

    /// A step's input under `spec`.
    pub fn input_for(&self, spec: &InputSpec) -> Value {
        match spec {
            InputSpec::Context => self.0.clone(),
            InputSpec::Fields(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(name, source)| {
                        let value = match source {
                            Source::Pointer(p) => resolve_pointer(&self.0, p).cloned().unwrap_or(Value::Null),
                            Source::Literal(v) => v.clone(),
                        };
                        (name.clone(), value)
                    })
                    .collect(),
            ),
        }
    }

    /// [`input_for`](Self::input_for) as JSON text, without copying the
    /// whole context first when the step takes all of it.
    pub fn input_json(&self, spec: &InputSpec) -> String {
        match spec {
            InputSpec::Context => self.0.to_string(),
            InputSpec::Fields(_) => self.input_for(spec).to_string(),
        }
    }

    /// The step's idempotency key, or an explanation of why it has none.
    pub fn key_for(&self, spec: &KeySpec, workflow_id: &str, step: &str) -> Result<String, String> {
        match spec {
            KeySpec::Derived => Ok(format!("{workflow_id}/{step}")),
            KeySpec::Pointer(p) => match resolve_pointer(&self.0, p) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                other => Err(format!("idempotency key {p} is {}", other.map_or("missing".into(), |v| v.to_string()))),
            },
        }
    }
}

/// RFC 6901 lookup.
pub fn resolve_pointer<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    doc.pointer(pointer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn inputs_and_keys_read_the_context() {
        let mut ctx = Context::new("wf-1", json!({"order": "o-9"}));
        ctx.set_step_result("reserve", json!({"reservation_id": "r-1"}));
        let spec = InputSpec::Fields(BTreeMap::from([
            ("reservation".to_string(), Source::Pointer("/steps/reserve/reservation_id".into())),
            ("fixed".to_string(), Source::Literal(json!(3))),
        ]));
        assert_eq!(ctx.input_for(&spec), json!({"reservation": "r-1", "fixed": 3}));
        assert_eq!(ctx.key_for(&KeySpec::Derived, "wf-1", "pay").unwrap(), "wf-1/pay");
        assert_eq!(ctx.key_for(&KeySpec::Pointer("/input/order".into()), "wf-1", "pay").unwrap(), "o-9");
        assert!(ctx.key_for(&KeySpec::Pointer("/input/none".into()), "wf-1", "pay").is_err());
        for spec in [spec, InputSpec::Context] {
            let text = ctx.input_json(&spec);
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), ctx.input_for(&spec), "{text}");
        }
    }
}
