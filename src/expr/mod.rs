//! Templates (`{{ }}`), expressions (`{% %}`, condition keys) and variable paths.
//!
//! Everything here is parsed once when a workspace loads and evaluated many
//! times, so parsing produces small trees and evaluation never re-parses text
//! unless the reference's re-scan rule (DSUL §4.3) demands it.

mod compare;
mod cx;
mod date;
mod eval;
mod functions;
mod jsfmt;
mod jsonmatch;
mod lexer;
mod parser;
mod path;
mod regex;
pub mod suggest;
mod template;

use crate::budgets::{BudgetExceeded, Budgets};
use crate::value::Value;
use std::sync::Arc;

pub use compare::{loose_eq, strict_eq};
pub use eval::Expr;
pub use jsfmt::{js_number_to_string, to_template_string};
pub use path::parse_variable_name;
pub use template::Template;

/// One key of a variable path: `a.b[0]` is `[Name("a"), Name("b"), Index(0)]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// An object key.
    Name(Arc<str>),
    /// A numeric key: a list index, or the object key of the same digits.
    Index(usize),
}

/// Where expressions read variables from; implemented by the runtime.
///
/// Implementations pick the root value from the first key (local variables or
/// a context) and should then call [`get_path`] on the remaining keys, so that
/// `length`, string indexing and numeric object keys behave as in DSUL §3.1.
pub trait Scope {
    /// The value at `path`, or `Value::Undefined` when any step is missing.
    fn lookup(&self, path: &[Key]) -> Value;

    /// What an evaluation may produce (string sizes, regex sizes); the runtime gives the
    /// workspace's budgets, anything else the defaults.
    fn budgets(&self) -> &Budgets {
        &Budgets::DEFAULT
    }
}

/// A value is a scope of its own: variables are its keys (handy for config
/// templates and tests).
impl Scope for Value {
    fn lookup(&self, path: &[Key]) -> Value {
        get_path(self, path)
    }
}

/// An error in a template or expression, with the text and the 1-based column.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExprError {
    /// The text does not parse.
    #[error("invalid expression syntax at column {column}: {message} in `{text}`")]
    Syntax {
        /// What was expected.
        message: String,
        /// The whole template or expression text.
        text: String,
        /// 1-based column in `text`.
        column: usize,
    },
    /// A function failed or got bad arguments.
    #[error("{message} in `{text}`")]
    Eval {
        /// What went wrong.
        message: String,
        /// The expression text.
        text: String,
    },
    /// A variable path is malformed (`a..b`, `[x]`, trailing `.`).
    #[error("invalid variable name `{0}`")]
    InvalidPath(String),
    /// Re-scanning interpolated text did not settle (a value contains its own template).
    #[error("template `{0}` keeps expanding (a value contains its own template)")]
    Runaway(String),
    /// Evaluating would go over one of the execution's budgets.
    #[error(transparent)]
    Budget(#[from] BudgetExceeded),
}

/// Walks `path` from `root`: objects by key (an index looks up the key of the
/// same digits), lists by index, `length` of lists and strings, and string
/// indexing by character. Any missing step gives `Value::Undefined`.
pub fn get_path(root: &Value, path: &[Key]) -> Value {
    let mut current = root;
    // A string character or a length is a fresh value, so it can only be the last step.
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match (current, key) {
            (Value::Object(map), Key::Name(name)) => match map.get(&**name) {
                Some(v) => current = v,
                None => return Value::Undefined,
            },
            (Value::Object(map), Key::Index(idx)) => match map.get(idx.to_string().as_str()) {
                Some(v) => current = v,
                None => return Value::Undefined,
            },
            (Value::List(list), Key::Index(idx)) => match list.get(*idx) {
                Some(v) => current = v,
                None => return Value::Undefined,
            },
            (Value::List(list), Key::Name(name)) if last && &**name == "length" => {
                return Value::Number(list.len() as f64)
            }
            (Value::String(s), Key::Name(name)) if last && &**name == "length" => {
                return Value::Number(s.encode_utf16().count() as f64)
            }
            (Value::String(s), Key::Index(idx)) if last => {
                return jsfmt::utf16_char_at(s, *idx)
                    .map(Value::str)
                    .unwrap_or(Value::Undefined)
            }
            _ => return Value::Undefined,
        }
    }
    current.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(p: &str) -> Vec<Key> {
        parse_variable_name(p).unwrap()
    }

    #[test]
    fn compiled_forms_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<Template>();
        shareable::<Expr>();
        shareable::<ExprError>();
    }

    #[test]
    fn get_path_walks_objects_lists_and_strings() {
        let v = Value::from(json!({"a": {"b": [10, {"c": "xyz"}], "1": "one"}, "s": "héllo"}));
        assert_eq!(get_path(&v, &keys("a.b[0]")), Value::Number(10.0));
        assert_eq!(get_path(&v, &keys("a.b.1.c")), Value::str("xyz"));
        assert_eq!(get_path(&v, &keys("a[1]")), Value::str("one"));
        assert_eq!(get_path(&v, &keys("a.b.length")), Value::Number(2.0));
        assert_eq!(get_path(&v, &keys("s.length")), Value::Number(5.0));
        assert_eq!(get_path(&v, &keys("s[1]")), Value::str("é"));
        assert_eq!(get_path(&v, &keys("a.b.1.c[0]")), Value::str("x"));
        assert!(get_path(&v, &keys("s[9]")).is_undefined());
        assert!(get_path(&v, &keys("s[0].x")).is_undefined());
        assert!(get_path(&v, &keys("a.missing.deep")).is_undefined());
        assert!(get_path(&v, &keys("a.b.5")).is_undefined());
    }
}
