//! One named limit in memory: its keys' states in locked shards, the async waiting built on
//! the state machine, release, live change, idle eviction and counters.
//!
//! A key's whole decision runs under its shard's lock, which is held only for the machine's
//! few arithmetic steps, never across an await. Keyed limits spread keys over several
//! shards so that unrelated keys rarely meet on one lock.

use super::keys::{sweep, Keys};
use super::lanes::RequestId;
use super::machine::{Event, KeyState, Params};
use super::permit::{ns, Permit, Signal, Turn};
use crate::limits::clock::{nanos, TimeSource};
use crate::limits::cluster::ClusterStatus;
use governor::clock::Clock;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Shards of a keyed limit: enough that 2-16 cores rarely share a lock.
const KEYED_SHARDS: usize = 16;

type State = KeyState<Arc<Signal>>;

pub(super) struct Entry {
    pub(super) state: State,
    /// Settings of this key when they differ from the limit's (an inline limit, or a rate
    /// rendered from a template).
    pub(super) params: Option<Arc<Params>>,
}

struct Shard {
    params: Arc<Params>,
    keys: Keys,
    sweep_at: usize,
}

/// Counters since the limit was declared, read by metrics.
#[derive(Debug, Default)]
struct Counters {
    waits: AtomicU64,
    wait_nanos: AtomicU64,
    refusals: AtomicU64,
    shadow_waits: AtomicU64,
    shadow_wait_nanos: AtomicU64,
}

/// A named limit with its keys.
pub(super) struct Limit {
    name: Arc<str>,
    time: TimeSource,
    shards: Box<[Mutex<Shard>]>,
    next_id: AtomicU64,
    counters: Counters,
    /// For a limit a cluster owner took over: keys first seen start with what refilled
    /// since this instant, not full.
    drained: Option<u64>,
}

/// How one acquisition of one limit starts.
pub(super) enum Start {
    /// Granted at once.
    Granted(Permit),
    /// Shadow limit: accounted, with the wait it would have imposed.
    Shadow(Permit, Duration),
    /// Not granted, and not allowed to wait; capacity returns after the duration.
    Refused(Option<Duration>),
    /// In line.
    Wait(Waiting),
}

/// What one request of one limit asks for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Want<'a> {
    pub key: &'a str,
    pub units: f64,
    pub priority: i64,
    pub lane: &'a str,
    pub wait: Option<Duration>,
}

impl Limit {
    /// A limit with `params`; `keyed` limits get several shards.
    pub(super) fn new(name: Arc<str>, params: Arc<Params>, keyed: bool, time: TimeSource) -> Limit {
        let shards = if keyed { KEYED_SHARDS } else { 1 };
        Limit {
            name,
            time,
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        params: Arc::clone(&params),
                        keys: Keys::default(),
                        sweep_at: 0,
                    })
                })
                .collect(),
            next_id: AtomicU64::new(0),
            counters: Counters::default(),
            drained: None,
        }
    }

    /// A limit whose keys start empty now and refill from here (a cluster owner's takeover).
    pub(super) fn drained(name: Arc<str>, params: Arc<Params>, time: TimeSource) -> Limit {
        let mut limit = Limit::new(name, params, true, time);
        limit.drained = Some(limit.now());
        limit
    }

    /// The limit's name.
    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = if self.shards.len() == 1 {
            0
        } else {
            spread(key) % self.shards.len()
        };
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        self.time.now().as_u64()
    }

    /// Starts an acquisition; `own` are settings for this key that replace the limit's.
    pub(super) fn start(self: &Arc<Self>, want: Want<'_>, own: Option<&Arc<Params>>) -> Start {
        let now = self.now();
        self.with_entry(want.key, own, now, |entry, base| {
            self.decide(entry, base, own, want, now)
        })
    }

    /// Grants `units` of `key` at once when nobody waits, there is room, and the key
    /// follows the limit's own settings, which are not shadow; `None` otherwise, with nothing
    /// changed (then [`Limit::start`] decides). The uncontended path, without a [`Want`].
    pub(super) fn try_grant(self: &Arc<Self>, key: &str, units: f64) -> Option<Permit> {
        let now = self.now();
        self.with_entry(key, None, now, |entry, base| {
            if entry.params.is_some() || base.shadow {
                return None;
            }
            let slot = entry.state.try_take(base, now, units)?;
            Some(self.permit(slot, key))
        })
    }

    /// Runs `f` on `key`'s entry under its shard's lock, with the limit's settings. A key
    /// not seen yet gets a fresh entry (full, or drained for a taken-over limit; `own` are
    /// its settings), kept only if `f` leaves it busy, so that refusals cost no memory.
    fn with_entry<R>(
        &self,
        key: &str,
        own: Option<&Arc<Params>>,
        now: u64,
        f: impl FnOnce(&mut Entry, &Arc<Params>) -> R,
    ) -> R {
        let mut guard = self.shard(key);
        let Shard {
            params,
            keys,
            sweep_at,
        } = &mut *guard;
        if let Some(entry) = keys.get_mut(key) {
            return f(entry, params);
        }
        if keys.len() >= *sweep_at {
            *sweep_at = sweep(keys, now);
        }
        let mut entry = Entry {
            state: KeyState::new(),
            params: own.cloned(),
        };
        if let Some(at) = self.drained {
            entry.state.drain_at(own.unwrap_or(params), at);
        }
        let result = f(&mut entry, params);
        if !entry.state.is_idle(now) {
            keys.insert(key, entry);
        }
        result
    }

    /// The decision for one key, under its shard's lock.
    fn decide(
        self: &Arc<Self>,
        entry: &mut Entry,
        base: &Arc<Params>,
        own: Option<&Arc<Params>>,
        want: Want<'_>,
        now: u64,
    ) -> Start {
        self.adopt(entry, base, own, now);
        let params = entry.params.as_ref().unwrap_or(base);
        if params.shadow {
            let (would, slot, _over) = entry.state.shadow(params, now, want.units);
            if would > 0 {
                self.counters.shadow_waits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .shadow_wait_nanos
                    .fetch_add(would, Ordering::Relaxed);
            }
            return Start::Shadow(self.permit(slot, want.key), ns(would));
        }
        if let Some(slot) = entry.state.try_take(params, now, want.units) {
            return Start::Granted(self.permit(slot, want.key));
        }
        if want.wait == Some(Duration::ZERO) {
            self.counters.refusals.fetch_add(1, Ordering::Relaxed);
            return Start::Refused(entry.state.retry_after(params, now, want.units).map(ns));
        }
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let signal = Signal::new();
        let deadline = want.wait.map(|w| now.saturating_add(nanos(w)));
        let params = Arc::clone(params);
        entry.state.enqueue(
            &params,
            id,
            want.lane,
            want.units,
            want.priority,
            deadline,
            now,
            Arc::clone(&signal),
        );
        entry.state.poll(&params, now, &mut |e| self.deliver(e));
        Start::Wait(Waiting {
            limit: Arc::clone(self),
            key: Box::from(want.key),
            id,
            signal,
            done: false,
        })
    }

    fn permit(self: &Arc<Self>, slot: bool, key: &str) -> Permit {
        if slot {
            Permit::slot(Arc::clone(self), key)
        } else {
            Permit::empty()
        }
    }

    fn deliver(&self, event: Event<Arc<Signal>>) {
        match event {
            Event::Granted {
                payload,
                slot,
                waited,
                ..
            } => {
                self.counters.waits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .wait_nanos
                    .fetch_add(waited, Ordering::Relaxed);
                payload.set(Turn::Granted { slot, waited });
            }
            Event::Refused {
                payload,
                retry_after,
                ..
            } => {
                self.counters.refusals.fetch_add(1, Ordering::Relaxed);
                payload.set(Turn::Refused { retry_after });
            }
            Event::Drive { payload, at, .. } => payload.set(Turn::Drive(at)),
            Event::Stand { payload, .. } => payload.set(Turn::Waiting),
        }
    }

    /// Moves `entry` to the settings this acquisition says (`own`, or the limit's).
    fn adopt(&self, entry: &mut Entry, base: &Arc<Params>, own: Option<&Arc<Params>>, now: u64) {
        let current = entry.params.as_ref().unwrap_or(base);
        let wanted = own.unwrap_or(base);
        if Arc::ptr_eq(current, wanted) || **current == **wanted {
            return;
        }
        let (old, new) = (Arc::clone(current), Arc::clone(wanted));
        entry
            .state
            .rescale(&old, &new, now, &mut |e| self.deliver(e));
        if let Some(at) = self.drained.filter(|_| old.rate.is_none()) {
            // A key first seen through an adopted slot learns its rate only now.
            entry.state.drain_at(&new, at);
        }
        entry.params = own.cloned();
    }

    /// Counts a slot of `key` granted elsewhere as held (see [`KeyState::adopt`]).
    pub(super) fn adopt_slot(self: &Arc<Self>, key: &str) -> Permit {
        let mut guard = self.shard(key);
        if let Some(entry) = guard.keys.get_mut(key) {
            entry.state.adopt();
        } else {
            let mut entry = Entry {
                state: KeyState::new(),
                params: None,
            };
            entry.state.adopt();
            guard.keys.insert(key, entry);
        }
        Permit::slot(Arc::clone(self), key)
    }

    /// Serves `key`'s line now (its driver woke up).
    fn drive(&self, key: &str) {
        let now = self.now();
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if let Some(entry) = shard.keys.get_mut(key) {
            let params = entry.params.as_ref().unwrap_or(&shard.params);
            entry.state.poll(params, now, &mut |e| self.deliver(e));
        }
    }

    /// Gives a slot of `key` back and serves whoever waits for it.
    pub(super) fn release(&self, key: &str) {
        let now = self.now();
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if let Some(entry) = shard.keys.get_mut(key) {
            entry.state.release();
            let params = entry.params.as_ref().unwrap_or(&shard.params);
            entry.state.poll(params, now, &mut |e| self.deliver(e));
            if entry.state.is_idle(now) {
                shard.keys.remove(key);
            }
        }
    }

    /// A waiting request gave up: leave the line, or give back what it was just granted.
    fn cancel(&self, key: &str, id: RequestId, signal: &Signal) {
        let now = self.now();
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        let Some(entry) = shard.keys.get_mut(key) else {
            return;
        };
        match signal.turn() {
            Turn::Granted { slot: true, .. } => entry.state.release(),
            Turn::Granted { .. } | Turn::Refused { .. } => return,
            Turn::Waiting | Turn::Drive(_) => {
                entry.state.cancel(id);
            }
        }
        let params = entry.params.as_ref().unwrap_or(&shard.params);
        entry.state.poll(params, now, &mut |e| self.deliver(e));
    }

    /// Moves every key to `params`, keeping used units and held slots.
    pub(super) fn set_params(&self, params: &Arc<Params>) {
        let now = self.now();
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let shard = &mut *guard;
            let old = std::mem::replace(&mut shard.params, Arc::clone(params));
            for entry in shard.keys.values_mut() {
                // A key with its own settings moves on its next acquisition, which says them.
                if entry.params.is_none() && *old != **params {
                    entry
                        .state
                        .rescale(&old, params, now, &mut |e| self.deliver(e));
                }
            }
        }
    }

    /// Counts an acquisition a cluster limit's owner decided: a wait (if it waited) or a
    /// refusal (`None`), so this instance's metrics show what its executions went through.
    pub(super) fn count_remote(&self, waited: Option<Duration>) {
        let c = &self.counters;
        match waited {
            Some(d) if !d.is_zero() => {
                c.waits.fetch_add(1, Ordering::Relaxed);
                c.wait_nanos.fetch_add(nanos(d), Ordering::Relaxed);
            }
            Some(_) => {}
            None => {
                c.refusals.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets idle keys; returns how many.
    pub(super) fn sweep(&self) -> usize {
        let now = self.now();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.keys.len();
            shard.sweep_at = sweep(&mut shard.keys, now);
            dropped += before - shard.keys.len();
        }
        dropped
    }

    /// What the operator view and metrics show.
    pub(super) fn snapshot(&self) -> Snapshot {
        let now = self.now();
        let mut snap = Snapshot::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            snap.keys += shard.keys.len();
            for entry in shard.keys.values() {
                let params = entry.params.as_ref().unwrap_or(&shard.params);
                snap.held += u64::from(entry.state.held());
                if self.shards.len() == 1 {
                    snap.available = entry.state.available(params, now);
                }
                for (lane, n) in entry.state.line().into_iter().flat_map(|l| l.per_lane()) {
                    *snap.waiters.entry(lane.to_string()).or_default() += n;
                }
            }
            if self.shards.len() == 1 && shard.keys.len() == 0 {
                snap.available = shard.params.rate.map(|r| r.burst);
            }
        }
        let c = &self.counters;
        snap.waits = c.waits.load(Ordering::Relaxed);
        snap.wait_seconds = ns(c.wait_nanos.load(Ordering::Relaxed)).as_secs_f64();
        snap.refusals = c.refusals.load(Ordering::Relaxed);
        snap.shadow_waits = c.shadow_waits.load(Ordering::Relaxed);
        snap.shadow_wait_seconds = ns(c.shadow_wait_nanos.load(Ordering::Relaxed)).as_secs_f64();
        snap
    }
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The live state and counters of one limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Keys with state (1 at most for a limit without `key`).
    pub keys: usize,
    /// Units available now (a limit without `key` and with a rate only).
    pub available: Option<f64>,
    /// Concurrency slots held, all keys together.
    pub held: u64,
    /// Waiters per lane, all keys together.
    pub waiters: BTreeMap<String, usize>,
    /// Acquisitions that had to wait.
    pub waits: u64,
    /// Their total wait.
    pub wait_seconds: f64,
    /// Acquisitions refused (not granted within their wait).
    pub refusals: u64,
    /// Shadow acquisitions that would have waited.
    pub shadow_waits: u64,
    /// Their total would-be wait.
    pub shadow_wait_seconds: f64,
    /// For a `scope: cluster` limit with NATS: its owner and cluster-wide holders and
    /// waiters, as last heard (`None` before the first answer, or without NATS).
    pub cluster: Option<ClusterStatus>,
}

/// FNV-1a of the key, to pick its shard: cheap, and needing no resistance to chosen keys,
/// since each shard's map hashes with a random key anyway.
fn spread(key: &str) -> usize {
    let mut h = super::Fnv::default();
    h.write(key.as_bytes());
    h.finish() as usize
}

/// A request in line; awaiting [`Waiting::finish`] waits for its turn, dropping it leaves.
pub(super) struct Waiting {
    limit: Arc<Limit>,
    key: Box<str>,
    id: RequestId,
    signal: Arc<Signal>,
    done: bool,
}

impl Waiting {
    /// Waits for the outcome: the permit and the wait, or the refusal's retry delay.
    pub(super) async fn finish(mut self) -> Result<(Permit, Duration), Option<Duration>> {
        loop {
            let notified = self.signal.notified();
            match self.signal.turn() {
                Turn::Granted { slot, waited } => {
                    self.done = true;
                    return Ok((self.limit.permit(slot, &self.key), ns(waited)));
                }
                Turn::Refused { retry_after } => {
                    self.done = true;
                    return Err(retry_after.map(ns));
                }
                Turn::Drive(Some(at)) => {
                    let now = self.limit.now();
                    if at > now {
                        let time = self.limit.time.clone();
                        // A changed turn is seen before sleeping, so runs are deterministic
                        // on a fake clock.
                        tokio::select! {
                            biased;
                            _ = notified => continue,
                            _ = time.sleep(ns(at - now)) => {}
                        }
                    }
                    self.limit.drive(&self.key);
                }
                Turn::Drive(None) | Turn::Waiting => notified.await,
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            self.limit.cancel(&self.key, self.id, &self.signal);
        }
    }
}
