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
}

/// Run states by correlation id.
#[derive(Default)]
pub struct RunRegistry {
    runs: Mutex<HashMap<String, (Arc<RunState>, Instant)>>,
}

impl RunRegistry {
    /// The state of `correlation_id`, created when new.
    pub fn get(&self, correlation_id: &str) -> Arc<RunState> {
        let now = Instant::now();
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() > 1024 {
            // Amortised sweep: forget runs nobody has touched for RUN_TTL.
            runs.retain(|_, (state, used)| {
                Arc::strong_count(state) > 1 || now.duration_since(*used) < RUN_TTL
            });
        }
        let entry = runs.entry(correlation_id.to_string()).or_insert_with(|| {
            (
                Arc::new(RunState {
                    correlation_id: correlation_id.to_string(),
                    run: Mutex::default(),
                    user: Mutex::default(),
                    session: Mutex::default(),
                }),
                now,
            )
        });
        entry.1 = now;
        entry.0.clone()
    }
}
