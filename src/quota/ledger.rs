//! Credit amounts, the per-cycle ledger of a workspace, and the usage view the operator API
//! answers with.
//!
//! Credits are counted in whole micro-credits (`i64`): a sum of integers is exact, so a
//! cycle's usage always equals the sum of its charges and of its `byAutomation` entries,
//! which floating point cannot promise (0.1 + 0.2 ≠ 0.3).

use super::bands::{percent, Bands};
use super::settings::QuotaClass;
use chrono::{DateTime, SecondsFormat, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Micro-credits per credit.
const MICRO: f64 = 1e6;

/// The largest amount of credits a setting, a secret, a charge or a top-up may carry, so
/// that sums of micro-credits stay far from `i64::MAX`.
pub const MAX_CREDITS: f64 = 1e12;

/// `credits` (finite, within `0..=MAX_CREDITS`) in micro-credits.
pub(crate) fn micro(credits: f64) -> i64 {
    // In range, so the conversion neither saturates nor loses whole micro-credits.
    (credits * MICRO).round() as i64
}

/// Micro-credits as credits.
pub fn credits(micro: i64) -> f64 {
    micro as f64 / MICRO
}

/// Amounts counted in one cycle: charges, top-ups and charges by automation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Micro-credits charged.
    pub used: i64,
    /// Micro-credits added by the operator.
    pub added: i64,
    /// Micro-credits charged by each automation.
    #[serde(rename = "byAutomation")]
    pub by_automation: BTreeMap<String, i64>,
}

impl Totals {
    /// Counts a charge of `n` micro-credits by automation `slug`.
    pub fn charge(&mut self, slug: &str, n: i64) {
        self.used = self.used.saturating_add(n);
        match self.by_automation.get_mut(slug) {
            Some(v) => *v = v.saturating_add(n),
            None => {
                self.by_automation.insert(slug.to_owned(), n);
            }
        }
    }

    /// Adds every amount of `other`.
    pub fn absorb(&mut self, other: &Totals) {
        self.used = self.used.saturating_add(other.used);
        self.added = self.added.saturating_add(other.added);
        for (slug, n) in &other.by_automation {
            let v = self.by_automation.entry(slug.clone()).or_default();
            *v = v.saturating_add(*n);
        }
    }

    /// True when nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.added == 0 && self.by_automation.is_empty()
    }
}

/// A workspace's stored record of one cycle; also the shape of a delta applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The cycle's first instant, in Unix milliseconds.
    pub start: i64,
    /// The next cycle's first instant, in Unix milliseconds.
    pub end: i64,
    /// The plan's name when last written.
    pub plan: Option<String>,
    /// The plan's micro-credits when last written; `None` is no quota.
    pub credits: Option<i64>,
    /// What the cycle counted.
    #[serde(flatten)]
    pub totals: Totals,
}

impl Ledger {
    /// This ledger with `delta` applied: amounts add up, the plan is the delta's.
    pub fn absorb(&mut self, delta: &Ledger) {
        self.start = delta.start;
        self.end = delta.end;
        self.plan.clone_from(&delta.plan);
        self.credits = delta.credits;
        self.totals.absorb(&delta.totals);
    }

    /// As stored: JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From what [`Ledger::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Ledger, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A cycle's credits: the plan's, the added ones, and their total (`None` without quota).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreditsView {
    /// The plan's credits.
    pub plan: Option<f64>,
    /// Credits the operator added this cycle.
    pub added: f64,
    /// Plan plus added.
    pub total: Option<f64>,
}

/// A cycle's bounds as RFC 3339 UTC instants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleView {
    /// Its first instant.
    pub start: String,
    /// The next cycle's first instant (the reset time).
    pub end: String,
}

/// A workspace's usage in one cycle: the answer of `GET /v2/workspaces/{ws}/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageView {
    /// The plan's name.
    pub plan: Option<String>,
    /// The cycle's credits.
    pub credits: CreditsView,
    /// Credits used.
    pub used: f64,
    /// Credits left (never below 0); `None` without quota.
    pub remaining: Option<f64>,
    /// Used in percent of the total; `None` without quota.
    pub percent: Option<f64>,
    /// The band's number (1 is the lowest), or `None` below every band.
    pub band: Option<usize>,
    /// The classes this band restricts.
    pub restrict: Vec<QuotaClass>,
    /// The cycle.
    pub cycle: CycleView,
    /// Credits used by each automation.
    #[serde(rename = "byAutomation")]
    pub by_automation: IndexMap<String, f64>,
}

impl UsageView {
    /// The view of `ledger` (whose totals are the cycle's) under `bands`.
    pub fn new(ledger: &Ledger, bands: &Bands) -> UsageView {
        let t = &ledger.totals;
        let total = ledger.credits.map(|c| c.saturating_add(t.added));
        let pct = total.and_then(|total| percent(t.used, total));
        let band = bands.current(pct);
        UsageView {
            plan: ledger.plan.clone(),
            credits: CreditsView {
                plan: ledger.credits.map(credits),
                added: credits(t.added),
                total: total.map(credits),
            },
            used: credits(t.used),
            remaining: total.map(|total| credits(total.saturating_sub(t.used).max(0))),
            percent: pct,
            band: band.map(|(n, _)| n),
            restrict: band.map(|(_, b)| b.restrict.clone()).unwrap_or_default(),
            cycle: CycleView {
                start: rfc3339(ledger.start),
                end: rfc3339(ledger.end),
            },
            by_automation: t
                .by_automation
                .iter()
                .map(|(slug, n)| (slug.clone(), credits(*n)))
                .collect(),
        }
    }
}

/// Unix milliseconds as an RFC 3339 UTC instant.
pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}
