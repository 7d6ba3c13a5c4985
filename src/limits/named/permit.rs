//! What a caller holds: a [`Permit`] that gives its concurrency slot back when dropped, and
//! the [`Signal`] through which the line tells a waiting caller its turn.
//!
//! Dropping is the only release, so an error, a `break`, a cancelled request or a panic all
//! give the slot back; a waiting future that is dropped leaves the line the same way.

use super::limit::Limit;
use crate::limits::cluster::ClusterPermit;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// Holds what an acquisition took; the concurrency slot, if any, is released on drop.
#[must_use = "dropping a permit releases its limit at once"]
#[derive(Debug)]
pub struct Permit {
    slot: Option<Slot>,
}

/// Where a held slot goes back to.
#[derive(Debug)]
enum Slot {
    /// A limit of this instance, for a key.
    Local(Arc<Limit>, Box<str>),
    /// A cluster limit's owner (its permit releases on drop). Boxed: it is rare and large,
    /// and a permit moves on every local grant.
    Cluster(Box<ClusterPermit>),
}

impl Permit {
    /// A permit holding nothing to give back (a rate-only grant).
    pub(super) fn empty() -> Permit {
        Permit { slot: None }
    }

    /// A permit holding a slot of `limit` for `key`.
    pub(super) fn slot(limit: Arc<Limit>, key: &str) -> Permit {
        Permit {
            slot: Some(Slot::Local(limit, Box::from(key))),
        }
    }

    /// A permit of a cluster limit.
    pub(super) fn cluster(permit: ClusterPermit) -> Permit {
        Permit {
            slot: permit.holds_slot().then(|| Slot::Cluster(Box::new(permit))),
        }
    }

    /// True when it holds a concurrency slot.
    pub fn holds_slot(&self) -> bool {
        match &self.slot {
            Some(Slot::Local(..)) => true,
            Some(Slot::Cluster(p)) => p.holds_slot(),
            None => false,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(Slot::Local(limit, key)) = self.slot.take() {
            limit.release(&key);
        }
    }
}

/// Where a waiting request stands; changed only under its key's lock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Turn {
    /// In line; someone else drives it.
    Waiting,
    /// First in line: poll again at this instant (or when notified).
    Drive(Option<u64>),
    /// Granted after waiting this many nanoseconds.
    Granted { slot: bool, waited: u64 },
    /// Not granted within its wait.
    Refused { retry_after: Option<u64> },
}

/// The mailbox of one waiting request.
#[derive(Debug)]
pub(super) struct Signal {
    turn: Mutex<Turn>,
    notify: Notify,
}

impl Signal {
    pub(super) fn new() -> Arc<Signal> {
        Arc::new(Signal {
            turn: Mutex::new(Turn::Waiting),
            notify: Notify::new(),
        })
    }

    pub(super) fn turn(&self) -> Turn {
        *self.turn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the turn and wakes the waiter (a stored wake-up if it is not listening yet).
    pub(super) fn set(&self, turn: Turn) {
        *self.turn.lock().unwrap_or_else(PoisonError::into_inner) = turn;
        self.notify.notify_one();
    }

    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// A duration from nanoseconds.
pub(super) fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}
