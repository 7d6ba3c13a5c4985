//! `sluice serve`: wires the runtime, the bus, the HTTP routes, the workspace
//! watcher and the schedules together, and shuts them down in order.
//!
//! Shutdown order matters for "nothing lost": first the HTTP server stops
//! taking requests, ends event streams and finishes the requests in flight
//! (cancelling what is left after `http.shutdown_grace_secs`), then the bus
//! stops taking events and finishes (or hands back) the ones it took.

use crate::bus::{Bus, EmbeddedBus};
use crate::config::Settings;
use crate::dsl::Diagnostic;
use crate::http::{router, AppState, Shutdown};
use crate::runtime::{Runtime, Start};
use crate::workspace::{Change, Watcher, Workspace};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often workspace folders and secrets files are checked for edits.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often idle workspaces' full buckets are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);

/// The workspaces on disk, kept in sync with the runtime.
///
/// Each edited workspace loads on the blocking pool, apart from the others and
/// from requests, and is installed as soon as it is ready; a newer edit of the
/// same workspace supersedes a load still running (its result is dropped).
pub struct Library {
    inner: Arc<Shelves>,
}

struct Shelves {
    runtime: Runtime,
    watcher: std::sync::Mutex<Watcher>,
    /// The newest load (or removal) of each workspace; only it may install.
    newest: std::sync::Mutex<HashMap<String, u64>>,
    next: AtomicU64,
    /// One secrets writer per workspace at a time, served in arrival order.
    writers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Library {
    /// A library over the settings' workspaces root and secrets folder.
    pub fn new(runtime: Runtime, settings: &Settings) -> Library {
        Library {
            inner: Arc::new(Shelves {
                runtime,
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

impl Shelves {
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
    fn install(&self, id: &str, generation: u64, loaded: Result<Workspace, Vec<Diagnostic>>) {
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

/// Runs the schedules of every workspace: each tick is claimed on the bus, so
/// with several instances it runs once in the cluster.
pub async fn run_schedules(runtime: Runtime, mut stop: watch::Receiver<bool>) {
    let mut last = Utc::now();
    loop {
        let now = Utc::now();
        let to_next_second = 1_000 - u64::from(now.timestamp_subsec_millis()).min(999);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(to_next_second)) => {}
            _ = stop.changed() => return,
        }
        let now = Utc::now();
        for (ws, slug, expr, at) in due(&runtime, last, now) {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let key = format!("{ws}/{slug}/{expr}/{}", at.timestamp());
                match runtime.bus().claim(key).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(workspace = %ws, slug = %slug, error = %e, "schedule tick not claimed");
                        return;
                    }
                }
                let start = Start::schedule(&ws, &slug, &expr);
                if let Err(e) = runtime.run(start).await {
                    tracing::warn!(workspace = %ws, slug = %slug, error = %e, "scheduled run failed");
                }
            });
        }
        last = now;
    }
}

/// The schedule ticks in `(after, until]`: workspace, slug, cron, tick time.
fn due(
    runtime: &Runtime,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(String, String, String, DateTime<Utc>)> {
    let mut ticks = Vec::new();
    for ws in runtime.workspaces() {
        for a in ws.automations.values().filter(|a| !a.disabled) {
            for (expr, cron) in &a.when.schedules {
                let mut t = after;
                while let Ok(next) = cron.find_next_occurrence(&t, false) {
                    if next > until {
                        break;
                    }
                    ticks.push((ws.id.clone(), a.slug.clone(), expr.clone(), next));
                    t = next;
                }
            }
        }
    }
    ticks
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Connects the bus the settings ask for: NATS when `nats_url` is set, else embedded.
async fn connect_bus(
    settings: &Settings,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Bus>, String> {
    match &settings.nats_url {
        None => Ok(Arc::new(EmbeddedBus::with_settings(&settings.runtime))),
        Some(url) => crate::bus::NatsBus::connect(url, &settings.nats, metrics.clone())
            .await
            .map(|b| Arc::new(b) as Arc<dyn Bus>)
            .map_err(|e| format!("NATS_URL {}: {e}", crate::config::redact_userinfo(url))),
    }
}

/// Runs the server until SIGINT/SIGTERM. Errors are one line for the user.
pub async fn serve(settings: Settings) -> Result<(), String> {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let bus = connect_bus(&settings, &metrics).await?;
    let runtime =
        Runtime::with_metrics(settings.clone(), bus.clone(), metrics).map_err(|e| e.to_string())?;
    let library = Arc::new(Library::new(runtime.clone(), &settings));
    if !settings.workspaces.is_dir() {
        return Err(format!(
            "workspaces folder {} does not exist (SLUICE_WORKSPACES or --workspaces)",
            settings.workspaces.display()
        ));
    }
    library.rescan().await;
    // Only now can an event find its listeners.
    runtime.start_bus();
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (SLUICE_LISTEN or --listen): {e}",
                settings.listen
            )
        })?;
    let ready = Arc::new(AtomicBool::new(true));
    let (stop_tx, stop_rx) = watch::channel(false);

    let watch_library = library.clone();
    let mut watch_stop = stop_rx.clone();
    let watching = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => watch_library.poll().await,
                _ = watch_stop.changed() => return,
            }
        }
    });
    let retain_runtime = runtime.clone();
    let mut retain_stop = stop_rx.clone();
    let retaining = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETAIN_EVERY) => retain_runtime.limiters().retain_recent(),
                _ = retain_stop.changed() => return,
            }
        }
    });
    let scheduling = tokio::spawn(run_schedules(runtime.clone(), stop_rx));

    let state = AppState {
        runtime: runtime.clone(),
        settings: Arc::new(settings.clone()),
        ready: ready.clone(),
        library,
        shutdown: Shutdown::default(),
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| settings.listen.clone());
    tracing::info!(listen = %address, bus = if settings.nats_url.is_some() { "nats" } else { "embedded" }, "sluice is serving");
    let shutdown = state.shutdown.clone();
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        ready.store(false, Ordering::Release);
        tracing::info!("shutting down: finishing requests in flight");
        signalled.begin();
    });
    crate::http::serve(listener, router(state), &settings.http, &shutdown).await;
    shutdown
        .finish(Duration::from_secs(settings.http.shutdown_grace_secs))
        .await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(watching, retaining, scheduling);
    tracing::info!("finishing events in flight");
    bus.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
