//! One execution: its variables (the expression [`Scope`]), the block loop,
//! and the narrow operations instructions run through (writes, events, calls,
//! limiter waits), so no instruction reaches into the engine's state.

use super::budget::{self, Meter};
use super::throttle::{Throttle, Waits};
use super::vars::{delete_in_map, invalid_set, key_str, read_map, set_in_map, set_local, Mode};
use super::{now_iso, ExecError, Execution, Inner, Outcome, Trigger, TriggerKind};
use crate::bus::{Event, EventFilter, Waiter};
use crate::config::Settings;
use crate::dsl::Span;
use crate::expr::{get_path, parse_variable_name, Key, Scope};
use crate::limits::named::{Acquired, Ask, NamedLimits, Permit, Prepared};
use crate::limits::{Budgets, LimitKind, WorkspaceLimits};
use crate::runtime::Instruction;
use crate::value::{Map, Value};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How a block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Ran to its end.
    Continue,
    /// Stopped by `break`; `all` when the callers stop too.
    Break {
        /// `scope: all`.
        all: bool,
    },
}

/// A running automation.
pub(super) struct Exec<'a> {
    rt: &'a Inner,
    x: &'a Execution,
    limits: WorkspaceLimits,
    locals: Mutex<Map>,
    /// `run.depth`: 1 for a triggered automation, +1 per call or event hop.
    depth: u32,
    /// Time spent waiting on limiters, whole and per limit.
    throttled: Throttle,
    /// Instructions run, shared with the automations this one calls.
    meter: Meter,
    /// Known sizes (bytes of JSON) of the variables this execution wrote into,
    /// by root name (`x`, `global.x`), so a write into a big variable need not
    /// measure all of it again.
    sizes: Mutex<HashMap<String, usize>>,
    /// Whether `sizes` holds anything: most executions only replace whole
    /// variables and never need to lock it.
    sized: AtomicBool,
    /// Store answers of this execution's emits, collected when its body ends.
    receipts: super::receipts::Receipts,
}

/// What an execution holds of its automation's `limits:` until it ends: dropping it
/// releases any concurrency slot.
#[expect(dead_code, reason = "held only to be dropped when the execution ends")]
enum Held {
    /// Granted at once on the uncontended path (waits and shadow waits are then zero).
    Permit(Permit),
    /// Taken the whole way, its waits already counted.
    Acquired(Acquired),
}

/// What a finished body leaves for the outcome.
pub(super) struct Finished {
    /// How the body ended.
    pub(super) flow: Flow,
    /// The evaluated `output`.
    pub(super) output: Value,
    /// Instructions counted, callees' included.
    pub(super) instructions: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scope for Exec<'_> {
    fn lookup(&self, path: &[Key]) -> Value {
        let Some((first, rest)) = path.split_first() else {
            return Value::Undefined;
        };
        let name = key_str(first);
        match name.as_ref() {
            "run" => {
                if let Some(Key::Name(k)) = rest.first() {
                    if let Some(v) = self.run_builtin(k) {
                        return get_path(&v, &rest[1..]);
                    }
                }
                if rest.is_empty() {
                    let mut m = lock(&self.x.run.run).clone();
                    for k in [
                        "depth",
                        "correlationId",
                        "automationSlug",
                        "date",
                        "trigger",
                    ] {
                        if let Some(v) = self.run_builtin(k) {
                            m.insert(k.into(), v);
                        }
                    }
                    return Value::object(m);
                }
                read_map(&lock(&self.x.run.run), rest)
            }
            "user" => read_map(&lock(&self.x.run.user), rest),
            "session" => read_map(&lock(&self.x.run.session), rest),
            "socket" => read_map(&lock(&self.x.run.socket), rest),
            "global" => match rest.first().map(key_str).as_deref() {
                Some("workspaceId") => get_path(&Value::str(self.x.ws.id.as_str()), &rest[1..]),
                Some("workspaceName") => get_path(&Value::str(self.x.ws.name.as_str()), &rest[1..]),
                _ => read_map(&lock(&self.x.ws.global), rest),
            },
            "config" => get_path(&self.x.ws.config, rest),
            "secret" => read_map(&self.x.ws.secrets, rest),
            _ => read_map(&lock(&self.locals), path),
        }
    }

    fn budgets(&self) -> &Budgets {
        &self.x.ws.budgets
    }
}

impl<'a> Exec<'a> {
    /// An execution of `x` that has taken its `automations` token.
    pub(super) fn new(
        rt: &'a Inner,
        x: &'a Execution,
        limits: WorkspaceLimits,
        locals: Map,
        throttled: Throttle,
    ) -> Exec<'a> {
        Exec {
            rt,
            x,
            limits,
            locals: Mutex::new(locals),
            depth: x.depth + 1,
            throttled,
            meter: Meter::starting_at(x.instructions),
            sizes: Mutex::default(),
            sized: AtomicBool::new(false),
            receipts: super::receipts::Receipts::default(),
        }
    }

    /// Runs the body, waits for the store answers of its emits, then evaluates
    /// `output` (a caller must not see success for events not stored).
    pub(super) async fn run(&self, body: &'a [Instruction]) -> Result<Finished, ExecError> {
        // Held until the execution ends, however it ends (SPEC section 7).
        let _held = self.hold_limits().await?;
        let flow = self.block(body).await?;
        self.receipts.collect().await?;
        let output = match &self.x.automation.output {
            None => Value::empty_object(),
            Some(node) => node.eval(self)?,
        };
        Ok(Finished {
            flow,
            output,
            instructions: self.meter.count(),
        })
    }

    fn run_builtin(&self, key: &str) -> Option<Value> {
        Some(match key {
            "depth" => Value::Number(self.depth as f64),
            "correlationId" => Value::str(self.x.run.correlation_id.as_str()),
            "automationSlug" => Value::str(self.x.automation.slug.as_str()),
            "date" => Value::str(now_iso()),
            "trigger" => self.x.trigger.to_value(),
            _ => return None,
        })
    }

    /// Locates `e` at `span` of this automation, unless a nested instruction
    /// already did.
    pub(super) fn locate(&self, e: ExecError, span: &Span) -> ExecError {
        e.at(&self.x.automation.slug, span)
    }

    /// Waits for `n` tokens of `kind` and counts the wait as throttling.
    pub(crate) async fn take(&self, kind: LimitKind, n: u32) {
        let waited = self.limits.acquire(kind, n).await;
        self.rt
            .throttled(&self.x.ws.id, kind, waited, &self.throttled);
        self.rt
            .charge_tokens(&self.x.ws.id, &self.x.automation.slug, kind, n);
    }

    /// Charges `credits` to the workspace's quota for this automation.
    pub(crate) fn charge(&self, credits: f64) -> Result<(), ExecError> {
        self.rt
            .charge(&self.x.ws.id, &self.x.automation.slug, credits)
    }

    /// The waits so far: whole, per limit, and the shadow ones (for a failed execution's
    /// executed event).
    pub(super) fn waits(&self) -> (Duration, Waits, Waits) {
        let (by, shadow) = self.throttled.split();
        (self.throttled.total(), by, shadow)
    }

    /// The workspace's named limits.
    pub(crate) fn named(&self) -> Result<&NamedLimits, ExecError> {
        self.x.ws.named.as_ref().ok_or_else(|| {
            ExecError::new(
                super::ErrorKind::Internal,
                format!("workspace `{}` has no named limits installed", self.x.ws.id),
            )
        })
    }

    /// Takes the named limits of `asks` (one canonical order, no deadlock) and counts
    /// their waits as throttling; shadow limits count their would-be waits apart.
    pub(crate) async fn acquire_named(&self, asks: &[Ask]) -> Result<Acquired, ExecError> {
        let named = self.named()?;
        let got = match asks {
            [one] => named.acquire_one(one).await?,
            many => named.acquire(many).await?,
        };
        for (limit, d) in &got.waited {
            self.throttled.waited(limit, *d);
        }
        for (limit, d) in &got.shadow {
            self.throttled.shadow(limit, *d);
        }
        Ok(got)
    }

    /// Takes the automation's own `limits:` before its body runs; what it holds is
    /// released when the returned value drops.
    async fn hold_limits(&self) -> Result<Option<Held>, ExecError> {
        let a = &self.x.automation;
        if let Some(message) = &a.limits_invalid {
            return Err(ExecError::new(
                super::ErrorKind::InvalidInstruction,
                message.clone(),
            ));
        }
        if a.limits.is_empty() {
            return Ok(None);
        }
        let named = self.named()?;
        let constant = a
            .constant_limits
            .get_or_init(|| self.constant_limits(named).map(|asks| named.prepare(asks)));
        if let Some(prepared) = constant {
            if let Some(permit) = named.try_prepared(prepared) {
                return Ok(Some(Held::Permit(permit)));
            }
        }
        // Boxed: the whole way is a large future, which every execution would otherwise
        // carry and move, even one whose limits are taken at once or that has none.
        let got = Box::pin(self.take_limits(named, constant.as_ref())).await?;
        Ok(Some(Held::Acquired(got)))
    }

    /// Takes the automation's `limits:` the whole way: rendered (unless `prepared`), then
    /// waited for or refused.
    async fn take_limits(
        &self,
        named: &NamedLimits,
        prepared: Option<&Prepared>,
    ) -> Result<Acquired, ExecError> {
        let uses = &self.x.automation.limits;
        let first = &uses[0].1;
        if let Some(prepared) = prepared {
            return self
                .acquire_named(prepared.asks())
                .await
                .map_err(|e| self.locate(e, first));
        }
        let render = |(u, span): &(crate::limits::named::Use, Span)| {
            named
                .render(u, self)
                .map_err(|e| self.locate(e.into(), span))
        };
        let held = match &uses[..] {
            // The common case takes its one limit without building a list.
            [one] => {
                self.acquire_named(std::slice::from_ref(&render(one)?))
                    .await
            }
            all => {
                let asks = all.iter().map(render).collect::<Result<Vec<_>, _>>()?;
                self.acquire_named(&asks).await
            }
        };
        held.map_err(|e| self.locate(e, first))
    }

    /// The automation's `limits:` rendered, when none depends on the execution: names of
    /// declared limits without `key` or a templated rate, with constant units and
    /// priority and no lane.
    fn constant_limits(&self, named: &NamedLimits) -> Option<Vec<Ask>> {
        use crate::limits::named::{Number, Target};
        self.x
            .automation
            .limits
            .iter()
            .map(|(u, _)| {
                let Target::Named(name) = &u.target else {
                    return None;
                };
                // The registry holds a workspace's own limits without those taking a
                // shared name, so its own-then-shared lookup finds the shared one.
                let spec = named.spec(name)?;
                let constant = spec.key.is_none()
                    && !spec.rate_is_template()
                    && matches!(u.units, Number::Const(_))
                    && matches!(u.priority, Number::Const(_))
                    && u.lane.is_none();
                constant.then(|| named.render(u, self).ok()).flatten()
            })
            .collect()
    }

    /// Counts one instruction against `max_instructions`; true when the task
    /// should let others run first.
    pub(crate) fn tick(&self) -> Result<bool, ExecError> {
        Ok(self.meter.tick(&self.x.ws.budgets)?)
    }

    /// Runs a list of instructions in order.
    pub(crate) fn block(
        &'a self,
        body: &'a [Instruction],
    ) -> BoxFuture<'a, Result<Flow, ExecError>> {
        Box::pin(async move {
            for i in body {
                // Now and then let the scheduler run other tasks: nothing else would
                // preempt a loop whose limiters never make it wait.
                if self.tick().map_err(|e| self.locate(e, &i.span))? {
                    tokio::task::yield_now().await;
                }
                let flow = i.run(self).await?;
                if flow != Flow::Continue {
                    return Ok(flow);
                }
            }
            Ok(Flow::Continue)
        })
    }

    /// The instance's settings.
    pub(crate) fn settings(&self) -> &Settings {
        &self.rt.settings
    }

    /// The workspace's id.
    pub(crate) fn workspace_id(&self) -> &str {
        &self.x.ws.id
    }

    /// The correlation id of the run.
    pub(crate) fn correlation_id(&self) -> &str {
        &self.x.run.correlation_id
    }

    /// Sets the loop variables `item` and `$index` of a `repeat` iteration.
    pub(crate) fn set_loop_variables(&self, item: Value, index: u64) {
        let mut locals = lock(&self.locals);
        set_local(&mut locals, "item", item);
        set_local(&mut locals, "$index", Value::Number(index as f64));
    }

    /// Ends a `repeat`: `item` goes, `$index` keeps its last value (DSUL §7.4).
    pub(crate) fn end_loop(&self) {
        lock(&self.locals).shift_remove("item");
    }

    /// Stores `value` in the variable `name` (the generic `output`).
    pub(crate) fn replace(&self, name: &str, value: Value) -> Result<(), ExecError> {
        self.write(name, value, Mode::Replace)
    }

    /// Applies `value` at the variable path `name`, in the context its first key names.
    pub(crate) fn write(&self, name: &str, value: Value, mode: Mode) -> Result<(), ExecError> {
        let keys = parse_variable_name(name).map_err(|e| invalid_set(e.to_string()))?;
        self.write_keys(&keys, value, mode)
    }

    /// [`Exec::write`] of a parsed path.
    pub(crate) fn write_keys(
        &self,
        keys: &[Key],
        value: Value,
        mode: Mode,
    ) -> Result<(), ExecError> {
        self.with_root(keys, |context, map, keys| {
            self.check_write(context, map, keys, &value, mode)?;
            set_in_map(map, keys, value, mode, &self.x.ws.budgets)
        })
    }

    /// Refuses, before anything is written, a write that would take the variable
    /// at `keys[0]` of `map` over its budgets (size, depth, string length, entries).
    fn check_write(
        &self,
        context: Option<&str>,
        map: &Map,
        keys: &[Key],
        value: &Value,
        mode: Mode,
    ) -> Result<(), ExecError> {
        // Most writes replace a whole variable with a scalar or a short string:
        // settle those with a compare or two before any walk or lock.
        if keys.len() == 1
            && mode == Mode::Replace
            && !self.sized.load(Ordering::Relaxed)
            && budget::fits_flat(value, &self.x.ws.budgets)
        {
            return Ok(());
        }
        self.check_any_write(context, map, keys, value, mode)
    }

    /// [`Exec::check_write`] for any write: measures the value, and the variable
    /// when the write goes inside it.
    #[inline(never)]
    fn check_any_write(
        &self,
        context: Option<&str>,
        map: &Map,
        keys: &[Key],
        value: &Value,
        mode: Mode,
    ) -> Result<(), ExecError> {
        let budgets = &self.x.ws.budgets;
        let Some((first, rest)) = keys.split_first() else {
            return Ok(());
        };
        // Where the value lands: a pushed value sits one level below its list.
        let depth = rest.len() + usize::from(mode == Mode::Push);
        let added = budget::measure(value, budgets, depth)?;
        let replace_all = rest.is_empty() && mode == Mode::Replace;
        if replace_all {
            budget::check_size(added, budgets)?;
            if !self.sized.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        let root = key_str(first);
        let name = match context {
            Some(c) => std::borrow::Cow::Owned(format!("{c}.{root}")),
            None => root.clone(),
        };
        let mut sizes = lock(&self.sizes);
        if replace_all {
            if let Some(known) = sizes.get_mut(name.as_ref()) {
                *known = added;
            }
            return Ok(());
        }
        let current = map.get(root.as_ref());
        let measured = || current.map_or(0, budget::size_of);
        let known = sizes.get(name.as_ref()).copied();
        let old = known.unwrap_or_else(measured);
        let (freed, extra) = match mode {
            Mode::Replace => (
                current.map_or(0, |v| budget::size_of(&get_path(v, rest))),
                0,
            ),
            Mode::Push => (0, 1),
            Mode::Merge => (0, 0),
        };
        let mut new = old.saturating_sub(freed).saturating_add(added + extra);
        if new > budgets.max_value_bytes && known.is_some() {
            // A known size only grows (merges count what they overwrite, deletes
            // free nothing): measure the variable before refusing the write.
            new = measured()
                .saturating_sub(freed)
                .saturating_add(added + extra);
        }
        budget::check_size(new, budgets)?;
        match sizes.get_mut(name.as_ref()) {
            Some(known) => *known = new,
            None => {
                sizes.insert(name.into_owned(), new);
                self.sized.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Removes the variable (or key inside one) at `keys`.
    pub(crate) fn delete(&self, keys: &[Key]) -> Result<(), ExecError> {
        self.with_root(keys, |_, map, keys| {
            delete_in_map(map, keys);
            Ok(())
        })
    }

    /// Runs `f` on the map that holds the path: a context (path without its
    /// first key) or the locals (whole path).
    /// `f` also gets the context's name (`None` for the locals).
    fn with_root(
        &self,
        keys: &[Key],
        f: impl FnOnce(Option<&str>, &mut Map, &[Key]) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let Some((first, rest)) = keys.split_first() else {
            return Err(invalid_set("empty variable name"));
        };
        let context = match key_str(first).as_ref() {
            "run" => Some(&self.x.run.run),
            "user" => Some(&self.x.run.user),
            "session" => Some(&self.x.run.session),
            "socket" => Some(&self.x.run.socket),
            "global" => Some(&*self.x.ws.global),
            "config" | "secret" => {
                return Err(invalid_set(format!("`{}` is read-only", key_str(first))))
            }
            _ => None,
        };
        match context {
            Some(_) if rest.is_empty() => Err(invalid_set(format!(
                "cannot replace the whole `{}` context; set one of its keys",
                key_str(first)
            ))),
            Some(ctx) => f(Some(&key_str(first)), &mut lock(ctx), rest),
            None => f(None, &mut lock(&self.locals), keys),
        }
    }

    /// Runs the automation `slug` of this workspace with `locals`, counting its
    /// instructions and throttled time as this execution's.
    pub(crate) async fn call(&self, slug: &str, locals: Map) -> Result<Outcome, ExecError> {
        let callee = self.x.ws.automation(slug).cloned().ok_or_else(|| {
            ExecError::new(
                super::ErrorKind::NotFound,
                format!("Automation not found: {slug}"),
            )
        })?;
        let started = self.meter.count();
        let outcome = self
            .rt
            .execute(Execution {
                ws: self.x.ws.clone(),
                automation: callee,
                locals,
                run: self.x.run.clone(),
                depth: self.depth,
                trigger: Trigger::new(TriggerKind::Automation, self.x.automation.slug.as_str()),
                http: None,
                instructions: started,
            })
            .await?;
        self.meter.add_callee(started, outcome.instructions);
        self.throttled.merge(&outcome.throttled_by, &outcome.shadow);
        Ok(outcome)
    }

    /// An event from this execution: its source carries the correlation id and
    /// the depth, so listeners share `run` and emit loops end (DSUL §2).
    pub(crate) fn event(&self, kind: &str, payload: Value) -> Event {
        let source = self.x.source(Some(self.depth));
        self.rt.event(&self.x.ws.id, kind, payload, source)
    }

    /// Publishes `event`; a wait for room on the bus counts as throttled under
    /// `emits`, and its store answer is collected when the body ends.
    pub(crate) async fn publish(&self, event: Event) -> Result<(), ExecError> {
        let receipt = self.rt.publish(event).await?;
        self.rt.throttled(
            &self.x.ws.id,
            LimitKind::Emits,
            receipt.waited(),
            &self.throttled,
        );
        self.receipts.hold(receipt).await
    }

    /// Publishes a native event (no `emits` token, as in the reference).
    pub(crate) async fn native_event(&self, kind: &str, payload: Value) -> Result<(), ExecError> {
        self.publish(self.event(kind, payload)).await
    }

    /// Keeps the events matching `conditions` from starting their listeners
    /// while the returned registration lives (`wait`'s `cancelTriggers`).
    pub(crate) fn cancel_triggers(&self, conditions: Vec<Map>) -> super::cancel::Registration {
        self.rt.cancels.register(&self.x.ws.id, conditions)
    }

    /// The first event of this workspace that `filter` accepts from now on.
    pub(crate) fn wait_for(&self, filter: EventFilter) -> Waiter {
        self.rt.bus.wait_for(&self.x.ws.id, filter)
    }

    /// Sends one HTTP request once fewer than `fetch.max_connections_per_host`
    /// are open to its host (a wait that counts as throttled under `fetchs`).
    pub(crate) async fn http(
        &self,
        method: &reqwest::Method,
        url: &reqwest::Url,
        headers: &reqwest::header::HeaderMap,
        body: Option<Vec<u8>>,
        multipart: Option<Vec<super::fetch::Part>>,
    ) -> Result<super::fetch::Response, ExecError> {
        let max = self.rt.settings.fetch.max_connections_per_host;
        let (host, waited) = self.rt.hosts.open(url, max).await;
        self.rt
            .throttled(&self.x.ws.id, LimitKind::Fetchs, waited, &self.throttled);
        let response = self.rt.send(method, url, headers, body, multipart).await;
        drop(host);
        response
    }
}
