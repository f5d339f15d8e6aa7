//! Just enough of JSON Schema to check the agent's answers and request bodies against
//! `agent/openapi.json`: `$ref`, `type` (one or several), `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `oneOf`, `minimum`, `maximum`. Keywords it does not
//! know (`pattern`, `default`, descriptions) are ignored, so it can only be too lenient there,
//! never wrong about what it does check.

use serde_json::Value;

/// The OpenAPI document and schema checks against it.
pub struct Doc(pub Value);

impl Doc {
    pub fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let text = std::fs::read_to_string(path).expect("read agent/openapi.json");
        Self(serde_json::from_str(&text).expect("agent/openapi.json is JSON"))
    }

    /// The object a local `$ref` (`#/components/...`) points at.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("remote $ref {r}"));
                let target = self
                    .0
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("$ref {r} points at nothing"));
                self.resolve(target)
            }
            None => value,
        }
    }

    /// Checks `value` against `schema`; the error names the JSON path that does not fit.
    pub fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        check_type(schema, value, at)?;
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
        check_range(schema, value, at)?;
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let fits = options
                .iter()
                .filter(|o| self.check(o, value, at).is_ok())
                .count();
            if fits != 1 {
                return Err(format!("{at}: fits {fits} of the oneOf options, not 1"));
            }
        }
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
            for (i, item) in list.iter().enumerate() {
                self.check(items, item, &format!("{at}[{i}]"))?;
            }
        }
        if let Some(map) = value.as_object() {
            self.check_object(schema, map, at)?;
        }
        Ok(())
    }

    fn check_object(
        &self,
        schema: &Value,
        map: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Result<(), String> {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap_or_default();
            if !map.contains_key(key) {
                return Err(format!("{at}: required field {key} is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, v) in map {
            let path = format!("{at}.{key}");
            match (
                props.and_then(|p| p.get(key)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => self.check(s, v, &path)?,
                (None, Some(Value::Bool(false))) => {
                    return Err(format!("{path}: not in the schema"));
                }
                (None, Some(s @ Value::Object(_))) => self.check(s, v, &path)?,
                (None, _) => {}
            }
        }
        Ok(())
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_type(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let allowed: Vec<&str> = match schema.get("type") {
        None => return Ok(()),
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        Some(other) => return Err(format!("{at}: bad type keyword {other}")),
    };
    let actual = type_name(value);
    let fits = allowed
        .iter()
        .any(|t| *t == actual || (*t == "number" && actual == "integer"));
    if fits {
        Ok(())
    } else {
        Err(format!("{at}: {actual} where the schema wants {allowed:?}"))
    }
}

fn check_range(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(n) = value.as_f64() else {
        return Ok(());
    };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && n < min
    {
        return Err(format!("{at}: {n} is below the minimum {min}"));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && n > max
    {
        return Err(format!("{at}: {n} is above the maximum {max}"));
    }
    Ok(())
}

#[test]
fn the_schema_checker_catches_what_it_claims_to() {
    let doc = Doc(serde_json::json!({"components": {"schemas": {
        "S": {"type": "object", "required": ["a"], "additionalProperties": false,
              "properties": {"a": {"type": "integer", "minimum": 1},
                             "b": {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "null"}]},
                             "c": {"type": "array", "items": {"type": "boolean"}}}}
    }}}));
    let s = serde_json::json!({"$ref": "#/components/schemas/S"});
    let check = |v: Value| doc.check(&s, &v, "$");
    assert!(check(serde_json::json!({"a": 1, "b": null, "c": [true]})).is_ok());
    for (bad, says) in [
        (serde_json::json!({}), "$: required field a"),
        (serde_json::json!({"a": 0}), "$.a: 0 is below"),
        (serde_json::json!({"a": "1"}), "$.a: string"),
        (
            serde_json::json!({"a": 1, "z": 1}),
            "$.z: not in the schema",
        ),
        (serde_json::json!({"a": 1, "b": "y"}), "$.b: fits 0"),
        (serde_json::json!({"a": 1, "c": [1]}), "$.c[0]: integer"),
    ] {
        let err = check(bad.clone()).unwrap_err();
        assert!(err.starts_with(says), "{bad}: {err}");
    }
}
