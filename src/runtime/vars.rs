//! Variable paths inside maps: the writes of `set` (replace, merge, push) and
//! `delete`, with the entry bounds of the workspace's budgets.

use super::budget;
use super::{ErrorKind, ExecError};
use crate::expr::{get_path, Key};
use crate::limits::Budgets;
use crate::value::{Map, Value};
use std::sync::Arc;

/// How a write combines with the value already there (DSUL §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Stores the value.
    Replace,
    /// Appends to a list or shallow-merges into an object.
    Merge,
    /// Appends the value as one element.
    Push,
}

pub(super) fn key_str(k: &Key) -> std::borrow::Cow<'_, str> {
    match k {
        Key::Name(n) => std::borrow::Cow::Borrowed(n),
        Key::Index(i) => std::borrow::Cow::Owned(i.to_string()),
    }
}

/// Reads `rest` inside a context map (`rest` empty: the whole map).
pub(super) fn read_map(map: &Map, rest: &[Key]) -> Value {
    match rest.split_first() {
        None => Value::object(map.clone()),
        Some((first, tail)) => match map.get(key_str(first).as_ref()) {
            Some(v) => get_path(v, tail),
            None => Value::Undefined,
        },
    }
}

/// An `InvalidInstructionError` of `set`.
pub(crate) fn invalid_set(message: impl Into<String>) -> ExecError {
    ExecError::new(
        ErrorKind::InvalidInstruction,
        format!("Invalid set instruction: {}", message.into()),
    )
}

/// Sets a local without allocating its name when it already exists.
pub(super) fn set_local(locals: &mut Map, name: &str, value: Value) {
    match locals.get_mut(name) {
        Some(slot) => *slot = value,
        None => {
            locals.insert(name.to_string(), value);
        }
    }
}

pub(super) fn set_in_map(
    map: &mut Map,
    keys: &[Key],
    value: Value,
    mode: Mode,
    budgets: &Budgets,
) -> Result<(), ExecError> {
    let Some((first, rest)) = keys.split_first() else {
        return Err(invalid_set("empty variable name"));
    };
    let name = key_str(first);
    // Look up before inserting: most sets overwrite a variable that exists, and
    // `entry` would allocate the key every time.
    if let Some(slot) = map.get_mut(name.as_ref()) {
        return set_in_value(slot, rest, value, mode, budgets);
    }
    budget::check_entries(map.len() + 1, budgets)?;
    let slot = map.entry(name.into_owned()).or_default();
    set_in_value(slot, rest, value, mode, budgets)
}

fn set_in_value(
    slot: &mut Value,
    keys: &[Key],
    value: Value,
    mode: Mode,
    budgets: &Budgets,
) -> Result<(), ExecError> {
    let Some((first, rest)) = keys.split_first() else {
        return apply(slot, value, mode, budgets);
    };
    if slot.is_nullish() {
        // Missing parents become objects, even for numeric keys (DSUL §7.1).
        *slot = Value::empty_object();
    }
    match slot {
        Value::Object(m) => set_in_map(Arc::make_mut(m), keys, value, mode, budgets),
        Value::List(l) => match first {
            Key::Index(i) => {
                if l.len() <= *i {
                    budget::check_index(*i, budgets)?;
                    budget::check_entries(*i + 1, budgets)?;
                }
                let l = Arc::make_mut(l);
                if l.len() <= *i {
                    l.resize(*i + 1, Value::Undefined);
                }
                set_in_value(&mut l[*i], rest, value, mode, budgets)
            }
            Key::Name(n) => Err(invalid_set(format!("cannot set key `{n}` of a list"))),
        },
        other => Err(invalid_set(format!(
            "cannot set `{}` inside a {}",
            key_str(first),
            other.type_name()
        ))),
    }
}

/// Writes `value` into `slot`; lists and objects may not grow past `max_entries`.
fn apply(slot: &mut Value, value: Value, mode: Mode, budgets: &Budgets) -> Result<(), ExecError> {
    match mode {
        Mode::Replace => *slot = value,
        Mode::Push => {
            if !matches!(slot, Value::List(_)) {
                *slot = Value::list(Vec::new());
            }
            if let Value::List(l) = slot {
                budget::check_entries(l.len() + 1, budgets)?;
                Arc::make_mut(l).push(value);
            }
        }
        Mode::Merge => match slot {
            Value::List(l) => {
                let added = match &value {
                    Value::List(items) => items.len(),
                    _ => 1,
                };
                budget::check_entries(l.len() + added, budgets)?;
                let l = Arc::make_mut(l);
                match value {
                    Value::List(items) => l.extend(items.iter().cloned()),
                    other => l.push(other),
                }
            }
            Value::Object(_) | Value::Null => {
                // Strings, lists and null merge into an object as nothing (DSUL §7.1).
                if let Value::Object(add) = value {
                    if let Value::Object(m) = slot {
                        let new_keys = add.keys().filter(|k| !m.contains_key(*k)).count();
                        budget::check_entries(m.len() + new_keys, budgets)?;
                        let m = Arc::make_mut(m);
                        for (k, v) in add.iter() {
                            m.insert(k.clone(), v.clone());
                        }
                    } else {
                        *slot = Value::Object(add);
                    }
                }
            }
            _ => *slot = value,
        },
    }
    Ok(())
}

pub(super) fn delete_in_map(map: &mut Map, keys: &[Key]) {
    let Some((first, rest)) = keys.split_first() else {
        return;
    };
    let name = key_str(first);
    if rest.is_empty() {
        map.shift_remove(name.as_ref());
        return;
    }
    if let Some(v) = map.get_mut(name.as_ref()) {
        delete_in_value(v, rest);
    }
}

fn delete_in_value(v: &mut Value, keys: &[Key]) {
    match v {
        Value::Object(m) => delete_in_map(Arc::make_mut(m), keys),
        Value::List(l) => {
            let Some((Key::Index(i), rest)) = keys.split_first() else {
                return;
            };
            if *i >= l.len() {
                return;
            }
            let l = Arc::make_mut(l);
            if rest.is_empty() {
                l.remove(*i);
            } else {
                delete_in_value(&mut l[*i], rest);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse_variable_name;
    use serde_json::json;

    fn keys(s: &str) -> Vec<Key> {
        parse_variable_name(s).unwrap()
    }

    fn set(map: &mut Map, name: &str, v: serde_json::Value, mode: Mode) {
        set_in_map(map, &keys(name), Value::from(v), mode, &Budgets::default()).unwrap();
    }

    #[test]
    fn set_creates_object_parents_even_for_indexes() {
        let mut m = Map::new();
        set(&mut m, "arr[1]", json!("x"), Mode::Replace);
        assert_eq!(Value::object(m).to_json(), json!({"arr": {"1": "x"}}));
    }

    #[test]
    fn set_past_the_end_of_a_list_leaves_holes() {
        let mut m = Map::new();
        set(&mut m, "l", json!([1]), Mode::Replace);
        set(&mut m, "l[3]", json!(4), Mode::Replace);
        assert_eq!(Value::object(m).to_json(), json!({"l": [1, null, null, 4]}));
    }

    #[test]
    fn set_through_a_scalar_fails() {
        let mut m = Map::new();
        set(&mut m, "s", json!("abc"), Mode::Replace);
        assert!(set_in_map(
            &mut m,
            &keys("s.x"),
            Value::Null,
            Mode::Replace,
            &Budgets::default()
        )
        .is_err());
    }

    #[test]
    fn merge_rules() {
        let mut m = Map::new();
        set(&mut m, "o", json!({"a": 1, "n": {"x": 1}}), Mode::Replace);
        set(&mut m, "o", json!({"b": 2, "n": {"y": 2}}), Mode::Merge);
        set(&mut m, "o", json!("ignored"), Mode::Merge);
        set(&mut m, "l", json!([1]), Mode::Replace);
        set(&mut m, "l", json!([2, 3]), Mode::Merge);
        set(&mut m, "l", json!(4), Mode::Merge);
        set(&mut m, "s", json!(1), Mode::Merge);
        set(&mut m, "z", json!(null), Mode::Replace);
        set(&mut m, "z", json!({"k": 1}), Mode::Merge);
        assert_eq!(
            Value::object(m).to_json(),
            json!({"o": {"a": 1, "n": {"y": 2}, "b": 2}, "l": [1, 2, 3, 4], "s": 1, "z": {"k": 1}})
        );
    }

    #[test]
    fn push_appends_one_element() {
        let mut m = Map::new();
        set(&mut m, "p", json!("scalar"), Mode::Replace);
        set(&mut m, "p", json!([1, 2]), Mode::Push);
        assert_eq!(Value::object(m).to_json(), json!({"p": [[1, 2]]}));
    }

    #[test]
    fn delete_splices_lists_and_ignores_missing() {
        let mut m = Map::new();
        set(&mut m, "l", json!([1, 2, 3]), Mode::Replace);
        delete_in_map(&mut m, &keys("l[1]"));
        delete_in_map(&mut m, &keys("missing.deep.path"));
        assert_eq!(Value::object(m).to_json(), json!({"l": [1, 3]}));
    }
}
