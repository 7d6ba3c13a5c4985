//! The expression functions of DSUL §5.4 (`round`, `split`, `json`, `isArray`,
//! `URLSearchParams`, ...) plus the newer documented `lower`, `upper`,
//! `truncate`, `isString` and `isNumber`. `date` lives in `date.rs` and
//! `jsonmatch` in `jsonmatch.rs`.

use super::cx::Cx;
use super::jsfmt::{js_str, js_to_number, js_to_string, json_stringify, push_within, TooLong};
use super::{date, jsonmatch, parse_variable_name, ExprError};
use crate::value::{Map, Value};

/// A known function; unknown names are rejected when parsing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Func {
    Date,
    Rand,
    Round,
    Floor,
    Ceil,
    Split,
    Join,
    Json,
    Replace,
    Slice,
    IsArray,
    IsObject,
    IsString,
    IsNumber,
    JsonMatch,
    UrlSearchParams,
    Lower,
    Upper,
    Truncate,
}

impl Func {
    /// The function of that exact name.
    /// Every function by its name in expressions.
    const ALL: [(&'static str, Func); 19] = [
        ("date", Func::Date),
        ("rand", Func::Rand),
        ("round", Func::Round),
        ("floor", Func::Floor),
        ("ceil", Func::Ceil),
        ("split", Func::Split),
        ("join", Func::Join),
        ("json", Func::Json),
        ("replace", Func::Replace),
        ("slice", Func::Slice),
        ("isArray", Func::IsArray),
        ("isObject", Func::IsObject),
        ("isString", Func::IsString),
        ("isNumber", Func::IsNumber),
        ("jsonmatch", Func::JsonMatch),
        ("URLSearchParams", Func::UrlSearchParams),
        ("lower", Func::Lower),
        ("upper", Func::Upper),
        ("truncate", Func::Truncate),
    ];

    pub(super) fn from_name(name: &str) -> Option<Func> {
        Func::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The names of every function, for "did you mean".
    pub(super) fn names() -> Vec<&'static str> {
        Func::ALL.iter().map(|(n, _)| *n).collect()
    }
}

/// Calls `func`; `field` is the optional `.name` after the call.
pub(crate) fn call(
    cx: &Cx<'_>,
    func: Func,
    args: Vec<Value>,
    field: Option<&str>,
) -> Result<Value, ExprError> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Undefined);
    Ok(match func {
        Func::Date => date::date(cx, &args, field)?,
        Func::Rand => rand_fn(&arg(0), &arg(1)),
        Func::Round => round_like(cx, &args, "round", js_round)?,
        Func::Floor => round_like(cx, &args, "floor", f64::floor)?,
        Func::Ceil => round_like(cx, &args, "ceil", f64::ceil)?,
        Func::Split => match (arg(0), arg(1)) {
            (Value::String(s), Value::String(sep)) => split(cx, &s, &sep)?,
            _ => return Err(cx.fail("Bad split() arguments. Ex usage : split({{textVar}}, \",\")")),
        },
        Func::Join => match (arg(0), arg(1)) {
            (Value::List(items), Value::String(sep)) => {
                join(&items, &sep, cx.budgets.max_string_bytes).map_err(|e| cx.too_long(e))?
            }
            _ => return Err(cx.fail("Bad join() arguments. Ex usage : join({{someList}}, \",\")")),
        },
        Func::Json => match arg(0) {
            Value::String(s) => serde_json::from_str::<serde_json::Value>(&s)
                .map(Value::from)
                .map_err(|_| cx.fail("Invalid JSON syntax"))?,
            other => json_stringify(&other, cx.budgets.max_string_bytes)
                .map_err(|e| cx.too_long(e))?
                .map_or(Value::Undefined, Value::str),
        },
        Func::Replace => match (arg(0), arg(1), arg(2)) {
            (Value::String(s), Value::String(p), Value::String(w)) => Value::str(
                replace_first(&s, &p, &w, cx.budgets.max_string_bytes).map_err(|e| cx.too_long(e))?,
            ),
            _ => {
                return Err(cx.fail(
                    "Bad replace() arguments. Ex usage : replace(\"hello world\", \"world\", \"you\")",
                ))
            }
        },
        Func::Slice => slice(cx, &arg(0), &arg(1), &arg(2))?,
        Func::IsArray => Value::Bool(matches!(resolve_name(cx, arg(0)), Value::List(_))),
        Func::IsObject => Value::Bool(matches!(
            resolve_name(cx, arg(0)),
            Value::Object(_) | Value::Null
        )),
        Func::IsString => Value::Bool(matches!(arg(0), Value::String(_))),
        Func::IsNumber => Value::Bool(matches!(arg(0), Value::Number(_))),
        Func::JsonMatch => match (arg(0), arg(1)) {
            (_, Value::Object(query)) => match arg(0) {
                Value::Object(_) | Value::List(_) | Value::Null => {
                    Value::Bool(
                        jsonmatch::matches(&arg(0), &query, cx.budgets).map_err(|e| cx.failure(e))?,
                    )
                }
                _ => Value::Bool(false),
            },
            _ => {
                return Err(cx.fail(
                    "Bad jsonmatch() arguments. Ex usage : jsonmatch({{someObjectToTest}}, {{someJsonConditions}})",
                ))
            }
        },
        Func::UrlSearchParams => url_search_params(cx, &arg(0), field)?,
        // Case mapping can lengthen text (`ß` becomes `SS`), so the result is checked too.
        Func::Lower => match arg(0) {
            Value::String(s) => sized(cx, s.to_lowercase())?,
            _ => return Err(cx.fail("Bad lower() arguments: a string is required")),
        },
        Func::Upper => match arg(0) {
            Value::String(s) => sized(cx, s.to_uppercase())?,
            _ => return Err(cx.fail("Bad upper() arguments: a string is required")),
        },
        Func::Truncate => truncate(cx, &arg(0), &arg(1), &arg(2))?,
    })
}

/// `s` as a value, unless it is over the `max_string_bytes` budget.
fn sized(cx: &Cx<'_>, s: String) -> Result<Value, ExprError> {
    cx.check_len(s.len())?;
    Ok(Value::str(s))
}

/// `Array.prototype.join`: nullish items are empty; stops once past `max` bytes.
fn join(items: &[Value], sep: &str, max: usize) -> Result<Value, TooLong> {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            push_within(&mut out, sep, max)?;
        }
        if !item.is_nullish() {
            push_within(&mut out, &js_str(item), max)?;
        }
    }
    Ok(Value::str(out))
}

/// `isArray("name")` and `isObject("name")` read the variable of that name.
fn resolve_name(cx: &Cx<'_>, v: Value) -> Value {
    match &v {
        Value::String(s) if !s.is_empty() => parse_variable_name(s)
            .map(|keys| cx.scope.lookup(&keys))
            .unwrap_or(Value::Undefined),
        _ => v,
    }
}

fn rand_fn(min: &Value, max: &Value) -> Value {
    let min = if min.is_undefined() {
        0.0
    } else {
        js_to_number(min)
    };
    let max = if max.is_undefined() {
        1.0
    } else {
        js_to_number(max)
    };
    let r = rand::random::<f64>() * (max - min) + min;
    Value::Number(if min == 0.0 && max == 1.0 {
        r
    } else {
        r.floor()
    })
}

/// JavaScript `Math.round`: halves go towards +Infinity (`round(-2.5)` is -2).
fn js_round(x: f64) -> f64 {
    let f = x.floor();
    if x - f >= 0.5 {
        f + 1.0
    } else {
        f
    }
}

fn round_like(
    cx: &Cx<'_>,
    args: &[Value],
    name: &str,
    method: fn(f64) -> f64,
) -> Result<Value, ExprError> {
    let n = args.first().unwrap_or(&Value::Undefined);
    // `decimals || 0`: any falsy second argument means no decimals.
    let d = match args.get(1) {
        Some(v) if v.truthy() => v.clone(),
        _ => Value::Number(0.0),
    };
    match (n, &d) {
        (Value::Number(n), Value::Number(d)) => {
            let coef = 10f64.powf(*d);
            Ok(Value::Number(method(n * coef) / coef))
        }
        _ => Err(cx.fail(format!(
            "Invalid parameters {} and {} given to {name} function",
            js_to_string(n),
            js_to_string(&d)
        ))),
    }
}

fn split(cx: &Cx<'_>, s: &str, sep: &str) -> Result<Value, ExprError> {
    let count = if sep.is_empty() {
        s.encode_utf16().count()
    } else {
        s.matches(sep).count() + 1
    };
    cx.check_entries(count)?;
    let parts: Vec<Value> = if sep.is_empty() {
        s.encode_utf16()
            .map(|u| Value::str(String::from_utf16_lossy(&[u])))
            .collect()
    } else {
        s.split(sep).map(Value::str).collect()
    };
    Ok(Value::list(parts))
}

/// `String.prototype.replace` with a string pattern: first occurrence, `$` patterns honoured.
/// `` $` `` and `$'` repeat parts of `s`, so the result is checked against `max` as it grows.
fn replace_first(s: &str, pattern: &str, with: &str, max: usize) -> Result<String, TooLong> {
    let Some(at) = s.find(pattern) else {
        return Ok(s.to_string());
    };
    let end = at + pattern.len();
    let mut out = String::with_capacity((s.len() + with.len()).min(max));
    out.push_str(&s[..at]);
    let mut rest = with;
    while let Some(dollar) = rest.find('$') {
        push_within(&mut out, &rest[..dollar], max)?;
        let after = &rest[dollar + 1..];
        let piece = match after.as_bytes().first() {
            Some(b'$') => "$",
            Some(b'&') => pattern,
            Some(b'`') => &s[..at],
            Some(b'\'') => &s[end..],
            _ => {
                push_within(&mut out, "$", max)?;
                rest = after;
                continue;
            }
        };
        push_within(&mut out, piece, max)?;
        rest = &after[1..];
    }
    push_within(&mut out, rest, max)?;
    push_within(&mut out, &s[end..], max)?;
    Ok(out)
}

/// JavaScript relative index resolution for `slice`.
fn slice_index(v: f64, len: usize) -> usize {
    let len_f = len as f64;
    let v = if v.is_nan() { 0.0 } else { v.trunc() };
    let i = if v < 0.0 {
        (len_f + v).max(0.0)
    } else {
        v.min(len_f)
    };
    i as usize
}

fn slice(cx: &Cx<'_>, target: &Value, start: &Value, end: &Value) -> Result<Value, ExprError> {
    let bad = || {
        cx.fail("Bad slice() arguments. Ex usage : slice({{someArrayOrString}}, 0, 5) or slice({{someArrayOrString}}, 5)")
    };
    let Value::Number(start) = start else {
        return Err(bad());
    };
    let end = match end {
        Value::Undefined => None,
        Value::Number(n) => Some(*n),
        _ => return Err(bad()),
    };
    let range = |len: usize| {
        let s = slice_index(*start, len);
        let e = end.map_or(len, |e| slice_index(e, len));
        (s, e.max(s))
    };
    match target {
        Value::List(items) => {
            let (s, e) = range(items.len());
            Ok(Value::list(items[s..e].to_vec()))
        }
        Value::String(text) => {
            let units: Vec<u16> = text.encode_utf16().collect();
            let (s, e) = range(units.len());
            Ok(Value::str(String::from_utf16_lossy(&units[s..e])))
        }
        _ => Err(bad()),
    }
}

fn truncate(cx: &Cx<'_>, s: &Value, len: &Value, ellipsis: &Value) -> Result<Value, ExprError> {
    let (Value::String(s), Value::Number(len)) = (s, len) else {
        return Err(cx.fail("Bad truncate() arguments. Ex usage : truncate({{text}}, 10, \"...\")"));
    };
    let ellipsis = match ellipsis {
        Value::Undefined => "...".to_string(),
        other => js_to_string(other),
    };
    // `as` saturates: NaN and negatives keep no character, huge lengths keep them all.
    let max = if *len > 0.0 { *len as usize } else { 0 };
    let Some((cut, _)) = s.char_indices().nth(max) else {
        return Ok(Value::String(s.clone()));
    };
    cx.check_len(cut.saturating_add(ellipsis.len()))?;
    let mut out = String::with_capacity(cut + ellipsis.len());
    out.push_str(&s[..cut]);
    out.push_str(&ellipsis);
    Ok(Value::str(out))
}

/// `new URLSearchParams(x)` then `.asString` / `.asJSON`; failures give undefined.
fn url_search_params(cx: &Cx<'_>, input: &Value, field: Option<&str>) -> Result<Value, ExprError> {
    let pairs: Vec<(String, String)> = match input {
        Value::String(s) => {
            // Every pair but the last ends at a `&`; counted before any is built.
            cx.check_entries(s.bytes().filter(|b| *b == b'&').count() + 1)?;
            parse_query(s)
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), js_to_string(v)))
            .collect(),
        Value::Undefined | Value::Null => Vec::new(),
        _ => return Ok(Value::Undefined),
    };
    Ok(match field {
        Some("asString") => {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                ser.append_pair(k, v);
            }
            sized(cx, ser.finish())?
        }
        Some("asJSON") if matches!(input, Value::String(_)) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                // `Object.fromEntries`: a repeated key keeps its last value but its first position.
                map.insert(k, Value::str(v));
            }
            Value::object(map)
        }
        _ => Value::Undefined,
    })
}

fn parse_query(s: &str) -> Vec<(String, String)> {
    let s = s.strip_prefix('?').unwrap_or(s);
    form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::expr::{Expr, ExprError};
    use crate::value::Value;
    use serde_json::json;

    fn scope() -> Value {
        Value::from(json!({
            "list": [1, "a", null, [2, 3]], "obj": {"a": 1, "b": {"c": [1, 2]}}, "s": "Hello World",
            "raw": "{\"a\": {\"b\": [10, 20]}}", "n": 2.345, "nul": null, "str": "list",
            "q": "a=1&b=x%20y&a=3", "people": {"name": "Ann", "age": 31, "tags": ["x", "y"]},
        }))
    }

    fn ev(text: &str) -> Value {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&scope())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn fails(text: &str) {
        match Expr::parse(text).map(|e| e.eval(&scope())) {
            Ok(Err(ExprError::Eval { .. })) => {}
            other => panic!("{text}: expected an evaluation error, got {other:?}"),
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(ev("round(2.5)"), Value::Number(3.0));
        assert_eq!(ev("round(-2.5)"), Value::Number(-2.0));
        assert_eq!(ev("round({{n}}, 2)"), Value::Number(2.35));
        assert_eq!(ev("floor({{n}}, 1)"), Value::Number(2.3));
        assert_eq!(ev("ceil({{n}})"), Value::Number(3.0));
        assert_eq!(ev("round(10 / 3)"), Value::Number(3.0));
        fails("round(\"2\")");
        fails("floor({{missing}})");
        fails("ceil(1, \"x\")");
    }

    #[test]
    fn rand_ranges() {
        for _ in 0..50 {
            assert_eq!(ev("rand(10, 11)"), Value::Number(10.0));
            let Value::Number(r) = ev("rand()") else {
                panic!()
            };
            assert!((0.0..1.0).contains(&r));
            let Value::Number(r) = ev("rand(1, 5)") else {
                panic!()
            };
            assert!(r.fract() == 0.0 && (1.0..5.0).contains(&r));
        }
        assert_eq!(ev("rand() < 1"), Value::Bool(true));
    }

    #[test]
    fn strings_and_lists() {
        assert_eq!(
            ev("split(\"a,b,,c\", \",\")"),
            Value::from(json!(["a", "b", "", "c"]))
        );
        assert_eq!(
            ev("split(\"abc\", \"\")"),
            Value::from(json!(["a", "b", "c"]))
        );
        fails("split({{list}}, \",\")");
        assert_eq!(ev("join({{list}}, \"-\")"), Value::str("1-a--2,3"));
        fails("join(\"abc\", \",\")");
        fails("join({{list}})");
        assert_eq!(ev("replace(\"a-b-c\", \"-\", \"+\")"), Value::str("a+b-c"));
        assert_eq!(ev("replace(\"abc\", \"b\", \"[$&]\")"), Value::str("a[b]c"));
        fails("replace(\"abc\", \"b\")");
        assert_eq!(ev("slice({{list}}, 1, 2)"), Value::from(json!(["a"])));
        assert_eq!(ev("slice({{list}}, -1)"), Value::from(json!([[2, 3]])));
        assert_eq!(ev("slice({{s}}, 0, 5)"), Value::str("Hello"));
        assert_eq!(ev("slice({{s}}, -5)"), Value::str("World"));
        assert_eq!(ev("slice({{s}}, 3, 1)"), Value::str(""));
        fails("slice({{s}}, \"1\")");
        fails("slice({{n}}, 1)");
        assert_eq!(ev("lower({{s}})"), Value::str("hello world"));
        assert_eq!(ev("upper({{s}})"), Value::str("HELLO WORLD"));
        assert_eq!(ev("truncate({{s}}, 5)"), Value::str("Hello..."));
        assert_eq!(ev("truncate({{s}}, 5, \"!\")"), Value::str("Hello!"));
        assert_eq!(ev("truncate({{s}}, 50)"), Value::str("Hello World"));
        fails("lower(1)");
    }

    #[test]
    fn json_function() {
        assert_eq!(
            ev("json({{raw}})"),
            Value::from(json!({"a": {"b": [10, 20]}}))
        );
        assert_eq!(
            ev("json({{obj}})"),
            Value::str("{\"a\":1,\"b\":{\"c\":[1,2]}}")
        );
        assert_eq!(ev("json(1.5)"), Value::str("1.5"));
        assert_eq!(ev("json({{missing}})"), Value::Undefined);
        fails("json(\"{bad\")");
    }

    #[test]
    fn type_tests() {
        assert_eq!(ev("isArray({{list}})"), Value::Bool(true));
        assert_eq!(ev("isArray(list)"), Value::Bool(true));
        assert_eq!(ev("isArray(\"list\")"), Value::Bool(true));
        assert_eq!(ev("isArray({{str}})"), Value::Bool(true));
        assert_eq!(ev("isArray({{obj}})"), Value::Bool(false));
        assert_eq!(ev("isObject({{obj}})"), Value::Bool(true));
        assert_eq!(ev("isObject(\"obj.b\")"), Value::Bool(true));
        assert_eq!(ev("isObject(null)"), Value::Bool(true));
        assert_eq!(ev("isObject({{nul}})"), Value::Bool(true));
        assert_eq!(ev("isObject({{list}})"), Value::Bool(false));
        assert_eq!(ev("isObject(nothing)"), Value::Bool(false));
        assert_eq!(ev("isString({{s}})"), Value::Bool(true));
        assert_eq!(ev("isString(1)"), Value::Bool(false));
        assert_eq!(ev("isNumber({{n}})"), Value::Bool(true));
        assert_eq!(ev("isNumber(\"1\")"), Value::Bool(false));
    }

    #[test]
    fn url_search_params() {
        assert_eq!(
            ev("URLSearchParams({{obj}}).asString"),
            Value::str("a=1&b=%5Bobject+Object%5D")
        );
        assert_eq!(
            ev("URLSearchParams({{q}}).asString"),
            Value::str("a=1&b=x+y&a=3")
        );
        assert_eq!(
            ev("URLSearchParams({{q}}).asJSON"),
            Value::from(json!({"a": "3", "b": "x y"}))
        );
        assert_eq!(ev("URLSearchParams({{obj}}).asJSON"), Value::Undefined);
        assert_eq!(ev("URLSearchParams({{q}}).other"), Value::Undefined);
    }

    #[test]
    fn jsonmatch_function() {
        assert_eq!(ev("jsonmatch({{people}}, {{obj}})"), Value::Bool(false));
        let q = |query: serde_json::Value| {
            let s = Value::from(json!({
                "p": {"name": "Ann", "age": 31, "tags": ["x", "y"], "addr": {"city": "Paris"}},
                "q": query,
            }));
            Expr::parse("jsonmatch({{p}}, {{q}})")
                .unwrap()
                .eval(&s)
                .unwrap()
        };
        assert_eq!(q(json!({"name": "Ann"})), Value::Bool(true));
        assert_eq!(
            q(json!({"age": {"$gt": 30, "$lte": 31}})),
            Value::Bool(true)
        );
        assert_eq!(q(json!({"age": {"$lt": 30}})), Value::Bool(false));
        assert_eq!(q(json!({"addr.city": "Paris"})), Value::Bool(true));
        assert_eq!(q(json!({"tags": "x"})), Value::Bool(true));
        assert_eq!(
            q(json!({"name": {"$in": ["Bob", "Ann"]}})),
            Value::Bool(true)
        );
        assert_eq!(
            q(json!({"name": {"$nin": ["Bob", "Ann"]}})),
            Value::Bool(false)
        );
        assert_eq!(
            q(json!({"$or": [{"name": "Bob"}, {"age": 31}]})),
            Value::Bool(true)
        );
        assert_eq!(
            q(json!({"$and": [{"name": "Bob"}, {"age": 31}]})),
            Value::Bool(false)
        );
        assert_eq!(q(json!({"$nor": [{"name": "Bob"}]})), Value::Bool(true));
        assert_eq!(q(json!({"missing": {"$exists": false}})), Value::Bool(true));
        assert_eq!(q(json!({"name": {"$exists": true}})), Value::Bool(true));
        assert_eq!(
            q(json!({"name": {"$regex": "^a", "$options": "i"}})),
            Value::Bool(true)
        );
        assert_eq!(
            q(json!({"name": {"$not": {"$eq": "Ann"}}})),
            Value::Bool(false)
        );
        assert_eq!(q(json!({"name": {"$ne": "Bob"}})), Value::Bool(true));
        assert_eq!(q(json!({"addr": {"city": "Paris"}})), Value::Bool(true));
        assert_eq!(ev("jsonmatch({{s}}, {{obj}})"), Value::Bool(false));
        fails("jsonmatch({{obj}}, 1)");
    }
}
