//! The NATS bus: emitted events go through a JetStream stream and a shared durable
//! pull consumer, so that several instances split the work (SPEC section 5).
//!
//! Why this shape:
//! - Every instance pulls from the same durable consumer, so JetStream hands each
//!   event to exactly one instance, and an event is acknowledged only once its
//!   listeners finished: an instance that dies leaves its events unacknowledged,
//!   and after `ack_wait` JetStream redelivers them to another instance. Long runs
//!   send progress reports every third of `ack_wait`, so only a dead instance's
//!   events go back. A redelivered event carries `source.redelivered`.
//! - An ack counts only once the server confirmed it: a status reply (a 503 while
//!   JetStream restarts) is a failed ack, retried while the event is still held.
//! - An instance never asks for more events than it has free slots (`max_inflight`),
//!   so a slow or throttled instance takes less and the others take the rest.
//! - Watchers (`wait`, SSE) are fed from a plain core-NATS subscription to every
//!   event and executed notification of the cluster, so they see other instances'
//!   events too; the feed task hands each event to its workspace's watchers only.
//! - Every event is published with `Nats-Msg-Id` = its id, so a resend (a client
//!   retrying after a 504) within `duplicate_window_secs` is stored once. A
//!   publish returns once handed to the client; its ack comes back in a
//!   [`Receipt`] the execution collects later, so emits are pipelined.
//! - Claims (one run per schedule tick) use the deduplication window of a second
//!   stream: the first publish of a message id is stored, later ones are duplicates.

mod acks;
mod puller;
mod wire;

use acks::{stored_error, Delivery, Work, HANDED_BACK};
use puller::Puller;
use wire::{decode, encode, events_subject, executed_subject};

use super::feeds::Feeds;
use super::{Bus, BusError, Event, EventFilter, EventHandler, Receipt, Waiter, Watch};
use crate::config::NatsSettings;
use crate::metrics::Metrics;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream, AckKind};
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

/// Executed notifications queued for publishing; beyond that they are dropped
/// (they are informational, and a stalled connection must not grow memory).
const NOTIFY_CAPACITY: usize = 4096;
/// How often `settled` asks the server about the consumer.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// The consumer's cap on unacknowledged events across the cluster; each instance
/// bounds its own share with `max_inflight`, so this only has to never bind.
const MAX_ACK_PENDING: i64 = 1_000_000;
/// Longest pause between reconnection attempts: the client's default backs off
/// to 4 s, which would keep an instance away (and unhealthy) for seconds after
/// NATS is back; a refused connection on loopback or a LAN costs little.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);
/// The stream of claims and its deduplication window.
const CLAIMS_STREAM: &str = "SLUICE_CLAIMS";
/// Outside `sluice.<workspace>.…`, so that no workspace name can reach it and it
/// overlaps no subject of the events stream (JetStream refuses overlaps).
const CLAIMS_SUBJECT: &str = "sluice-claims.schedule";
const CLAIMS_WINDOW: Duration = Duration::from_secs(120);
const CLAIMS_MAX_AGE: Duration = Duration::from_secs(300);

/// A failure to reach or set up the broker at `step`.
fn connect(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BusError {
    move |e| BusError::Connect {
        step,
        reason: e.to_string(),
    }
}

/// A publish at `step` the broker refused or that never left.
fn publish(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> BusError {
    move |e| BusError::Publish {
        step,
        reason: e.to_string(),
    }
}

/// The bus of an instance in a NATS cluster.
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: PullConsumer,
    settings: NatsSettings,
    metrics: Arc<Metrics>,
    runtime: Handle,
    feeds: Arc<Feeds>,
    notifier: mpsc::Sender<Event>,
    work: Arc<Work>,
    puller: Mutex<Option<JoinHandle<()>>>,
    background: Vec<AbortHandle>,
}

impl NatsBus {
    /// The connection, for the other users of this NATS (cluster limits).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// Connects to `url` and creates (or updates) the events stream, the shared
    /// consumer and the claims stream.
    pub async fn connect(
        url: &str,
        settings: &NatsSettings,
        metrics: Arc<Metrics>,
    ) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("sluice")
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts).unwrap_or(u32::MAX).min(16);
                Duration::from_millis(1u64 << exp).min(RECONNECT_MAX_DELAY)
            })
            .connect(url)
            .await
            .map_err(|e| connect("connecting to NATS")(&e))?;
        let js = jetstream::new(client.clone());
        let events = js
            .create_or_update_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: vec!["sluice.*.events.>".to_owned()],
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(settings.max_age_secs),
                duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
                ..Default::default()
            })
            .await
            .map_err(|e| connect("creating the events stream")(&e))?;
        let consumer = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(settings.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(settings.ack_wait_secs),
                    max_deliver: settings.max_deliver,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
                events.config.name.as_str(),
            )
            .await
            .map_err(|e| connect("creating the shared consumer")(&e))?;
        js.create_or_update_stream(stream::Config {
            name: CLAIMS_STREAM.to_owned(),
            subjects: vec![CLAIMS_SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            max_age: CLAIMS_MAX_AGE,
            duplicate_window: CLAIMS_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| connect("creating the claims stream")(&e))?;

        let runtime = Handle::current();
        let feeds = Arc::new(Feeds::default());
        let feed = watch_feed(&client, feeds.clone()).await?;
        let (notifier, queue) = mpsc::channel(NOTIFY_CAPACITY);
        let notifications = runtime.spawn(publish_notifications(client.clone(), queue));
        Ok(NatsBus {
            client,
            js,
            consumer,
            settings: settings.clone(),
            metrics,
            runtime: runtime.clone(),
            feeds,
            notifier,
            work: Arc::new(Work {
                slots: Arc::new(Semaphore::new(settings.max_inflight)),
                running: Mutex::default(),
                next: AtomicU64::new(0),
                idle: Notify::new(),
                stopping: AtomicBool::new(false),
                stop: Notify::new(),
            }),
            puller: Mutex::new(None),
            background: vec![
                runtime.spawn(feed).abort_handle(),
                notifications.abort_handle(),
            ],
        })
    }
}

/// Subscribes to every event and notification of the cluster and returns the task
/// that feeds them to this instance's watchers.
async fn watch_feed(
    client: &async_nats::Client,
    feeds: Arc<Feeds>,
) -> Result<impl std::future::Future<Output = ()>, BusError> {
    let events = client
        .subscribe("sluice.*.events.>")
        .await
        .map_err(|e| connect("subscribing to events")(&e))?;
    let executed = client
        .subscribe("sluice.*.executed")
        .await
        .map_err(|e| connect("subscribing to executed events")(&e))?;
    let mut feed = futures::stream::select(events, executed);
    Ok(async move {
        while let Some(message) = feed.next().await {
            // No watcher is fine: the events are still handled by the consumer.
            if !feeds.is_watched() {
                continue;
            }
            match decode(&message.payload) {
                Ok(event) => feeds.send(&Arc::new(event)),
                Err(e) => {
                    tracing::debug!(subject = %message.subject, error = %e, "ignoring a message that is not a sluice event")
                }
            }
        }
    })
}

async fn publish_notifications(client: async_nats::Client, mut queue: mpsc::Receiver<Event>) {
    while let Some(event) = queue.recv().await {
        let payload = match encode(&event) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "executed event not published");
                continue;
            }
        };
        if let Err(e) = client
            .publish(executed_subject(&event.workspace), payload.into())
            .await
        {
            tracing::warn!(error = %e, "executed event not published");
        }
    }
}

impl Bus for NatsBus {
    fn start(&self, handler: Arc<dyn EventHandler>) {
        let mut puller = self.puller.lock().unwrap_or_else(|p| p.into_inner());
        // A second start keeps the first handler: the runtime registers once.
        if puller.is_some() || self.work.stopping.load(Ordering::SeqCst) {
            return;
        }
        let task = Puller {
            client: self.client.clone(),
            consumer: self.consumer.clone(),
            handler,
            work: self.work.clone(),
            metrics: self.metrics.clone(),
            ack_wait: Duration::from_secs(self.settings.ack_wait_secs),
        };
        *puller = Some(self.runtime.spawn(task.run()));
    }

    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Receipt, BusError>> {
        Box::pin(async move {
            let payload = encode(&event)?;
            let ack = self
                .js
                .send_publish(
                    events_subject(&event.workspace, &event.kind),
                    PublishMessage::build()
                        .payload(payload.into())
                        .message_id(event.id.as_str()),
                )
                .await
                .map_err(|e| publish("publishing an event")(&e))?;
            // JetStream does the queueing, so the emitter never waits for room
            // here; the ack comes back while it goes on (publishes on one
            // connection keep their order).
            Ok(Receipt::pending(Box::pin(async move {
                ack.await
                    .map(drop)
                    .map_err(|e| stored_error("storing an event", e))
            })))
        })
    }

    fn notify(&self, event: Event) {
        if let Err(e) = self.notifier.try_send(event) {
            tracing::warn!(error = %e, "executed event dropped: NATS is not keeping up");
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn has_watchers(&self) -> bool {
        // Other instances and their SSE clients may be watching.
        true
    }

    fn watch(&self, workspace: &str) -> Watch {
        self.feeds.watch(workspace)
    }

    fn wait_for(&self, workspace: &str, filter: EventFilter) -> Waiter {
        self.feeds.wait_for(workspace, filter)
    }

    fn settled(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                if self.work.count() == 0 {
                    match self.consumer.get_info().await {
                        Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => return,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "consumer info failed"),
                    }
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
        })
    }

    fn claim(&self, key: String) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            // A header value cannot carry line breaks.
            let id: String = key
                .chars()
                .map(|c| if c.is_control() { '_' } else { c })
                .collect();
            let ack = self
                .js
                .send_publish(CLAIMS_SUBJECT, PublishMessage::build().message_id(id))
                .await
                .map_err(|e| publish("publishing a claim")(&e))?
                .await
                .map_err(|e| stored_error("storing a claim", e))?;
            Ok(!ack.duplicate)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.work.stopping.store(true, Ordering::SeqCst);
            self.work.stop.notify_waiters();
            let puller = self.puller.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(puller) = puller {
                if let Err(e) = puller.await {
                    tracing::warn!(error = %e, "the event consumer ended badly");
                }
            }
            let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
            if !self.work.drained(grace).await {
                let late: Vec<Arc<Delivery>> = self
                    .work
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                tracing::warn!(
                    events = late.len(),
                    "shutdown grace over: handing unfinished events to other instances"
                );
                for delivery in late {
                    // A run that just finished keeps its ack; the others stop here.
                    if delivery.settle(HANDED_BACK) {
                        if let Some(task) = delivery.task.get() {
                            task.abort();
                        }
                        if let Err(e) = delivery.tell(AckKind::Nak(None)).await {
                            tracing::warn!(error = %e, "handing an event back failed");
                        }
                    }
                }
                // Acks of runs that finished just in time are on their way.
                self.work.drained(Duration::from_secs(1)).await;
            }
            if let Err(e) = self.client.flush().await {
                tracing::warn!(error = %e, "flushing NATS at shutdown failed");
            }
        })
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(puller) = self
            .puller
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            puller.abort();
        }
    }
}
