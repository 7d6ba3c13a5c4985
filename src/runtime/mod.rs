//! The interpreter: runs compiled automations with their contexts, limits and bus.
//!
//! [`Runtime`] is the shared engine of one instance (workspaces, limiters, bus,
//! HTTP client); an execution is one automation run with its own local
//! variables, sharing the `run`, `user` and `session` contexts with the
//! automations it calls and the listeners of the events it emits.
//!
//! Each instruction of DSUL is one file of `instructions/`: its typed
//! arguments, their checks at load and its execution; `exec` runs blocks of
//! them and offers the few operations they need (writes, events, calls).

mod args;
mod budget;
mod cancel;
mod contexts;
mod error;
mod exec;
mod executed;
mod fetch;
mod instructions;
mod named;
mod quota;
mod receipts;
mod redact;
mod start;
#[cfg(test)]
mod tests;
mod throttle;
mod vars;

pub use contexts::RunState;
pub use error::{ErrorKind, ExecError};
pub use instructions::{Instruction, NAMES as INSTRUCTIONS};

/// A loaded workspace whose automations are compiled into this interpreter's instructions.
pub type Workspace = crate::workspace::Workspace<Instruction>;
/// The workspaces on disk kept in sync with a runtime.
pub type Library = crate::workspace::Library<Instruction>;

/// A compiled automation of this interpreter's instructions.
pub type Automation = crate::dsl::Automation<Instruction>;
pub use executed::error_value;
pub use named::WorkspaceLimitsView;
pub use redact::{RedactedStderr, Redactor};
pub use start::{Outcome, Start, Trigger, TriggerKind};
pub use throttle::{to_millis, Waits};

use crate::bus::{Bus, BusError, Event, EventHandler, Receipt, Source};
use crate::config::Settings;
use crate::limits::named::NamedLimits;
use crate::limits::{LimitKind, Limiters};
use crate::metrics::Metrics;
use crate::value::{Map, Value};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The engine of one instance, cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    workspaces: RwLock<HashMap<String, Arc<Workspace>>>,
    bus: Arc<dyn Bus>,
    limits: Limiters,
    settings: Settings,
    /// Built on the first fetch: loading the system's CA store costs
    /// milliseconds that runs without a fetch should not pay.
    http: OnceLock<fetch::Client>,
    /// Requests open per host, bounded by `fetch.max_connections_per_host`.
    hosts: fetch::Hosts,
    runs: contexts::RunRegistry,
    replica: String,
    recorder: Mutex<Option<Vec<Event>>>,
    ids: AtomicU64,
    metrics: Arc<Metrics>,
    cancels: Arc<cancel::Cancels>,
    /// Credit quotas, when the server set them.
    quotas: OnceLock<quota::QuotaRt>,
    /// Each workspace's named limits; they outlive reloads of its files.
    named: RwLock<HashMap<String, NamedLimits>>,
    /// The operator's `shared_limits`.
    shared: NamedLimits,
}

impl Runtime {
    /// A runtime over `bus`, with limiters from `settings`.
    pub fn new(settings: Settings, bus: Arc<dyn Bus>) -> Result<Runtime, ExecError> {
        let limits = Limiters::new(&settings.limits);
        let rt = Self::build(settings, bus, limits, Arc::default());
        rt.start_bus();
        Ok(rt)
    }

    /// A runtime that records into `metrics` (shared with the bus) and takes no
    /// event until [`Runtime::start_bus`]: a server first installs its
    /// workspaces, or it would take queued events with no listener to run them
    /// and acknowledge them, losing them.
    pub fn with_metrics(
        settings: Settings,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Result<Runtime, ExecError> {
        let limits = Limiters::new(&settings.limits);
        Ok(Self::build(settings, bus, limits, metrics))
    }

    /// Starts taking events from the bus (once; [`Runtime::new`] and
    /// [`Runtime::with_limiters`] start at once).
    pub fn start_bus(&self) {
        self.inner
            .bus
            .start(Arc::new(Listeners(Arc::downgrade(&self.inner))));
    }

    /// A runtime with the given limiters (tests inject a fake clock this way).
    pub fn with_limiters(
        settings: Settings,
        bus: Arc<dyn Bus>,
        limits: Limiters,
    ) -> Result<Runtime, ExecError> {
        let rt = Self::build(settings, bus, limits, Arc::default());
        rt.start_bus();
        Ok(rt)
    }

    fn build(
        settings: Settings,
        bus: Arc<dyn Bus>,
        limits: Limiters,
        metrics: Arc<Metrics>,
    ) -> Runtime {
        let shared = named::shared(&settings, limits.time());
        Runtime {
            inner: Arc::new(Inner {
                workspaces: RwLock::default(),
                bus: bus.clone(),
                limits,
                settings,
                http: OnceLock::new(),
                hosts: fetch::Hosts::default(),
                runs: contexts::RunRegistry::default(),
                replica: format!("{}-{}", hostname(), std::process::id()),
                recorder: Mutex::new(None),
                ids: AtomicU64::new(0),
                metrics,
                cancels: Arc::default(),
                quotas: OnceLock::new(),
                named: RwLock::default(),
                shared,
            }),
        }
    }

    /// Installs or replaces a workspace, applying its limit overrides. On bad
    /// overrides the previous limits stay and the errors are returned for logging.
    pub fn install(&self, mut ws: Workspace) -> Vec<String> {
        let mut map = self
            .inner
            .workspaces
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let old = map.get(&ws.id);
        // Named limits that clash with the shared ones, or uses of undeclared ones,
        // never replace a version without problems (as other diagnostics), and such a
        // version applies none of its overrides either.
        let clashes = self.inner.named_problems(&ws);
        let mut problems: Vec<String> = clashes.iter().map(|d| d.to_string()).collect();
        if !clashes.is_empty() && old.is_some_and(|o| o.diagnostics.is_empty()) {
            return problems;
        }
        if let Err(errors) = self.inner.limits.apply_secrets(&ws.id, &ws.secrets) {
            problems.extend(errors.iter().map(|e| e.to_string()));
        }
        problems.extend(self.inner.apply_quota_secrets(&ws.id, &ws.secrets));
        ws.diagnostics.extend(clashes);
        self.inner.install_named(&mut ws);
        ws.budgets = match self
            .inner
            .settings
            .budgets
            .with_secrets(&ws.id, &ws.secrets)
        {
            Ok(budgets) => budgets,
            Err(errors) => {
                problems.extend(errors.iter().map(|e| e.to_string()));
                old.map_or(self.inner.settings.budgets, |old| old.budgets)
            }
        };
        let ws = match old {
            // The `global` context outlives reloads of the workspace's files.
            Some(old) => Workspace {
                global: old.global.clone(),
                ..ws
            },
            None => ws,
        };
        redact::log_secrets(&ws.id, Some(&ws.redactor));
        map.insert(ws.id.clone(), Arc::new(ws));
        problems
    }

    /// Removes a workspace (its folder is gone).
    pub fn remove(&self, id: &str) {
        self.inner
            .workspaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.inner.remove_quota(id);
        self.inner.remove_named(id);
        redact::log_secrets(id, None);
    }

    /// Every loaded workspace.
    pub fn workspaces(&self) -> Vec<Arc<Workspace>> {
        self.inner
            .workspaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The workspace with this id.
    pub fn workspace(&self, id: &str) -> Option<Arc<Workspace>> {
        self.inner
            .workspaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The instance's limiters.
    pub fn limiters(&self) -> &Limiters {
        &self.inner.limits
    }

    /// The instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// Starts recording every emitted event (for `sluice run --report`).
    pub fn record_emits(&self) {
        *self
            .inner
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The events recorded since `record_emits`, in emission order.
    pub fn take_recorded(&self) -> Vec<Event> {
        self.inner
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// Runs one automation to completion and returns its outcome.
    pub async fn run(&self, start: Start) -> Result<Outcome, ExecError> {
        let ws = self.workspace(&start.workspace).ok_or_else(|| {
            ExecError::new(
                ErrorKind::NotFound,
                format!("Workspace not found: {}", start.workspace),
            )
        })?;
        let automation = ws.automation(&start.slug).cloned().ok_or_else(|| {
            ExecError::new(
                ErrorKind::NotFound,
                format!("Automation not found: {}", start.slug),
            )
        })?;
        self.run_resolved(ws, automation, start).await
    }

    /// [`Runtime::run`] of an automation its caller already found (a webhook
    /// resolves its endpoint's automations): the names in `start` are not
    /// looked up again.
    pub async fn run_resolved(
        &self,
        ws: Arc<Workspace>,
        automation: Arc<Automation>,
        start: Start,
    ) -> Result<Outcome, ExecError> {
        let correlation_id = start.correlation_id.unwrap_or_else(|| self.inner.new_id());
        let run = self.inner.runs.get(&correlation_id);
        self.inner
            .execute(Execution {
                ws,
                automation,
                locals: start.payload,
                run,
                depth: start.depth,
                trigger: start.trigger,
                http: start.http,
                instructions: 0,
            })
            .await
    }

    /// Publishes an event into a workspace as if an automation had emitted it.
    pub async fn emit_external(
        &self,
        workspace: &str,
        kind: &str,
        payload: Value,
    ) -> Result<(), ExecError> {
        self.publish_external(workspace, self.new_event_id(), kind, payload)
            .await
            .map_err(|e| ExecError::new(ErrorKind::Internal, e.to_string()))
    }

    /// A fresh event id, for clients that name their events before publishing.
    pub fn new_event_id(&self) -> String {
        self.inner.new_id()
    }

    /// Publishes an event from outside with the id `id`; publishing an id again
    /// within the bus's duplicate window stores nothing new (safe retries).
    pub async fn publish_external(
        &self,
        workspace: &str,
        id: String,
        kind: &str,
        payload: Value,
    ) -> Result<(), BusError> {
        let source = Source {
            correlation_id: Some(self.inner.new_id()),
            workspace_id: Some(workspace.to_string()),
            ..Source::default()
        };
        let mut event = self.inner.event(workspace, kind, payload, source);
        event.id = id;
        self.inner.record(&event);
        self.inner.bus.publish(event).await?.stored().await
    }
}

/// Everything one execution needs to start.
struct Execution {
    ws: Arc<Workspace>,
    automation: Arc<Automation>,
    locals: Map,
    run: Arc<RunState>,
    depth: u32,
    trigger: Trigger,
    http: Option<(String, String)>,
    /// Instructions already counted: 0 for a triggered execution, the caller's count for a call.
    instructions: u64,
}

impl Execution {
    /// The source of events this execution sends, at call depth `depth`.
    fn source(&self, depth: Option<u32>) -> Source {
        Source {
            correlation_id: Some(self.run.correlation_id.clone()),
            workspace_id: Some(self.ws.id.clone()),
            automation_slug: Some(self.automation.slug.clone()),
            depth,
            ..Source::default()
        }
    }
}

impl Inner {
    fn http(&self) -> Result<&fetch::Client, ExecError> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let client = fetch::Client::new(&self.settings)?;
        Ok(self.http.get_or_init(|| client))
    }

    fn new_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", rand::random::<u32>(), n as u32)
    }

    fn event(&self, workspace: &str, kind: &str, payload: Value, source: Source) -> Event {
        Event {
            id: self.new_id(),
            workspace: workspace.to_string(),
            kind: kind.to_string(),
            payload,
            source,
            created_at: now_iso(),
        }
    }

    fn record(&self, event: &Event) {
        if let Some(rec) = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            rec.push(event.clone());
        }
    }

    /// Publishes `event`; its receipt says how long the bus made it wait for
    /// room, and brings its store answer.
    async fn publish(&self, event: Event) -> Result<Receipt, ExecError> {
        self.record(&event);
        self.bus
            .publish(event)
            .await
            .map_err(|e| ExecError::new(ErrorKind::Internal, e.to_string()))
    }

    /// The full execution model of DSUL §2: arguments, depth, limits, body,
    /// output, executed event.
    fn execute(&self, x: Execution) -> BoxFuture<'_, Result<Outcome, ExecError>> {
        let span = tracing::info_span!(
            "execution",
            workspace = %x.ws.id,
            slug = %x.automation.slug,
            correlation_id = %x.run.correlation_id,
        );
        Box::pin(
            async move {
                let started = Instant::now();
                let (ws, slug) = (x.ws.clone(), x.automation.clone());
                let result = self.execute_inner(x).await;
                let elapsed = result
                    .as_ref()
                    .map(|o| o.duration)
                    .unwrap_or_else(|_| started.elapsed());
                self.metrics
                    .execution(&ws.id, &slug.slug, elapsed, result.is_err());
                if let Some(budget) = result.as_ref().err().and_then(|e| e.budget) {
                    self.metrics.budget_exceeded(&ws.id, budget);
                }
                result
            }
            .instrument(span),
        )
    }

    /// Counts a limiter wait in the execution's throttled time and the metrics.
    fn throttled(&self, ws: &str, kind: LimitKind, waited: Duration, total: &throttle::Throttle) {
        if waited.is_zero() {
            return;
        }
        total.waited(kind.as_str(), waited);
        self.metrics.throttled(ws, kind.as_str(), waited);
        self.limits.record_wait(ws, kind, waited);
    }

    async fn execute_inner(&self, mut x: Execution) -> Result<Outcome, ExecError> {
        let started = Instant::now();
        let simulated = self.limits.simulated();
        // Executed events cost a timestamp and a copy of the payload: build them
        // only when someone can see them.
        let started_at = self.bus.has_watchers().then(now_iso);
        if x.automation.validate_arguments {
            args::validate(x.automation.arguments.as_ref(), &x.locals)?;
        }
        if x.depth > self.settings.runtime.max_call_depth {
            return Err(ExecError::new(
                ErrorKind::TooManyCalls,
                "Reached maximum number of nested calls",
            ));
        }
        let (gate, limits) = self.quota_gate(&x)?;
        let throttled = throttle::Throttle::default();
        let waited = limits.acquire(LimitKind::Automations, 1).await;
        self.throttled(&x.ws.id, LimitKind::Automations, waited, &throttled);
        let trigger_payload = started_at.as_ref().map(|_| {
            let secret_args = redact::secret_arguments(x.automation.arguments.as_ref());
            let headers = x
                .http
                .as_ref()
                .map(|_| &self.settings.http.event_headers[..]);
            redact::trigger_payload(&x.locals, &secret_args, headers)
        });
        let locals = std::mem::take(&mut x.locals);
        // A local that the body borrows: the execution's state is large, and
        // moving it into a future would copy it on every run.
        let exec = exec::Exec::new(self, &x, limits, locals, throttled);
        // A restricted class without a fallback is refused like a limit refuses.
        let result = match quota::body(&exec, &x, &gate) {
            Ok(body) => exec.run(body).await,
            Err(e) => Err(e),
        };
        let (throttled, throttled_by, shadow) = exec.waits();
        let outcome = Outcome {
            output: Value::Null,
            broke: false,
            stop_callers: false,
            throttled,
            throttled_by,
            shadow,
            // Waits on a test's simulated clock count as if they had been real.
            duration: started.elapsed() + (self.limits.simulated() - simulated),
            instructions: 0,
        };
        let outcome = match result {
            Ok(done) => Outcome {
                output: done.output,
                broke: done.flow != exec::Flow::Continue,
                stop_callers: done.flow == exec::Flow::Break { all: true },
                instructions: done.instructions,
                ..outcome
            },
            Err(e) => {
                // A refusal (a named limit's or a quota's) is reported like a run
                // (SPEC section 5): who refused and what the execution had waited until then.
                if let (Some(payload), Some(started_at), Some(_)) =
                    (trigger_payload, started_at, e.kind.code())
                {
                    self.executed(&x, &outcome, payload, started_at, Some(&e));
                }
                return Err(e);
            }
        };
        if let (Some(payload), Some(started_at)) = (trigger_payload, started_at) {
            self.executed(&x, &outcome, payload, started_at, None);
        }
        Ok(outcome)
    }
}

/// Runs the listeners of events for the bus.
struct Listeners(std::sync::Weak<Inner>);

impl EventHandler for Listeners {
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, ()> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let Some(inner) = inner else { return };
            let Some(ws) = inner
                .workspaces
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&event.workspace)
                .cloned()
            else {
                return;
            };
            let Some(listeners) = ws.listeners.get(&event.kind) else {
                return;
            };
            if inner.cancels.take(&event) {
                return;
            }
            let runs = listeners.iter().map(|automation| {
                let mut locals = Map::with_capacity(3);
                locals.insert("payload".into(), event.payload.clone());
                locals.insert("id".into(), Value::str(event.id.as_str()));
                locals.insert("source".into(), event.source.to_value());
                let correlation_id = event
                    .source
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| inner.new_id());
                let x = Execution {
                    ws: ws.clone(),
                    automation: automation.clone(),
                    locals,
                    run: inner.runs.get(&correlation_id),
                    depth: event.source.depth.unwrap_or(0),
                    trigger: Trigger {
                        kind: TriggerKind::Event,
                        value: event.kind.clone(),
                        event_id: Some(event.id.clone()),
                        caller_gone: None,
                    },
                    http: None,
                    instructions: 0,
                };
                let inner = &inner;
                let event = &event;
                async move {
                    if let Err(e) = inner.execute(x).await {
                        // A failing listener never affects the emitter (DSUL §7.7).
                        tracing::warn!(workspace = %event.workspace, event = %event.kind, error = %e, "listener failed");
                    }
                }
            });
            futures::future::join_all(runs).await;
        })
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

/// The current time as ISO 8601 with milliseconds (`2026-11-22T15:03:42.056Z`).
pub fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
