//! Templates (`{{ }}`), expressions (`{% %}`, condition keys) and variable paths.
//!
//! Everything here is parsed once when a workspace loads and evaluated many
//! times, so parsing produces small trees and evaluation never re-parses text
//! unless the reference's re-scan rule (DSUL §4.3) demands it.

use crate::value::Value;
use std::sync::Arc;

/// One key of a variable path: `a.b[0]` is `[Name("a"), Name("b"), Index(0)]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// An object key.
    Name(Arc<str>),
    /// A numeric key: a list index, or the object key of the same digits.
    Index(usize),
}

/// Where expressions read variables from; implemented by the runtime.
pub trait Scope {
    /// The value at `path`, or `Value::Undefined` when any step is missing.
    fn lookup(&self, path: &[Key]) -> Value;
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
}
