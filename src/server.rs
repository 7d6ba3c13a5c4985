//! `sluice serve`: wires the runtime, the bus, the HTTP routes, the workspace
//! watcher and the schedules together, and shuts them down in order.
//!
//! Shutdown order matters for "nothing lost": first the HTTP server stops
//! taking requests, ends event streams and finishes the requests in flight
//! (cancelling what is left after `http.shutdown_grace_secs`), then the bus
//! stops taking events and finishes (or hands back) the ones it took.

use crate::bus::{Bus, EmbeddedBus};
use crate::config::Settings;
use crate::http::{router, AppState, Shutdown};
use crate::runtime::{Runtime, Start, Trigger};
use crate::workspace::{Installer, Library, Workspace};
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often workspace folders and secrets files are checked for edits.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often idle workspaces' full buckets are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);

/// The runtime serves what the library loads.
impl Installer for Runtime {
    fn workspace(&self, id: &str) -> Option<Arc<Workspace>> {
        Runtime::workspace(self, id)
    }

    fn install(&self, ws: Workspace) -> Vec<String> {
        Runtime::install(self, ws)
    }

    fn remove(&self, id: &str) {
        Runtime::remove(self, id)
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
                let start = Start {
                    workspace: ws.clone(),
                    slug: slug.clone(),
                    payload: Default::default(),
                    trigger: Trigger::new("schedule", expr.as_str()),
                    correlation_id: None,
                    depth: 0,
                    http: None,
                };
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
