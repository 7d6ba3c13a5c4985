//! The places that use a named limit ([`Use`]): an automation's `limits:` entry (a name,
//! `{limit, units, priority, lane, wait}`, or an inline limit) and the `acquire`
//! instruction's fields, read once with the same checks and error paths as declarations.

use super::machine::Params;
use super::spec::{
    check_name, child, describe, err, limit_body, number, template, whole, LimitSpec, Number,
    SpecError, LIMIT_FIELDS,
};
use crate::expr::Template;
use crate::value::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The fields of a use, besides an inline limit's.
pub const USE_FIELDS: [&str; 5] = ["limit", "units", "priority", "lane", "wait"];
/// Priority when none is given.
pub const DEFAULT_PRIORITY: i64 = 10;
const MAX_WAIT_MS: f64 = 1e12;
const MAX_PRIORITY: f64 = 1e12;

/// What a use acquires.
#[derive(Clone, Debug)]
pub enum Target {
    /// A declared limit (workspace or shared), by name.
    Named(Arc<str>),
    /// An inline limit; its rendered key names it.
    Inline(Arc<Inline>),
}

/// An inline limit, with its settings prepared once when they are constant.
#[derive(Debug)]
pub struct Inline {
    /// The declaration (its `name` is the key's text).
    pub spec: LimitSpec,
    /// The settings, unless the rate is a template.
    pub params: Option<Arc<Params>>,
}

/// One use of a limit: an automation's `limits:` entry or an `acquire`.
#[derive(Clone, Debug)]
pub struct Use {
    /// What it acquires.
    pub target: Target,
    /// Units against the rate; 1 by default.
    pub units: Number,
    /// Higher first within a lane.
    pub priority: Number,
    /// The lane; `default` (or, for a shared limit, the workspace id) when absent.
    pub lane: Option<Template>,
    /// Longest wait; `None` waits for ever, zero is now or never.
    pub wait: Option<Duration>,
    /// Where it was written, for run-time errors.
    pub path: Vec<String>,
}

impl Use {
    /// Reads an automation's `limits:` entry: a name, or a map of use (and inline) fields.
    pub fn parse_entry(v: &Value, path: &[String]) -> Result<Use, Vec<SpecError>> {
        match v {
            Value::String(name) => {
                check_name(name, path).map_err(|e| vec![e])?;
                Ok(Use::named(Arc::from(&**name), path))
            }
            Value::Object(m) => Use::parse_map(m, path, &[]),
            other => Err(vec![err(
                path,
                format!(
                    "expected a limit name or a map ({}), found {}",
                    USE_FIELDS.join(", "),
                    describe(other)
                ),
            )]),
        }
    }

    /// Reads the fields of an `acquire`; its `do` and `else` are the caller's.
    pub fn parse_acquire(m: &Map, path: &[String]) -> Result<Use, Vec<SpecError>> {
        Use::parse_map(m, path, &["do", "else"])
    }

    fn named(name: Arc<str>, path: &[String]) -> Use {
        Use {
            target: Target::Named(name),
            units: Number::Const(1.0),
            priority: Number::Const(DEFAULT_PRIORITY as f64),
            lane: None,
            wait: None,
            path: path.to_vec(),
        }
    }

    fn parse_map(m: &Map, path: &[String], extra: &[&str]) -> Result<Use, Vec<SpecError>> {
        let mut errors = Vec::new();
        let own: Vec<&str> = USE_FIELDS.iter().chain(extra).copied().collect();
        let target = match m.get("limit") {
            Some(Value::String(name)) => {
                for k in m.keys().filter(|k| !own.contains(&k.as_str())) {
                    let why = if LIMIT_FIELDS.contains(&k.as_str()) {
                        format!("`{k}` cannot be given with `limit`: it belongs to the declaration of `{name}`")
                    } else {
                        format!("unknown field `{k}`; expected one of: {}", own.join(", "))
                    };
                    errors.push(err(&child(path, k), why));
                }
                match check_name(name, &child(path, "limit")) {
                    Ok(()) => Some(Target::Named(Arc::from(&**name))),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            }
            Some(other) => {
                errors.push(err(
                    &child(path, "limit"),
                    format!("expected a limit name, found {}", describe(other)),
                ));
                None
            }
            None => match m.get("key") {
                Some(Value::String(key)) => match limit_body(Arc::from(&**key), m, path, &own) {
                    Ok(spec) => {
                        let params =
                            (!spec.rate_is_template()).then(|| Arc::new(spec.params(None)));
                        Some(Target::Inline(Arc::new(Inline { spec, params })))
                    }
                    Err(mut e) => {
                        errors.append(&mut e);
                        None
                    }
                },
                _ => {
                    errors.push(err(path, "expected `limit` (a declared limit's name) or an inline limit with a `key`".into()));
                    None
                }
            },
        };
        let mut u = Use::named(Arc::from(""), path);
        let mut field = |k: &str, read: &mut dyn FnMut(&Value) -> Result<(), String>| {
            if let Some(v) = m.get(k).filter(|v| !v.is_nullish()) {
                if let Err(message) = read(v) {
                    errors.push(err(&child(path, k), message));
                }
            }
        };
        field("units", &mut |v| {
            number(v, "a positive number of units").map(|n| u.units = n)
        });
        field("priority", &mut |v| match v {
            Value::String(_) => template(v).map(|t| u.priority = Number::Template(t)),
            _ => whole(v, -MAX_PRIORITY, MAX_PRIORITY).map(|n| u.priority = Number::Const(n)),
        });
        field("lane", &mut |v| template(v).map(|t| u.lane = Some(t)));
        field("wait", &mut |v| {
            whole(v, 0.0, MAX_WAIT_MS).map(|ms| u.wait = Some(Duration::from_millis(ms as u64)))
        });
        match target {
            Some(target) if errors.is_empty() => Ok(Use { target, ..u }),
            _ => Err(errors),
        }
    }

    /// An error when this use names a limit that `known` does not know; `names` are the
    /// declared ones, listed as the valid choices.
    pub fn check_known(&self, known: &dyn Fn(&str) -> bool, names: &[&str]) -> Option<SpecError> {
        match &self.target {
            Target::Named(name) if !known(name) => {
                let choices = if names.is_empty() {
                    "none are declared (add it under `limits:` in workspace.yml)".to_string()
                } else {
                    format!("expected one of: {}", names.join(", "))
                };
                Some(err(
                    &self.path,
                    format!("unknown limit `{name}`; {choices}"),
                ))
            }
            _ => None,
        }
    }
}
