//! Checked deserialisation of numbers from the settings file, so that each bad value is
//! refused with the same wording as the environment variables (the `config` crate alone would
//! round `2.5` to a whole `3` and accept negative rates). The settings of every module use
//! these; a leaf module, so that any of them can.

use crate::value::Value;
use serde::de::{Error, Visitor};
use serde::Deserializer;
use std::fmt;

/// A decimal number; surrounding blanks are allowed, `inf` and `NaN` are not.
pub fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A number given as a number (as it is) or as its decimal text (see [`parse_number`]);
/// any other value is none.
pub(crate) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => Some(*n),
        Value::String(s) => parse_number(s),
        _ => None,
    }
}

/// A number as given: its value (when it is one) and how to show it in a message.
pub(crate) struct Raw {
    pub(crate) number: Option<f64>,
    pub(crate) shown: String,
}

struct RawVisitor;

impl Visitor<'_> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw {
            number: Some(v as f64),
            shown: v.to_string(),
        })
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw {
            number: Some(v as f64),
            shown: v.to_string(),
        })
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw {
            number: Some(v),
            shown: v.to_string(),
        })
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw {
            number: v.trim().parse::<f64>().ok(),
            shown: format!("{v:?}"),
        })
    }
}

pub(crate) fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
    d.deserialize_any(RawVisitor)
}

pub(crate) fn refuse<E: Error>(expected: impl fmt::Display, raw: &Raw) -> E {
    E::custom(format!("{expected}, got {}", raw.shown))
}

pub(crate) fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    whole_from(d, 0.0, "expected a non-negative whole number")
}

pub(crate) fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    whole_from(d, 1.0, "expected a whole number of at least 1")
}

fn whole_from<'de, D, T>(d: D, min: f64, expected: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let raw = raw(d)?;
    // Below 2^53 every whole f64 is exact, which covers every sensible size or count.
    let exact = raw
        .number
        .filter(|n| n.fract() == 0.0 && (min..9_007_199_254_740_992.0).contains(n));
    exact
        .and_then(|n| T::try_from(n as u64).ok())
        .ok_or_else(|| refuse(expected, &raw))
}
