//! Acknowledgements: the events this instance holds, each settled exactly once (acked once
//! its listeners finished, or handed back at shutdown), acks the server confirmed, and what
//! a failed store ack means for the emitter.

use crate::bus::BusError;
use crate::metrics::Metrics;
use async_nats::jetstream::{self, AckKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;

/// How long one ack attempt waits for the server's confirmation.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause after a failed ack; it doubles up to `ACK_RETRY_MAX`.
pub(super) const ACK_RETRY: Duration = Duration::from_millis(50);
pub(super) const ACK_RETRY_MAX: Duration = Duration::from_millis(800);

/// Why the server did not confirm an ack.
#[derive(Debug, thiserror::Error)]
pub(super) enum AckError {
    #[error("{0}")]
    Request(#[from] async_nats::RequestError),
    #[error("the server answered {0}")]
    Refused(String),
}

/// A failed store ack: without an answer (time out, connection lost) the
/// client may still deliver the buffered publish, so the outcome is unknown.
pub(super) fn stored_error(step: &'static str, e: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as Kind;
    let reason = e.to_string();
    match e.kind() {
        Kind::TimedOut | Kind::BrokenPipe => BusError::Timeout { step, reason },
        _ => BusError::Ack { step, reason },
    }
}

/// The events this instance took and has not acknowledged yet.
pub(super) struct Work {
    pub(super) slots: Arc<Semaphore>,
    pub(super) running: Mutex<HashMap<u64, Arc<Delivery>>>,
    pub(super) next: AtomicU64,
    pub(super) idle: Notify,
    pub(super) stopping: AtomicBool,
    pub(super) stop: Notify,
}

/// One taken event. Its state decides, exactly once, between acknowledging it
/// (the listeners finished) and handing it back (shutdown ran out of time).
pub(super) struct Delivery {
    pub(super) client: async_nats::Client,
    /// The message's `$JS.ACK…` subject: acks, progress and naks go there.
    pub(super) reply: async_nats::Subject,
    pub(super) state: AtomicU8,
    pub(super) task: OnceLock<AbortHandle>,
}

pub(super) const RUNNING: u8 = 0;
pub(super) const FINISHED: u8 = 1;
pub(super) const HANDED_BACK: u8 = 2;

impl Delivery {
    pub(super) fn settle(&self, to: u8) -> bool {
        self.state
            .compare_exchange(RUNNING, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sends `kind` without waiting for the server (progress, nak).
    pub(super) async fn tell(&self, kind: AckKind) -> Result<(), async_nats::PublishError> {
        self.client.publish(self.reply.clone(), kind.into()).await
    }

    /// One ack the server confirmed. async-nats' `double_ack` takes any reply as
    /// success, but a status reply (503 in the moment JetStream stops before the
    /// connections do, 408, …) or an error body means the ack was not recorded.
    pub(super) async fn ack_once(&self, wait: Duration) -> Result<(), AckError> {
        let request = async_nats::Request::new()
            .payload(AckKind::Ack.into())
            .timeout(Some(wait));
        let reply = self
            .client
            .send_request(self.reply.clone(), request)
            .await?;
        if let Some(status) = reply.status.filter(|s| !s.is_success()) {
            let about = reply.description.unwrap_or_default();
            return Err(AckError::Refused(format!("{} {about}", status.as_u16())));
        }
        if reply.payload.starts_with(b"-ERR") || reply.payload.starts_with(b"{\"error\"") {
            return Err(AckError::Refused(
                String::from_utf8_lossy(&reply.payload).into_owned(),
            ));
        }
        Ok(())
    }

    /// Acks, retrying with backoff while the event is still ours (until `held`,
    /// when the server gives it to another instance anyway).
    pub(super) async fn ack(&self, held: tokio::time::Instant) -> Result<(), AckError> {
        let mut pause = ACK_RETRY;
        loop {
            let left = held.saturating_duration_since(tokio::time::Instant::now());
            let wait = left.clamp(ACK_RETRY, ACK_TIMEOUT);
            match self.ack_once(wait).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + pause >= held => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "ack not confirmed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACK_RETRY_MAX);
                }
            }
        }
    }
}

impl Work {
    pub(super) fn count(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(super) fn track(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(id, delivery);
        metrics.set_bus_pending(running.len() as u64);
        id
    }

    pub(super) fn untrack(&self, id: u64, metrics: &Metrics) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.remove(&id);
        metrics.set_bus_pending(running.len() as u64);
        if running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    pub(super) async fn stopped(&self) {
        loop {
            let stop = self.stop.notified();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            stop.await;
        }
    }

    /// Resolves once nothing runs, or after `limit`; true when nothing runs.
    pub(super) async fn drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// Removes a delivery from the running set however its task ends (finish, abort, panic).
pub(super) struct Untrack {
    pub(super) work: Arc<Work>,
    pub(super) id: u64,
    pub(super) metrics: Arc<Metrics>,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        self.work.untrack(self.id, &self.metrics);
    }
}
