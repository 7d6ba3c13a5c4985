//! The runtime value model: JSON plus JavaScript's `undefined`.
//!
//! DSUL is specified by a JavaScript runtime, so sluice needs a value that can be
//! *undefined* (a missing variable: dropped from objects, `null` inside lists)
//! as well as `null`. Lists and objects sit behind `Arc` so that reading a variable
//! is a pointer copy, mutation is copy-on-write (`Arc::make_mut`), and expression
//! equality can compare objects by identity as the reference does.

use indexmap::IndexMap;
use std::fmt;
use std::sync::Arc;

/// Ordered object map (JavaScript objects keep insertion order).
pub type Map = IndexMap<String, Value>;

/// A DSUL value.
#[derive(Clone, Default)]
pub enum Value {
    /// JavaScript `undefined`: a value that does not exist.
    #[default]
    Undefined,
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Every number is a double, as in JavaScript.
    Number(f64),
    /// An immutable, cheaply cloned string.
    String(Arc<str>),
    /// A list; shared until written to.
    List(Arc<Vec<Value>>),
    /// An object; shared until written to.
    Object(Arc<Map>),
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<Arc<str>>) -> Value {
        Value::String(s.into())
    }

    /// A list value.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }

    /// An object value.
    pub fn object(map: Map) -> Value {
        Value::Object(Arc::new(map))
    }

    /// An empty object `{}`.
    pub fn empty_object() -> Value {
        Value::Object(Arc::new(Map::new()))
    }

    /// True for `undefined`.
    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    /// True for `undefined` and `null` (what `exists` tests against).
    pub fn is_nullish(&self) -> bool {
        matches!(self, Value::Undefined | Value::Null)
    }

    /// The string slice, when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, when this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The object map, when this is an object.
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The list, when this is a list.
    pub fn as_list(&self) -> Option<&Vec<Value>> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// JavaScript truthiness: false for false, 0, NaN, "", null and undefined.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Undefined | Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => *n != 0.0 && !n.is_nan(),
            Value::String(s) => !s.is_empty(),
            Value::List(_) | Value::Object(_) => true,
        }
    }

    /// The JavaScript type name used in messages (`typeof`, with lists as `Array`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Undefined => "undefined",
            Value::Null => "null",
            Value::Bool(_) => "Boolean",
            Value::Number(_) => "Number",
            Value::String(_) => "String",
            Value::List(_) => "Array",
            Value::Object(_) => "Object",
        }
    }

    /// A copy that shares nothing with `self` (what `set` stores, so that a later
    /// identity comparison of the two is false, as in the reference).
    pub fn deep_copy(&self) -> Value {
        match self {
            Value::List(l) => Value::list(l.iter().map(Value::deep_copy).collect()),
            Value::Object(m) => {
                Value::object(m.iter().map(|(k, v)| (k.clone(), v.deep_copy())).collect())
            }
            other => other.clone(),
        }
    }

    /// Converts to JSON: undefined object members are dropped, undefined list
    /// elements and non-finite numbers become `null` (as `JSON.stringify` does).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Undefined | Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => number_to_json(*n),
            Value::String(s) => J::String(s.to_string()),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Object(m) => J::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_undefined())
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Converts from JSON.
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            J::String(s) => Value::str(s.as_str()),
            J::Array(a) => Value::list(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::object(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Compact JSON text, as `JSON.stringify(value)`.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }
}

/// Whether `name` is `[A-Za-z0-9_-]{1,64}`: the rule of workspace ids and limit names,
/// here because both modules that name things depend on this one.
pub fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A number as JSON: integral values in the safe range as integers (so `5` is not
/// written `5.0`), non-finite values as `null`.
pub fn number_to_json(n: f64) -> serde_json::Value {
    if !n.is_finite() {
        return serde_json::Value::Null;
    }
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        if n == 0.0 {
            return serde_json::Value::from(0);
        }
        return serde_json::Value::from(n as i64);
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Value {
        Value::from_json(&j)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::str(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Undefined => f.write_str("undefined"),
            other => write!(f, "{}", other.to_json_string()),
        }
    }
}

/// Structural equality (for tests and the `jsonmatch` function). Expression
/// equality with the reference's identity rule lives in `expr`.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Number(a), Value::Number(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn undefined_members_are_dropped_and_list_holes_are_null() {
        let mut m = Map::new();
        m.insert("a".into(), Value::Undefined);
        m.insert(
            "b".into(),
            Value::list(vec![Value::Undefined, Value::Number(1.0)]),
        );
        assert_eq!(Value::object(m).to_json(), json!({"b": [null, 1]}));
    }

    #[test]
    fn numbers_serialize_like_javascript() {
        assert_eq!(number_to_json(5.0).to_string(), "5");
        assert_eq!(number_to_json(-0.0).to_string(), "0");
        assert_eq!(number_to_json(1.5).to_string(), "1.5");
        assert_eq!(number_to_json(f64::NAN).to_string(), "null");
        assert_eq!(number_to_json(f64::INFINITY).to_string(), "null");
    }

    #[test]
    fn truthiness_matches_javascript() {
        assert!(!Value::str("").truthy());
        assert!(Value::str("0").truthy());
        assert!(Value::list(vec![]).truthy());
        assert!(Value::empty_object().truthy());
        assert!(!Value::Number(f64::NAN).truthy());
        assert!(!Value::Undefined.truthy());
    }

    #[test]
    fn deep_copy_shares_nothing() {
        let v = Value::from(json!({"a": [1, {"b": 2}]}));
        let c = v.deep_copy();
        assert_eq!(v, c);
        match (&v, &c) {
            (Value::Object(a), Value::Object(b)) => assert!(!Arc::ptr_eq(a, b)),
            _ => unreachable!(),
        }
    }
}
