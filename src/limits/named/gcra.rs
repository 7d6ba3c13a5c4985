//! GCRA over units with continuous refill: the arithmetic of a named limit's rate.
//!
//! A key's whole rate state is one theoretical arrival time (TAT) in nanoseconds on the
//! limit's clock, so a million keys cost eight bytes each here. A request of `n` units is
//! ready when `max(tat, now) + n·interval − tau ≤ now`. A request above the burst can
//! never be ready at once, so the line serves it in burst-sized pieces (`machine`).

use std::time::Duration;

/// A rate of `rate` units per `per`, with `burst` units at once, in nanosecond terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Nanoseconds one unit takes to refill.
    interval: f64,
    /// Nanoseconds the whole burst takes to refill: how far the TAT may run ahead of now.
    tau: u64,
}

impl Rate {
    /// `rate` units every `per`, `burst` at once; both already checked to be positive.
    pub fn new(rate: f64, per: Duration, burst: f64) -> Rate {
        let interval = per.as_nanos() as f64 / rate;
        Rate {
            interval,
            tau: to_nanos(burst * interval),
        }
    }

    /// Nanoseconds that `units` take to refill.
    pub fn cost(&self, units: f64) -> u64 {
        to_nanos(units * self.interval)
    }

    /// The instant at which `units` can be granted (pieces included), never before `now`.
    pub fn ready_at(&self, tat: u64, now: u64, units: f64) -> u64 {
        tat.max(now)
            .saturating_add(self.cost(units))
            .saturating_sub(self.tau)
            .max(now)
    }

    /// The TAT after granting `units` at `now`.
    pub fn take(&self, tat: u64, now: u64, units: f64) -> u64 {
        tat.max(now).saturating_add(self.cost(units))
    }

    /// The TAT after granting `units` at `now` if they can be granted at once (the
    /// common path: [`Rate::ready_at`] then [`Rate::take`] with the cost computed once).
    pub fn try_take(&self, tat: u64, now: u64, units: f64) -> Option<u64> {
        let after = tat.max(now).saturating_add(self.cost(units));
        (after.saturating_sub(self.tau) <= now).then_some(after)
    }

    /// The TAT of a bucket that was empty at `at`: it holds only what refilled since.
    pub fn empty_at(&self, at: u64) -> u64 {
        at.saturating_add(self.tau)
    }

    /// Units that could be taken at `now`.
    pub fn available(&self, tat: u64, now: u64) -> f64 {
        let used = tat.saturating_sub(now).min(self.tau);
        (self.tau - used) as f64 / self.interval
    }

    /// The TAT that keeps the units used under `old` as used under `self`: a drained bucket
    /// stays drained and a half-used one half-used, whatever the new rate.
    pub fn rescale(&self, old: &Rate, tat: u64, now: u64) -> u64 {
        let used = tat.saturating_sub(now) as f64 / old.interval;
        now.saturating_add(to_nanos(used * self.interval))
    }
}

/// Nanoseconds from a float, rounded half up and saturating (`as` saturates, and gives 0
/// for NaN and for negatives, which never occur here). Adding a half before truncating is
/// `round` for non-negative values without its library call, which is on every grant.
fn to_nanos(ns: f64) -> u64 {
    (ns + 0.5) as u64
}
