//! Execution budgets: how much one execution may hold and do, whatever its rate limits.
//!
//! Rate limits bound how often a workspace works; budgets bound what a single execution can
//! make the process hold (a string, a list, a nested value), how many instructions it runs and
//! how long it may wait, so that no tenant input can exhaust memory, stack or CPU. The
//! operator sets them in the `budgets:` section of the settings and may override each for one
//! workspace with a `sluice_<name>` secret (`sluice_max_instructions: 5000000`). As with the
//! rate-limit secrets, one bad value refuses the whole set and errors never echo a value.

use crate::checked::number;
use crate::value::Value;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The prefix of every budget secret; the rest is the budget's settings name.
pub(crate) const PREFIX: &str = "sluice_max_";

/// The highest `max_depth` accepted: values are walked, copied and dropped
/// recursively, and a thousand levels fit any thread's stack.
pub const DEPTH_CEILING: usize = 1000;

/// `max_depth` from the settings file: a whole number from 1 to [`DEPTH_CEILING`].
fn depth<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n: usize = crate::checked::positive(d)?;
    if n > DEPTH_CEILING {
        return Err(serde::de::Error::custom(format!(
            "expected a whole number from 1 to {DEPTH_CEILING}, got {n}"
        )));
    }
    Ok(n)
}

/// What one execution may use; exceeding any fails the execution with a [`BudgetExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    /// Instructions one execution may run, counting every iteration of every loop.
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_instructions: u64,
    /// The longest string a template, an expression or a `set` may produce, in bytes.
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_string_bytes: usize,
    /// The most entries of one list or object.
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_entries: usize,
    /// The largest variable (or context key), in bytes of JSON.
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_value_bytes: usize,
    /// The deepest nesting of lists and objects in one value, at most [`DEPTH_CEILING`].
    #[serde(deserialize_with = "depth")]
    pub max_depth: usize,
    /// The largest list index `set` may write (`l[5]` writes index 5, filling the gap).
    #[serde(deserialize_with = "crate::checked::whole")]
    pub max_list_index: usize,
    /// The largest compiled regular expression, in bytes (the `regex` crate's size limit).
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_regex_bytes: usize,
    /// The longest `wait` an automation may ask for, in seconds.
    #[serde(deserialize_with = "crate::checked::positive")]
    pub max_wait_secs: u64,
}

impl Budgets {
    /// The built-in budgets, as `config/default.yaml` documents them.
    pub const DEFAULT: Budgets = Budgets {
        max_instructions: 1_000_000,
        max_string_bytes: 10 * 1024 * 1024,
        max_entries: 1_000_000,
        max_value_bytes: 16 * 1024 * 1024,
        max_depth: 128,
        max_list_index: 1_000_000,
        max_regex_bytes: 256 * 1024,
        max_wait_secs: 86_400,
    };
}

impl Default for Budgets {
    fn default() -> Budgets {
        Budgets::DEFAULT
    }
}

/// Every budget by its settings name, so a test can check `get`, `set` and the error text agree.
#[cfg(test)]
const NAMES: [&str; 8] = [
    "max_instructions",
    "max_string_bytes",
    "max_entries",
    "max_value_bytes",
    "max_depth",
    "max_list_index",
    "max_regex_bytes",
    "max_wait_secs",
];

impl Budgets {
    /// The budget `name` (a settings name) as a number, or `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "max_instructions" => self.max_instructions,
            "max_string_bytes" => self.max_string_bytes as u64,
            "max_entries" => self.max_entries as u64,
            "max_value_bytes" => self.max_value_bytes as u64,
            "max_depth" => self.max_depth as u64,
            "max_list_index" => self.max_list_index as u64,
            "max_regex_bytes" => self.max_regex_bytes as u64,
            "max_wait_secs" => self.max_wait_secs,
            _ => return None,
        })
    }

    fn set(&mut self, name: &str, n: u64) -> bool {
        let size = || usize::try_from(n).unwrap_or(usize::MAX);
        match name {
            "max_instructions" => self.max_instructions = n,
            "max_string_bytes" => self.max_string_bytes = size(),
            "max_entries" => self.max_entries = size(),
            "max_value_bytes" => self.max_value_bytes = size(),
            "max_depth" => self.max_depth = size(),
            "max_list_index" => self.max_list_index = size(),
            "max_regex_bytes" => self.max_regex_bytes = size(),
            "max_wait_secs" => self.max_wait_secs = n,
            _ => return false,
        }
        true
    }

    /// These budgets with a workspace's `sluice_max_*` secrets applied; a null secret counts
    /// as absent. Every bad secret is reported, and then none is applied.
    pub fn with_secrets(
        &self,
        workspace: &str,
        secrets: &IndexMap<String, Value>,
    ) -> Result<Budgets, Vec<BudgetError>> {
        let mut budgets = *self;
        let mut errors = Vec::new();
        for (key, value) in secrets {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if value.is_nullish() {
                continue;
            }
            let name = format!("max_{rest}");
            let error = |problem: &'static str| BudgetError {
                workspace: workspace.to_owned(),
                key: key.clone(),
                problem,
            };
            if budgets.get(&name).is_none() {
                errors.push(error(UNKNOWN));
                continue;
            }
            let number = number(value);
            let (min, max, expected) = match name.as_str() {
                "max_list_index" => (0.0, MAX_EXACT, "expected a non-negative whole number"),
                "max_depth" => (
                    1.0,
                    DEPTH_CEILING as f64 + 1.0,
                    "expected a whole number from 1 to 1000",
                ),
                _ => (1.0, MAX_EXACT, "expected a whole number of at least 1"),
            };
            match number.filter(|n| n.fract() == 0.0 && (min..max).contains(n)) {
                Some(n) => {
                    budgets.set(&name, n as u64);
                }
                None => errors.push(error(expected)),
            }
        }
        if errors.is_empty() {
            Ok(budgets)
        } else {
            Err(errors)
        }
    }
}

/// 2^53: above it not every whole number is a distinct `f64`.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

const UNKNOWN: &str = "unknown budget secret, expected one of sluice_max_instructions, \
    sluice_max_string_bytes, sluice_max_entries, sluice_max_value_bytes, sluice_max_depth, \
    sluice_max_list_index, sluice_max_regex_bytes, sluice_max_wait_secs";

/// A `sluice_max_*` secret that cannot be used; never shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace {workspace}: secret {key}: {problem}")]
pub struct BudgetError {
    /// The workspace.
    pub workspace: String,
    /// The secret's key.
    pub key: String,
    /// What was expected.
    pub problem: &'static str,
}

/// An execution went over one of its budgets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is over the budget of {limit} (setting budgets.{name}, or the workspace secret sluice_{name})")]
pub struct BudgetExceeded {
    /// What went over, in words with its size (`a string of 12000000 bytes`).
    pub what: String,
    /// The size or count that was refused.
    pub found: u64,
    /// The budget in force.
    pub limit: u64,
    /// The budget's settings name (`max_string_bytes`).
    pub name: &'static str,
}

impl BudgetExceeded {
    /// `what` (`found`) went over the budget `name` of `budgets`.
    pub fn new(budgets: &Budgets, name: &'static str, what: impl Into<String>, found: u64) -> Self {
        BudgetExceeded {
            what: what.into(),
            found,
            limit: budgets.get(name).unwrap_or(0),
            name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, Value)]) -> IndexMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn every_name_reads_and_writes_its_field() {
        let mut b = Budgets::default();
        for (i, name) in NAMES.iter().enumerate() {
            assert!(b.set(name, 1000 + i as u64), "{name}");
        }
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(b.get(name), Some(1000 + i as u64), "{name}");
            assert!(UNKNOWN.contains(&format!("sluice_{name}")), "{name}");
        }
        assert_eq!(b.get("max_nothing"), None);
    }

    #[test]
    fn secrets_override_numbers_and_numeric_strings() {
        let given = secrets(&[
            ("sluice_max_instructions", Value::Number(5.0)),
            ("sluice_max_depth", Value::str("12")),
            ("sluice_max_list_index", Value::Number(0.0)),
            ("sluice_max_entries", Value::Null),
            ("other", Value::str("x")),
        ]);
        let b = Budgets::default().with_secrets("ws", &given).unwrap();
        assert_eq!(b.max_instructions, 5);
        assert_eq!(b.max_depth, 12);
        assert_eq!(b.max_list_index, 0);
        assert_eq!(b.max_entries, Budgets::default().max_entries);
    }

    #[test]
    fn bad_secrets_are_all_reported_without_their_values() {
        let given = secrets(&[
            ("sluice_max_instructions", Value::Number(-1.0)),
            ("sluice_max_depht", Value::Number(3.0)),
            ("sluice_max_regex_bytes", Value::str("s3cr3t-ish")),
            ("sluice_max_string_bytes", Value::Number(0.5)),
            ("sluice_max_depth", Value::Number(1001.0)),
        ]);
        let errors = Budgets::default().with_secrets("ws", &given).unwrap_err();
        assert_eq!(errors.len(), 5);
        assert!(
            errors[4].to_string().ends_with("from 1 to 1000"),
            "{}",
            errors[4]
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[1].contains("unknown budget secret"), "{}", text[1]);
        assert!(text.iter().all(|t| !t.contains("s3cr3t")));
        assert!(text[0].starts_with("workspace ws: secret sluice_max_instructions: expected"));
    }

    #[test]
    fn exceeded_names_the_value_the_budget_and_the_setting() {
        let e = BudgetExceeded::new(
            &Budgets::default(),
            "max_depth",
            "a value nested 200 levels deep",
            200,
        );
        assert_eq!(
            e.to_string(),
            "a value nested 200 levels deep is over the budget of 128 \
             (setting budgets.max_depth, or the workspace secret sluice_max_depth)"
        );
    }
}
