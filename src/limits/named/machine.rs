//! The decision logic of one key of a named limit, as a synchronous state machine.
//!
//! Given the time, requests go in and grants, refusals and wake-up instructions come out
//! through a callback; nothing here sleeps, locks or allocates on the uncontended path.
//! The local engine drives it from tokio tasks, and a cluster owner (SPEC section 9) can
//! drive the same machine for remote requests, which is why every request carries a
//! caller-chosen [`RequestId`] and an opaque payload to deliver its outcome to.

use super::gcra::Rate;
use super::lanes::{Line, RequestId};
use std::sync::Arc;
use std::time::Duration;

/// The enforced settings of a limit (or of one key, when its rate is a template).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// The rate, when the limit has one.
    pub rate: Option<RateParams>,
    /// Holders allowed at once, when the limit has a concurrency.
    pub concurrency: Option<u32>,
    /// Lane weights; a lane not listed weighs 1.
    pub lanes: Arc<[(Arc<str>, u32)]>,
    /// Never waits or refuses; only accounts.
    pub shadow: bool,
}

/// A rate as declared, with its GCRA form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateParams {
    /// Units per `per`.
    pub rate: f64,
    /// The period.
    pub per: Duration,
    /// Units at once.
    pub burst: f64,
    /// The same in nanoseconds.
    pub gcra: Rate,
}

impl RateParams {
    /// `rate` units per `per`, `burst` at once (all positive).
    pub fn new(rate: f64, per: Duration, burst: f64) -> RateParams {
        RateParams {
            rate,
            per,
            burst,
            gcra: Rate::new(rate, per, burst),
        }
    }
}

impl RateParams {
    /// When `units` can be granted (a piece no larger than the burst), never before `now`.
    pub fn piece_ready_at(&self, tat: u64, now: u64, units: f64) -> u64 {
        self.gcra.ready_at(tat, now, units.min(self.burst))
    }

    /// When all of `units` will have been granted, taking burst-sized pieces from `now`.
    pub fn done_at(&self, tat: u64, now: u64, units: f64) -> u64 {
        let rest = (units - self.burst).max(0.0);
        self.piece_ready_at(tat, now, units)
            .saturating_add(self.gcra.cost(rest))
    }
}

impl Params {
    /// No limit: no rate, no concurrency, no lanes, not shadow.
    pub fn none() -> Params {
        Params {
            rate: None,
            concurrency: None,
            lanes: Arc::new([]),
            shadow: false,
        }
    }

    /// The weight of lane `name`.
    pub fn weight(&self, name: &str) -> u32 {
        self.lanes
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(1, |(_, w)| *w)
    }
}

/// What the machine tells its driver.
#[derive(Debug)]
pub enum Event<T> {
    /// `id` is granted; `slot` says whether it holds a concurrency slot to release.
    Granted {
        /// The request.
        id: RequestId,
        /// Its payload, handed back.
        payload: T,
        /// Holds a concurrency slot.
        slot: bool,
        /// Nanoseconds it waited in line.
        waited: u64,
    },
    /// `id` cannot be granted within its wait.
    Refused {
        /// The request.
        id: RequestId,
        /// Its payload, handed back.
        payload: T,
        /// Nanoseconds until the capacity it asked for returns; `None` when that depends
        /// on holders releasing their slots.
        retry_after: Option<u64>,
    },
    /// `id` is now first in line: it should call `poll` again at `at` (or when notified,
    /// if `None`). Exactly one waiter drives a line at a time; nobody polls.
    Drive {
        /// The request.
        id: RequestId,
        /// A copy of its payload.
        payload: T,
        /// When to poll again.
        at: Option<u64>,
    },
    /// `id` no longer drives the line (someone went ahead of it); it should just wait.
    Stand {
        /// The request.
        id: RequestId,
        /// A copy of its payload.
        payload: T,
    },
}

/// The state of one key: the rate's TAT, the slots held, and the waiting line.
#[derive(Debug, Default)]
pub struct KeyState<T> {
    tat: u64,
    held: u32,
    line: Option<Box<Line<T>>>,
}

impl<T: Clone> KeyState<T> {
    /// A fresh key: full bucket, no holder, nobody waiting.
    pub fn new() -> KeyState<T> {
        KeyState {
            tat: 0,
            held: 0,
            line: None,
        }
    }

    /// Grants `units` at once if nobody waits and there is capacity; `Some(slot)` when
    /// granted.
    #[inline]
    pub fn try_take(&mut self, p: &Params, now: u64, units: f64) -> Option<bool> {
        if self.line.is_some() || !self.slot_free(p) {
            return None;
        }
        if let Some(r) = &p.rate {
            self.tat = r.gcra.try_take(self.tat, now, units)?;
        }
        Some(self.hold(p))
    }

    /// Accounts `units` as granted whatever the state (shadow mode) and returns the
    /// nanoseconds it would have waited for the rate, whether it holds a slot, and whether
    /// that slot is beyond the concurrency.
    pub fn shadow(&mut self, p: &Params, now: u64, units: f64) -> (u64, bool, bool) {
        let would = p.rate.map_or(0, |r| r.done_at(self.tat, now, units) - now);
        let over = !self.slot_free(p);
        let slot = self.take(p, now, units);
        (would, slot, over)
    }

    /// Queues a request; call [`KeyState::poll`] next.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        p: &Params,
        id: RequestId,
        lane: &str,
        units: f64,
        priority: i64,
        deadline: Option<u64>,
        now: u64,
        payload: T,
    ) {
        let line = self.line.get_or_insert_with(Box::default);
        line.push(
            id,
            lane,
            p.weight(lane),
            units,
            priority,
            deadline,
            now,
            payload,
        );
    }

    /// Takes `id` out of the line (its caller gave up); call `poll` next so that whoever
    /// is behind it gets served.
    pub fn cancel(&mut self, id: RequestId) -> Option<T> {
        let line = self.line.as_mut()?;
        let w = line.remove(id)?;
        if line.driver.is_some_and(|(d, _)| d == id) {
            line.driver = None;
        }
        Some(w.payload)
    }

    /// Counts a slot granted elsewhere (by a previous cluster owner) as held, even past the
    /// concurrency: new grants wait until holders are back under it.
    pub fn adopt(&mut self) {
        self.held = self.held.saturating_add(1);
    }

    /// Makes the bucket hold no more than what refilled since `at` (a cluster owner's
    /// takeover: the old owner may have granted the burst just before).
    pub fn drain_at(&mut self, p: &Params, at: u64) {
        if let Some(r) = &p.rate {
            self.tat = self.tat.max(r.gcra.empty_at(at));
        }
    }

    /// Gives back one concurrency slot; call `poll` next.
    pub fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// Serves the line at `now`: grants whoever can go, in order, refuses whoever cannot
    /// be served within its wait, and names the waiter that drives the line next.
    pub fn poll(&mut self, p: &Params, now: u64, emit: &mut impl FnMut(Event<T>)) {
        loop {
            self.serve(p, now, emit);
            let Some(line) = self.line.as_mut() else {
                return;
            };
            // Whoever is still here was not granted: past their deadline they are refused.
            let mut expired = false;
            while let Some((_, id)) = line.first_deadline().filter(|(d, _)| *d <= now) {
                let Some(w) = line.remove(id) else { break };
                expired = true;
                let retry_after = retry(p, self.tat, self.held, now, line.units() + w.units);
                emit(Event::Refused {
                    id,
                    payload: w.payload,
                    retry_after,
                });
            }
            if !expired {
                break;
            }
        }
        self.designate(p, now, emit);
    }

    /// Grants from the head of the line while possible. A head asking for more than the
    /// burst takes burst-sized pieces as they refill and keeps its place until served.
    fn serve(&mut self, p: &Params, now: u64, emit: &mut impl FnMut(Event<T>)) {
        while let Some(line) = self.line.as_deref() {
            let Some((id, w)) = line.peek() else { break };
            if !self.slot_free(p) {
                break;
            }
            let (units, deadline) = (w.units, w.deadline);
            if let Some(r) = &p.rate {
                let ready = r.piece_ready_at(self.tat, now, units);
                if ready > now {
                    // Nobody can pass the head and its TAT only moves later, so a head
                    // that cannot be done by its deadline is refused now rather than at it.
                    if deadline.is_some_and(|d| r.done_at(self.tat, now, units) > d) {
                        let queued = line.units();
                        if let Some(w) = self.line.as_mut().and_then(|l| l.remove(id)) {
                            emit(Event::Refused {
                                id,
                                payload: w.payload,
                                retry_after: retry(p, self.tat, self.held, now, queued),
                            });
                        }
                        continue;
                    }
                    break;
                }
                if units > r.burst {
                    self.tat = r.gcra.take(self.tat, now, r.burst);
                    if let Some(l) = self.line.as_mut() {
                        l.served(id, r.burst);
                    }
                    continue;
                }
            }
            let Some((id, w)) = self.line.as_mut().and_then(|l| l.pop()) else {
                break;
            };
            let slot = self.take(p, now, w.units);
            emit(Event::Granted {
                id,
                payload: w.payload,
                slot,
                waited: now.saturating_sub(w.since),
            });
        }
        if self.line.as_ref().is_some_and(|l| l.is_empty()) {
            self.line = None;
        }
    }

    /// Tells the head of the line to drive it, and when to wake.
    fn designate(&mut self, p: &Params, now: u64, emit: &mut impl FnMut(Event<T>)) {
        let (tat, slot_free) = (self.tat, self.slot_free(p));
        let Some(line) = self.line.as_mut() else {
            return;
        };
        let Some((id, w)) = line.peek() else {
            return;
        };
        let ready = match (&p.rate, slot_free) {
            (_, false) => None,
            (None, true) => Some(now),
            (Some(r), true) => Some(r.piece_ready_at(tat, now, w.units)),
        };
        let deadline = line.first_deadline().map(|(d, _)| d);
        let at = match (ready, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let payload = w.payload.clone();
        match line.driver {
            Some(current) if current == (id, at) => return,
            Some((old, _)) if old != id => {
                if let Some(o) = line.get(old) {
                    emit(Event::Stand {
                        id: old,
                        payload: o.payload.clone(),
                    });
                }
            }
            _ => {}
        }
        line.driver = Some((id, at));
        emit(Event::Drive { id, payload, at });
    }

    /// Retry estimate for a request of `units` refused now: when the rate could serve it
    /// after everyone in line.
    pub fn retry_after(&self, p: &Params, now: u64, units: f64) -> Option<u64> {
        let queued = self.line.as_ref().map_or(0.0, |l| l.units());
        retry(p, self.tat, self.held, now, queued + units)
    }

    /// Full, unheld and nobody waiting: forgetting it changes no decision, since a new
    /// key starts exactly so.
    pub fn is_idle(&self, now: u64) -> bool {
        self.held == 0 && self.line.is_none() && self.tat <= now
    }

    /// Moves to new settings keeping the units used and the slots held, and serves the
    /// line under them.
    pub fn rescale(
        &mut self,
        old: &Params,
        new: &Params,
        now: u64,
        emit: &mut impl FnMut(Event<T>),
    ) {
        if let (Some(o), Some(n)) = (&old.rate, &new.rate) {
            self.tat = n.gcra.rescale(&o.gcra, self.tat, now);
        } else if new.rate.is_none() {
            self.tat = 0;
        }
        if let Some(line) = self.line.as_mut() {
            line.reweigh(|lane| new.weight(lane));
            // The driver must learn its new wake-up time.
            line.driver = None;
        }
        self.poll(new, now, emit);
    }

    /// Slots held.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Units that could be taken now, when the limit has a rate.
    pub fn available(&self, p: &Params, now: u64) -> Option<f64> {
        p.rate.map(|r| r.gcra.available(self.tat, now))
    }

    /// The line, when someone waits.
    pub fn line(&self) -> Option<&Line<T>> {
        self.line.as_deref()
    }

    fn slot_free(&self, p: &Params) -> bool {
        p.concurrency.is_none_or(|c| self.held < c)
    }

    /// Records a grant; true when it took a slot.
    fn take(&mut self, p: &Params, now: u64, units: f64) -> bool {
        if let Some(r) = &p.rate {
            self.tat = r.gcra.take(self.tat, now, units);
        }
        self.hold(p)
    }

    /// Takes a slot if the limit has concurrency; true when it did.
    fn hold(&mut self, p: &Params) -> bool {
        let slot = p.concurrency.is_some();
        if slot {
            self.held = self.held.saturating_add(1);
        }
        slot
    }
}

/// Nanoseconds until `units` could be granted by the rate, `None` when the slots are what
/// is missing (their holders decide).
fn retry(p: &Params, tat: u64, held: u32, now: u64, units: f64) -> Option<u64> {
    if p.concurrency.is_some_and(|c| held >= c) {
        return None;
    }
    Some(p.rate.map_or(0, |r| r.done_at(tat, now, units) - now))
}
