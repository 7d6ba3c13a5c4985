//! The settings model of named limits (SPEC section 7): a declared limit ([`LimitSpec`]),
//! read from YAML as loaded and checked once, so that nothing is re-parsed at acquisition.
//! The places that use a limit are read by `uses` with the same field readers.
//!
//! Every error carries the path of keys to the offending YAML node, so that the caller can
//! turn it into file:line:column, and says the bad value and the valid choices.

use super::machine::{Params, RateParams};
use crate::expr::Template;
use crate::limits::values::{MAX_RATE, MAX_REFILL_SECS};
use crate::value::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Names the four built-in limits own.
pub const RESERVED: [&str; 4] = ["automations", "emits", "fetchs", "repeats"];
/// The fields of a limit declaration.
pub const LIMIT_FIELDS: [&str; 8] = [
    "rate",
    "per",
    "burst",
    "concurrency",
    "key",
    "lanes",
    "shadow",
    "scope",
];
/// The largest concurrency, lane weight bound and wait accepted.
const MAX_CONCURRENCY: f64 = 1_000_000.0;
const MAX_WEIGHT: f64 = 1000.0;

/// A problem in limit settings, at `path` (YAML keys from the file's root).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: {message}", path.join("."))]
pub struct SpecError {
    /// The keys (list indexes as digits) leading to the offending node.
    pub path: Vec<String>,
    /// What is wrong, the value, and what is expected.
    pub message: String,
}

/// The period of a rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3600 s.
    Hour,
    /// 86,400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Per {
    /// Every period, shortest first.
    pub const ALL: [Per; 7] = [
        Per::Second,
        Per::Minute,
        Per::Hour,
        Per::Day,
        Per::Week,
        Per::Month,
        Per::Year,
    ];

    /// Its name in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
            Per::Week => "week",
            Per::Month => "month",
            Per::Year => "year",
        }
    }

    /// Its length.
    pub fn duration(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => DAY,
            Per::Week => 7 * DAY,
            Per::Month => 30 * DAY,
            Per::Year => 365 * DAY,
        })
    }
}

/// Where a limit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In this instance only.
    Instance,
    /// Across the cluster (SPEC section 9); `Instance` without NATS.
    Cluster,
}

/// A number given as a constant or as a template rendered at acquisition.
#[derive(Clone, Debug)]
pub enum Number {
    /// Checked when read.
    Const(f64),
    /// Checked when rendered.
    Template(Template),
}

/// A declared limit.
#[derive(Clone, Debug)]
pub struct LimitSpec {
    /// Its name (`[A-Za-z0-9_-]{1,64}`), or an inline limit's key text.
    pub name: Arc<str>,
    /// Units per `per`.
    pub rate: Option<Number>,
    /// The rate's period.
    pub per: Per,
    /// Units at once; the rate when absent.
    pub burst: Option<f64>,
    /// Holders at once.
    pub concurrency: Option<u32>,
    /// Each rendered value is its own independent limit.
    pub key: Option<Template>,
    /// Lane weights.
    pub lanes: Arc<[(Arc<str>, u32)]>,
    /// Accounts without ever waiting or refusing.
    pub shadow: bool,
    /// Where it holds.
    pub scope: Scope,
}

impl LimitSpec {
    /// The enforced settings, with `rate` when the spec's rate is a template.
    pub fn params(&self, rendered: Option<f64>) -> Params {
        let rate = match (&self.rate, rendered) {
            (_, Some(r)) => Some(r),
            (Some(Number::Const(r)), None) => Some(*r),
            _ => None,
        };
        Params {
            rate: rate.map(|r| RateParams::new(r, self.per.duration(), self.burst.unwrap_or(r))),
            concurrency: self.concurrency,
            lanes: Arc::clone(&self.lanes),
            shadow: self.shadow,
        }
    }

    /// True when the rate is rendered at each acquisition.
    pub fn rate_is_template(&self) -> bool {
        matches!(self.rate, Some(Number::Template(_)))
    }
}

/// Reads a `limits:` (or `shared_limits:`) section at `root`.
pub fn parse_limits(section: &Value, root: &[&str]) -> Result<Vec<LimitSpec>, Vec<SpecError>> {
    let root: Vec<String> = root.iter().map(|s| s.to_string()).collect();
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    let map = match section {
        Value::Undefined | Value::Null => return Ok(specs),
        Value::Object(m) => m,
        other => {
            return Err(vec![err(
                &root,
                format!(
                    "expected a map of limits by name, found {}",
                    describe(other)
                ),
            )])
        }
    };
    for (name, body) in map.iter() {
        let path = child(&root, name);
        if let Err(e) = check_name(name, &path) {
            errors.push(e);
            continue;
        }
        match body.as_object() {
            Some(m) => match limit_body(Arc::from(name.as_str()), m, &path, &[]) {
                Ok(spec) => specs.push(spec),
                Err(mut e) => errors.append(&mut e),
            },
            None => errors.push(err(
                &path,
                format!(
                    "expected a map of limit fields ({}), found {}",
                    LIMIT_FIELDS.join(", "),
                    describe(body)
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Errors for workspace limits that redeclare a shared one; `root` is the workspace
/// section's path.
pub fn check_not_shared(
    workspace: &[LimitSpec],
    shared: &[LimitSpec],
    root: &[&str],
) -> Vec<SpecError> {
    let root: Vec<String> = root.iter().map(|s| s.to_string()).collect();
    workspace
        .iter()
        .filter(|w| shared.iter().any(|s| s.name == w.name))
        .map(|w| {
            err(
                &child(&root, &w.name),
                format!(
                    "`{}` is a limit the operator shares with every workspace; choose another name",
                    w.name
                ),
            )
        })
        .collect()
}

pub(super) fn check_name(name: &str, path: &[String]) -> Result<(), SpecError> {
    if RESERVED.contains(&name) {
        return Err(err(
            path,
            format!(
                "`{name}` is a built-in limit; choose a name other than {}",
                RESERVED.join(", ")
            ),
        ));
    }
    if !crate::value::is_name(name) {
        return Err(err(path, format!("`{name}` is not a valid limit name; expected 1 to 64 of A-Z, a-z, 0-9, `_` and `-`")));
    }
    Ok(())
}

/// Reads one field's value at its path; an `Err` is the message for that path.
type Reader<'a> = dyn FnMut(&Value, &[String]) -> Result<(), String> + 'a;

/// Reads the fields of a limit; `extra` are other fields the caller allows.
pub(super) fn limit_body(
    name: Arc<str>,
    m: &Map,
    path: &[String],
    extra: &[&str],
) -> Result<LimitSpec, Vec<SpecError>> {
    let mut errors = Vec::new();
    for k in m.keys() {
        if !LIMIT_FIELDS.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            let valid: Vec<&str> = LIMIT_FIELDS.iter().chain(extra).copied().collect();
            errors.push(err(
                &child(path, k),
                format!("unknown field `{k}`; expected one of: {}", valid.join(", ")),
            ));
        }
    }
    let mut field = |k: &str, read: &mut Reader<'_>| {
        if let Some(v) = m.get(k).filter(|v| !v.is_nullish()) {
            let p = child(path, k);
            if let Err(message) = read(v, &p) {
                errors.push(err(&p, message));
            }
        }
    };
    let mut rate = None;
    field("rate", &mut |v, _| {
        number(v, "a positive number of units").map(|n| rate = Some(n))
    });
    let mut per = Per::Minute;
    field("per", &mut |v, _| {
        let text = v.as_str().unwrap_or_default();
        per = Per::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let all: Vec<&str> = Per::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "{} is not a period; expected one of: {}",
                    show(v),
                    all.join(", ")
                )
            })?;
        Ok(())
    });
    let mut burst = None;
    field("burst", &mut |v, _| {
        positive(v, "a positive number of units").map(|n| burst = Some(n))
    });
    let mut concurrency = None;
    field("concurrency", &mut |v, _| {
        whole(v, 1.0, MAX_CONCURRENCY).map(|n| concurrency = Some(n as u32))
    });
    let mut key = None;
    field("key", &mut |v, _| template(v).map(|t| key = Some(t)));
    let mut lanes = Vec::new();
    let mut lane_errors = Vec::new();
    field("lanes", &mut |v, p| {
        let m = v.as_object().ok_or_else(|| {
            format!(
                "expected a map of lane weights (`{{interactive: 3, batch: 1}}`), found {}",
                describe(v)
            )
        })?;
        for (lane, w) in m.iter() {
            match whole(w, 1.0, MAX_WEIGHT) {
                Ok(w) if !lane.is_empty() => lanes.push((Arc::from(lane.as_str()), w as u32)),
                Ok(_) => lane_errors.push(err(p, "a lane name must not be empty".into())),
                Err(e) => lane_errors.push(err(&child(p, lane), e)),
            }
        }
        Ok(())
    });
    let mut shadow = false;
    field("shadow", &mut |v, _| match v {
        Value::Bool(b) => {
            shadow = *b;
            Ok(())
        }
        other => Err(format!("expected true or false, found {}", show(other))),
    });
    let mut scope = Scope::Instance;
    field("scope", &mut |v, _| {
        scope = match v.as_str() {
            Some("instance") => Scope::Instance,
            Some("cluster") => Scope::Cluster,
            _ => {
                return Err(format!(
                    "{} is not a scope; expected one of: instance, cluster",
                    show(v)
                ))
            }
        };
        Ok(())
    });
    errors.append(&mut lane_errors);
    if rate.is_none() && concurrency.is_none() && errors.is_empty() {
        errors.push(err(
            path,
            "a limit needs `rate`, `concurrency` or both".into(),
        ));
    }
    if let (Some(Number::Const(r)), true) = (&rate, errors.is_empty()) {
        if let Err(message) = check_rate(*r, per, burst) {
            errors.push(err(&child(path, "rate"), message));
        }
    }
    if rate.is_none() && burst.is_some() && errors.is_empty() {
        errors.push(err(&child(path, "burst"), "`burst` needs a `rate`".into()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(LimitSpec {
        name,
        rate,
        per,
        burst,
        concurrency,
        key,
        lanes: lanes.into(),
        shadow,
        scope,
    })
}

/// Checks a rate against its period and burst: at most one unit per nanosecond, and a
/// burst that refills within [`MAX_REFILL_SECS`].
pub fn check_rate(rate: f64, per: Per, burst: Option<f64>) -> Result<(), String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!(
            "{} is not a positive number",
            crate::expr::js_number_to_string(rate)
        ));
    }
    let per_sec = rate / per.duration().as_secs_f64();
    if per_sec > MAX_RATE {
        return Err(format!(
            "{rate} per {} is faster than {MAX_RATE} per second",
            per.as_str()
        ));
    }
    if burst.unwrap_or(rate) / per_sec > MAX_REFILL_SECS {
        return Err(format!(
            "a burst of {} takes longer than {MAX_REFILL_SECS} seconds to refill at {rate} per {}",
            burst.unwrap_or(rate),
            per.as_str()
        ));
    }
    Ok(())
}

/// A constant positive number, or a template.
pub(super) fn number(v: &Value, what: &str) -> Result<Number, String> {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            template(v).map(Number::Template)
        }
        _ => positive(v, what).map(Number::Const),
    }
}

pub(super) fn positive(v: &Value, what: &str) -> Result<f64, String> {
    match v.as_f64() {
        Some(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{} is not {what}", show(v))),
    }
}

pub(super) fn whole(v: &Value, min: f64, max: f64) -> Result<f64, String> {
    match v.as_f64() {
        Some(n) if n.fract() == 0.0 && (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{} is not a whole number from {min} to {max}",
            show(v)
        )),
    }
}

pub(super) fn template(v: &Value) -> Result<Template, String> {
    let text = match v {
        Value::String(s) if !s.is_empty() => s.to_string(),
        Value::Number(n) => crate::expr::js_number_to_string(*n),
        other => {
            return Err(format!(
                "expected a non-empty string or template, found {}",
                describe(other)
            ))
        }
    };
    Template::parse(&text).map_err(|e| e.to_string())
}

pub(super) fn err(path: &[String], message: String) -> SpecError {
    SpecError {
        path: path.to_vec(),
        message,
    }
}

pub(super) fn child(path: &[String], key: &str) -> Vec<String> {
    let mut p = path.to_vec();
    p.push(key.to_string());
    p
}

/// A value as written, for messages.
pub(super) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{}`", crate::expr::js_number_to_string(*n)),
        Value::Bool(b) => format!("`{b}`"),
        other => describe(other),
    }
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Undefined | Value::Null => "nothing".into(),
        Value::String(s) => format!("the string `{s}`"),
        Value::Number(n) => format!("the number {}", crate::expr::js_number_to_string(*n)),
        other => format!("a value of type {}", other.type_name()),
    }
}

impl fmt::Display for Per {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
