//! Ownership of a cluster limit: a JetStream key-value entry holding the owner's instance id,
//! written with a per-key TTL of `lease_secs` and renewed by compare-and-set on its revision.
//!
//! The client's `create` and `update` cannot set a TTL together with an expected revision
//! (its `create` on a deleted key falls back to an `update` without TTL), so the writes here
//! are JetStream publishes with both headers: `Nats-Expected-Last-Subject-Sequence` makes
//! the write conditional, `Nats-TTL` makes it expire. An expired lease leaves a delete
//! marker (the bucket's `limit_markers`), whose revision the next take expects.

use super::{ClusterError, ClusterSettings, LimitRef};
use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use std::time::Duration;

/// How long an expiry's delete marker stays: long enough for every contender to see it.
const MARKER_TTL: Duration = Duration::from_secs(1);

/// The ownership bucket of one instance.
#[derive(Clone)]
pub(super) struct Leases {
    js: Context,
    /// The bucket as opened: getting it again is a stream-info request, which renewals and
    /// hand-overs need not pay each time.
    store: Store,
    settings: ClusterSettings,
    instance: String,
}

/// Who owns a limit, as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// This instance, at this revision of the lease entry; `fresh` when no instance held
    /// the lease recently (no entry, not even an expiry's marker).
    Me {
        /// The revision to renew at.
        revision: u64,
        /// Nobody owned the limit recently.
        fresh: bool,
    },
    /// Another instance (by id).
    Other(String),
}

impl Leases {
    /// Creates the bucket if needed.
    pub(super) async fn open(
        client: async_nats::Client,
        settings: &ClusterSettings,
        instance: &str,
    ) -> Result<Leases, ClusterError> {
        let js = jetstream::new(client);
        let store = bucket(&js, settings).await?;
        Ok(Leases {
            js,
            store,
            settings: settings.clone(),
            instance: instance.into(),
        })
    }

    /// Takes the lease of `limit` if it is free (or already this instance's), else says
    /// who holds it.
    pub(super) async fn take(&self, limit: &LimitRef) -> Result<Holder, ClusterError> {
        let key = limit.token();
        let entry = match self.store.entry(key.as_str()).await {
            Ok(entry) => entry,
            // The bucket may be gone (a NATS restart on an empty store): create it again.
            Err(_) => bucket(&self.js, &self.settings)
                .await?
                .entry(key.as_str())
                .await
                .map_err(|e| ClusterError::Nats(format!("reading the owner of {limit}: {e}")))?,
        };
        let fresh = entry.is_none();
        let expected = match entry {
            None => 0,
            Some(e) if e.operation != Operation::Put => e.revision,
            Some(e) if e.value.as_ref() == self.instance.as_bytes() => e.revision,
            Some(e) => return Ok(Holder::Other(String::from_utf8_lossy(&e.value).into())),
        };
        match self.write(&key, expected).await {
            Ok(revision) => Ok(Holder::Me { revision, fresh }),
            // Another instance wrote first: read who on the next round.
            Err(_) => Ok(Holder::Other(String::new())),
        }
    }

    /// Renews this instance's lease of `limit` at `revision`; fails if it was lost.
    pub(super) async fn renew(&self, limit: &LimitRef, revision: u64) -> Result<u64, ClusterError> {
        self.write(&limit.token(), revision).await
    }

    /// Gives the lease up at once, if it is still at `revision`.
    pub(super) async fn resign(&self, limit: &LimitRef, revision: u64) {
        let _ = self
            .store
            .delete_expect_revision(limit.token(), Some(revision))
            .await;
    }

    /// Writes this instance's id under `key` if its last revision is `expected` (0: absent).
    async fn write(&self, key: &str, expected: u64) -> Result<u64, ClusterError> {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        headers.insert(
            NATS_MESSAGE_TTL,
            self.settings.lease().as_secs().to_string(),
        );
        let store = &self.store;
        let prefix = store.put_prefix.as_ref().unwrap_or(&store.prefix);
        let subject = format!("{prefix}{key}");
        let ack = self
            .js
            .publish_with_headers(subject, headers, self.instance.clone().into())
            .await
            .map_err(|e| ClusterError::Nats(format!("writing lease {key}: {e}")))?
            .await
            .map_err(|e| ClusterError::Nats(format!("writing lease {key}: {e}")))?;
        Ok(ack.sequence)
    }
}

/// The ownership bucket, created if missing (as after a NATS restart on an empty store).
async fn bucket(js: &Context, settings: &ClusterSettings) -> Result<Store, ClusterError> {
    if let Ok(store) = js.get_key_value(&settings.cluster_bucket).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: settings.cluster_bucket.clone(),
        description: "sluice: owners of cluster limits".into(),
        history: 1,
        limit_markers: Some(MARKER_TTL),
        ..Default::default()
    })
    .await
    .map_err(|e| {
        ClusterError::Nats(format!(
            "creating the key-value bucket {:?} (needs nats-server >= 2.11 with JetStream): {e}",
            settings.cluster_bucket
        ))
    })
}
