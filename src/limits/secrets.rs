//! A workspace's `prismeai_ratelimit_*` secrets, read into limit overrides.
//!
//! Secrets are written by operators as YAML, so a number may arrive as a number or as a
//! numeric string. All of them are read before any is applied: one bad value refuses the
//! whole set, so a workspace never runs with half of an edit. Errors name the workspace and
//! the key but never echo a value, since these are secrets (SPEC section 6).

use super::values::{self, ValueError};
use super::LimitKind;
use crate::value::Value;
use indexmap::IndexMap;

/// The prefix of every rate-limit secret.
pub(crate) const PREFIX: &str = "prismeai_ratelimit_";

/// A rate-limit secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The secret's value is refused.
    #[error("workspace {workspace}: secret {key}: {problem}")]
    BadValue {
        /// The workspace.
        workspace: String,
        /// The secret's key.
        key: String,
        /// What was expected.
        problem: ValueError,
    },
    /// A `prismeai_ratelimit_` key that names no limit (most likely a typo).
    #[error(
        "workspace {workspace}: secret {key}: unknown rate-limit secret, expected \
         prismeai_ratelimit_disabled or prismeai_ratelimit_<automations|emits|fetchs|repeats>[_burst]"
    )]
    UnknownKey {
        /// The workspace.
        workspace: String,
        /// The secret's key.
        key: String,
    },
}

/// The limits a workspace's secrets override; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Overrides {
    pub(super) disabled: bool,
    pub(super) rate: [Option<f64>; 4],
    pub(super) burst: [Option<u32>; 4],
}

impl Overrides {
    /// Reads the rate-limit secrets among `secrets`; a null secret counts as absent.
    pub(super) fn read(
        workspace: &str,
        secrets: &IndexMap<String, Value>,
    ) -> Result<Overrides, Vec<LimitError>> {
        let mut overrides = Overrides::default();
        let mut errors = Vec::new();
        for (key, value) in secrets {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if value.is_nullish() {
                continue;
            }
            let bad = |problem| LimitError::BadValue {
                workspace: workspace.to_owned(),
                key: key.clone(),
                problem,
            };
            let result = if name == "disabled" {
                switch(value).map(|on| overrides.disabled = on)
            } else if let Some(kind) = LimitKind::from_name(name) {
                rate(value).map(|rate| overrides.rate[kind.index()] = Some(rate))
            } else if let Some(kind) = name.strip_suffix("_burst").and_then(LimitKind::from_name) {
                burst(value).map(|burst| overrides.burst[kind.index()] = Some(burst))
            } else {
                errors.push(LimitError::UnknownKey {
                    workspace: workspace.to_owned(),
                    key: key.clone(),
                });
                continue;
            };
            if let Err(problem) = result {
                errors.push(bad(problem));
            }
        }
        if errors.is_empty() {
            Ok(overrides)
        } else {
            Err(errors)
        }
    }

    /// True when no limit is overridden.
    pub(super) fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// A rate given as a number or a numeric string.
fn rate(value: &Value) -> Result<f64, ValueError> {
    match value {
        Value::Number(n) => values::check_rate(*n),
        Value::String(s) => values::parse_rate(s),
        _ => Err(ValueError::NotANumber),
    }
}

/// A burst given as a number or a numeric string.
fn burst(value: &Value) -> Result<u32, ValueError> {
    match value {
        Value::Number(n) => values::check_burst(*n),
        Value::String(s) => values::parse_burst(s),
        _ => Err(ValueError::NotWhole),
    }
}

/// `true`/`false`, or the same as a string.
fn switch(value: &Value) -> Result<bool, ValueError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => values::parse_bool(s),
        _ => Err(ValueError::NotABool),
    }
}

/// The secret that sets the burst of `kind`.
pub(super) fn burst_key(kind: LimitKind) -> String {
    format!("{PREFIX}{}_burst", kind.as_str())
}
