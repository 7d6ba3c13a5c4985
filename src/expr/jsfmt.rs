//! JavaScript conversions the reference gets for free: `Number.prototype.toString`,
//! `JSON.stringify` (compact and 2-space pretty), `String(x)`, `Number(x)` and
//! `parseInt`.
//!
//! Rust's float and JSON formatting differ from JavaScript (`1e21`, `1.0`), and
//! DSUL output is compared byte for byte with the reference, so these are
//! written out by hand. The JSON writers take a byte limit and stop as soon as
//! the text passes it, so a huge value never becomes a huge string.

use crate::value::Value;
use std::borrow::Cow;
use std::fmt::Write;

/// JavaScript `Number.prototype.toString()` (`NaN`, `Infinity`, `1e+21`, `1e-7`).
pub fn js_number_to_string(n: f64) -> String {
    let mut out = String::new();
    write_js_number(&mut out, n);
    out
}

fn write_js_number(out: &mut String, n: f64) {
    if n.is_nan() {
        out.push_str("NaN");
        return;
    }
    if n.is_infinite() {
        out.push_str(if n > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if n == 0.0 {
        out.push('0');
        return;
    }
    if n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
        return;
    }
    if n < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, which is what
    // ECMAScript's Number::toString starts from too; only the layout differs.
    let sci = format!("{:e}", n.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    let point = exp + 1;
    if k <= point && point <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - k) as usize));
    } else if 0 < point && point <= 21 {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else if -6 < point && point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        let _ = write!(out, "e{}{}", if e >= 0 { "+" } else { "-" }, e.abs());
    }
}

/// DSUL §4.2: how a value is written inside a longer string.
pub fn to_template_string(v: &Value) -> String {
    let mut out = String::new();
    // Without a limit the writer cannot stop early.
    let _ = push_template_string(&mut out, v, usize::MAX);
    out
}

/// Text being written went past its byte limit; holds the length reached, at least the limit.
#[derive(Debug)]
pub(crate) struct TooLong(pub usize);

/// Appends the §4.2 text of `v` to `out` (no intermediate allocation for strings), unless
/// `out` would pass `max` bytes.
pub(crate) fn push_template_string(out: &mut String, v: &Value, max: usize) -> Result<(), TooLong> {
    match v {
        Value::Undefined | Value::Null => Ok(()),
        Value::String(s) => push_within(out, s, max),
        other => write_json(out, other, Some(0), max),
    }
}

/// `JSON.stringify(v)`: `None` for undefined, as in JavaScript; at most `max` bytes.
pub(crate) fn json_stringify(v: &Value, max: usize) -> Result<Option<String>, TooLong> {
    if v.is_undefined() {
        return Ok(None);
    }
    let mut out = String::new();
    write_json(&mut out, v, None, max)?;
    Ok(Some(out))
}

/// Writes JSON; `indent` is `Some(level)` for 2-space pretty printing. It stops with
/// [`TooLong`] once `out` passes `max`, checking before each string and after each item.
fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    max: usize,
) -> Result<(), TooLong> {
    match v {
        Value::Undefined | Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if n.is_finite() => write_js_number(out, *n),
        Value::Number(_) => out.push_str("null"),
        Value::String(s) => {
            let len = out.len().saturating_add(s.len());
            if len > max {
                return Err(TooLong(len));
            }
            write_json_string(out, s);
        }
        Value::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return within(out, max);
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent.map(|l| l + 1));
                write_json(out, item, indent.map(|l| l + 1), max)?;
            }
            newline(out, indent);
            out.push(']');
        }
        Value::Object(map) => {
            let mut first = true;
            out.push('{');
            for (k, item) in map.iter().filter(|(_, v)| !v.is_undefined()) {
                if !first {
                    out.push(',');
                }
                first = false;
                newline(out, indent.map(|l| l + 1));
                write_json_string(out, k);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_json(out, item, indent.map(|l| l + 1), max)?;
            }
            if !first {
                newline(out, indent);
            }
            out.push('}');
        }
    }
    within(out, max)
}

fn within(out: &str, max: usize) -> Result<(), TooLong> {
    if out.len() > max {
        Err(TooLong(out.len()))
    } else {
        Ok(())
    }
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(level) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', level * 2));
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `String(v)`, borrowed when `v` is already a string.
pub(crate) fn js_str(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(js_to_string(other)),
    }
}

/// Appends `t` unless `out` would pass `max` bytes.
pub(crate) fn push_within(out: &mut String, t: &str, max: usize) -> Result<(), TooLong> {
    let len = out.len().saturating_add(t.len());
    if len > max {
        return Err(TooLong(len));
    }
    out.push_str(t);
    Ok(())
}

/// JavaScript `String(v)` (lists joined with `,`, objects `[object Object]`).
pub(crate) fn js_to_string(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined".into(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => js_number_to_string(*n),
        Value::String(s) => s.to_string(),
        Value::List(items) => items
            .iter()
            .map(|i| {
                if i.is_nullish() {
                    String::new()
                } else {
                    js_to_string(i)
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// JavaScript `Number(v)`.
pub(crate) fn js_to_number(v: &Value) -> f64 {
    match v {
        Value::Undefined => f64::NAN,
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => *n,
        Value::String(s) => js_string_to_number(s),
        Value::List(_) => js_string_to_number(&js_to_string(v)),
        Value::Object(_) => f64::NAN,
    }
}

fn js_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
}

/// JavaScript `Number(string)`: trimmed decimal, hex/octal/binary, `Infinity`; else NaN.
pub(crate) fn js_string_to_number(s: &str) -> f64 {
    let t = js_trim(s);
    if t.is_empty() {
        return 0.0;
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let radix = match t.get(..2) {
        Some("0x" | "0X") => 16,
        Some("0o" | "0O") => 8,
        Some("0b" | "0B") => 2,
        _ => 10,
    };
    if radix != 10 {
        let body = &t[2..];
        if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
            return f64::NAN;
        }
        return body.chars().fold(0.0, |acc, c| {
            acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
        });
    }
    if is_decimal_literal(t) {
        t.parse().unwrap_or(f64::NAN)
    } else {
        f64::NAN
    }
}

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`
fn is_decimal_literal(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// JavaScript `parseInt(string)` (radix 10, or 16 with a `0x` prefix).
pub(crate) fn js_parse_int(s: &str) -> f64 {
    let t = js_trim(s);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, t) = match t.get(..2) {
        Some("0x" | "0X") => (16, &t[2..]),
        _ => (10, t),
    };
    let digits: Vec<u32> = t.chars().map_while(|c| c.to_digit(radix)).collect();
    if digits.is_empty() {
        return f64::NAN;
    }
    let n = digits
        .iter()
        .fold(0.0, |acc, d| acc * f64::from(radix) + f64::from(*d));
    if neg {
        -n
    } else {
        n
    }
}

/// The UTF-16 unit at `idx` as a one-character string (JavaScript `s[idx]`).
pub(crate) fn utf16_char_at(s: &str, idx: usize) -> Option<String> {
    let unit = s.encode_utf16().nth(idx)?;
    Some(String::from_utf16_lossy(&[unit]))
}

/// True when the key is a canonical array index (`"0"`, `"12"`, not `"01"`).
pub(crate) fn canonical_index(s: &str) -> Option<usize> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_like_javascript() {
        let cases = [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (123456789.125, "123456789.125"),
            (-0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (1649838965493.0, "1649838965493"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2.5e25, "2.5e+25"),
            (-1e-10, "-1e-10"),
        ];
        for (n, s) in cases {
            assert_eq!(js_number_to_string(n), s, "{n}");
        }
    }

    #[test]
    fn template_strings_pretty_print_json() {
        assert_eq!(to_template_string(&Value::Undefined), "");
        assert_eq!(to_template_string(&Value::Null), "");
        assert_eq!(to_template_string(&Value::str("x")), "x");
        assert_eq!(to_template_string(&Value::Number(1e21)), "1e+21");
        assert_eq!(to_template_string(&Value::Number(f64::NAN)), "null");
        assert_eq!(to_template_string(&Value::Number(f64::INFINITY)), "null");
        assert_eq!(to_template_string(&Value::Bool(true)), "true");
        assert_eq!(
            to_template_string(&Value::from(json!({"a": 1}))),
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(
            to_template_string(&Value::from(json!({"a": [1, {"b": "q\"\n"}], "c": {}, "d": []}))),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"q\\\"\\n\"\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
        let mut m = crate::value::Map::new();
        m.insert("u".into(), Value::Undefined);
        m.insert(
            "l".into(),
            Value::list(vec![Value::Undefined, Value::Number(0.5)]),
        );
        assert_eq!(
            to_template_string(&Value::object(m)),
            "{\n  \"l\": [\n    null,\n    0.5\n  ]\n}"
        );
        assert_eq!(
            json_stringify(&Value::from(json!({"a": [1, 2.5], "b": null})), usize::MAX)
                .unwrap()
                .unwrap(),
            "{\"a\":[1,2.5],\"b\":null}"
        );
        assert!(matches!(json_stringify(&Value::Undefined, 0), Ok(None)));
    }

    #[test]
    fn conversions_follow_javascript() {
        assert_eq!(js_string_to_number(" 12 "), 12.0);
        assert_eq!(js_string_to_number(""), 0.0);
        assert_eq!(js_string_to_number("0x1F"), 31.0);
        assert_eq!(js_string_to_number("1e3"), 1000.0);
        assert_eq!(js_string_to_number(".5"), 0.5);
        assert_eq!(js_string_to_number("-Infinity"), f64::NEG_INFINITY);
        assert!(js_string_to_number("inf").is_nan());
        assert!(js_string_to_number("12px").is_nan());
        assert!(js_string_to_number("NaN").is_nan());
        assert_eq!(js_parse_int("12px"), 12.0);
        assert_eq!(js_parse_int("-3.9"), -3.0);
        assert!(js_parse_int("px").is_nan());
        assert_eq!(
            js_to_string(&Value::from(json!([1, null, "a", [2, 3]]))),
            "1,,a,2,3"
        );
        assert_eq!(js_to_string(&Value::from(json!({}))), "[object Object]");
        assert_eq!(js_to_number(&Value::from(json!([]))), 0.0);
        assert_eq!(js_to_number(&Value::from(json!([7]))), 7.0);
        assert_eq!(js_to_number(&Value::Null), 0.0);
        assert!(js_to_number(&Value::Undefined).is_nan());
        assert_eq!(canonical_index("12"), Some(12));
        assert_eq!(canonical_index("012"), None);
        assert_eq!(utf16_char_at("héllo", 1).as_deref(), Some("é"));
    }
}
