//! The embedded store: one redb database file under the data directory.
//!
//! redb is pure Rust (no C toolchain, unlike bundled SQLite), ACID with crash-safe commits,
//! and maintained; a ledger is a small JSON value, so a typed key-value store is all that is
//! needed. Each batch is one write transaction, so a flush costs one commit.

use super::{band_part, LedgerKey, Store, StoreError};
use crate::quota::ledger::Ledger;
use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Ledgers by `(workspace, cycle)`.
const LEDGERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("ledgers");
/// Announced bands by `(workspace, cycle, at)`.
const BANDS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("bands");

/// The file name of the database inside the data directory.
const FILE: &str = "quotas.redb";

/// Ledgers in `<data_dir>/quotas.redb`.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) the database in `data_dir`, creating the directory if needed.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path: PathBuf = data_dir.join(FILE);
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError(format!(
                "cannot create the data directory {} ({e}); set data_dir or SLUICE_DATA to a writable folder",
                data_dir.display()
            ))
        })?;
        let db = Database::create(&path).map_err(|e| {
            let fix = match e {
                ::redb::DatabaseError::DatabaseAlreadyOpen => {
                    "another process uses it: give each instance its own data_dir (SLUICE_DATA), or share usage through NATS"
                }
                _ => "set data_dir or SLUICE_DATA to a writable folder",
            };
            StoreError(format!("cannot open {} ({e}); {fix}", path.display()))
        })?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Runs `f` on a blocking thread: commits wait for the disk.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ::redb::Error> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(|e| StoreError(format!("the store's thread failed: {e}")))?
                .map_err(|e| StoreError(e.to_string()))
        })
    }
}

/// A stored ledger, refusing a corrupt one.
fn decode(bytes: &[u8]) -> Result<Ledger, ::redb::Error> {
    Ledger::decode(bytes).map_err(|e| ::redb::Error::Corrupted(format!("bad ledger: {e}")))
}

impl Store for RedbStore {
    fn apply<'a>(
        &'a self,
        batch: &'a [(LedgerKey, Ledger)],
    ) -> BoxFuture<'a, Vec<Result<Ledger, StoreError>>> {
        let owned = batch.to_vec();
        let n = batch.len();
        let run = self.blocking(move |db| {
            let txn = db.begin_write()?;
            let mut after = Vec::with_capacity(owned.len());
            {
                let mut table = txn.open_table(LEDGERS)?;
                for (key, delta) in &owned {
                    let k = (key.workspace.as_str(), key.cycle.as_str());
                    let stored = table.get(k)?.map(|v| decode(v.value())).transpose()?;
                    if delta.totals.is_empty() {
                        // Only a read: a ledger never written is the (zero) delta itself.
                        after.push(stored.unwrap_or_else(|| delta.clone()));
                        continue;
                    }
                    let mut ledger = stored.unwrap_or_default();
                    ledger.absorb(delta);
                    table.insert(k, ledger.encode().as_slice())?;
                    after.push(ledger);
                }
            }
            txn.commit()?;
            Ok(after)
        });
        Box::pin(async move {
            match run.await {
                Ok(after) => after.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e); n],
            }
        })
    }

    fn read<'a>(&'a self, key: &'a LedgerKey) -> BoxFuture<'a, Result<Option<Ledger>, StoreError>> {
        let key = key.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(LEDGERS) {
                Ok(t) => t,
                Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let found = table.get((key.workspace.as_str(), key.cycle.as_str()))?;
            found.map(|v| decode(v.value())).transpose()
        })
    }

    fn claim_band<'a>(
        &'a self,
        key: &'a LedgerKey,
        at: f64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = key.clone();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let fresh = {
                let mut table = txn.open_table(BANDS)?;
                let k = (key.workspace.as_str(), key.cycle.as_str(), band_part(at));
                let k = (k.0, k.1, k.2.as_str());
                let previous = table.insert(k, ())?;
                previous.is_none()
            };
            txn.commit()?;
            Ok(fresh)
        })
    }

    fn shared(&self) -> bool {
        false
    }
}
