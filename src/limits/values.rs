//! Rate, burst and switch values: parsing, range checks, and conversion to a governor `Quota`.
//!
//! Environment variables, the settings file and workspace secrets all give the same three
//! kinds of value, so the rules (and the wording of their errors) live here once. A value
//! that passes these checks can never make governor's nanosecond arithmetic overflow.

use super::cluster::ClusterSettings;
use governor::Quota;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// The fastest rate accepted, in tokens per second (one token per nanosecond).
pub const MAX_RATE: f64 = 1e9;
/// The slowest non-zero rate accepted, in tokens per second.
pub const MIN_RATE: f64 = 0.001;
/// The largest burst accepted.
pub const MAX_BURST: u32 = 1_000_000_000;
/// The longest time an empty bucket may take to fill up again, in seconds (about 31 years;
/// governor's clock overflows after 584).
pub const MAX_REFILL_SECS: f64 = 1e9;

/// Why a limit value was refused; `Display` says what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a number, negative, or not finite.
    #[error("expected a non-negative number")]
    NotANumber,
    /// A non-zero rate outside `MIN_RATE..=MAX_RATE`.
    #[error("expected 0 (no limit) or a rate from 0.001 to 1000000000 per second")]
    RateOutOfRange,
    /// A burst that is not a whole number in `0..=MAX_BURST`.
    #[error("expected a whole number from 0 to 1000000000")]
    NotWhole,
    /// A burst of 0 for a limit whose rate is not 0.
    #[error("expected a burst of at least 1 when the rate is not 0")]
    ZeroBurst,
    /// A burst that would take longer than `MAX_REFILL_SECS` to refill at its rate.
    #[error("expected a burst that refills within 1000000000 seconds at its rate")]
    RefillTooLong,
    /// Not a boolean.
    #[error("expected true or false")]
    NotABool,
}

/// Checks a rate in tokens per second; 0 means "no limit".
pub fn check_rate(rate: f64) -> Result<f64, ValueError> {
    if !rate.is_finite() || rate < 0.0 {
        return Err(ValueError::NotANumber);
    }
    if rate != 0.0 && !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(ValueError::RateOutOfRange);
    }
    // `-0.0` passes the checks above; normalise it so it prints as `0`.
    Ok(rate.abs())
}

/// Parses and checks a rate written as text (an environment variable or a string secret).
pub fn parse_rate(text: &str) -> Result<f64, ValueError> {
    let rate = parse_number(text).ok_or(ValueError::NotANumber)?;
    check_rate(rate)
}

/// Checks a burst given as a number, which must be whole.
pub fn check_burst(burst: f64) -> Result<u32, ValueError> {
    if !burst.is_finite() || burst < 0.0 || burst.fract() != 0.0 || burst > f64::from(MAX_BURST) {
        return Err(ValueError::NotWhole);
    }
    // In range and whole, so the conversion is exact.
    Ok(burst as u32)
}

/// Parses and checks a burst written as text.
pub fn parse_burst(text: &str) -> Result<u32, ValueError> {
    let burst = parse_number(text).ok_or(ValueError::NotWhole)?;
    check_burst(burst)
}

/// Parses a switch written as text: `true`/`false`, `1`/`0`, `yes`/`no`, any case.
pub fn parse_bool(text: &str) -> Result<bool, ValueError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ValueError::NotABool),
    }
}

/// The quota for a checked rate and burst: `None` when the rate is 0 (no limit).
///
/// The burst is checked against the rate here because neither value alone says whether
/// the pair is usable.
pub fn quota(rate: f64, burst: u32) -> Result<Option<Quota>, ValueError> {
    let rate = check_rate(rate)?;
    if rate == 0.0 {
        return Ok(None);
    }
    let burst = NonZeroU32::new(burst).ok_or(ValueError::ZeroBurst)?;
    if f64::from(burst.get()) / rate > MAX_REFILL_SECS {
        return Err(ValueError::RefillTooLong);
    }
    // The range checks above keep the period between 1 ns and 1000 s.
    let period = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| ValueError::RateOutOfRange)?;
    let quota = Quota::with_period(period).ok_or(ValueError::RateOutOfRange)?;
    Ok(Some(quota.allow_burst(burst)))
}

pub use crate::checked::parse_number;

/// The default limits of every workspace; secrets may override them per workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Turns every limit of every workspace off (`RATE_LIMIT_DISABLED`).
    pub disabled: bool,
    /// Automation executions.
    pub automations: RateSetting,
    /// `emit` instructions.
    pub emits: RateSetting,
    /// `fetch` instructions.
    pub fetchs: RateSetting,
    /// `repeat` iterations.
    pub repeats: RateSetting,
    /// Seconds an owner's lease of a cluster limit and an instance's held slots live
    /// without renewal (SPEC section 9).
    pub lease_secs: u64,
    /// The JetStream key-value bucket holding the owners of cluster limits.
    pub cluster_bucket: String,
}

/// One token bucket: its refill rate and its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    /// Tokens per second, possibly fractional; 0 turns the limit off.
    #[serde(deserialize_with = "de::rate")]
    pub rate: f64,
    /// The bucket's capacity, the most tokens taken at once after a quiet time.
    #[serde(deserialize_with = "de::burst")]
    pub burst: u32,
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        let limit = |rate, burst| RateSetting { rate, burst };
        LimitSettings {
            disabled: false,
            automations: limit(100.0, 400),
            emits: limit(30.0, 100),
            fetchs: limit(50.0, 200),
            repeats: limit(1000.0, 4000),
            lease_secs: ClusterSettings::default().lease_secs,
            cluster_bucket: ClusterSettings::default().cluster_bucket,
        }
    }
}

impl LimitSettings {
    /// The settings of cluster-wide limits (`limits.lease_secs`, `limits.cluster_bucket`).
    pub fn cluster(&self) -> ClusterSettings {
        ClusterSettings {
            lease_secs: self.lease_secs,
            cluster_bucket: self.cluster_bucket.clone(),
        }
    }

    /// The setting of one kind of limit.
    pub fn get(&self, kind: super::LimitKind) -> RateSetting {
        match kind {
            super::LimitKind::Automations => self.automations,
            super::LimitKind::Emits => self.emits,
            super::LimitKind::Fetchs => self.fetchs,
            super::LimitKind::Repeats => self.repeats,
        }
    }
}

/// Checked deserialisation of the limits' rates and bursts from the settings file, with the
/// wording of their environment variables (the generic checks are in [`crate::checked`]).
pub(crate) mod de {
    use crate::checked::{raw, refuse};
    use serde::Deserializer;

    pub(crate) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let raw = raw(d)?;
        let rate = raw.number.ok_or(super::ValueError::NotANumber);
        rate.and_then(super::check_rate)
            .map_err(|e| refuse(e, &raw))
    }

    pub(crate) fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let raw = raw(d)?;
        let burst = raw.number.ok_or(super::ValueError::NotWhole);
        burst
            .and_then(super::check_burst)
            .map_err(|e| refuse(e, &raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_may_be_fractional_and_zero_means_unlimited() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate(" 100 "), Ok(100.0));
        assert_eq!(quota(0.0, 0), Ok(None));
        let q = quota(0.5, 1).unwrap().unwrap();
        assert_eq!(q.replenish_interval(), Duration::from_secs(2));
        assert_eq!(q.burst_size().get(), 1);
    }

    #[test]
    fn bad_rates_are_refused() {
        for text in ["abc", "-1", "", "NaN", "inf", "1e400"] {
            assert_eq!(parse_rate(text), Err(ValueError::NotANumber), "{text}");
        }
        assert_eq!(parse_rate("0.0001"), Err(ValueError::RateOutOfRange));
        assert_eq!(parse_rate("2e9"), Err(ValueError::RateOutOfRange));
        assert_eq!(parse_rate("-0"), Ok(0.0));
    }

    #[test]
    fn bursts_must_be_whole() {
        assert_eq!(parse_burst("400"), Ok(400));
        assert_eq!(parse_burst("0"), Ok(0));
        for text in ["2.5", "-1", "abc", "1e10"] {
            assert_eq!(parse_burst(text), Err(ValueError::NotWhole), "{text}");
        }
    }

    #[test]
    fn a_pair_must_be_usable() {
        assert_eq!(quota(10.0, 0), Err(ValueError::ZeroBurst));
        assert_eq!(quota(0.001, MAX_BURST), Err(ValueError::RefillTooLong));
        assert!(quota(MAX_RATE, MAX_BURST).unwrap().is_some());
    }

    #[test]
    fn switches() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert_eq!(parse_bool("maybe"), Err(ValueError::NotABool));
    }
}
