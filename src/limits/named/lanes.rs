//! The waiting line of one key: weighted round-robin across lanes, then priority, then
//! arrival order.
//!
//! Lanes are scheduled by stride (Temporal's fairness and start-time fair queuing): each
//! lane has a pass that grows by `STRIDE / weight` per grant, and the non-empty lane with
//! the lowest pass goes next. A lane that starts waiting begins at the line's virtual time
//! (the pass of the last grant), so an idle lane cannot bank credit and a flood in one lane
//! delays another only by its weight share. The line exists only while someone waits; it
//! is dropped when empty, which resets every pass.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Pass added per grant to a lane of weight 1; a lane of weight `w` adds `STRIDE / w`.
const STRIDE: u64 = 1_000_000_000;

/// Identifies one request in the line of its key; chosen by the caller (unique per limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// One queued request.
#[derive(Debug)]
pub struct Waiter<T> {
    /// Units it takes against the rate.
    pub units: f64,
    /// Higher first within its lane.
    pub priority: i64,
    /// Nanoseconds after which it is refused; `None` waits for ever.
    pub deadline: Option<u64>,
    /// When it joined the line, to report its wait.
    pub since: u64,
    /// What the caller needs to deliver the outcome (a waker, a reply address).
    pub payload: T,
    lane: usize,
    seq: u64,
}

#[derive(Debug)]
struct Lane {
    name: Arc<str>,
    weight: u32,
    pass: u64,
    queue: BTreeSet<(Reverse<i64>, u64, RequestId)>,
}

/// The waiters of one key.
#[derive(Debug)]
pub struct Line<T> {
    lanes: Vec<Lane>,
    by_name: HashMap<Arc<str>, usize>,
    /// Non-empty lanes by pass, then by creation order (a stable tie-break).
    ready: BTreeSet<(u64, usize)>,
    /// The pass of the last grant.
    vtime: u64,
    waiters: HashMap<RequestId, Waiter<T>>,
    deadlines: BTreeSet<(u64, RequestId)>,
    seq: u64,
    /// The sum of the units of every waiter, for retry estimates.
    units: f64,
    /// The waiter told to drive the line, and the instant it was told to wake at.
    pub(super) driver: Option<(RequestId, Option<u64>)>,
}

impl<T> Line<T> {
    /// An empty line.
    pub fn new() -> Line<T> {
        Line {
            lanes: Vec::new(),
            by_name: HashMap::new(),
            ready: BTreeSet::new(),
            vtime: 0,
            waiters: HashMap::new(),
            deadlines: BTreeSet::new(),
            seq: 0,
            units: 0.0,
            driver: None,
        }
    }

    /// Queues a request in `lane` (of `weight` if the lane is new here).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        id: RequestId,
        lane: &str,
        weight: u32,
        units: f64,
        priority: i64,
        deadline: Option<u64>,
        since: u64,
        payload: T,
    ) {
        let index = match self.by_name.get(lane) {
            Some(&i) => i,
            None => {
                let name: Arc<str> = Arc::from(lane);
                self.lanes.push(Lane {
                    name: Arc::clone(&name),
                    weight: weight.max(1),
                    pass: self.vtime,
                    queue: BTreeSet::new(),
                });
                self.by_name.insert(name, self.lanes.len() - 1);
                self.lanes.len() - 1
            }
        };
        let l = &mut self.lanes[index];
        if l.queue.is_empty() {
            l.pass = l.pass.max(self.vtime);
            self.ready.insert((l.pass, index));
        }
        self.seq += 1;
        l.queue.insert((Reverse(priority), self.seq, id));
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
        }
        self.units += units;
        self.waiters.insert(
            id,
            Waiter {
                units,
                priority,
                deadline,
                since,
                payload,
                lane: index,
                seq: self.seq,
            },
        );
    }

    /// The request that goes next.
    pub fn peek(&self) -> Option<(RequestId, &Waiter<T>)> {
        let &(_, lane) = self.ready.first()?;
        let &(_, _, id) = self.lanes[lane].queue.first()?;
        self.waiters.get(&id).map(|w| (id, w))
    }

    /// Removes the request that goes next, charging its lane one grant.
    pub fn pop(&mut self) -> Option<(RequestId, Waiter<T>)> {
        let (pass, lane) = self.ready.pop_first()?;
        let l = &mut self.lanes[lane];
        let (_, _, id) = l.queue.pop_first()?;
        self.vtime = pass;
        l.pass = pass.saturating_add(STRIDE / u64::from(l.weight));
        if !l.queue.is_empty() {
            self.ready.insert((l.pass, lane));
        }
        let w = self.waiters.remove(&id)?;
        self.forget(id, &w);
        Some((id, w))
    }

    /// Removes `id` without charging its lane (cancelled or refused).
    pub fn remove(&mut self, id: RequestId) -> Option<Waiter<T>> {
        let w = self.waiters.remove(&id)?;
        let l = &mut self.lanes[w.lane];
        l.queue.remove(&(Reverse(w.priority), w.seq, id));
        if l.queue.is_empty() {
            self.ready.remove(&(l.pass, w.lane));
        }
        self.forget(id, &w);
        Some(w)
    }

    fn forget(&mut self, id: RequestId, w: &Waiter<T>) {
        if let Some(d) = w.deadline {
            self.deadlines.remove(&(d, id));
        }
        self.units = if self.waiters.is_empty() {
            0.0
        } else {
            self.units - w.units
        };
    }

    /// Counts `units` of waiter `id` as served (a piece of a request above the burst).
    pub fn served(&mut self, id: RequestId, units: f64) {
        if let Some(w) = self.waiters.get_mut(&id) {
            w.units -= units;
            self.units -= units;
        }
    }

    /// The earliest deadline of any waiter.
    pub fn first_deadline(&self) -> Option<(u64, RequestId)> {
        self.deadlines.first().copied()
    }

    /// The waiter `id`, if still queued.
    pub fn get(&self, id: RequestId) -> Option<&Waiter<T>> {
        self.waiters.get(&id)
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// The units every waiter asks for together.
    pub fn units(&self) -> f64 {
        self.units
    }

    /// Applies new lane weights (`weight` gives the weight of a lane name) to the lanes.
    pub fn reweigh(&mut self, weight: impl Fn(&str) -> u32) {
        for l in &mut self.lanes {
            l.weight = weight(&l.name).max(1);
        }
    }

    /// Waiters per lane, by lane name.
    pub fn per_lane(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.lanes
            .iter()
            .filter(|l| !l.queue.is_empty())
            .map(|l| (&l.name, l.queue.len()))
    }
}

impl<T> Default for Line<T> {
    fn default() -> Self {
        Line::new()
    }
}
