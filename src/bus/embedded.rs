//! The in-process bus: listeners run on this instance, in tokio tasks.

use super::{Bus, BusError, Event, EventHandler};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, Notify};

/// How many events a slow watcher may fall behind before it misses some.
const WATCH_CAPACITY: usize = 4096;

/// The default bus of a single instance.
pub struct EmbeddedBus {
    handler: OnceLock<Arc<dyn EventHandler>>,
    watchers: broadcast::Sender<Arc<Event>>,
    pending: Arc<Pending>,
}

/// Counts events whose listeners have not finished, so `settled` can wait.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

impl Default for EmbeddedBus {
    fn default() -> Self {
        EmbeddedBus {
            handler: OnceLock::new(),
            watchers: broadcast::channel(WATCH_CAPACITY).0,
            pending: Arc::default(),
        }
    }
}

impl EmbeddedBus {
    /// A bus with no handler yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Bus for EmbeddedBus {
    fn start(&self, handler: Arc<dyn EventHandler>) {
        // A second start keeps the first handler: the runtime registers once.
        let _ = self.handler.set(handler);
    }

    fn publish(&self, event: Event) -> BoxFuture<'_, Result<(), BusError>> {
        let event = Arc::new(event);
        let _ = self.watchers.send(event.clone());
        let handler = self.handler.get().cloned();
        let pending = self.pending.clone();
        Box::pin(async move {
            let Some(handler) = handler else {
                return Err(BusError::Closed);
            };
            pending.count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                handler.handle(event).await;
                if pending.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                    pending.idle.notify_waiters();
                }
            });
            Ok(())
        })
    }

    fn notify(&self, event: Event) {
        let _ = self.watchers.send(Arc::new(event));
    }

    fn has_watchers(&self) -> bool {
        self.watchers.receiver_count() > 0
    }

    fn watch(&self) -> broadcast::Receiver<Arc<Event>> {
        self.watchers.subscribe()
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
            loop {
                let idle = self.pending.idle.notified();
                if self.pending.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
    }
}
