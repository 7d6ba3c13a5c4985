//! The puller: asks the shared durable consumer for no more events than this instance has
//! free slots, runs each with its listeners, reports progress on long runs and acks.

use super::acks::{Delivery, Untrack, Work, FINISHED, RUNNING};
use super::wire::decode;
use crate::bus::{Event, EventHandler};
use crate::metrics::Metrics;
use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures::stream::{SelectAll, Stream, StreamExt};
use futures::FutureExt;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// How long one pull request waits at the server for events. Short enough that a
/// lost request (reconnect) is replaced soon, long enough to cost nothing when idle.
pub(super) const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a failed pull request, so an unreachable server is not hammered.
pub(super) const PULL_RETRY: Duration = Duration::from_millis(200);

/// One pull request's events, each with the slot reserved for it.
pub(super) struct Pull {
    pub(super) batch: pull::Batch,
    pub(super) slots: Option<OwnedSemaphorePermit>,
}

pub(super) type Pulled = (
    Result<jetstream::Message, async_nats::Error>,
    Option<OwnedSemaphorePermit>,
);

impl Stream for Pull {
    type Item = Pulled;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Pulled>> {
        match self.batch.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                let slot = self.slots.as_mut().and_then(|s| s.split(1));
                Poll::Ready(Some((item, slot)))
            }
            Poll::Ready(None) => {
                // Slots the server did not fill go back for the next request.
                self.slots = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the consumer loop needs, shared with every handler task it spawns.
pub(super) struct Puller {
    pub(super) client: async_nats::Client,
    pub(super) consumer: PullConsumer,
    pub(super) handler: Arc<dyn EventHandler>,
    pub(super) work: Arc<Work>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ack_wait: Duration,
}

impl Puller {
    pub(super) async fn run(self) {
        let mut pulls: SelectAll<Pull> = SelectAll::new();
        loop {
            tokio::select! {
                biased;
                _ = self.work.stopped() => break,
                Some((item, slot)) = pulls.next() => self.take(item, slot).await,
                slots = self.work.slots.clone().acquire_owned() => {
                    let Ok(mut slots) = slots else { break };
                    // Ask for every free slot at once: one request instead of many.
                    let free = self.work.slots.available_permits();
                    if free > 0 {
                        if let Ok(more) = self.work.slots.clone().try_acquire_many_owned(free as u32) {
                            slots.merge(more);
                        }
                    }
                    match self
                        .consumer
                        .batch()
                        .max_messages(slots.num_permits())
                        .expires(PULL_EXPIRES)
                        .messages()
                        .await
                    {
                        Ok(batch) => pulls.push(Pull { batch, slots: Some(slots) }),
                        Err(e) => {
                            tracing::warn!(error = %e, "pulling events failed; retrying");
                            drop(slots);
                            tokio::time::sleep(PULL_RETRY).await;
                        }
                    }
                }
            }
        }
        // Events already received but not started go straight back to the cluster,
        // but only once this instance's pull requests are closed: a nak while one is
        // still open can hand the event right back to it, to be lost with it until
        // ack_wait. Closing a pull unsubscribes its inbox (the UNSUB is queued before the
        // naks on the same connection), so the server skips it from then on.
        let mut received = Vec::new();
        for pull in pulls.iter_mut() {
            while let Some(Some((item, _))) = pull.next().now_or_never() {
                received.extend(item.ok());
            }
        }
        drop(pulls);
        for message in received {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "handing an event back failed");
            }
        }
    }

    pub(super) async fn take(
        &self,
        item: Result<jetstream::Message, async_nats::Error>,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let message = match item {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "pull request ended with an error");
                return;
            }
        };
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered > 1 {
            self.metrics.redelivered();
        }
        let Some(slot) = slot else {
            // The server sent more than asked; someone else can run it now.
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "handing an event back failed");
            }
            return;
        };
        let mut event = match decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "dropping an undecodable event");
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "terminating an undecodable event failed");
                }
                return;
            }
        };
        let Some(reply) = message.message.reply else {
            tracing::warn!(subject = %message.message.subject, "dropping an event with no ack subject");
            return;
        };
        // Listeners read `{{source.redelivered}}` to make their side effects
        // idempotent; it is set by this delivery only, never carried over.
        if delivered > 1 {
            // Said in the logs as well, so an operator can match every repeated
            // side effect with a redelivery (after a lost ack, instance or broker).
            tracing::warn!(
                event = %event.id,
                workspace = %event.workspace,
                kind = %event.kind,
                earlier_deliveries = delivered - 1,
                "event redelivered: its listeners may have run before"
            );
            event.source.redelivered = Some(delivered.saturating_sub(1) as u32);
        } else {
            event.source.redelivered = None;
        }
        let delivery = Arc::new(Delivery {
            client: self.client.clone(),
            reply,
            state: AtomicU8::new(RUNNING),
            task: OnceLock::new(),
        });
        let untrack = Untrack {
            id: self.work.track(delivery.clone(), &self.metrics),
            work: self.work.clone(),
            metrics: self.metrics.clone(),
        };
        let handler = self.handler.clone();
        let ack_wait = self.ack_wait;
        let task = {
            let delivery = delivery.clone();
            tokio::spawn(async move {
                let _untrack = untrack;
                let _slot = slot;
                run_and_ack(handler, Arc::new(event), &delivery, ack_wait).await;
            })
        };
        let _ = delivery.task.set(task.abort_handle());
    }
}

/// Runs the listeners, telling the server every third of `ack_wait` that the event
/// is still being worked on so a long run is not redelivered (two reports may be
/// lost before it is), then acknowledges it unless shutdown handed it back.
pub(super) async fn run_and_ack(
    handler: Arc<dyn EventHandler>,
    event: Arc<Event>,
    delivery: &Delivery,
    ack_wait: Duration,
) {
    let progress = ack_wait / 3;
    // Until when the server surely keeps the event ours; counted from now, not from
    // its delivery, so slightly late, which only costs a retry that finds it gone.
    let mut held = tokio::time::Instant::now() + ack_wait;
    let mut work = handler.handle(event.clone());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + progress, progress);
    loop {
        tokio::select! {
            _ = &mut work => break,
            _ = ticks.tick() => {
                match delivery.tell(AckKind::Progress).await {
                    Ok(()) => held = tokio::time::Instant::now() + ack_wait,
                    Err(e) => tracing::debug!(error = %e, "progress report failed"),
                }
            }
        }
    }
    if delivery.settle(FINISHED) {
        if let Err(e) = delivery.ack(held).await {
            // The server redelivers it after ack_wait, with `source.redelivered`.
            tracing::warn!(
                event = %event.id,
                workspace = %event.workspace,
                event_type = %event.kind,
                error = %e,
                "executed, but its ack failed: it may run again"
            );
        }
    }
}
