//! JavaScript's comparisons as DSUL expressions use them: `===`, `==`, the relational
//! operators and `in` (DSUL §5.3).

use super::jsfmt::{js_parse_int, js_string_to_number, js_to_number, js_to_string};
use crate::value::Value;
use std::cmp::Ordering;
use std::sync::Arc;

/// JavaScript `ToPrimitive`: lists and objects become their string form.
pub(crate) fn to_primitive(v: &Value) -> Value {
    match v {
        Value::List(_) | Value::Object(_) => Value::str(js_to_string(v)),
        other => other.clone(),
    }
}

/// JavaScript's abstract relational comparison; `None` when a side is NaN.
pub(crate) fn js_compare(l: &Value, r: &Value) -> Option<Ordering> {
    let (l, r) = (to_primitive(l), to_primitive(r));
    if let (Value::String(a), Value::String(b)) = (&l, &r) {
        return Some(a.encode_utf16().cmp(b.encode_utf16()));
    }
    js_to_number(&l).partial_cmp(&js_to_number(&r))
}

/// `x in y` as the reference computes it (DSUL §5.3); any error is false.
pub(crate) fn js_in(x: &Value, y: &Value) -> bool {
    match y {
        Value::String(s) if !s.is_empty() => {
            let x_nan = js_to_number(x).is_nan();
            s.split(',').any(|part| {
                let item = if x_nan || js_string_to_number(part).is_nan() {
                    Value::str(part)
                } else {
                    Value::Number(js_parse_int(part))
                };
                same_value_zero(&item, x)
            })
        }
        Value::List(items) => items.iter().any(|i| same_value_zero(i, x)),
        Value::Object(map) => map.contains_key(js_to_string(x).as_str()),
        _ => false,
    }
}

/// `Array.prototype.includes` equality: strict, but NaN equals NaN.
fn same_value_zero(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_nan() && y.is_nan() => true,
        _ => strict_eq(a, b),
    }
}

/// JavaScript `===`; lists and objects are equal only when they are the same value.
pub fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::List(x), Value::List(y)) => Arc::ptr_eq(x, y),
        (Value::Object(x), Value::Object(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// JavaScript `==`; lists and objects are equal only when they are the same value.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined | Value::Null, Value::Undefined | Value::Null) => true,
        (Value::Undefined | Value::Null, _) | (_, Value::Undefined | Value::Null) => false,
        (Value::Number(x), Value::String(s)) | (Value::String(s), Value::Number(x)) => {
            *x == js_string_to_number(s)
        }
        (Value::Bool(x), other) | (other, Value::Bool(x)) if !matches!(other, Value::Bool(_)) => {
            loose_eq(&Value::Number(f64::from(u8::from(*x))), other)
        }
        (Value::List(_) | Value::Object(_), Value::Number(_) | Value::String(_)) => {
            loose_eq(&to_primitive(a), b)
        }
        (Value::Number(_) | Value::String(_), Value::List(_) | Value::Object(_)) => {
            loose_eq(a, &to_primitive(b))
        }
        _ => strict_eq(a, b),
    }
}
