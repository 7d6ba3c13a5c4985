//! Per-workspace event feeds for watchers (`wait`, the SSE stream).
//!
//! Each workspace has its own broadcast channel, created on its first
//! subscriber and dropped with its last, so one workspace's flood can only make
//! its own slow watchers lag. A `wait` does not read a broadcast at all: it
//! registers its filter, and only matching events go into its own one-slot
//! channel, so no flood of any kind can make it miss the event it waits for.

use super::Event;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, mpsc};

/// How many events a slow watcher of one workspace may fall behind before it lags.
pub const WATCH_CAPACITY: usize = 4096;

/// Which events a waiter wants.
pub type EventFilter = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// The watchers of every workspace, shared by a bus and its subscriptions.
#[derive(Default)]
pub(super) struct Feeds {
    workspaces: RwLock<HashMap<String, Feed>>,
    /// Live subscriptions of any kind, so `is_watched` costs one load.
    live: AtomicUsize,
    next: AtomicU64,
}

/// The watchers of one workspace.
#[derive(Default)]
struct Feed {
    stream: Option<broadcast::Sender<Arc<Event>>>,
    waiters: Vec<Waiting>,
}

struct Waiting {
    id: u64,
    filter: EventFilter,
    slot: mpsc::Sender<Arc<Event>>,
}

impl Feed {
    fn is_empty(&self) -> bool {
        self.stream.is_none() && self.waiters.is_empty()
    }
}

impl Feeds {
    /// Whether anyone watches any workspace.
    pub(super) fn is_watched(&self) -> bool {
        self.live.load(Ordering::Relaxed) > 0
    }

    /// Hands `event` to the watchers of its workspace; never blocks.
    pub(super) fn send(&self, event: &Arc<Event>) {
        if !self.is_watched() {
            return;
        }
        let workspaces = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        let Some(feed) = workspaces.get(&event.workspace) else {
            return;
        };
        if let Some(stream) = &feed.stream {
            // Lagging receivers learn it on their next `recv`.
            let _ = stream.send(event.clone());
        }
        for w in &feed.waiters {
            // A full slot already holds the event the waiter will take.
            if (w.filter)(event) {
                let _ = w.slot.try_send(event.clone());
            }
        }
    }

    /// Subscribes to every event of `workspace`.
    pub(super) fn watch(self: &Arc<Self>, workspace: &str) -> Watch {
        let mut workspaces = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        let feed = workspaces.entry(workspace.to_string()).or_default();
        let rx = match &feed.stream {
            Some(stream) => stream.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(WATCH_CAPACITY);
                feed.stream = Some(tx);
                rx
            }
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx,
            feeds: self.clone(),
            workspace: workspace.to_string(),
        }
    }

    /// Registers a waiter for the first event of `workspace` that `filter` accepts.
    pub(super) fn wait_for(self: &Arc<Self>, workspace: &str, filter: EventFilter) -> Waiter {
        let (slot, rx) = mpsc::channel(1);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.workspaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(workspace.to_string())
            .or_default()
            .waiters
            .push(Waiting { id, filter, slot });
        self.live.fetch_add(1, Ordering::Relaxed);
        Waiter {
            rx,
            feeds: self.clone(),
            workspace: workspace.to_string(),
            id,
        }
    }

    /// Removes what `change` leaves of a workspace's feed once nobody watches it.
    fn leave(&self, workspace: &str, change: impl FnOnce(&mut Feed)) {
        let mut workspaces = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = workspaces.get_mut(workspace) {
            change(feed);
            if feed.is_empty() {
                workspaces.remove(workspace);
            }
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscription to one workspace's events; dropping it unsubscribes.
pub struct Watch {
    rx: broadcast::Receiver<Arc<Event>>,
    feeds: Arc<Feeds>,
    workspace: String,
}

impl Watch {
    /// The next event; `Lagged(n)` when this watcher fell `n` events behind.
    pub async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.feeds.leave(&self.workspace, |feed| {
            // Our own receiver is still alive here: one left means only us.
            if feed
                .stream
                .as_ref()
                .is_some_and(|s| s.receiver_count() <= 1)
            {
                feed.stream = None;
            }
        });
    }
}

/// A registered wait for one event; dropping it unregisters.
pub struct Waiter {
    rx: mpsc::Receiver<Arc<Event>>,
    feeds: Arc<Feeds>,
    workspace: String,
    id: u64,
}

impl Waiter {
    /// The first matching event (`None` only if the bus is gone).
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.rx.recv().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let id = self.id;
        self.feeds
            .leave(&self.workspace, |feed| feed.waiters.retain(|w| w.id != id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Map, Value};

    fn event(workspace: &str, kind: &str, n: usize) -> Arc<Event> {
        let mut payload = Map::new();
        payload.insert("n".into(), Value::Number(n as f64));
        Arc::new(Event {
            id: format!("e{n}"),
            workspace: workspace.into(),
            kind: kind.into(),
            payload: Value::object(payload),
            source: Default::default(),
            created_at: String::new(),
        })
    }

    #[tokio::test]
    async fn a_flood_in_one_workspace_does_not_reach_another() {
        let feeds = Arc::new(Feeds::default());
        let mut quiet = feeds.watch("quiet");
        let mut noisy = feeds.watch("noisy");
        for n in 0..WATCH_CAPACITY * 3 {
            feeds.send(&event("noisy", "spam", n));
        }
        feeds.send(&event("quiet", "hello", 0));
        assert_eq!(quiet.recv().await.unwrap().kind, "hello");
        assert!(matches!(
            noisy.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[tokio::test]
    async fn a_waiter_gets_its_event_behind_any_flood() {
        let feeds = Arc::new(Feeds::default());
        let mut waiter =
            feeds.wait_for("ws", Box::new(|e: &Event| e.kind == "done" && e.id == "e7"));
        for n in 0..WATCH_CAPACITY * 3 {
            feeds.send(&event("ws", "spam", n));
            feeds.send(&event("ws", "done", n % 5));
        }
        feeds.send(&event("ws", "done", 7));
        feeds.send(&event("ws", "done", 7));
        assert_eq!(waiter.recv().await.unwrap().id, "e7");
    }

    #[tokio::test]
    async fn feeds_go_with_their_last_subscriber() {
        let feeds = Arc::new(Feeds::default());
        assert!(!feeds.is_watched());
        let a = feeds.watch("ws");
        let b = feeds.watch("ws");
        let w = feeds.wait_for("ws", Box::new(|_: &Event| true));
        assert!(feeds.is_watched());
        drop(a);
        drop(w);
        assert_eq!(feeds.workspaces.read().unwrap().len(), 1);
        drop(b);
        assert!(feeds.workspaces.read().unwrap().is_empty());
        assert!(!feeds.is_watched());
    }
}
