//! The cluster store: a NATS JetStream key-value bucket that every instance writes to.
//!
//! Each ledger is one key, `usage.<workspace>.<cycle>`, updated by compare-and-set: read
//! the value and its revision, add the delta, write it back expecting that revision, and
//! start again when another instance wrote in between. So every instance's deltas add up
//! without a lock server. A band is claimed by creating `band.<workspace>.<cycle>.<at>`,
//! which succeeds on one instance only.

use super::{band_part, LedgerKey, Store, StoreError};
use crate::quota::ledger::Ledger;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures::future::BoxFuture;

/// The bucket's default name.
pub const DEFAULT_BUCKET: &str = "sluice_quotas";

/// How many times a compare-and-set is retried when other instances keep writing first.
const MAX_ATTEMPTS: usize = 64;

/// Ledgers in a JetStream key-value bucket.
#[derive(Clone)]
pub struct NatsKvStore {
    kv: kv::Store,
}

impl NatsKvStore {
    /// Opens `bucket` on `client`'s JetStream, creating it (one value per key, on file) when
    /// it does not exist yet.
    pub async fn open(client: async_nats::Client, bucket: &str) -> Result<NatsKvStore, StoreError> {
        let js = async_nats::jetstream::new(client);
        if let Ok(kv) = js.get_key_value(bucket).await {
            return Ok(NatsKvStore { kv });
        }
        let config = kv::Config {
            bucket: bucket.to_owned(),
            description: "sluice credit usage per workspace and cycle".into(),
            history: 1,
            ..Default::default()
        };
        match js.create_key_value(config).await {
            Ok(kv) => Ok(NatsKvStore { kv }),
            // Another instance may have created it meanwhile.
            Err(create) => js.get_key_value(bucket).await.map(|kv| NatsKvStore { kv }).map_err(|e| {
                StoreError(format!(
                    "cannot create or open the JetStream key-value bucket `{bucket}` ({create}; {e}); is JetStream enabled on the server?"
                ))
            }),
        }
    }

    async fn apply_one(&self, key: &LedgerKey, delta: &Ledger) -> Result<Ledger, StoreError> {
        let name = ledger_key(key);
        let fail =
            |what: &str, e: &dyn std::fmt::Display| StoreError(format!("{what} `{name}`: {e}"));
        for _ in 0..MAX_ATTEMPTS {
            let entry = self
                .kv
                .entry(name.clone())
                .await
                .map_err(|e| fail("cannot read", &e))?
                .filter(|e| e.operation == Operation::Put);
            let stored = match &entry {
                Some(e) => Some(Ledger::decode(&e.value).map_err(|e| fail("bad ledger in", &e))?),
                None => None,
            };
            if delta.totals.is_empty() {
                return Ok(stored.unwrap_or_else(|| delta.clone()));
            }
            let mut ledger = stored.unwrap_or_default();
            ledger.absorb(delta);
            let bytes = ledger.encode().into();
            let written = match &entry {
                Some(e) => match self.kv.update(&name, bytes, e.revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(fail("cannot update", &e)),
                },
                None => match self.kv.create(&name, bytes).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(fail("cannot create", &e)),
                },
            };
            if written {
                return Ok(ledger);
            }
        }
        Err(StoreError(format!(
            "gave up updating `{name}` after {MAX_ATTEMPTS} conflicting writes from other instances"
        )))
    }
}

/// A workspace name as a key token: characters a key may not hold (and `=`, the escape)
/// become `=XX`, so distinct names stay distinct.
fn token(ws: &str) -> String {
    let mut out = String::with_capacity(ws.len());
    for b in ws.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn ledger_key(key: &LedgerKey) -> String {
    format!("usage.{}.{}", token(&key.workspace), key.cycle)
}

impl Store for NatsKvStore {
    fn apply<'a>(
        &'a self,
        batch: &'a [(LedgerKey, Ledger)],
    ) -> BoxFuture<'a, Vec<Result<Ledger, StoreError>>> {
        Box::pin(futures::future::join_all(
            batch.iter().map(|(key, delta)| self.apply_one(key, delta)),
        ))
    }

    fn read<'a>(&'a self, key: &'a LedgerKey) -> BoxFuture<'a, Result<Option<Ledger>, StoreError>> {
        Box::pin(async move {
            let name = ledger_key(key);
            let value = self
                .kv
                .get(name.clone())
                .await
                .map_err(|e| StoreError(format!("cannot read `{name}`: {e}")))?;
            value
                .map(|v| Ledger::decode(v.as_ref()))
                .transpose()
                .map_err(|e| StoreError(format!("bad ledger in `{name}`: {e}")))
        })
    }

    fn claim_band<'a>(
        &'a self,
        key: &'a LedgerKey,
        at: f64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let name = format!(
                "band.{}.{}.{}",
                token(&key.workspace),
                key.cycle,
                band_part(at)
            );
            match self.kv.create(&name, "1".into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(StoreError(format!("cannot create `{name}`: {e}"))),
            }
        })
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_become_distinct_key_tokens() {
        assert_eq!(token("demo-1_x"), "demo-1_x");
        assert_eq!(token("a.b"), "a=2Eb");
        assert_eq!(token("a=2Eb"), "a=3D2Eb");
        assert_ne!(token("a.b"), token("a=2Eb"));
        let key = LedgerKey {
            workspace: "my ws".into(),
            cycle: "2026-11-01".into(),
        };
        assert_eq!(ledger_key(&key), "usage.my=20ws.2026-11-01");
    }
}
