//! `jsonmatch(obj, query)`: MongoDB-style queries as @ucast/mongo2js evaluates
//! them (`$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $not $and $or $nor`
//! plus `$size $all $elemMatch`), with dotted paths and implicit equality.
//! A field holding a list matches when any element does, as in MongoDB.

use super::compare::js_compare;
use super::cx::Failure;
use super::jsfmt::{canonical_index, js_to_string};
use super::regex::CompiledRegex;
use crate::budgets::Budgets;
use crate::value::{Map, Value};
use std::cmp::Ordering;

/// Whether `doc` satisfies `query`; an unknown operator is an error.
pub(crate) fn matches(doc: &Value, query: &Map, budgets: &Budgets) -> Result<bool, Failure> {
    for (key, cond) in query {
        let ok = match key.as_str() {
            "$and" => {
                let mut all = true;
                for q in sub_queries(cond, key)? {
                    all &= matches(doc, q, budgets)?;
                }
                all
            }
            "$or" => {
                let mut any = false;
                for q in sub_queries(cond, key)? {
                    any |= matches(doc, q, budgets)?;
                }
                any
            }
            "$nor" => {
                let mut any = false;
                for q in sub_queries(cond, key)? {
                    any |= matches(doc, q, budgets)?;
                }
                !any
            }
            op if op.starts_with('$') => {
                return Err(format!("Unknown jsonmatch operator {op}").into())
            }
            field => match_field(&get_dotted(doc, field), cond, budgets)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn sub_queries<'a>(cond: &'a Value, op: &str) -> Result<Vec<&'a Map>, Failure> {
    match cond {
        Value::List(items) => items
            .iter()
            .map(|i| {
                i.as_object()
                    .ok_or_else(|| format!("{op} expects a list of objects").into())
            })
            .collect(),
        _ => Err(format!("{op} expects a list of objects").into()),
    }
}

fn is_operator_object(cond: &Value) -> Option<&Map> {
    cond.as_object()
        .filter(|m| !m.is_empty() && m.keys().all(|k| k.starts_with('$')))
}

fn match_field(value: &Value, cond: &Value, budgets: &Budgets) -> Result<bool, Failure> {
    let Some(ops) = is_operator_object(cond) else {
        return Ok(equals(value, cond));
    };
    for (op, arg) in ops {
        if !test_op(value, op, arg, ops, budgets)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn test_op(
    value: &Value,
    op: &str,
    arg: &Value,
    siblings: &Map,
    budgets: &Budgets,
) -> Result<bool, Failure> {
    Ok(match op {
        "$eq" => equals(value, arg),
        "$ne" => !equals(value, arg),
        "$gt" => any_compare(value, arg, |o| o == Ordering::Greater),
        "$gte" => any_compare(value, arg, |o| o != Ordering::Less),
        "$lt" => any_compare(value, arg, |o| o == Ordering::Less),
        "$lte" => any_compare(value, arg, |o| o != Ordering::Greater),
        "$in" => in_list(value, arg)?,
        "$nin" => !in_list(value, arg)?,
        "$exists" => value.is_undefined() != arg.truthy(),
        "$regex" => {
            let flags = siblings
                .get("$options")
                .and_then(Value::as_str)
                .unwrap_or("");
            let re = CompiledRegex::with_flags(&js_to_string(arg), flags, budgets)?;
            any_element(value, |v| v.as_str().is_some_and(|s| re.0.is_match(s)))
        }
        "$options" => true,
        "$not" => !match_field(value, arg, budgets)?,
        "$size" => value
            .as_list()
            .is_some_and(|l| arg.as_f64() == Some(l.len() as f64)),
        "$all" => match (value, arg) {
            (Value::List(items), Value::List(wanted)) => {
                wanted.iter().all(|w| items.iter().any(|i| equals(i, w)))
            }
            _ => false,
        },
        "$elemMatch" => match (value, arg) {
            (Value::List(items), Value::Object(q)) => {
                let mut any = false;
                for item in items.iter() {
                    any |= if is_operator_object(arg).is_some() {
                        match_field(item, arg, budgets)?
                    } else {
                        matches(item, q, budgets)?
                    };
                }
                any
            }
            _ => false,
        },
        other => return Err(format!("Unknown jsonmatch operator {other}").into()),
    })
}

fn any_element(value: &Value, test: impl Fn(&Value) -> bool) -> bool {
    match value {
        Value::List(items) => test(value) || items.iter().any(test),
        other => test(other),
    }
}

/// Structural equality; a list field also matches one of its elements.
fn equals(value: &Value, expected: &Value) -> bool {
    if value == expected {
        return true;
    }
    // A missing field equals null in MongoDB queries.
    if value.is_undefined() && matches!(expected, Value::Null) {
        return true;
    }
    matches!(value, Value::List(items) if items.iter().any(|i| i == expected))
}

fn any_compare(value: &Value, arg: &Value, want: impl Fn(Ordering) -> bool) -> bool {
    any_element(value, |v| {
        let comparable = matches!(
            (v, arg),
            (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_))
        );
        comparable && js_compare(v, arg).is_some_and(&want)
    })
}

fn in_list(value: &Value, arg: &Value) -> Result<bool, Failure> {
    match arg {
        Value::List(options) => Ok(options.iter().any(|o| equals(value, o))),
        _ => Err(Failure::Message("$in and $nin expect a list".into())),
    }
}

/// The value at a dotted path; through a list, the values of each element.
fn get_dotted(doc: &Value, path: &str) -> Value {
    let mut current = doc.clone();
    for key in path.split('.') {
        current = match &current {
            Value::Object(map) => map.get(key).cloned().unwrap_or_default(),
            Value::List(items) => match canonical_index(key) {
                Some(i) => items.get(i).cloned().unwrap_or_default(),
                None => {
                    let found: Vec<Value> = items
                        .iter()
                        .filter_map(|i| i.as_object().and_then(|m| m.get(key)).cloned())
                        .collect();
                    if found.is_empty() {
                        Value::Undefined
                    } else {
                        Value::list(found)
                    }
                }
            },
            _ => Value::Undefined,
        };
    }
    current
}
