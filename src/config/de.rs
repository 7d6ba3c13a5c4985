//! Checked deserialisation of the settings file's values that only the process settings take
//! (names, networks, the log format, delivery counts); the numbers every module's settings
//! share are checked in [`crate::limits::values::de`], and re-exported here for the fields.

pub(crate) use crate::checked::{positive, whole};
use crate::checked::{raw, refuse};
use serde::de::Error;
use serde::{Deserialize, Deserializer};

/// What `log_format` may be, worded as every other expectation.
pub(super) const LOG_FORMAT_EXPECTED: &str = "expected \"text\" or \"json\"";

pub(super) fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let raw = raw(d)?;
    match raw.number {
        Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(refuse("expected a non-negative number", &raw)),
    }
}

pub(super) fn max_deliver<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let raw = raw(d)?;
    match raw.number {
        Some(n) if n == -1.0 || (n.fract() == 0.0 && (1.0..=1e9).contains(&n)) => Ok(n as i64),
        _ => Err(refuse(
            "expected a whole number of at least 1, or -1 for no limit",
            &raw,
        )),
    }
}

/// A JetStream stream or consumer name: NATS refuses spaces, `.`, `*`, `>` and path separators.
pub(super) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let bad = |c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c);
    if text.is_empty() || text.len() > 64 || text.contains(bad) {
        return Err(D::Error::custom(format!(
            "expected a name of 1 to 64 characters without spaces, `.`, `*`, `>`, `/` or `\\`, got {text:?}"
        )));
    }
    Ok(text)
}

/// A list of CIDRs (`10.0.0.0/8`, `fc00::/7`); a bare address is that one address.
pub(super) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let entries = Vec::<String>::deserialize(d)?;
    entries
        .iter()
        .map(|entry| {
            let text = entry.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    D::Error::custom(format!(
                        "expected CIDRs such as 10.0.0.0/8 or fc00::/7, got {entry:?}"
                    ))
                })
        })
        .collect()
}

pub(super) fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "text" | "json" => Ok(text),
        _ => Err(D::Error::custom(format!(
            "{LOG_FORMAT_EXPECTED}, got {text:?}"
        ))),
    }
}
