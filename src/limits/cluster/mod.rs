//! Cluster-wide named limits over NATS (SPEC section 9): one instance owns each cluster limit
//! and grants its units and slots to every instance.
//!
//! Why this shape:
//! - Coordination is NATS's, not ours: ownership is a JetStream key-value entry with a
//!   per-key TTL, taken with `create` and renewed by compare-and-set on its revision
//!   (`lease`). When the owner dies its entry expires and another instance's take wins.
//! - The owner runs the local limiter (the section-7 engine, behind [`LocalGrantor`]) for the
//!   whole cluster, so rate, burst, concurrency, lanes and priority are exact: every waiter
//!   of the cluster sits in one waiting line (`owner`).
//! - Instances ask the owner by NATS request/reply (`client`, `wire`): a request is
//!   answered at once (granted, refused, or queued); a queued one gets its answer later on the
//!   instance's inbox. A request that gets no answer is sent again under the same id, which
//!   the owner recognises, so nothing is lost silently or granted twice.
//! - Slots are leases too (`holders`): each instance heartbeats its held slots to the owner
//!   every third of `lease_secs`; the slots of an instance that stops are freed within
//!   `lease_secs`, and a new owner learns held slots from those heartbeats.
//! - A new owner starts with empty buckets, so a takeover never grants more than one burst
//!   beyond the limit. Only a first owner (the lease key absent: nobody owned the limit
//!   since its expiry marker went, a second after a lease) starts full.

mod client;
mod holders;
mod lease;
mod owner;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{ClusterLimits, ClusterPermit, ClusterStatus};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The settings of cluster limits (`limits.lease_secs` and friends in the settings file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Seconds an owner's lease and an instance's held slots live without renewal: the time
    /// a dead instance's slots stay held and a dead owner's limit waits for a new owner.
    pub lease_secs: u64,
    /// The JetStream key-value bucket that holds the ownership leases.
    pub cluster_bucket: String,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            lease_secs: 5,
            cluster_bucket: "sluice_limit_owners".into(),
        }
    }
}

impl ClusterSettings {
    /// Checks the values; the error names the setting, the value and the valid range.
    pub fn validate(&self) -> Result<(), ClusterError> {
        // NATS counts key TTLs in whole seconds, and renewals come every third of the lease.
        if !(2..=3600).contains(&self.lease_secs) {
            return Err(ClusterError::Setting(format!(
                "limits.lease_secs is {}; it must be a whole number of seconds from 2 to 3600",
                self.lease_secs
            )));
        }
        let valid = !self.cluster_bucket.is_empty()
            && self
                .cluster_bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ClusterError::Setting(format!(
                "limits.cluster_bucket is {:?}; it must be letters, digits, '_' or '-'",
                self.cluster_bucket
            )));
        }
        Ok(())
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How often leases and holders are renewed: three times per lease, so that one lost
    /// renewal never lets a live lease expire.
    fn renew_every(&self) -> Duration {
        self.lease() / 3
    }
}

/// Which cluster limit: a workspace's own, or an operator's shared one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitRef {
    /// The workspace id, or `None` for a limit under `shared_limits:`.
    pub workspace: Option<String>,
    /// The limit's name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
}

impl LimitRef {
    /// A limit declared in `workspace`'s `workspace.yml`.
    pub fn workspace(workspace: &str, name: &str) -> LimitRef {
        LimitRef {
            workspace: Some(workspace.into()),
            name: name.into(),
        }
    }

    /// A limit declared under `shared_limits:` in the settings file.
    pub fn shared(name: &str) -> LimitRef {
        LimitRef {
            workspace: None,
            name: name.into(),
        }
    }

    /// A dot-free token naming this limit in NATS subjects and key-value keys. Workspace ids
    /// may hold characters neither allows, so those are hex-encoded behind a `=`; the `ws-`
    /// and `shared-` prefixes keep the two kinds apart.
    fn token(&self) -> String {
        match &self.workspace {
            Some(ws) => format!("ws-{}.{}", safe(ws), safe(&self.name)),
            None => format!("shared.{}", safe(&self.name)),
        }
    }
}

impl fmt::Display for LimitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.workspace {
            Some(ws) => write!(f, "{ws}/{}", self.name),
            None => write!(f, "shared/{}", self.name),
        }
    }
}

/// Locks `m`; a panic elsewhere while holding it leaves plain bookkeeping that is still
/// usable, so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `s` if it is a valid subject token and key-value key part, else `=` and its hex bytes.
fn safe(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(1 + 2 * s.len());
    out.push('=');
    for b in s.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Who holds a slot: the instance that asked and its request's number, unique across the
/// cluster and across owners, so a new owner can adopt a slot granted by the old one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HolderId {
    /// The instance id of the holder.
    pub instance: String,
    /// The request that got the slot.
    pub request: u64,
}

/// What an instance asks a cluster limit for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRequest {
    /// The limit.
    pub limit: LimitRef,
    /// The rendered key (`""` for a limit without `key`).
    pub key: String,
    /// Units counted against the rate.
    pub units: f64,
    /// Higher is served first among waiters of the same lane.
    pub priority: i64,
    /// The waiting lane.
    pub lane: String,
    /// The longest wait; `None` waits as long as it takes.
    pub wait: Option<Duration>,
    /// The limit as the asking instance declares it: the owner enforces what its askers
    /// declare, so it needs neither the workspace's files nor its templates.
    pub params: ClusterParams,
}

/// A limit's enforced settings, as they travel to its owner.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterParams {
    /// Units per period and the burst, when the limit has a rate.
    pub rate: Option<ClusterRate>,
    /// Holders allowed at once, when the limit has a concurrency.
    pub concurrency: Option<u32>,
    /// Lane weights; a lane not listed weighs 1.
    pub lanes: Vec<(String, u32)>,
}

/// A rate: `rate` units every `per`, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRate {
    /// Units per period.
    pub rate: f64,
    /// The period.
    pub per: Duration,
    /// Units at once.
    pub burst: f64,
}

/// One acquisition as the owner hands it to its local limiter.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantRequest {
    /// What was asked.
    pub request: ClusterRequest,
    /// The holder the slot is granted to, if the limit has concurrency.
    pub holder: HolderId,
}

/// A granted acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Whether a concurrency slot is now held by the request's holder (until released).
    pub slot: bool,
}

/// Why the local limiter did not grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not within the request's wait; capacity is expected after `retry_after` (`None`:
    /// when a holder releases a slot).
    Busy {
        /// When capacity is expected.
        retry_after: Option<Duration>,
    },
    /// This instance stopped serving the limit (it lost ownership): ask the new owner.
    Closed,
}

/// The local limiter that an owner runs for the whole cluster: the section-7 engine through
/// an adapter. Every call is about one limit that this instance currently owns.
pub trait LocalGrantor: Send + Sync + 'static {
    /// This instance starts owning `limit`. Unless `fresh` (no instance owned it recently,
    /// so nothing was granted lately), its rate keys must start empty and refill from now (a
    /// key first seen later holds only what refilled since this call), so a takeover never
    /// adds a burst to what the old owner granted.
    fn take_over(&self, limit: &LimitRef, fresh: bool);

    /// This instance stops owning `limit`: its waiters end with [`Refusal::Closed`] and its
    /// state may be dropped.
    fn hand_back(&self, limit: &LimitRef);

    /// Puts `req` in the waiting line before returning (so calls keep their arrival order);
    /// the future resolves when it is granted or refused.
    fn acquire(&self, req: GrantRequest) -> BoxFuture<'static, Result<Grant, Refusal>>;

    /// Frees the slot of `holder` under `key` (nothing if it holds none).
    fn release(&self, limit: &LimitRef, key: &str, holder: &HolderId);

    /// Records that `holder` holds a slot under `key`, granted by a previous owner, even if
    /// that goes past the limit's concurrency (new grants then wait until it is back under).
    fn adopt(&self, limit: &LimitRef, key: &str, holder: &HolderId);
}

/// Why a cluster acquisition could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is out of range.
    #[error("{0}")]
    Setting(String),
    /// NATS refused or failed an operation the cluster layer needs.
    #[error("cluster limits over NATS: {0}")]
    Nats(String),
}

/// How an acquisition ended when it was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not granted within the request's wait.
    #[error("cluster limit busy; capacity expected in {retry_after:?}")]
    Busy {
        /// When capacity is expected; `None` when it depends on holders releasing slots.
        retry_after: Option<Duration>,
    },
}
