//! The server's side of credit quotas (SPEC section 8): the usage store it opens (the NATS
//! key-value bucket when clustered, else redb under `quotas.data_dir`), the band events it
//! publishes into their workspace as `runtime.quota.band`, and the periodic update of idle
//! workspaces' band `slow` and of the quota metrics.

use super::ServeError;
use crate::config::Settings;
use crate::quota::{BandEvent, NatsKvStore, Quotas, RedbStore, Store, StoreError};
use crate::runtime::Runtime;
use crate::value::Value;
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// The event a workspace receives when it enters a band.
pub(super) const BAND_EVENT: &str = "runtime.quota.band";

/// The quotas of `settings` over their store: shared through NATS when `nats_url` is set.
pub(super) async fn open(settings: &Settings) -> Result<Quotas, ServeError> {
    let store: Arc<dyn Store> = match &settings.nats_url {
        Some(url) => {
            let client = async_nats::connect(url.as_str()).await.map_err(|e| {
                ServeError::Quotas(StoreError(format!(
                    "cannot connect to NATS_URL {} for the usage bucket: {e}",
                    crate::config::redact_userinfo(url)
                )))
            })?;
            let bucket = crate::quota::store::DEFAULT_BUCKET;
            Arc::new(
                NatsKvStore::open(client, bucket)
                    .await
                    .map_err(ServeError::Quotas)?,
            )
        }
        None => Arc::new(RedbStore::open(&settings.quotas.data_dir).map_err(ServeError::Quotas)?),
    };
    Ok(Quotas::new(settings.quotas.clone(), store))
}

/// Brings every loaded workspace's rates to its band's `slow` (executions do it as they
/// start; this covers idle workspaces, whose band lifts when credits are added or a cycle
/// starts) and updates the quota metrics.
pub(super) async fn sync(runtime: &Runtime) {
    let Some(quotas) = runtime.quotas() else {
        return;
    };
    let now = Utc::now();
    let loaded = runtime.workspaces();
    for ws in &loaded {
        runtime
            .limiters()
            .set_slow(&ws.id, quotas.slow(&ws.id, now));
    }
    // `list` logs a store failure; the metrics keep their last figures until the next sync.
    let Ok(all) = quotas.list(now).await else {
        return;
    };
    for (ws, view) in all {
        if runtime.workspace(&ws).is_some() {
            runtime.metrics().set_quota(&ws, view.used, view.band);
        }
    }
}

/// The task publishing band events.
pub(super) struct Bands {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Bands {
    /// Publishes the events announced so far, then ends.
    pub(super) async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Publishes each band event into its workspace through the bus, so its listeners run and
/// event streams show it, until [`Bands::finish`].
pub(super) fn forward_bands(runtime: Runtime, mut events: broadcast::Receiver<BandEvent>) -> Bands {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = stopped.changed() => break,
            };
            match event {
                Ok(event) => publish(&runtime, event).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "quota band events lost: the bus could not keep up");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        while let Ok(event) = events.try_recv() {
            publish(&runtime, event).await;
        }
    });
    Bands { stop, task }
}

async fn publish(runtime: &Runtime, event: BandEvent) {
    let payload = match serde_json::to_value(&event) {
        Ok(json) => Value::from(json),
        Err(e) => {
            tracing::error!(workspace = %event.workspace, error = %e, "quota band event not serialisable");
            return;
        }
    };
    if let Err(e) = runtime
        .emit_external(&event.workspace, BAND_EVENT, payload)
        .await
    {
        tracing::error!(workspace = %event.workspace, band = event.band, error = %e, "quota band event not published");
    }
}
