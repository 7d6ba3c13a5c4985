//! The in-process bus: listeners run on this instance, in tokio tasks.
//!
//! Back-pressure, the embedded counterpart of `nats.max_inflight`:
//! - At most `runtime.max_inflight_events` events have their listeners running
//!   at once (one slot each); the others wait in a queue, in arrival order.
//! - The queue holds at most `runtime.event_queue` events; when it is full,
//!   `publish` waits for room and reports how long, so the emitter counts the
//!   wait as throttled time.
//! - Listeners emit too. A listener that waits for room gives its slot back
//!   while it waits (and takes one again before going on), so that slots held by
//!   blocked emitters can never keep the queue from draining: no deadlock.
//!
//! An event id published again while it is among the last [`RECENT_IDS`] ids
//! and younger than [`RECENT_WINDOW`] is dropped, as JetStream's duplicate
//! window does on NATS, so a client retrying `POST /events` with the same ids
//! runs nothing twice.

use super::feeds::Feeds;
use super::{Bus, BusError, Event, EventFilter, EventHandler, Receipt, Waiter, Watch};
use crate::config::RuntimeSettings;
use futures::future::BoxFuture;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Most event ids remembered to drop resends; bounds memory under any rate.
const RECENT_IDS: usize = 100_000;
/// How long an event id is remembered (`nats.duplicate_window_secs`' default).
const RECENT_WINDOW: Duration = Duration::from_secs(120);

tokio::task_local! {
    /// The slot of the listener task running here, so its emits can give it back.
    static SLOT: Arc<Slot>;
}

/// The default bus of a single instance.
pub struct EmbeddedBus {
    handler: OnceLock<Arc<dyn EventHandler>>,
    feeds: Arc<Feeds>,
    shared: Arc<Shared>,
    recent: Mutex<Recent>,
}

/// The ids published lately, oldest first, at most `cap` of them.
struct Recent {
    ids: HashSet<String>,
    order: VecDeque<(Instant, String)>,
    cap: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::with_cap(RECENT_IDS)
    }
}

impl Recent {
    fn with_cap(cap: usize) -> Recent {
        Recent {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Remembers `id`; false when it is already remembered.
    fn first(&mut self, id: &str) -> bool {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if self.order.len() < self.cap && now.duration_since(*at) < RECENT_WINDOW {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back((now, id.to_owned()));
        true
    }

    /// Forgets `id`, whose publish failed, so a retry is not dropped.
    fn forget(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.order.retain(|(_, other)| other != id);
        }
    }
}

/// What the bus shares with its listener tasks.
struct Shared {
    /// One permit per event whose listeners may run at once.
    slots: Arc<Semaphore>,
    /// Free places in `queue`; fair, so waiting emitters get room in order.
    room: Semaphore,
    queue: Mutex<VecDeque<Arc<Event>>>,
    pending: Pending,
}

/// Counts events whose listeners have not finished, so `settled` can wait.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

/// The slot of one listener task. Several branches of it (`all`, listeners
/// of one event) may emit at once: the task gives its permit back while any of
/// them waits for room, and the last one to get room takes a permit again.
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    permit: Option<OwnedSemaphorePermit>,
    blocked: usize,
}

impl Default for EmbeddedBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedBus {
    /// A bus with the default `runtime` settings and no handler yet.
    pub fn new() -> Self {
        Self::with_settings(&crate::config::Settings::default().runtime)
    }

    /// A bus bounded by `runtime.max_inflight_events` and `runtime.event_queue`.
    pub fn with_settings(settings: &RuntimeSettings) -> Self {
        // Zero would stall every event; the settings refuse it, this keeps the bus live.
        let slots = settings.max_inflight_events.max(1);
        let room = settings.event_queue.clamp(1, Semaphore::MAX_PERMITS);
        EmbeddedBus {
            handler: OnceLock::new(),
            feeds: Arc::default(),
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(slots)),
                room: Semaphore::new(room),
                queue: Mutex::default(),
                pending: Pending::default(),
            }),
            recent: Mutex::default(),
        }
    }
}

impl Shared {
    /// Starts queued events while slots are free. Called after every change
    /// that can make one possible (a push, a slot given back), so none is missed.
    fn pump(self: &Arc<Self>, handler: &Arc<dyn EventHandler>) {
        loop {
            // `try_acquire` never takes a permit an awaiting resumer is owed.
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let Some(event) = self.pop() else {
                return;
            };
            let slot = Arc::new(Slot {
                state: Mutex::new(SlotState {
                    permit: Some(permit),
                    blocked: 0,
                }),
            });
            let shared = self.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                SLOT.scope(slot.clone(), handler.handle(event)).await;
                drop(slot.lock().permit.take());
                shared.pending.done();
                shared.pump(&handler);
            });
        }
    }

    fn pop(&self) -> Option<Arc<Event>> {
        let event = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()?;
        self.room.add_permits(1);
        Some(event)
    }

    fn push(&self, event: Arc<Event>) {
        self.pending.count.fetch_add(1, Ordering::SeqCst);
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(event);
    }
}

impl Pending {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A branch of a listener task waiting for room; the task holds no slot while
/// any of its branches does.
struct Blocked {
    slot: Arc<Slot>,
    resumed: bool,
}

impl Blocked {
    fn new(slot: Arc<Slot>, shared: &Arc<Shared>, handler: &Arc<dyn EventHandler>) -> Blocked {
        let given_back = {
            let mut state = slot.lock();
            state.blocked += 1;
            state.permit.take()
        };
        if given_back.is_some() {
            drop(given_back);
            shared.pump(handler);
        }
        Blocked {
            slot,
            resumed: false,
        }
    }

    /// Takes a slot again once no branch of the task waits for room.
    async fn resume(mut self, shared: &Shared) {
        self.resumed = true;
        let last = {
            let mut state = self.slot.lock();
            state.blocked -= 1;
            state.blocked == 0 && state.permit.is_none()
        };
        if !last {
            return;
        }
        // The semaphore is never closed: the bus owns it as long as its tasks run.
        if let Ok(permit) = shared.slots.clone().acquire_owned().await {
            let mut state = self.slot.lock();
            // A concurrent branch may have taken one meanwhile; keep just one.
            if state.permit.is_none() {
                state.permit = Some(permit);
            }
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // A cancelled emit: the branch no longer waits (the task goes on without
        // a slot rather than awaiting one here).
        if !self.resumed {
            self.slot.lock().blocked -= 1;
        }
    }
}

impl EmbeddedBus {
    fn forget(&self, id: &str) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(id);
    }
}

impl Bus for EmbeddedBus {
    fn start(&self, handler: Arc<dyn EventHandler>) {
        // A second start keeps the first handler: the runtime registers once.
        let _ = self.handler.set(handler);
    }

    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Receipt, BusError>> {
        let first = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first(&event.id);
        if !first {
            return Box::pin(async { Ok(Receipt::stored_after(Duration::ZERO)) });
        }
        let event = Arc::new(event);
        self.feeds.send(&event);
        Box::pin(async move {
            let Some(handler) = self.handler.get() else {
                self.forget(&event.id);
                return Err(BusError::Closed);
            };
            let shared = &self.shared;
            let mut waiting = None;
            match shared.room.try_acquire() {
                Ok(room) => room.forget(),
                Err(_) => {
                    let started = tokio::time::Instant::now();
                    let blocked = SLOT
                        .try_with(Arc::clone)
                        .ok()
                        .map(|slot| Blocked::new(slot, shared, handler));
                    // Room is never closed: the bus owns the semaphore.
                    let room = shared.room.acquire().await;
                    let Ok(room) = room else {
                        self.forget(&event.id);
                        return Err(BusError::Closed);
                    };
                    room.forget();
                    waiting = Some((started, blocked));
                }
            }
            shared.push(event);
            shared.pump(handler);
            let Some((started, blocked)) = waiting else {
                return Ok(Receipt::stored_after(Duration::ZERO));
            };
            if let Some(blocked) = blocked {
                blocked.resume(shared).await;
            }
            Ok(Receipt::stored_after(started.elapsed()))
        })
    }

    fn notify(&self, event: Event) {
        self.feeds.send(&Arc::new(event));
    }

    fn connected(&self) -> bool {
        true
    }

    fn has_watchers(&self) -> bool {
        self.feeds.is_watched()
    }

    fn watch(&self, workspace: &str) -> Watch {
        self.feeds.watch(workspace)
    }

    fn wait_for(&self, workspace: &str, filter: EventFilter) -> Waiter {
        self.feeds.wait_for(workspace, filter)
    }

    fn claim(&self, _key: String) -> BoxFuture<'_, Result<bool, BusError>> {
        // A single instance is the whole cluster: every claim is the first.
        Box::pin(async { Ok(true) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.settled()
    }

    fn settled(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let pending = &self.shared.pending;
            loop {
                let idle = pending.idle.notified();
                if pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use std::collections::HashMap;

    fn event(id: String) -> Event {
        Event {
            id,
            workspace: "ws".into(),
            kind: "node".into(),
            payload: Value::empty_object(),
            source: Default::default(),
            created_at: String::new(),
        }
    }

    fn bus(max_inflight_events: usize, event_queue: usize) -> Arc<EmbeddedBus> {
        Arc::new(EmbeddedBus::with_settings(&RuntimeSettings {
            max_inflight_events,
            event_queue,
            ..crate::config::Settings::default().runtime
        }))
    }

    /// Each event `0.1.2` emits `FAN_OUT` children until `DEPTH` levels, as
    /// listeners that emit do; it records how often each ran and how many
    /// ran at once outside their emits.
    #[derive(Default)]
    struct Tree {
        bus: OnceLock<Arc<EmbeddedBus>>,
        runs: Mutex<HashMap<String, usize>>,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    struct Listener(Arc<Tree>);

    const FAN_OUT: usize = 3;
    const DEPTH: usize = 5;

    impl EventHandler for Listener {
        fn handle(&self, e: Arc<Event>) -> BoxFuture<'static, ()> {
            let tree = self.0.clone();
            Box::pin(async move {
                let now = tree.running.fetch_add(1, Ordering::SeqCst) + 1;
                tree.most.fetch_max(now, Ordering::SeqCst);
                *tree.runs.lock().unwrap().entry(e.id.clone()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                tree.running.fetch_sub(1, Ordering::SeqCst);
                if e.id.split('.').count() < DEPTH {
                    let bus = tree.bus.get().unwrap();
                    // Two emitting branches at once, as `all` or two listeners do.
                    let id = e.id.as_str();
                    let branch = |from: usize, to: usize| async move {
                        for i in from..to {
                            bus.publish(event(format!("{id}.{i}"))).await.unwrap();
                        }
                    };
                    futures::join!(branch(0, 1), branch(1, FAN_OUT));
                }
            })
        }
    }

    fn tree(max_inflight_events: usize, event_queue: usize) -> (Arc<EmbeddedBus>, Arc<Tree>) {
        let bus = bus(max_inflight_events, event_queue);
        let tree = Arc::new(Tree::default());
        let _ = tree.bus.set(bus.clone());
        bus.start(Arc::new(Listener(tree.clone())));
        (bus, tree)
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_that_emit_into_a_full_queue_cannot_deadlock() {
        let (bus, tree) = tree(2, 4);
        let all = async {
            bus.publish(event("0".into())).await.unwrap();
            bus.settled().await;
        };
        // Paused time jumps ahead when every task is stuck: a deadlock fails here.
        tokio::time::timeout(Duration::from_secs(3600), all)
            .await
            .expect("the fan-out deadlocked");
        let runs = tree.runs.lock().unwrap();
        let expected: usize = (0..DEPTH).map(|d| FAN_OUT.pow(d as u32)).sum();
        assert_eq!(runs.len(), expected);
        assert!(runs.values().all(|&n| n == 1), "{runs:?}");
        assert!(tree.most.load(Ordering::SeqCst) <= 2);
        assert_eq!(tree.most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_makes_publish_wait_and_say_how_long() {
        let (bus, tree) = tree(1, 1);
        // Stop the tree at once: events with DEPTH levels emit nothing.
        let leaf = |n: usize| event(format!("{n}.1.2.3.4"));
        assert_eq!(bus.publish(leaf(1)).await.unwrap().waited(), Duration::ZERO);
        assert_eq!(bus.publish(leaf(2)).await.unwrap().waited(), Duration::ZERO);
        // 1 runs, 2 fills the queue: 3 waits until 1 finished.
        let waited = bus.publish(leaf(3)).await.unwrap().waited();
        assert_eq!(waited, Duration::from_millis(10));
        bus.settled().await;
        assert_eq!(tree.runs.lock().unwrap().len(), 3);
        assert_eq!(tree.most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_id_published_again_runs_once_until_it_is_forgotten() {
        let (bus, tree) = tree(4, 100);
        let leaf = || event("7.1.2.3.4".into());
        bus.publish(leaf()).await.unwrap();
        bus.publish(leaf()).await.unwrap();
        bus.settled().await;
        assert_eq!(tree.runs.lock().unwrap().get("7.1.2.3.4"), Some(&1));
        tokio::time::advance(RECENT_WINDOW).await;
        bus.publish(leaf()).await.unwrap();
        bus.settled().await;
        assert_eq!(tree.runs.lock().unwrap().get("7.1.2.3.4"), Some(&2));

        let mut recent = Recent::with_cap(10);
        for n in 0..=10 {
            assert!(recent.first(&n.to_string()));
        }
        // The oldest made room for the newest: the bound holds.
        assert_eq!(recent.ids.len(), 10);
        assert!(recent.first("0"));
        assert!(!recent.first("10"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wide_fan_out_never_runs_more_than_the_bound() {
        let (bus, tree) = tree(8, 10_000);
        for n in 0..5_000 {
            bus.publish(event(format!("{n}.1.2.3.4"))).await.unwrap();
        }
        bus.settled().await;
        assert_eq!(tree.runs.lock().unwrap().len(), 5_000);
        assert!(tree.most.load(Ordering::SeqCst) <= 8);
    }
}
