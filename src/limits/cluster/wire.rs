//! The messages between instances and the owner of a cluster limit, as JSON on NATS.
//!
//! Every message to an owner goes to the limit's subject, which only the owner subscribes
//! to, so "no responders" means "no owner right now". Answers to queued requests come later
//! on the asking instance's inbox, keyed by request number.

use super::{ClusterError, ClusterRequest, HolderId, LimitRef};
use serde::{Deserialize, Serialize};

/// The subject an owner serves `limit` on.
pub(super) fn subject(limit: &LimitRef) -> String {
    format!("sluice.limits.{}", limit.token())
}

/// The subject an instance gets its late answers on.
pub(super) fn inbox(instance: &str) -> String {
    format!("sluice.limits-inbox.{instance}")
}

/// A message to the owner of a limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum ToOwner {
    /// Wants units (and a slot, if the limit has concurrency). Sent again under the same
    /// `request` number when unanswered; `wait_ms` is what is left of the caller's wait.
    Acquire {
        /// The asking instance.
        instance: String,
        /// The instance's number for this acquisition.
        request: u64,
        /// What is asked; its `wait` is ignored in favour of `wait_ms`.
        ask: ClusterRequest,
        /// The wait left, in ms; `None` is no limit.
        wait_ms: Option<u64>,
    },
    /// A holder ended: its slot is free.
    Release {
        /// The holder.
        holder: HolderId,
        /// The key it held.
        key: String,
    },
    /// An instance is alive: the slots it holds and the requests it still waits on.
    Heartbeat {
        /// The instance.
        instance: String,
        /// Its held slots: holder and key.
        holders: Vec<(HolderId, String)>,
        /// Its acquisitions waiting for an answer.
        waiting: Vec<u64>,
    },
}

/// The owner's immediate answer to a [`ToOwner`] message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Reply {
    /// Granted; `slot` says whether a slot is held.
    Granted {
        /// Whether a concurrency slot is now held.
        slot: bool,
    },
    /// Not granted within the wait.
    Refused {
        /// When capacity is expected, in ms; `None` when holders must release slots first.
        retry_after_ms: Option<u64>,
    },
    /// In the waiting line; the answer will come on the instance's inbox.
    Queued,
    /// The owner stopped owning the limit: ask again (the new owner).
    Moved,
    /// A release was applied.
    Released,
    /// A heartbeat was recorded.
    Alive {
        /// The owner's instance id.
        owner: String,
        /// Requests of the heartbeat that this owner does not know: to be sent again.
        unknown: Vec<u64>,
        /// Slots held across the cluster.
        holders: usize,
        /// Acquisitions waiting across the cluster.
        waiters: usize,
    },
}

/// A late answer on an instance's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Late {
    /// The limit asked.
    pub limit: LimitRef,
    /// The request number.
    pub request: u64,
    /// The key asked (to release a slot granted after the caller gave up).
    pub key: String,
    /// `Granted`, `Refused` or `Moved`.
    pub reply: Reply,
}

/// Encodes a message; these types always serialise.
pub(super) fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes a message, naming what it expected when the bytes are not that.
pub(super) fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
) -> Result<T, ClusterError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ClusterError::Nats(format!(
            "a {what} message is not valid ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })
}
