//! A use's templates evaluated against an execution's variables at acquisition: the
//! limit's key and rate, the use's units, priority and lane. Whatever renders to something
//! unusable (an undefined key, units `-1`, `abc` or `1e400`) is a clear error, never a
//! panic.

use super::uses::{Target, Use};
use super::{spec, Ask, NamedLimits, Number, Per, MAX_KEY_BYTES};
use crate::checked::number;
use crate::expr::{js_number_to_string, Scope as Variables, Template};
use crate::value::Value;
use std::sync::Arc;

/// A template of a use that rendered to something unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("limit `{limit}`: `{field}` {message}")]
pub struct RenderError {
    /// The limit (an inline limit's key text).
    pub limit: String,
    /// `key`, `units`, `rate`, `lane` or `priority`.
    pub field: &'static str,
    /// What it rendered to and what is expected.
    pub message: String,
}

impl NamedLimits {
    /// Renders `u` against the execution's variables.
    pub fn render(&self, u: &Use, vars: &dyn Variables) -> Result<Ask, RenderError> {
        let (name, spec, inline) = match &u.target {
            Target::Named(name) => (Arc::clone(name), self.spec(name), None),
            Target::Inline(i) => (Arc::clone(&i.spec.name), None, Some(i)),
        };
        let fail = |field, message| RenderError {
            limit: name.to_string(),
            field,
            message,
        };
        let decl = spec.as_deref().or(inline.map(|i| &i.spec));
        let key = match decl.and_then(|d| d.key.as_ref()) {
            Some(t) => render_key(t, vars).map_err(|m| fail("key", m))?,
            None => String::new(),
        };
        let rate = match decl.and_then(|d| d.rate.as_ref()) {
            Some(Number::Template(t)) => {
                let r = render_number(t, vars).map_err(|m| fail("rate", m))?;
                let d = decl.map_or(Per::Minute, |d| d.per);
                spec::check_rate(r, d, decl.and_then(|d| d.burst)).map_err(|m| fail("rate", m))?;
                Some(r)
            }
            _ => None,
        };
        let units = match &u.units {
            Number::Const(n) => *n,
            Number::Template(t) => render_number(t, vars).map_err(|m| fail("units", m))?,
        };
        let priority = match &u.priority {
            Number::Const(n) => *n as i64,
            Number::Template(t) => {
                let v = t
                    .render(vars)
                    .map_err(|e| fail("priority", e.to_string()))?;
                match as_number(&v) {
                    Some(n) if n.fract() == 0.0 && n.abs() <= 1e12 => n as i64,
                    _ => {
                        return Err(fail(
                            "priority",
                            format!("rendered {}; expected a whole number", show(&v)),
                        ))
                    }
                }
            }
        };
        let lane = match &u.lane {
            Some(t) => Some(render_key(t, vars).map_err(|m| fail("lane", m))?),
            None => None,
        };
        Ok(Ask {
            limit: if inline.is_some() {
                Arc::from(key.as_str())
            } else {
                name
            },
            key,
            units,
            priority,
            lane,
            wait: u.wait,
            rate,
            inline: inline.cloned(),
        })
    }
}

fn render_key(t: &Template, vars: &dyn Variables) -> Result<String, String> {
    let v = t.render(vars).map_err(|e| e.to_string())?;
    let text = match &v {
        Value::String(s) if !s.is_empty() => s.to_string(),
        Value::Number(n) if n.is_finite() => js_number_to_string(*n),
        _ => {
            return Err(format!(
                "rendered {}; expected a non-empty string or a number",
                show(&v)
            ))
        }
    };
    if text.len() > MAX_KEY_BYTES {
        return Err(format!(
            "rendered {} bytes; the most is {MAX_KEY_BYTES}",
            text.len()
        ));
    }
    Ok(text)
}

fn render_number(t: &Template, vars: &dyn Variables) -> Result<f64, String> {
    let v = t.render(vars).map_err(|e| e.to_string())?;
    match as_number(&v) {
        Some(n) if n > 0.0 => Ok(n),
        _ => Err(format!("rendered {}; expected a positive number", show(&v))),
    }
}

/// A finite number, from a number or its decimal text.
fn as_number(v: &Value) -> Option<f64> {
    number(v).filter(|n| n.is_finite())
}

fn show(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined".into(),
        Value::Null => "null".into(),
        Value::String(s) if s.is_empty() => "an empty string".into(),
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{}`", js_number_to_string(*n)),
        other => format!("a value of type {}", other.type_name()),
    }
}
