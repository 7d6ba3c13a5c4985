//! `validateArguments`: checks a payload against the automation's `arguments`
//! with the JSON-Schema subset that ajv applies by default (no coercion, no
//! defaults, extra properties allowed).

use super::{ErrorKind, ExecError};
use crate::value::{Map, Value};

/// Checks `locals` against `{type: object, properties: arguments}`.
pub(super) fn validate(arguments: Option<&Value>, locals: &Map) -> Result<(), ExecError> {
    let Some(Value::Object(props)) = arguments else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for (name, schema) in props.iter() {
        if let Some(v) = locals.get(name) {
            check(v, schema, name, &mut errors);
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ExecError::new(
        ErrorKind::InvalidArguments,
        format!("Invalid arguments: {}", errors.join("; ")),
    ))
}

fn type_matches(v: &Value, t: &str) -> bool {
    match (t, v) {
        ("string", Value::String(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.fract() == 0.0,
        ("boolean", Value::Bool(_)) => true,
        ("object", Value::Object(_)) => true,
        ("array", Value::List(_)) => true,
        ("null", Value::Null) => true,
        _ => false,
    }
}

fn check(v: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    let Value::Object(s) = schema else { return };
    if v.is_undefined() {
        return;
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(v, t)) {
        errors.push(format!("`{path}` must be {}", types.join(" or ")));
        return;
    }
    if let Some(Value::List(allowed)) = s.get("enum") {
        if !allowed.iter().any(|a| a == v) {
            errors.push(format!("`{path}` must be one of the allowed values"));
        }
    }
    match v {
        Value::String(text) => {
            if let Some(Value::String(p)) = s.get("pattern") {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(text) => {
                        errors.push(format!("`{path}` must match pattern \"{p}\""))
                    }
                    Err(_) => errors.push(format!("`{path}`: invalid pattern \"{p}\"")),
                    _ => {}
                }
            }
            let len = text.chars().count() as f64;
            bound(s, "minLength", len, path, errors, |len, min| len >= min);
            bound(s, "maxLength", len, path, errors, |len, max| len <= max);
        }
        Value::Number(n) => {
            bound(s, "minimum", *n, path, errors, |n, min| n >= min);
            bound(s, "maximum", *n, path, errors, |n, max| n <= max);
        }
        Value::Object(m) => {
            if let Some(Value::List(required)) = s.get("required") {
                for r in required.iter().filter_map(Value::as_str) {
                    if m.get(r).is_none_or(Value::is_undefined) {
                        errors.push(format!("`{path}` must have property `{r}`"));
                    }
                }
            }
            if let Some(Value::Object(props)) = s.get("properties") {
                for (k, sub) in props.iter() {
                    if let Some(child) = m.get(k) {
                        check(child, sub, &format!("{path}.{k}"), errors);
                    }
                }
            }
        }
        Value::List(items) => {
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn bound(
    s: &Map,
    key: &str,
    actual: f64,
    path: &str,
    errors: &mut Vec<String>,
    ok: impl Fn(f64, f64) -> bool,
) {
    if let Some(limit) = s.get(key).and_then(Value::as_f64) {
        if !ok(actual, limit) {
            errors.push(format!("`{path}` must satisfy {key} {limit}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(args: serde_json::Value, locals: serde_json::Value) -> Result<(), ExecError> {
        let locals = match Value::from(locals) {
            Value::Object(m) => (*m).clone(),
            _ => Map::new(),
        };
        validate(Some(&Value::from(args)), &locals)
    }

    #[test]
    fn no_coercion() {
        assert!(run(json!({"n": {"type": "number"}}), json!({"n": "abc"})).is_err());
        assert!(run(json!({"n": {"type": "number"}}), json!({"n": 3})).is_ok());
    }

    #[test]
    fn missing_and_extra_properties_are_allowed() {
        assert!(run(json!({"n": {"type": "number"}}), json!({"other": true})).is_ok());
    }

    #[test]
    fn nested_required_pattern_and_items() {
        let schema = json!({"body": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"},
                           "tags": {"type": "array", "items": {"type": "string"}}}}});
        assert!(run(
            schema.clone(),
            json!({"body": {"name": "ada", "tags": ["x"]}})
        )
        .is_ok());
        assert!(run(schema.clone(), json!({"body": {"name": "Ada"}})).is_err());
        assert!(run(schema.clone(), json!({"body": {"tags": [1]}})).is_err());
    }
}
