//! Where ledgers live, behind one trait: an embedded database file for a lone instance
//! ([`RedbStore`]) or a NATS JetStream key-value bucket shared by a cluster
//! ([`NatsKvStore`]).
//!
//! The service batches charges in memory and hands a store one batch of deltas at a time,
//! so a store is never on the hot path; it only has to add a delta to a ledger atomically
//! and say which instance announces a band first.

mod nats_kv;
mod redb;

pub use self::redb::RedbStore;
pub use nats_kv::{NatsKvStore, DEFAULT_BUCKET};

use super::ledger::Ledger;
use futures::future::BoxFuture;

/// Names one workspace's ledger of one cycle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerKey {
    /// The workspace.
    pub workspace: String,
    /// The cycle's id (its local start date, `YYYY-MM-DD`).
    pub cycle: String,
}

/// The store could not be read or written; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage store: {0}")]
pub struct StoreError(pub String);

/// Durable ledgers.
pub trait Store: Send + Sync + 'static {
    /// Adds each delta to its ledger (creating it when absent; an empty delta only reads)
    /// and returns each ledger as it is after, in the batch's order. A ledger is updated
    /// atomically: concurrent writers' deltas all count.
    fn apply<'a>(
        &'a self,
        batch: &'a [(LedgerKey, Ledger)],
    ) -> BoxFuture<'a, Vec<Result<Ledger, StoreError>>>;

    /// The ledger of `key`, if any was written.
    fn read<'a>(&'a self, key: &'a LedgerKey) -> BoxFuture<'a, Result<Option<Ledger>, StoreError>>;

    /// Claims the announcement of band `at` in the cycle of `key`: true for the first
    /// claimant only, across every instance sharing the store, even after restarts.
    fn claim_band<'a>(
        &'a self,
        key: &'a LedgerKey,
        at: f64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Whether other instances write to this store too, so totals must be read back
    /// regularly to see their charges.
    fn shared(&self) -> bool;
}

/// A band's `at` as a key part without dots: `80`, `80_5`.
fn band_part(at: f64) -> String {
    at.to_string().replace('.', "_")
}
