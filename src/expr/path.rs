//! Variable path parsing (`parseVariableName`, DSUL §3.1), shared by `{{ }}`
//! templates and the runtime's `set`/`delete` names.
//!
//! It mirrors the reference's character walk so that odd names (`a["x.y"]`,
//! `a.0`, `{{ a }}`) split exactly as they do there.

use super::jsfmt::{
    canonical_index, js_number_to_string, js_parse_int, js_string_to_number, js_to_string,
};
use super::{ExprError, Key};
use crate::value::Value;
use std::sync::Arc;

/// The bracket we are inside, if any.
#[derive(Clone, Copy, PartialEq)]
enum Bracket {
    None,
    Plain,
    Quoted(char),
}

/// Splits a variable name into keys: `a.b`, `a[0]`, `a["x.y"]`; `a.0` is `a[0]`.
pub fn parse_variable_name(name: &str) -> Result<Vec<Key>, ExprError> {
    let invalid = || ExprError::InvalidPath(name.to_string());
    if name.ends_with('.') || name.starts_with('[') {
        return Err(invalid());
    }
    let chars: Vec<char> = name.chars().collect();
    let mut keys = Vec::new();
    let mut bracket = Bracket::None;
    let mut current = String::new();
    let mut i = 0;
    while i <= chars.len() {
        let mut new_key: Option<String> = None;
        if i == chars.len() {
            if !current.is_empty() {
                new_key = Some(std::mem::take(&mut current));
            }
        } else {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            let closes_quote = matches!(bracket, Bracket::Quoted(q) if q == c) && next == Some(']');
            if (bracket == Bracket::None && c == '.')
                || (bracket == Bracket::Plain && c == ']')
                || closes_quote
            {
                if closes_quote {
                    i += 1;
                }
                // `a[0].b`: the dot after a bracket does not start an empty key.
                if c != '.' && chars.get(i + 1) == Some(&'.') {
                    i += 1;
                }
                new_key = Some(std::mem::take(&mut current));
                bracket = Bracket::None;
            } else if bracket == Bracket::None && c == '[' {
                if !current.is_empty() {
                    new_key = Some(std::mem::take(&mut current));
                }
                bracket = Bracket::Plain;
                if let Some(q @ ('"' | '\'')) = next {
                    i += 1;
                    bracket = Bracket::Quoted(q);
                }
            } else {
                current.push(c);
            }
        }
        if let Some(key) = new_key {
            if key.is_empty() {
                return Err(invalid());
            }
            keys.push(key_from_name(&key));
        }
        i += 1;
    }
    if keys.is_empty() {
        return Err(invalid());
    }
    Ok(keys)
}

/// The reference turns every key that `isNaN` accepts into `parseInt(key)`.
fn key_from_name(key: &str) -> Key {
    if !js_string_to_number(key).is_nan() {
        let n = js_parse_int(key);
        if n >= 0.0 && n.fract() == 0.0 && n < 9_007_199_254_740_992.0 {
            return Key::Index(n as usize);
        }
    }
    Key::Name(Arc::from(key))
}

/// The path key a computed value stands for (`a[{{k}}]`, `a[0]`).
pub(crate) fn key_of_value(v: &Value) -> Key {
    match v {
        Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9_007_199_254_740_992.0 => {
            Key::Index(*n as usize)
        }
        Value::Number(n) => Key::Name(Arc::from(js_number_to_string(*n))),
        Value::String(s) => canonical_index(s).map_or_else(|| Key::Name(s.clone()), Key::Index),
        other => Key::Name(Arc::from(js_to_string(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Key {
        Key::Name(Arc::from(s))
    }

    #[test]
    fn splits_dots_brackets_and_quotes() {
        assert_eq!(
            parse_variable_name("a.b.c").unwrap(),
            vec![n("a"), n("b"), n("c")]
        );
        assert_eq!(
            parse_variable_name("a[0]").unwrap(),
            vec![n("a"), Key::Index(0)]
        );
        assert_eq!(
            parse_variable_name("a.0").unwrap(),
            vec![n("a"), Key::Index(0)]
        );
        assert_eq!(parse_variable_name("a[b]").unwrap(), vec![n("a"), n("b")]);
        assert_eq!(
            parse_variable_name("a[\"x.y\"]").unwrap(),
            vec![n("a"), n("x.y")]
        );
        assert_eq!(
            parse_variable_name("a['x]y'].z").unwrap(),
            vec![n("a"), n("x]y"), n("z")]
        );
        assert_eq!(
            parse_variable_name("a[0][1].b").unwrap(),
            vec![n("a"), Key::Index(0), Key::Index(1), n("b")]
        );
        assert_eq!(
            parse_variable_name("a[x.y]").unwrap(),
            vec![n("a"), n("x.y")]
        );
        assert_eq!(parse_variable_name(" a ").unwrap(), vec![n(" a ")]);
        assert_eq!(parse_variable_name("$index").unwrap(), vec![n("$index")]);
        assert_eq!(parse_variable_name("a.-1").unwrap(), vec![n("a"), n("-1")]);
        assert_eq!(
            parse_variable_name("a.1.5").unwrap(),
            vec![n("a"), Key::Index(1), Key::Index(5)]
        );
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in ["", "a.", "[a]", "a..b", "a[]b"] {
            assert!(
                matches!(parse_variable_name(bad), Err(ExprError::InvalidPath(_))),
                "{bad}"
            );
        }
    }
}
