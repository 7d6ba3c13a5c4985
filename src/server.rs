//! `sluice serve`: wires the runtime, the bus, the HTTP routes, the workspace
//! watcher and the schedules together, and shuts them down in order.
//!
//! Shutdown order matters for "nothing lost": first the HTTP server stops
//! taking requests, ends event streams and finishes the requests in flight
//! (cancelling what is left after `http.shutdown_grace_secs`), then the bus
//! stops taking events and finishes (or hands back) the ones it took. Scheduled runs are
//! tracked like requests: stopping waits for them (cancelling them after the same grace).

use crate::bus::{Bus, BusError, EmbeddedBus};
use crate::config::Settings;
use crate::http::{router, AppState, Shutdown};
use crate::limits::cluster::{ClusterError, ClusterLimits};
use crate::limits::named::ClusterEngine;
use crate::runtime::{ExecError, Runtime, Start};
use crate::runtime::{Instruction, Library, Workspace};
use crate::workspace::Installer;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

mod usage;

/// How often workspace folders and secrets files are checked for edits.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often idle workspaces' full buckets are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(60);
/// How often charges are written to the usage store (and, with NATS, read back).
const QUOTA_FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often idle workspaces' band `slow` and the quota metrics are brought up to date.
const QUOTA_SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often idle keys of named limits are forgotten, so memory follows the live keys.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The runtime serves what the library loads.
impl Installer<Instruction> for Runtime {
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

/// Runs the schedules of every workspace until `stop` changes: each tick is claimed on the
/// bus, so with several instances it runs once in the cluster. Returns once the runs it
/// started are over, or cancels those still running `grace` after `stop`.
pub async fn run_schedules(runtime: Runtime, mut stop: watch::Receiver<bool>, grace: Duration) {
    let mut runs = JoinSet::new();
    let mut last = Utc::now();
    loop {
        let now = Utc::now();
        let to_next_second = 1_000 - u64::from(now.timestamp_subsec_millis()).min(999);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(to_next_second)) => {}
            _ = stop.changed() => break,
        }
        let now = Utc::now();
        for (ws, slug, expr, at) in due(&runtime, last, now) {
            runs.spawn(run_tick(runtime.clone(), ws, slug, expr, at));
        }
        while runs.try_join_next().is_some() {}
        last = now;
    }
    let finished = async { while runs.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!(
            running = runs.len(),
            "scheduled runs still running after the grace period are cancelled"
        );
    }
    // Dropping the set aborts what is left.
}

/// One schedule tick: claimed on the bus, then run.
async fn run_tick(runtime: Runtime, ws: String, slug: String, expr: String, at: DateTime<Utc>) {
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

/// Why the server could not start; `Display` is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The NATS server named by `NATS_URL` cannot be used.
    #[error("NATS_URL {url}: {source}")]
    Bus {
        /// The URL, credentials hidden.
        url: String,
        /// Why the connection failed.
        source: BusError,
    },
    /// The runtime could not be built from the settings.
    #[error("{0}")]
    Runtime(ExecError),
    /// The workspaces root is not a folder.
    #[error("workspaces folder {0} does not exist (SLUICE_WORKSPACES or --workspaces)")]
    NoWorkspaces(String),
    /// A cluster-limit setting is out of range.
    #[error("{0}")]
    ClusterLimits(crate::limits::cluster::ClusterError),
    /// The credit usage store cannot be opened.
    #[error("quotas: {0}")]
    Quotas(crate::quota::StoreError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address} (SLUICE_LISTEN or --listen): {source}")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why binding failed.
        source: std::io::Error,
    },
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

/// Connects the bus the settings ask for: NATS when `nats_url` is set, else embedded; with
/// NATS, also its connection, for cluster limits.
async fn connect_bus(
    settings: &Settings,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<(Arc<dyn Bus>, Option<async_nats::Client>), ServeError> {
    match &settings.nats_url {
        None => Ok((
            Arc::new(EmbeddedBus::with_settings(&settings.runtime)),
            None,
        )),
        Some(url) => crate::bus::NatsBus::connect(url, &settings.nats, metrics.clone())
            .await
            .map(|b| {
                let client = b.client();
                (Arc::new(b) as Arc<dyn Bus>, Some(client))
            })
            .map_err(|source| ServeError::Bus {
                url: crate::config::redact_userinfo(url),
                source,
            }),
    }
}

/// Cluster limits over `client` (SPEC section 9), with the named-limit engine as the
/// limiter of the limits this instance comes to own. A NATS that cannot hold them (no
/// JetStream, or older than 2.11) leaves `scope: cluster` limits per instance, loudly.
async fn connect_cluster_limits(
    client: async_nats::Client,
    settings: &Settings,
) -> Result<Option<Arc<ClusterLimits>>, ServeError> {
    let engine = Arc::new(ClusterEngine::new(crate::limits::TimeSource::real()));
    match ClusterLimits::connect(client, &settings.limits.cluster(), engine).await {
        Ok(cluster) => Ok(Some(Arc::new(cluster))),
        Err(e @ ClusterError::Setting(_)) => Err(ServeError::ClusterLimits(e)),
        Err(e) => {
            tracing::error!(error = %e, "cluster limits unavailable: scope: cluster limits hold per instance");
            Ok(None)
        }
    }
}

/// A server ready to serve: its bus connected, its workspaces loaded and its listeners
/// started. [`run`] builds one and serves it; tests build one to reach its runtime.
pub struct Server {
    settings: Settings,
    runtime: Runtime,
    bus: Arc<dyn Bus>,
    library: Arc<Library>,
    cluster_limits: Option<Arc<ClusterLimits>>,
}

impl Server {
    /// Connects the bus and loads every workspace of `settings`.
    pub async fn start(settings: Settings) -> Result<Server, ServeError> {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (bus, nats) = connect_bus(&settings, &metrics).await?;
        let cluster_limits = match nats {
            Some(client) => connect_cluster_limits(client, &settings).await?,
            None => None,
        };
        let runtime = Runtime::with_metrics(settings.clone(), bus.clone(), metrics)
            .map_err(ServeError::Runtime)?;
        if let Some(cluster) = &cluster_limits {
            runtime.attach_cluster(cluster.clone());
        }
        // Before any workspace is installed: installing applies its quota secrets.
        runtime.set_quotas(usage::open(&settings).await?);
        let library = Arc::new(Library::new(runtime.clone(), &settings));
        if !settings.workspaces.is_dir() {
            return Err(ServeError::NoWorkspaces(
                settings.workspaces.display().to_string(),
            ));
        }
        library.rescan().await;
        if let Some(quotas) = runtime.quotas() {
            // Reads the usage kept so far before any work: a restart restricts at once.
            let _ = quotas.flush(Utc::now()).await;
        }
        // Only now can an event find its listeners.
        runtime.start_bus();
        Ok(Server {
            settings,
            runtime,
            bus,
            library,
            cluster_limits,
        })
    }

    /// The cluster limits of this instance, with NATS (attached to the runtime's named
    /// limits, so `scope: cluster` limits hold cluster-wide).
    pub fn cluster_limits(&self) -> Option<&Arc<ClusterLimits>> {
        self.cluster_limits.as_ref()
    }

    /// The runtime this server runs automations on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Serves on `listener` until `shutdown` resolves, then stops in order: requests,
    /// background tasks and scheduled runs, then the bus.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let Server {
            settings,
            runtime,
            bus,
            library,
            cluster_limits,
        } = self;
        let ready = Arc::new(AtomicBool::new(true));
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
        let background = TaskTracker::new();
        let watch_library = library.clone();
        background.spawn(every(WATCH_EVERY, stop_rx.clone(), move || {
            let library = watch_library.clone();
            async move { library.poll().await }
        }));
        let retain_runtime = runtime.clone();
        background.spawn(every(RETAIN_EVERY, stop_rx.clone(), move || {
            retain_runtime.limiters().retain_recent();
            std::future::ready(())
        }));
        let sweep_runtime = runtime.clone();
        background.spawn(every(SWEEP_EVERY, stop_rx.clone(), move || {
            sweep_runtime.sweep_named();
            std::future::ready(())
        }));
        background.spawn(run_schedules(runtime.clone(), stop_rx.clone(), grace));
        let bands = runtime.quotas().map(|quotas| {
            let mut stop = stop_rx.clone();
            let flusher = quotas.clone();
            background.spawn(async move {
                flusher
                    .run_flusher(QUOTA_FLUSH_EVERY, async move {
                        let _ = stop.changed().await;
                    })
                    .await
            });
            let sync = runtime.clone();
            background.spawn(every(QUOTA_SYNC_EVERY, stop_rx.clone(), move || {
                let runtime = sync.clone();
                async move { usage::sync(&runtime).await }
            }));
            usage::forward_bands(runtime.clone(), quotas.subscribe())
        });
        background.close();

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
        let http_shutdown = state.shutdown.clone();
        let signalled = http_shutdown.clone();
        tokio::spawn(async move {
            shutdown.await;
            ready.store(false, Ordering::Release);
            tracing::info!("shutting down: finishing requests in flight");
            signalled.begin();
        });
        crate::http::serve(listener, router(state), &settings.http, &http_shutdown).await;
        http_shutdown.finish(grace).await;
        let _ = stop_tx.send(true);
        background.wait().await;
        // The flusher's last flush may have announced bands: publish them before the bus stops.
        if let Some(bands) = bands {
            bands.finish().await;
        }
        if let Some(cluster) = &cluster_limits {
            // Hands the limits this instance owns to another one at once.
            cluster.shutdown().await;
        }
        tracing::info!("finishing events in flight");
        bus.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Calls `tick` every `period` until `stop` changes.
async fn every<F, T>(period: Duration, mut stop: watch::Receiver<bool>, mut tick: T)
where
    T: FnMut() -> F,
    F: Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => tick().await,
            _ = stop.changed() => return,
        }
    }
}

/// Serves `settings`' workspaces on a bound `listener` until `shutdown` resolves
/// (mini-redis's `server::run`): tests pass a listener on port 0 and their own signal.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Server::start(settings)
        .await?
        .serve(listener, shutdown)
        .await;
    Ok(())
}

/// `sluice serve`: binds `settings.listen` and serves until SIGINT/SIGTERM.
pub async fn serve(settings: Settings) -> Result<(), ServeError> {
    let listener = TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            address: settings.listen.clone(),
            source,
        })?;
    run(listener, settings, shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next event named `kind` within `limit`, or `None`.
    async fn next(events: &mut crate::bus::Watch, kind: &str, limit: Duration) -> Option<()> {
        tokio::time::timeout(limit, async {
            while let Ok(e) = events.recv().await {
                if e.kind == kind {
                    return;
                }
            }
            std::future::pending().await
        })
        .await
        .ok()
    }

    /// Stopping the schedules with `grace`: whether the run in progress emitted `finished`.
    async fn stop_during_a_run(grace: Duration) -> bool {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tick.yml"),
            "slug: tick\nwhen: {schedules: ['* * * * * *']}\ndo:\n  - emit: {event: started}\n  - wait: {timeout: 1}\n  - emit: {event: finished}\n",
        )
        .unwrap();
        let runtime = Runtime::new(Settings::default(), Arc::new(EmbeddedBus::new())).unwrap();
        let ws = crate::workspace::load(dir.path(), None).unwrap();
        let mut events = runtime.bus().watch(&ws.id);
        runtime.install(ws);
        let (stop, stopped) = watch::channel(false);
        let schedules = tokio::spawn(run_schedules(runtime.clone(), stopped, grace));
        let started = next(&mut events, "started", Duration::from_secs(5)).await;
        assert!(started.is_some(), "no scheduled run started");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), schedules)
            .await
            .expect("the schedules did not stop")
            .unwrap();
        // Whatever the run did, it did before `run_schedules` returned.
        next(&mut events, "finished", Duration::from_millis(100))
            .await
            .is_some()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_the_schedules_waits_for_their_runs_within_the_grace() {
        assert!(stop_during_a_run(Duration::from_secs(10)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_past_the_grace_are_cancelled() {
        assert!(!stop_during_a_run(Duration::from_millis(100)).await);
    }
}
