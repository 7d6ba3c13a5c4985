//! The workspaces on disk kept in sync with what is installed: loads on the blocking pool,
//! newest edit wins, and one secrets writer per workspace at a time.

use super::{Change, Watcher, Workspace};
use crate::config::Settings;
use crate::dsl::{Compile, Diagnostic};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where loaded workspaces go: the runtime, which serves them.
///
/// A trait so that this module, which the runtime reads workspaces from, does not
/// depend on the runtime in turn.
pub trait Installer<I>: Send + Sync + 'static {
    /// The installed version of workspace `id`.
    fn workspace(&self, id: &str) -> Option<Arc<Workspace<I>>>;
    /// Installs (or replaces) a workspace; returns the problems with its secrets' overrides.
    fn install(&self, ws: Workspace<I>) -> Vec<String>;
    /// Drops workspace `id`.
    fn remove(&self, id: &str);
}

/// The workspaces on disk, kept in sync with the runtime.
///
/// Each edited workspace loads on the blocking pool, apart from the others and
/// from requests, and is installed as soon as it is ready; a newer edit of the
/// same workspace supersedes a load still running (its result is dropped).
pub struct Library<I> {
    inner: Arc<Shelves<I>>,
}

struct Shelves<I> {
    runtime: Box<dyn Installer<I>>,
    watcher: std::sync::Mutex<Watcher>,
    /// The newest load (or removal) of each workspace; only it may install.
    newest: std::sync::Mutex<HashMap<String, u64>>,
    next: AtomicU64,
    /// One secrets writer per workspace at a time, served in arrival order.
    writers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<I: Compile + Send + Sync + 'static> Library<I> {
    /// A library over the settings' workspaces root and secrets folder, installing into `runtime`.
    pub fn new(runtime: impl Installer<I>, settings: &Settings) -> Library<I> {
        Library {
            inner: Arc::new(Shelves {
                runtime: Box::new(runtime),
                watcher: std::sync::Mutex::new(Watcher::new(
                    settings.workspaces.clone(),
                    settings.secrets.clone(),
                    settings.runtime.max_file_bytes,
                )),
                newest: std::sync::Mutex::default(),
                next: AtomicU64::new(0),
                writers: std::sync::Mutex::default(),
            }),
        }
    }

    /// Starts loading new and edited workspaces and drops removed ones, without
    /// waiting for the loads; a workspace that fails to load, or whose new
    /// version has diagnostics where the running one has none, keeps its last
    /// good version and its errors are logged.
    pub async fn poll(&self) {
        self.start(|w| w.scan()).await;
    }

    /// Like [`Library::poll`], and returns once every load it started is over.
    pub async fn rescan(&self) {
        for load in self.start(|w| w.scan()).await {
            let _ = load.await;
        }
    }

    /// Reloads the workspace `id` from disk, changed or not, and returns once
    /// it is installed (or refused).
    pub async fn reload(&self, id: &str) {
        let id = id.to_string();
        for load in self.start(move |w| w.take(&id).into_iter().collect()).await {
            let _ = load.await;
        }
    }

    /// Waits for the right to change the secrets of `id`: one writer per
    /// workspace at a time, in the order they asked (tokio's lock is fair), so
    /// read-modify-write changes never lose one another.
    pub async fn secrets_writer(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .inner
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Scans with `scan` on the blocking pool (it reads folders), then applies
    /// each change: removals at once, loads each on its own blocking task.
    async fn start<F>(&self, scan: F) -> Vec<tokio::task::JoinHandle<()>>
    where
        F: FnOnce(&mut Watcher) -> Vec<Change> + Send + 'static,
    {
        let shelves = self.inner.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let mut watcher = shelves.watcher.lock().unwrap_or_else(|p| p.into_inner());
            scan(&mut watcher)
        })
        .await;
        let changes = scanned.unwrap_or_else(|e| {
            tracing::error!("scanning the workspaces failed: {e}");
            Vec::new()
        });
        let mut loads = Vec::new();
        for change in changes {
            match change {
                Change::Edited(edit) => {
                    let shelves = self.inner.clone();
                    let generation = shelves.claim(&edit.id);
                    loads.push(tokio::task::spawn_blocking(move || {
                        tracing::debug!(workspace = %edit.id, "loading workspace");
                        let loaded = edit.load();
                        shelves.install(&edit.id, generation, loaded);
                    }));
                }
                Change::Removed(id) => self.inner.remove(&id),
            }
        }
        loads
    }
}

impl<I: Compile + Send + Sync + 'static> Shelves<I> {
    fn lock_newest(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new load of `id` the newest one.
    fn claim(&self, id: &str) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock_newest().insert(id.to_string(), generation);
        generation
    }

    /// Removes `id`; a load of it still running will not bring it back, since
    /// the removal claims a generation no load has.
    fn remove(&self, id: &str) {
        self.claim(id);
        self.runtime.remove(id);
        tracing::info!(workspace = %id, "workspace removed");
    }

    /// Installs a finished load unless a newer one was claimed meanwhile.
    fn install(&self, id: &str, generation: u64, loaded: Result<Workspace<I>, Vec<Diagnostic>>) {
        // Held while installing, so an older load can never land after a newer one.
        let newest = self.lock_newest();
        if newest.get(id) != Some(&generation) {
            tracing::debug!(workspace = %id, "superseded load dropped");
            return;
        }
        match loaded {
            Ok(ws) => {
                let count = ws.automations.len();
                // A first load with problems is installed (each fails only where it is
                // reached), but it never replaces a version without any.
                let running = self.runtime.workspace(id);
                if !ws.diagnostics.is_empty() && running.is_some_and(|r| r.diagnostics.is_empty()) {
                    for d in &ws.diagnostics {
                        tracing::error!(workspace = %id, "{d}; keeping the last good version");
                    }
                    return;
                }
                for d in &ws.diagnostics {
                    tracing::warn!(workspace = %id, "{d}");
                }
                for problem in self.runtime.install(ws) {
                    tracing::warn!(workspace = %id, "{problem}; previous limits kept");
                }
                tracing::info!(workspace = %id, automations = count, "workspace loaded");
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(workspace = %id, "{e}; keeping the last good version");
                }
            }
        }
    }
}
