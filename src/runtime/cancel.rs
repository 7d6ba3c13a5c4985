//! `wait` with `cancelTriggers`: the event a waiting automation takes does
//! not start the automations listening to it.
//!
//! A wait registers its cancelling conditions when it starts; the listener
//! dispatch of each event asks the registry first, and the first matching
//! registration takes the event (one wait cancels one event). Registrations
//! end with their wait.

use super::instructions::matches_condition;
use crate::bus::Event;
use crate::value::Map;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Entry {
    id: u64,
    workspace: String,
    conditions: Vec<Map>,
}

/// The waits that cancel the listeners of the event they take.
#[derive(Default)]
pub(super) struct Cancels {
    entries: Mutex<Vec<Entry>>,
    next: AtomicU64,
}

/// Removes its registration when the wait ends.
pub(super) struct Registration {
    cancels: Arc<Cancels>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.remove(self.id);
    }
}

impl Cancels {
    fn remove(&self, id: u64) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.id != id);
    }

    /// Registers a wait's cancelling conditions for `workspace`.
    pub(super) fn register(
        self: &Arc<Self>,
        workspace: &str,
        conditions: Vec<Map>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Entry {
                id,
                workspace: workspace.to_string(),
                conditions,
            });
        Registration {
            cancels: self.clone(),
            id,
        }
    }

    /// Whether a waiting automation takes `event` and cancels its listeners;
    /// that wait's registration is used up.
    pub(super) fn take(&self, event: &Event) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.is_empty() {
            return false;
        }
        let value = event.to_value();
        let found = entries.iter().position(|e| {
            e.workspace == event.workspace
                && e.conditions
                    .iter()
                    .any(|c| matches_condition(c, &event.kind, &value))
        });
        match found {
            Some(i) => {
                entries.remove(i);
                true
            }
            None => false,
        }
    }
}
