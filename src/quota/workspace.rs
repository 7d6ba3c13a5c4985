//! One workspace's quota in memory: its policy, its current cycle, and its usage split
//! into what the store holds, what a flush is writing, and what is not written yet.
//!
//! Keeping the three apart is what lets a flush run without blocking charges and still
//! never count a delta twice or lose it when the store fails.

use super::ledger::{Ledger, Totals};
use super::store::LedgerKey;
use super::{bands, Cycle, QuotaPolicy};
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex, MutexGuard};

/// How long after its last use here a workspace's usage is still read back from a shared
/// store at every flush (other instances' charges seen within a flush). Later, a view reads
/// it once first, and the next use puts it back in use: an instance that knows thousands of
/// workspaces reads only those it runs.
pub(super) const IN_USE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// How often listing every workspace reads again one that is not in use here.
pub(super) const LIST_REFRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// One workspace's quota in the current cycle.
pub(super) struct WsState {
    /// The workspace, for the store's keys.
    pub(super) name: Arc<str>,
    /// Its plan, credits and cycle rule.
    pub(super) policy: QuotaPolicy,
    /// The cycle its usage counts in.
    pub(super) cycle: Cycle,
    /// The store's totals as last written or read (with other instances' charges).
    pub(super) base: Totals,
    /// Handed to the store by a flush that has not finished.
    pub(super) in_flight: Totals,
    /// Counted here since the last flush.
    pub(super) pending: Totals,
    /// Whether `base` was read from the store for this cycle (and, with a shared store,
    /// since the workspace was last out of use here).
    pub(super) synced: bool,
    /// When this instance last charged or decided for the workspace: with a shared store,
    /// only workspaces in use are read back at every flush.
    pub(super) seen: DateTime<Utc>,
    /// When a flush last read its totals from the store for this cycle.
    pub(super) read_at: Option<DateTime<Utc>>,
    /// The bands of this cycle already announced (by any instance).
    pub(super) announced: Vec<f64>,
}

impl WsState {
    /// A workspace seen for the first time at `now`, its usage not yet read from the store.
    pub(super) fn new(name: Arc<str>, policy: QuotaPolicy, now: DateTime<Utc>) -> WsState {
        WsState {
            name,
            cycle: policy.cycle.containing(now),
            policy,
            base: Totals::default(),
            in_flight: Totals::default(),
            pending: Totals::default(),
            synced: false,
            seen: now,
            read_at: None,
            announced: Vec::new(),
        }
    }

    /// Whether this instance used the workspace within [`IN_USE`] of `now`.
    pub(super) fn in_use(&self, now: DateTime<Utc>) -> bool {
        now - self.seen < IN_USE
    }

    /// Moves to the cycle of `now` if this one is over: what was pending goes to
    /// `orphans` under the old cycle, and the new cycle starts from zero.
    pub(super) fn roll(&mut self, now: DateTime<Utc>, orphans: &Mutex<Vec<(LedgerKey, Ledger)>>) {
        if self.cycle.contains(now) {
            return;
        }
        let cycle = self.policy.cycle.containing(now);
        if cycle.id == self.cycle.id {
            self.cycle = cycle;
            return;
        }
        self.orphan_pending(orphans);
        self.cycle = cycle;
        self.base = Totals::default();
        self.in_flight = Totals::default();
        self.synced = false;
        self.announced.clear();
    }

    /// Hands what is pending to `orphans` as a delta of the current cycle, to be written
    /// by the next flush.
    pub(super) fn orphan_pending(&mut self, orphans: &Mutex<Vec<(LedgerKey, Ledger)>>) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let delta = self.delta(pending);
            lock(orphans).push((self.key(), delta));
        }
    }

    pub(super) fn key(&self) -> LedgerKey {
        LedgerKey {
            workspace: self.name.to_string(),
            cycle: self.cycle.id.clone(),
        }
    }

    pub(super) fn delta(&self, totals: Totals) -> Ledger {
        Ledger {
            start: self.cycle.start.timestamp_millis(),
            end: self.cycle.end.timestamp_millis(),
            plan: self.policy.plan.clone(),
            credits: self.policy.credits,
            totals,
        }
    }

    /// Micro-credits used and the cycle's total credits (`None` without quota).
    pub(super) fn used_and_total(&self) -> (i64, Option<i64>) {
        let sum = |f: fn(&Totals) -> i64| {
            f(&self.base)
                .saturating_add(f(&self.in_flight))
                .saturating_add(f(&self.pending))
        };
        let total = self
            .policy
            .credits
            .map(|c| c.saturating_add(sum(|t| t.added)));
        (sum(|t| t.used), total)
    }

    pub(super) fn percent(&self) -> Option<f64> {
        let (used, total) = self.used_and_total();
        bands::percent(used, total?)
    }

    /// The ledger of the current cycle as this instance knows it.
    pub(super) fn ledger(&self) -> Ledger {
        let mut totals = self.base.clone();
        totals.absorb(&self.in_flight);
        totals.absorb(&self.pending);
        self.delta(totals)
    }
}

/// Locks `m`, going on with the data if a panic poisoned it: every update of a state is
/// a few additions that leave it consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
