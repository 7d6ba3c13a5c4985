//! The `quotas:` settings (SPEC section 8) and the per-workspace operator secrets that
//! override them, read into one [`QuotaPolicy`] per workspace.
//!
//! Settings are checked once at start-up by [`QuotaSettings::validate`], so every later use
//! may rely on them; secrets arrive at any time and are read as a whole by
//! [`QuotaSettings::policy`]: one bad secret refuses the set and the caller keeps the policy
//! it had, as the rate-limit secrets do.

use super::cycle::CycleRule;
use super::ledger::{micro, MAX_CREDITS};
use crate::checked::number;
use crate::limits::LimitKind;
use crate::value::Map;
use chrono_tz::Tz;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The prefix of every quota secret.
pub const SECRET_PREFIX: &str = "sluice_quota_";

/// The quota secrets, for messages naming the valid ones.
const SECRETS: &str =
    "sluice_quota_plan, sluice_quota_credits, sluice_quota_timezone, sluice_quota_cycle_day";

/// How essential an automation is: the bands restrict classes, never `essential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaClass {
    /// High-cost work, restricted first.
    Premium,
    /// Ordinary work (the default).
    #[default]
    Standard,
    /// Work that must always run (never restricted).
    Essential,
}

impl QuotaClass {
    /// The name used in settings and automations.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaClass::Premium => "premium",
            QuotaClass::Standard => "standard",
            QuotaClass::Essential => "essential",
        }
    }
}

/// Everything under `quotas:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// The plans on sale, by name.
    pub plans: IndexMap<String, Plan>,
    /// The plan of a workspace without `sluice_quota_plan`; `None` means no quota.
    pub default_plan: Option<String>,
    /// When billing cycles start.
    pub cycle: CycleSettings,
    /// Credits charged per token of each built-in limit.
    pub costs: Costs,
    /// Bands of restriction, by increasing `at`.
    pub bands: Vec<BandSettings>,
    /// Where the embedded usage store lives (`data_dir`, `SLUICE_DATA`).
    pub data_dir: PathBuf,
}

impl Default for QuotaSettings {
    fn default() -> QuotaSettings {
        let band = |at: f64, restrict: &[QuotaClass], slow: Option<f64>| BandSettings {
            at,
            restrict: restrict.to_vec(),
            slow,
        };
        use QuotaClass::{Premium, Standard};
        QuotaSettings {
            plans: IndexMap::new(),
            default_plan: None,
            cycle: CycleSettings::default(),
            costs: Costs::default(),
            bands: vec![
                band(80.0, &[], None),
                band(100.0, &[Premium], None),
                band(120.0, &[Premium, Standard], Some(0.5)),
                band(150.0, &[Premium, Standard], Some(0.1)),
            ],
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// A plan: its monthly credits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Credits per cycle.
    pub credits: f64,
}

/// When cycles start: `day` of the month at 00:00 in `timezone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleSettings {
    /// The day of the month, 1 to 31 (beyond a short month: its last day).
    pub day: u32,
    /// An IANA time zone name.
    pub timezone: String,
}

impl Default for CycleSettings {
    fn default() -> CycleSettings {
        CycleSettings {
            day: 1,
            timezone: "UTC".into(),
        }
    }
}

/// Credits per token of each built-in limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Costs {
    /// Per automation execution.
    pub automations: f64,
    /// Per `emit`.
    pub emits: f64,
    /// Per `fetch`.
    pub fetchs: f64,
    /// Per `repeat` iteration.
    pub repeats: f64,
}

impl Costs {
    /// Credits per token of the built-in limit `kind`.
    pub fn of(&self, kind: LimitKind) -> f64 {
        match kind {
            LimitKind::Automations => self.automations,
            LimitKind::Emits => self.emits,
            LimitKind::Fetchs => self.fetchs,
            LimitKind::Repeats => self.repeats,
        }
    }
}

/// One band of restriction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandSettings {
    /// Usage in percent of the cycle's credits from which the band applies.
    pub at: f64,
    /// The classes refused (or sent to their fallback) in this band.
    #[serde(default)]
    pub restrict: Vec<QuotaClass>,
    /// Multiplies the four built-in rates while in the band (`0 < slow <= 1`; none is 1).
    #[serde(default)]
    pub slow: Option<f64>,
}

/// A setting or secret that cannot be used; the message names it and the valid choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuotaSettingsError(String);

/// A workspace's quota secret that cannot be used. The message names the secret but not its
/// value, since secrets never appear in logs (SPEC section 6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace {workspace}: secret {key}: {problem}")]
pub struct QuotaSecretError {
    /// The workspace.
    pub workspace: String,
    /// The secret.
    pub key: String,
    /// What was expected.
    pub problem: String,
}

/// The quota that applies to one workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaPolicy {
    /// The plan's name, if it has one.
    pub plan: Option<String>,
    /// The cycle's credits in micro-credits before credits are added; `None` is no quota.
    pub credits: Option<i64>,
    /// When its cycles start.
    pub cycle: CycleRule,
}

impl QuotaSettings {
    /// Checks every value; the error is one line naming the key, the value and what is valid.
    pub fn validate(&self) -> Result<(), QuotaSettingsError> {
        let bad = |m: String| Err(QuotaSettingsError(m));
        for (name, plan) in &self.plans {
            if credits_amount(plan.credits).is_err() || plan.credits == 0.0 {
                return bad(format!(
                    "quotas.plans.{name}.credits: {} is not valid, expected a number of credits above 0 and at most {MAX_CREDITS}",
                    plan.credits
                ));
            }
        }
        if let Some(name) = &self.default_plan {
            if !self.plans.contains_key(name) {
                return bad(format!(
                    "quotas.default_plan: unknown plan `{name}`, expected null or one of: {}",
                    self.plan_names()
                ));
            }
        }
        if let Err(problem) = check_day(f64::from(self.cycle.day)) {
            return bad(format!("quotas.cycle.day: {} {problem}", self.cycle.day));
        }
        if let Err(problem) = parse_zone(&self.cycle.timezone) {
            return bad(format!(
                "quotas.cycle.timezone: `{}` {problem}",
                self.cycle.timezone
            ));
        }
        for kind in LimitKind::ALL {
            let cost = self.costs.of(kind);
            if credits_amount(cost).is_err() {
                return bad(format!(
                    "quotas.costs.{}: {cost} is not valid, expected a number of credits from 0 to {MAX_CREDITS}",
                    kind.as_str()
                ));
            }
        }
        self.validate_bands()
    }

    fn validate_bands(&self) -> Result<(), QuotaSettingsError> {
        let mut previous: Option<f64> = None;
        for (i, band) in self.bands.iter().enumerate() {
            let at = band.at;
            if !at.is_finite() || at <= 0.0 {
                return Err(QuotaSettingsError(format!(
                    "quotas.bands[{i}].at: {at} is not valid, expected a percent above 0"
                )));
            }
            if let Some(before) = previous.filter(|&p| at <= p) {
                return Err(QuotaSettingsError(format!(
                    "quotas.bands[{i}].at: {at} is not valid, expected bands by strictly increasing `at` (above {before})"
                )));
            }
            previous = Some(at);
            if band.restrict.contains(&QuotaClass::Essential) {
                return Err(QuotaSettingsError(format!(
                    "quotas.bands[{i}].restrict: essential is never restricted, expected premium or standard"
                )));
            }
            if let Some(slow) = band.slow.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
                return Err(QuotaSettingsError(format!(
                    "quotas.bands[{i}].slow: {slow} is not valid, expected a factor above 0 and at most 1"
                )));
            }
        }
        Ok(())
    }

    /// The plans' names, for messages.
    fn plan_names(&self) -> String {
        if self.plans.is_empty() {
            return "(no plans defined under quotas.plans)".into();
        }
        let names: Vec<&str> = self.plans.keys().map(String::as_str).collect();
        names.join(", ")
    }

    /// The policy of workspace `ws` given its `secrets`: the `sluice_quota_*` secrets
    /// override the settings. Call it on validated settings; on an error the caller keeps
    /// the workspace's previous policy.
    pub fn policy(&self, ws: &str, secrets: &Map) -> Result<QuotaPolicy, QuotaSecretError> {
        let base = self.default_policy();
        let mut plan = base.plan;
        let mut credits: Option<Option<i64>> = None;
        let mut day = base.cycle.day();
        let mut zone = base.cycle.zone();
        for (key, value) in secrets {
            let Some(name) = key.strip_prefix(SECRET_PREFIX) else {
                continue;
            };
            if value.is_nullish() {
                continue;
            }
            let bad = |problem: String| QuotaSecretError {
                workspace: ws.to_owned(),
                key: key.clone(),
                problem,
            };
            match name {
                "plan" => {
                    let name = value
                        .as_str()
                        .filter(|n| self.plans.contains_key(*n))
                        .ok_or_else(|| {
                            bad(format!(
                                "unknown plan, expected one of: {}",
                                self.plan_names()
                            ))
                        })?;
                    plan = Some(name.to_owned());
                }
                "credits" => {
                    let n = number(value)
                        .and_then(|n| credits_amount(n).ok())
                        .ok_or_else(|| {
                            bad(format!(
                                "expected a number of credits from 0 (no quota) to {MAX_CREDITS}"
                            ))
                        })?;
                    credits = Some((n > 0).then_some(n));
                }
                "timezone" => {
                    zone = value
                        .as_str()
                        .ok_or_else(|| "is not a text".to_owned())
                        .and_then(parse_zone)
                        .map_err(|p| bad(format!("the value {p}")))?;
                }
                "cycle_day" => {
                    day = number(value)
                        .ok_or_else(|| "is not a number, expected a day from 1 to 31".to_owned())
                        .and_then(check_day)
                        .map_err(|p| bad(format!("the value {p}")))?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown quota secret, expected one of: {SECRETS}"
                    )))
                }
            }
        }
        let credits = credits.unwrap_or_else(|| self.plan_credits(plan.as_deref()));
        Ok(QuotaPolicy {
            plan,
            credits,
            cycle: CycleRule::new(day, zone),
        })
    }

    /// The credits of `plan` as micro-credits: `None` without a plan, for an unknown one
    /// or for credits that do not convert.
    fn plan_credits(&self, plan: Option<&str>) -> Option<i64> {
        plan.and_then(|p| self.plans.get(p))
            .and_then(|p| credits_amount(p.credits).ok())
    }

    /// The policy of a workspace without quota secrets.
    pub fn default_policy(&self) -> QuotaPolicy {
        let plan = self.default_plan.clone();
        let credits = self.plan_credits(plan.as_deref());
        // Validated settings parse; the fallback only serves settings built by hand.
        let zone = parse_zone(&self.cycle.timezone).unwrap_or(Tz::UTC);
        QuotaPolicy {
            plan,
            credits,
            cycle: CycleRule::new(self.cycle.day, zone),
        }
    }
}

/// Credits as micro-credits, refusing negative, non-finite and too large amounts.
pub(crate) fn credits_amount(credits: f64) -> Result<i64, String> {
    if !credits.is_finite() || !(0.0..=MAX_CREDITS).contains(&credits) {
        return Err(format!(
            "{credits} is not valid, expected a number of credits from 0 to {MAX_CREDITS}"
        ));
    }
    Ok(micro(credits))
}

/// A cycle day from 1 to 31.
fn check_day(day: f64) -> Result<u32, String> {
    if day.fract() != 0.0 || !(1.0..=31.0).contains(&day) {
        return Err("is out of range, expected a whole day of the month from 1 to 31".into());
    }
    // Whole and in 1..=31, so the conversion is exact.
    Ok(day as u32)
}

/// An IANA time zone by name.
fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        "is not a time zone, expected an IANA name such as UTC, Europe/Paris or America/New_York"
            .into()
    })
}
