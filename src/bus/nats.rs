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

use super::feeds::Feeds;
use super::{Bus, BusError, Event, EventFilter, EventHandler, Receipt, Waiter, Watch};
use crate::config::NatsSettings;
use crate::metrics::Metrics;
use crate::value::Value;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream, AckKind};
use futures::future::BoxFuture;
use futures::stream::{SelectAll, Stream, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

/// Executed notifications queued for publishing; beyond that they are dropped
/// (they are informational, and a stalled connection must not grow memory).
const NOTIFY_CAPACITY: usize = 4096;
/// How long one pull request waits at the server for events. Short enough that a
/// lost request (reconnect) is replaced soon, long enough to cost nothing when idle.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a failed pull request, so an unreachable server is not hammered.
const PULL_RETRY: Duration = Duration::from_millis(200);
/// How often `settled` asks the server about the consumer.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// The consumer's cap on unacknowledged events across the cluster; each instance
/// bounds its own share with `max_inflight`, so this only has to never bind.
const MAX_ACK_PENDING: i64 = 1_000_000;
/// How long one ack attempt waits for the server's confirmation.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause after a failed ack; it doubles up to `ACK_RETRY_MAX`.
const ACK_RETRY: Duration = Duration::from_millis(50);
const ACK_RETRY_MAX: Duration = Duration::from_millis(800);
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

/// An event as it travels on NATS: the whole [`Event`] as JSON.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: String,
    workspace: String,
    #[serde(rename = "type")]
    kind: String,
    payload: serde_json::Value,
    source: super::Source,
    #[serde(rename = "createdAt")]
    created_at: String,
}

fn encode(event: &Event) -> Result<Vec<u8>, BusError> {
    let wire = Wire {
        id: event.id.clone(),
        workspace: event.workspace.clone(),
        kind: event.kind.clone(),
        payload: event.payload.to_json(),
        source: event.source.clone(),
        created_at: event.created_at.clone(),
    };
    serde_json::to_vec(&wire).map_err(|e| BusError::Refused(format!("encoding an event: {e}")))
}

fn decode(bytes: &[u8]) -> Result<Event, serde_json::Error> {
    let wire: Wire = serde_json::from_slice(bytes)?;
    Ok(Event {
        id: wire.id,
        workspace: wire.workspace,
        kind: wire.kind,
        payload: Value::from_json(&wire.payload),
        source: wire.source,
        created_at: wire.created_at,
    })
}

/// One subject token: NATS tokens cannot be empty nor hold spaces, `.`, `*` or `>`.
/// The real names travel in the body; the subject only routes.
fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `sluice.<workspace>.events.<type>`, the type's dots kept as subject levels.
fn events_subject(workspace: &str, kind: &str) -> String {
    let kind: Vec<String> = kind.split('.').map(token).collect();
    format!("sluice.{}.events.{}", token(workspace), kind.join("."))
}

fn executed_subject(workspace: &str) -> String {
    format!("sluice.{}.executed", token(workspace))
}

/// Why the server did not confirm an ack.
#[derive(Debug, thiserror::Error)]
enum AckError {
    #[error("{0}")]
    Request(#[from] async_nats::RequestError),
    #[error("the server answered {0}")]
    Refused(String),
}

fn broker(context: &str) -> impl Fn(&dyn std::fmt::Display) -> BusError + '_ {
    move |e| BusError::Refused(format!("{context}: {e}"))
}

/// A failed store ack: without an answer (time out, connection lost) the
/// client may still deliver the buffered publish, so the outcome is unknown.
fn stored_error(e: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::BrokenPipe => BusError::Unknown(format!("storing an event: {e}")),
        _ => BusError::Refused(format!("storing an event: {e}")),
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

/// The events this instance took and has not acknowledged yet.
struct Work {
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<u64, Arc<Delivery>>>,
    next: AtomicU64,
    idle: Notify,
    stopping: AtomicBool,
    stop: Notify,
}

/// One taken event. Its state decides, exactly once, between acknowledging it
/// (the listeners finished) and handing it back (shutdown ran out of time).
struct Delivery {
    client: async_nats::Client,
    /// The message's `$JS.ACK…` subject: acks, progress and naks go there.
    reply: async_nats::Subject,
    state: AtomicU8,
    task: OnceLock<AbortHandle>,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const HANDED_BACK: u8 = 2;

impl Delivery {
    fn settle(&self, to: u8) -> bool {
        self.state
            .compare_exchange(RUNNING, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sends `kind` without waiting for the server (progress, nak).
    async fn tell(&self, kind: AckKind) -> Result<(), async_nats::PublishError> {
        self.client.publish(self.reply.clone(), kind.into()).await
    }

    /// One ack the server confirmed. async-nats' `double_ack` takes any reply as
    /// success, but a status reply (503 in the moment JetStream stops before the
    /// connections do, 408, …) or an error body means the ack was not recorded.
    async fn ack_once(&self, wait: Duration) -> Result<(), AckError> {
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
    async fn ack(&self, held: tokio::time::Instant) -> Result<(), AckError> {
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
    fn count(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn track(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(id, delivery);
        metrics.set_bus_pending(running.len() as u64);
        id
    }

    fn untrack(&self, id: u64, metrics: &Metrics) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.remove(&id);
        metrics.set_bus_pending(running.len() as u64);
        if running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    async fn stopped(&self) {
        loop {
            let stop = self.stop.notified();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            stop.await;
        }
    }

    /// Resolves once nothing runs, or after `limit`; true when nothing runs.
    async fn drained(&self, limit: Duration) -> bool {
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
struct Untrack {
    work: Arc<Work>,
    id: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        self.work.untrack(self.id, &self.metrics);
    }
}

impl NatsBus {
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
            .map_err(|e| broker("connecting to NATS")(&e))?;
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
            .map_err(|e| broker("creating the events stream")(&e))?;
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
            .map_err(|e| broker("creating the shared consumer")(&e))?;
        js.create_or_update_stream(stream::Config {
            name: CLAIMS_STREAM.to_owned(),
            subjects: vec![CLAIMS_SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            max_age: CLAIMS_MAX_AGE,
            duplicate_window: CLAIMS_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| broker("creating the claims stream")(&e))?;

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
        .map_err(|e| broker("subscribing to events")(&e))?;
    let executed = client
        .subscribe("sluice.*.executed")
        .await
        .map_err(|e| broker("subscribing to executed events")(&e))?;
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

/// One pull request's events, each with the slot reserved for it.
struct Pull {
    batch: pull::Batch,
    slots: Option<OwnedSemaphorePermit>,
}

type Pulled = (
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
struct Puller {
    client: async_nats::Client,
    consumer: PullConsumer,
    handler: Arc<dyn EventHandler>,
    work: Arc<Work>,
    metrics: Arc<Metrics>,
    ack_wait: Duration,
}

impl Puller {
    async fn run(self) {
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

    async fn take(
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
async fn run_and_ack(
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
                .map_err(|e| broker("publishing an event")(&e))?;
            // JetStream does the queueing, so the emitter never waits for room
            // here; the ack comes back while it goes on (publishes on one
            // connection keep their order).
            Ok(Receipt::pending(Box::pin(async move {
                ack.await.map(drop).map_err(stored_error)
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
                .map_err(|e| broker("publishing a claim")(&e))?
                .await
                .map_err(|e| broker("storing a claim")(&e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_levels_and_replace_what_nats_refuses() {
        assert_eq!(
            events_subject("ws", "user.created"),
            "sluice.ws.events.user.created"
        );
        assert_eq!(
            events_subject("my.ws", "a b..*>"),
            "sluice.my_ws.events.a_b._.__"
        );
        assert_eq!(events_subject("", ""), "sluice._.events._");
        assert_eq!(executed_subject("w s"), "sluice.w_s.executed");
    }

    #[test]
    fn events_survive_the_wire() {
        let source = crate::bus::Source {
            correlation_id: Some("c1".into()),
            depth: Some(2),
            ..Default::default()
        };
        let event = Event {
            id: "e1".into(),
            workspace: "ws".into(),
            kind: "a b".into(),
            payload: Value::from(serde_json::json!({"n": 1, "l": [true, null]})),
            source,
            created_at: "2026-11-22T15:03:42.056Z".into(),
        };
        let back = decode(&encode(&event).unwrap()).unwrap();
        assert_eq!(back.to_value(), event.to_value());
        assert!(decode(b"{\"id\": 1}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
