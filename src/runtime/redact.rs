//! Keeps secrets out of executed events (SPEC §6, DSUL §8): arguments marked
//! `secret: true` and any text holding one of the workspace's secret values
//! are replaced by `REDACTED`.

use crate::value::{Map, Value};
use std::sync::Arc;

/// What replaces a secret.
const REDACTED: &str = "REDACTED";

/// Secret values shorter than this are not searched for inside text: a
/// one- or two-character secret would redact half of every payload.
const MIN_SECRET_LEN: usize = 3;

/// The texts to hide: every string or number secret of the workspace.
pub fn secret_texts(secrets: &Map) -> Vec<String> {
    let mut texts: Vec<String> = secrets
        .values()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.to_string()),
            Value::Number(_) => Some(crate::expr::to_template_string(v)),
            _ => None,
        })
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect();
    // Longest first, so a secret that contains another is hidden whole.
    texts.sort_by_key(|s| std::cmp::Reverse(s.len()));
    texts
}

/// The names of the arguments declared `secret: true`.
pub fn secret_arguments(arguments: Option<&Value>) -> Vec<String> {
    let Some(Value::Object(args)) = arguments else {
        return Vec::new();
    };
    args.iter()
        .filter(|(_, schema)| {
            schema
                .as_object()
                .and_then(|s| s.get("secret"))
                .is_some_and(|s| matches!(s, Value::Bool(true)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `v` with every secret text replaced.
pub fn redact(v: &Value, texts: &[String]) -> Value {
    if texts.is_empty() {
        return v.clone();
    }
    match v {
        Value::String(s) if texts.iter().any(|t| s.contains(t.as_str())) => {
            let mut out = s.to_string();
            for t in texts {
                out = out.replace(t.as_str(), REDACTED);
            }
            Value::str(out)
        }
        Value::List(l) => Value::List(Arc::new(l.iter().map(|i| redact(i, texts)).collect())),
        Value::Object(m) => Value::object(
            m.iter()
                .map(|(k, v)| (k.clone(), redact(v, texts)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The trigger payload with secret arguments hidden, then secret texts.
pub fn redact_payload(payload: &Map, arguments: &[String], texts: &[String]) -> Value {
    let mut out = Map::with_capacity(payload.len());
    for (k, v) in payload {
        let v = if arguments.contains(k) {
            Value::str(REDACTED)
        } else {
            redact(v, texts)
        };
        out.insert(k.clone(), v);
    }
    Value::object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(j: serde_json::Value) -> Map {
        match Value::from(j) {
            Value::Object(m) => (*m).clone(),
            _ => Map::new(),
        }
    }

    #[test]
    fn hides_secret_texts_and_secret_arguments() {
        let secrets = map(json!({"apiKey": "s3cr3t-value", "pin": 12345, "x": "ab"}));
        let texts = secret_texts(&secrets);
        let args = secret_arguments(Some(&Value::from(
            json!({"password": {"type": "string", "secret": true}, "name": {"type": "string"}}),
        )));
        let payload = map(json!({
            "password": "hunter2",
            "name": "ab",
            "headers": {"authorization": "Bearer s3cr3t-value"},
            "list": [12345, "pin 12345"],
        }));
        assert_eq!(
            redact_payload(&payload, &args, &texts).to_json(),
            json!({
                "password": "REDACTED",
                "name": "ab",
                "headers": {"authorization": "Bearer REDACTED"},
                "list": [12345, "pin REDACTED"],
            })
        );
    }
}
