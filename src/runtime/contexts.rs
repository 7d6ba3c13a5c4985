//! The contexts an execution shares with others: `run`, `user` and `session`
//! live as long as a correlation id is in use; `global` lives in the workspace.
//!
//! sluice keeps contexts in memory (DSUL §3.2 allows it): a run's state is
//! shared by the automations it calls and by the listeners of its events, which
//! carry its correlation id, and is dropped a minute after its last use.

use crate::value::Map;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a run's contexts outlive their last execution (the reference: 60 s).
const RUN_TTL: Duration = Duration::from_secs(60);

/// The shared contexts of one correlation id.
#[derive(Debug)]
pub struct RunState {
    /// The correlation id.
    pub correlation_id: String,
    /// `run.*` values written by automations.
    pub run: Mutex<Map>,
    /// `user.*`.
    pub user: Mutex<Map>,
    /// `session.*`.
    pub session: Mutex<Map>,
    /// `socket.*` (websocket-local in the reference; sluice has no websockets,
    /// so it lives with the run like the others).
    pub socket: Mutex<Map>,
}

/// How many new runs between two sweeps of forgotten ones.
const SWEEP_EVERY: usize = 1024;

impl RunState {
    /// Whether no automation wrote to `run`, `user`, `session` or `socket`: such a
    /// state has nothing to share and can go as soon as nobody uses it.
    fn is_empty(&self) -> bool {
        let empty = |m: &Mutex<Map>| m.lock().map(|m| m.is_empty()).unwrap_or(false);
        empty(&self.run) && empty(&self.user) && empty(&self.session) && empty(&self.socket)
    }
}

/// Run states by correlation id.
#[derive(Default)]
pub(super) struct RunRegistry {
    runs: Mutex<Runs>,
}

#[derive(Default)]
struct Runs {
    by_id: HashMap<String, (Arc<RunState>, Instant)>,
    since_sweep: usize,
}

impl RunRegistry {
    /// The state of `correlation_id`, created when new.
    pub(super) fn get(&self, correlation_id: &str) -> Arc<RunState> {
        let now = Instant::now();
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((state, used)) = runs.by_id.get_mut(correlation_id) {
            *used = now;
            return state.clone();
        }
        runs.since_sweep += 1;
        if runs.since_sweep >= SWEEP_EVERY {
            // Amortised sweep: a run in use stays; one that wrote shared state
            // stays RUN_TTL after its last use (its events' listeners may still
            // come); the rest go.
            runs.since_sweep = 0;
            runs.by_id.retain(|_, (state, used)| {
                Arc::strong_count(state) > 1
                    || (now.duration_since(*used) < RUN_TTL && !state.is_empty())
            });
        }
        let state = Arc::new(RunState {
            correlation_id: correlation_id.to_string(),
            run: Mutex::default(),
            user: Mutex::default(),
            session: Mutex::default(),
            socket: Mutex::default(),
        });
        runs.by_id
            .insert(correlation_id.to_string(), (state.clone(), now));
        state
    }

    /// How many runs are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_shared_state_are_forgotten_and_others_kept() {
        let registry = RunRegistry::default();
        let kept = registry.get("writer");
        kept.run
            .lock()
            .unwrap()
            .insert("x".into(), crate::value::Value::Bool(true));
        drop(kept);
        for i in 0..3 * SWEEP_EVERY {
            drop(registry.get(&format!("r{i}")));
        }
        assert!(registry.len() <= SWEEP_EVERY + 1, "{}", registry.len());
        assert!(registry.get("writer").run.lock().unwrap().contains_key("x"));
    }
}
