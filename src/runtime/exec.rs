//! One execution: its variables (the expression [`Scope`]) and its instructions.

use super::budget::{self, Meter};
use super::{now_iso, ErrorKind, ExecError, Execution, Inner, RunState, Trigger};
use crate::dsl::{Automation, Instruction, Kind, Node, VarName};
use crate::expr::{get_path, loose_eq, parse_variable_name, Key, Scope};
use crate::limits::{BudgetExceeded, Budgets, LimitKind, WorkspaceLimits};
use crate::value::{Map, Value};
use crate::workspace::Workspace;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Ran to its end.
    Continue,
    /// Stopped by `break`; `all` when the callers stop too.
    Break {
        /// `scope: all`.
        all: bool,
    },
}

/// A running automation.
pub struct Exec<'a> {
    pub rt: &'a Inner,
    pub ws: &'a Arc<Workspace>,
    pub automation: &'a Arc<Automation>,
    pub run: &'a Arc<RunState>,
    pub limits: WorkspaceLimits,
    pub locals: Mutex<Map>,
    /// `run.depth`: 1 for a triggered automation, +1 per call or event hop.
    pub depth: u32,
    pub trigger: &'a Trigger,
    /// Nanoseconds spent waiting on limiters.
    pub throttled: AtomicU64,
    /// Instructions run, shared with the automations this one calls.
    pub meter: Meter,
    /// Known sizes (bytes of JSON) of the variables this execution wrote into,
    /// by root name (`x`, `global.x`), so a write into a big variable need not
    /// measure all of it again.
    pub sizes: Mutex<HashMap<String, usize>>,
    /// Whether `sizes` holds anything: most executions only replace whole
    /// variables and never need to lock it.
    pub sized: AtomicBool,
    /// Store answers of this execution's emits, collected when its body ends.
    pub receipts: super::receipts::Receipts,
}

/// An instruction's values after interpolation (DSUL §2.4): computed before it
/// runs, and for `all` before any of its branches runs.
enum Resolved {
    Nothing,
    Set {
        /// The name, for names only known at run time.
        name: Option<Value>,
        value: Value,
        kind: Value,
    },
    Delete(Value),
    Repeat {
        on: Value,
        until: Value,
    },
    Break(Value),
    Args(Value),
}

/// `set` modes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replace,
    Merge,
    Push,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_str(k: &Key) -> std::borrow::Cow<'_, str> {
    match k {
        Key::Name(n) => std::borrow::Cow::Borrowed(n),
        Key::Index(i) => std::borrow::Cow::Owned(i.to_string()),
    }
}

/// Reads `rest` inside a context map (`rest` empty: the whole map).
fn read_map(map: &Map, rest: &[Key]) -> Value {
    match rest.split_first() {
        None => Value::object(map.clone()),
        Some((first, tail)) => match map.get(key_str(first).as_ref()) {
            Some(v) => get_path(v, tail),
            None => Value::Undefined,
        },
    }
}

fn invalid_set(message: impl Into<String>) -> ExecError {
    ExecError::new(
        ErrorKind::InvalidInstruction,
        format!("Invalid set instruction: {}", message.into()),
    )
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
                    let mut m = lock(&self.run.run).clone();
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
                read_map(&lock(&self.run.run), rest)
            }
            "user" => read_map(&lock(&self.run.user), rest),
            "session" => read_map(&lock(&self.run.session), rest),
            "socket" => read_map(&lock(&self.run.socket), rest),
            "global" => match rest.first().map(key_str).as_deref() {
                Some("workspaceId") => get_path(&Value::str(self.ws.id.as_str()), &rest[1..]),
                Some("workspaceName") => get_path(&Value::str(self.ws.name.as_str()), &rest[1..]),
                _ => read_map(&lock(&self.ws.global), rest),
            },
            "config" => get_path(&self.ws.config, rest),
            "secret" => read_map(&self.ws.secrets, rest),
            _ => read_map(&lock(&self.locals), path),
        }
    }

    fn budgets(&self) -> &Budgets {
        &self.ws.budgets
    }
}

impl<'a> Exec<'a> {
    fn run_builtin(&self, key: &str) -> Option<Value> {
        Some(match key {
            "depth" => Value::Number(self.depth as f64),
            "correlationId" => Value::str(self.run.correlation_id.as_str()),
            "automationSlug" => Value::str(self.automation.slug.as_str()),
            "date" => Value::str(now_iso()),
            "trigger" => self.trigger.to_value(),
            _ => return None,
        })
    }

    /// `automation `slug` (file.yml:line)`: the file by its name in the workspace
    /// folder, since the message reaches webhook callers, who have no business
    /// knowing where the server keeps its files.
    fn location(&self, i: &Instruction) -> String {
        let file = &self.automation.file;
        format!(
            "automation `{}` ({}:{})",
            self.automation.slug,
            file.file_name()
                .unwrap_or(file.as_os_str())
                .to_string_lossy(),
            i.line
        )
    }

    /// Waits for `n` tokens of `kind` and counts the wait as throttling.
    pub async fn take(&self, kind: LimitKind, n: u32) {
        let waited = self.limits.acquire(kind, n).await;
        self.rt
            .throttled(&self.ws.id, kind, waited, &self.throttled);
    }

    fn add_throttled(&self, d: Duration) {
        self.throttled
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The automation's `output`, evaluated now (`{}` when it has none).
    pub fn output(&self) -> Result<Value, ExecError> {
        match &self.automation.output {
            None => Ok(Value::empty_object()),
            Some(node) => Ok(node.eval(self)?),
        }
    }

    /// Runs a list of instructions in order.
    pub fn block(&'a self, body: &'a [Instruction]) -> BoxFuture<'a, Result<Flow, ExecError>> {
        Box::pin(async move {
            for i in body {
                // Now and then let the scheduler run other tasks: nothing else would
                // preempt a loop whose limiters never make it wait.
                let turn = self.meter.tick(&self.ws.budgets);
                if turn.map_err(|e| ExecError::from(e).at(|| self.location(i)))? {
                    tokio::task::yield_now().await;
                }
                let flow = self
                    .instruction(i)
                    .await
                    .map_err(|e| e.at(|| self.location(i)))?;
                if flow != Flow::Continue {
                    return Ok(flow);
                }
            }
            Ok(Flow::Continue)
        })
    }

    async fn instruction(&'a self, i: &'a Instruction) -> Result<Flow, ExecError> {
        let resolved = self.resolve(&i.kind)?;
        self.perform(&i.kind, resolved).await
    }

    fn eval(&self, node: &Option<Node>) -> Result<Value, ExecError> {
        Ok(match node {
            Some(n) => n.eval(self)?,
            None => Value::Undefined,
        })
    }

    fn resolve(&self, kind: &Kind) -> Result<Resolved, ExecError> {
        Ok(match kind {
            Kind::Set { name, value, kind } => Resolved::Set {
                name: match name {
                    VarName::Static { .. } => None,
                    VarName::Dynamic(n) => Some(n.eval(self)?),
                },
                value: value.eval(self)?,
                kind: match kind {
                    Some(k) => k.eval(self)?,
                    None => Value::Undefined,
                },
            },
            Kind::Delete { name } => Resolved::Delete(name.eval(self)?),
            Kind::Repeat { on, until, .. } => Resolved::Repeat {
                on: self.eval(on)?,
                until: self.eval(until)?,
            },
            Kind::Break { scope } => Resolved::Break(scope.eval(self)?),
            Kind::Emit(n) | Kind::Wait(n) | Kind::Fetch(n) | Kind::Call { args: n, .. } => {
                Resolved::Args(n.eval(self)?)
            }
            Kind::Conditions { .. } | Kind::All(_) | Kind::Comment | Kind::Invalid(_) => {
                Resolved::Nothing
            }
        })
    }

    fn perform(
        &'a self,
        kind: &'a Kind,
        resolved: Resolved,
    ) -> BoxFuture<'a, Result<Flow, ExecError>> {
        Box::pin(async move {
            match (kind, resolved) {
                (Kind::Set { name: var, .. }, Resolved::Set { name, value, kind }) => {
                    let mode = set_mode(&kind)?;
                    match (var, name) {
                        (VarName::Static { keys, push }, _) => {
                            let mode = if *push { Mode::Push } else { mode };
                            self.write_keys(keys, value.deep_copy(), mode)?;
                        }
                        (VarName::Dynamic(_), name) => {
                            self.set(&name.unwrap_or_default(), value, mode)?
                        }
                    }
                }
                (Kind::Delete { .. }, Resolved::Delete(name)) => self.delete(&name)?,
                (Kind::Conditions { branches, default }, _) => {
                    for (expr, body) in branches {
                        let expr = expr.as_ref().map_err(|e| ExecError::from(e.clone()))?;
                        if expr.eval(self)?.truthy() {
                            return self.block(body).await;
                        }
                    }
                    if let Some(body) = default {
                        return self.block(body).await;
                    }
                }
                (Kind::Repeat { body, .. }, Resolved::Repeat { on, until }) => {
                    return self.repeat(on, until, body).await;
                }
                (Kind::All(list), _) => return self.all(list).await,
                (Kind::Break { .. }, Resolved::Break(scope)) => {
                    return Ok(Flow::Break {
                        all: scope.as_str() == Some("all"),
                    });
                }
                (Kind::Comment, _) => {}
                (Kind::Emit(_), Resolved::Args(args)) => {
                    let event = self.emit(&args).await?;
                    self.store_output(&args, event)?;
                }
                (Kind::Wait(_), Resolved::Args(args)) => {
                    let event = self.wait(&args).await?;
                    self.store_output(&args, event)?;
                }
                (Kind::Fetch(_), Resolved::Args(args)) => {
                    let response = self.fetch(&args).await?;
                    self.store_output(&args, response)?;
                }
                (Kind::Call { slug, .. }, Resolved::Args(args)) => {
                    return self.call(slug, args).await;
                }
                (Kind::Invalid(message), _) => {
                    return Err(ExecError::new(
                        ErrorKind::InvalidInstruction,
                        message.clone(),
                    ))
                }
                _ => {
                    return Err(ExecError::new(
                        ErrorKind::Internal,
                        "instruction resolved to the wrong shape",
                    ))
                }
            }
            Ok(Flow::Continue)
        })
    }

    /// The generic `output:` of emit, wait, fetch and calls: a defined result is
    /// stored (replace) in the variable it names.
    fn store_output(&self, args: &Value, result: Value) -> Result<(), ExecError> {
        if result.is_undefined() {
            return Ok(());
        }
        match args.as_object().and_then(|m| m.get("output")) {
            Some(Value::String(name)) if !name.is_empty() => {
                self.write(name, result, Mode::Replace)
            }
            _ => Ok(()),
        }
    }

    fn set(&self, name: &Value, value: Value, mode: Mode) -> Result<(), ExecError> {
        let Value::String(name) = name else {
            return Err(invalid_set(format!(
                "`name` must be a string, found {}",
                name.type_name()
            )));
        };
        match name.strip_suffix("[]") {
            Some(base) => self.write(base, value.deep_copy(), Mode::Push),
            None => self.write(name, value.deep_copy(), mode),
        }
    }

    /// Applies `value` at the variable path `name`, in the context its first key names.
    fn write(&self, name: &str, value: Value, mode: Mode) -> Result<(), ExecError> {
        let keys = parse_variable_name(name).map_err(|e| invalid_set(e.to_string()))?;
        self.write_keys(&keys, value, mode)
    }

    fn write_keys(&self, keys: &[Key], value: Value, mode: Mode) -> Result<(), ExecError> {
        self.with_root(keys, |context, map, keys| {
            self.check_write(context, map, keys, &value, mode)?;
            set_in_map(map, keys, value, mode, &self.ws.budgets)
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
            && budget::fits_flat(value, &self.ws.budgets)
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
        let budgets = &self.ws.budgets;
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

    fn delete(&self, name: &Value) -> Result<(), ExecError> {
        let Value::String(name) = name else {
            return Err(ExecError::new(
                ErrorKind::InvalidInstruction,
                "Invalid delete instruction: `name` must be a string",
            ));
        };
        let keys = parse_variable_name(name).map_err(|e| {
            ExecError::new(
                ErrorKind::InvalidInstruction,
                format!("Invalid delete instruction: {e}"),
            )
        })?;
        self.with_root(&keys, |_, map, keys| {
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
            "run" => Some(&self.run.run),
            "user" => Some(&self.run.user),
            "session" => Some(&self.run.session),
            "socket" => Some(&self.run.socket),
            "global" => Some(&*self.ws.global),
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

    async fn repeat(
        &'a self,
        on: Value,
        until: Value,
        body: &'a [Instruction],
    ) -> Result<Flow, ExecError> {
        // A falsy `on` counts as absent (DSUL §7.4), and so does an `until` of 0.
        let until = match until {
            Value::Number(n) => count("until", n)?,
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(n) => count("until", n)?,
                Err(_) => None,
            },
            _ => None,
        };
        // Items are read one at a time from the value itself: nothing is built up
        // front, so a huge `on` costs what its iterations cost and no more.
        let items = match on {
            v if !v.truthy() => None,
            Value::List(l) => Some(Items::List(l)),
            Value::Object(m) => Some(Items::Object(m)),
            Value::String(s) => Some(Items::Chars(s, 0)),
            // A number runs that many times (§10.1).
            Value::Number(n) => Some(Items::Count(count("on", n)?.unwrap_or(0))),
            _ => None,
        };
        let count = match (&items, until) {
            (Some(items), Some(u)) => items.len().min(u),
            (Some(items), None) => items.len(),
            (None, Some(u)) => u,
            (None, None) => 0,
        };
        let mut items = items.unwrap_or(Items::Count(count));
        let mut flow = Flow::Continue;
        for index in 0..count {
            // An iteration counts as an instruction, so an empty body still ends.
            if self.meter.tick(&self.ws.budgets)? {
                tokio::task::yield_now().await;
            }
            self.take(LimitKind::Repeats, 1).await;
            let item = items.item(index);
            {
                let mut locals = lock(&self.locals);
                set_local(&mut locals, "item", item);
                set_local(&mut locals, "$index", Value::Number(index as f64));
            }
            flow = self.block(body).await?;
            if flow != Flow::Continue {
                break;
            }
        }
        lock(&self.locals).shift_remove("item");
        Ok(flow)
    }

    async fn all(&'a self, list: &'a [Instruction]) -> Result<Flow, ExecError> {
        let resolved = list
            .iter()
            .map(|i| self.resolve(&i.kind).map_err(|e| e.at(|| self.location(i))))
            .collect::<Result<Vec<_>, _>>()?;
        let runs = list.iter().zip(resolved).map(|(i, r)| async move {
            self.perform(&i.kind, r)
                .await
                .map_err(|e| e.at(|| self.location(i)))
        });
        let mut flow = Flow::Continue;
        for result in futures::future::join_all(runs).await {
            let f = result?;
            if flow == Flow::Continue {
                flow = f;
            }
        }
        Ok(flow)
    }

    async fn call(&'a self, slug: &str, args: Value) -> Result<Flow, ExecError> {
        let callee = self.ws.automation(slug).cloned().ok_or_else(|| {
            ExecError::new(ErrorKind::NotFound, format!("Automation not found: {slug}"))
        })?;
        let locals = match args.deep_copy() {
            Value::Object(m) => Arc::unwrap_or_clone(m),
            _ => Map::new(),
        };
        let started = self.meter.count();
        let outcome = self
            .rt
            .execute(Execution {
                ws: self.ws.clone(),
                automation: callee,
                locals,
                run: self.run.clone(),
                depth: self.depth,
                trigger: Trigger::new("automation", self.automation.slug.as_str()),
                http: None,
                instructions: started,
            })
            .await?;
        self.meter.add_callee(started, outcome.instructions);
        self.add_throttled(outcome.throttled);
        self.store_output(&args, outcome.output)?;
        Ok(if outcome.stop_callers {
            Flow::Break { all: true }
        } else {
            Flow::Continue
        })
    }

    async fn emit(&self, args: &Value) -> Result<Value, ExecError> {
        let empty = Map::new();
        let m = args.as_object().unwrap_or(&empty);
        let kind = match m.get("event") {
            Some(Value::String(s)) => {
                crate::bus::check_event_type(s)
                    .map_err(|e| ExecError::new(ErrorKind::InvalidEvent, e.to_string()))?;
                s.to_string()
            }
            other => {
                return Err(ExecError::new(
                    ErrorKind::InvalidEvent,
                    format!(
                        "invalid event type {}: `event` must be a string of letters, digits, spaces, `.`, `_` and `-`",
                        other
                            .map(|v| v.to_json_string())
                            .unwrap_or_else(|| "(missing)".into())
                    ),
                ))
            }
        };
        let payload = m.get("payload").cloned().unwrap_or(Value::Undefined);
        let (kind, payload) = match payload {
            Value::Undefined | Value::Null => (kind, Value::empty_object()),
            p @ Value::Object(_) => (kind, p),
            other => {
                // The reference sends an `error` event instead of failing (DSUL §7.7).
                let mut details = Map::new();
                details.insert("event".into(), Value::str(kind.as_str()));
                details.insert("payload".into(), other.clone());
                let mut e = Map::new();
                e.insert("error".into(), Value::str("InvalidEventError"));
                e.insert(
                    "message".into(),
                    Value::str(format!(
                        "Event payload must be an object, received {}",
                        other.type_name()
                    )),
                );
                e.insert("details".into(), Value::object(details));
                ("error".to_string(), Value::object(e))
            }
        };
        self.take(LimitKind::Emits, 1).await;
        let event = self.make_event(&kind, payload);
        let mut value = event.to_value();
        let size = value.to_json_string().len();
        if let Value::Object(m) = &mut value {
            Arc::make_mut(m).insert("size".into(), Value::Number(size as f64));
        }
        if size > self.rt.settings.runtime.max_event_bytes {
            return Err(ExecError::new(
                ErrorKind::InvalidEvent,
                format!(
                    "event `{kind}` is {size} bytes, over the limit of {} (runtime.max_event_bytes)",
                    self.rt.settings.runtime.max_event_bytes
                ),
            ));
        }
        let receipt = self.rt.publish(event).await?;
        self.rt.throttled(
            &self.ws.id,
            LimitKind::Emits,
            receipt.waited(),
            &self.throttled,
        );
        self.receipts.hold(receipt).await?;
        Ok(value)
    }

    /// An event from this execution: its source carries the correlation id and
    /// the depth, so listeners share `run` and emit loops end (DSUL §2).
    fn make_event(&self, kind: &str, payload: Value) -> crate::bus::Event {
        let mut source = Map::with_capacity(4);
        source.insert(
            "correlationId".into(),
            Value::str(self.run.correlation_id.as_str()),
        );
        source.insert("workspaceId".into(), Value::str(self.ws.id.as_str()));
        source.insert(
            "automationSlug".into(),
            Value::str(self.automation.slug.as_str()),
        );
        source.insert("depth".into(), Value::Number(self.depth as f64));
        self.rt.event(&self.ws.id, kind, payload, source)
    }

    /// Publishes a native event (no `emits` token, as in the reference; a wait
    /// for room on the bus still counts as throttled under `emits`).
    pub async fn native_event(&self, kind: &str, payload: Value) -> Result<(), ExecError> {
        let event = self.make_event(kind, payload);
        let receipt = self.rt.publish(event).await?;
        self.rt.throttled(
            &self.ws.id,
            LimitKind::Emits,
            receipt.waited(),
            &self.throttled,
        );
        self.receipts.hold(receipt).await
    }

    async fn wait(&self, args: &Value) -> Result<Value, ExecError> {
        // No await before the waiter is registered: only events emitted after the
        // wait started count, and `all` starts the emit right after this first poll.
        let empty = Map::new();
        let m = args.as_object().unwrap_or(&empty);
        let timeout = self.wait_timeout(m.get("timeout"))?;
        let one_of: Vec<Map> = match m.get("oneOf") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_object).cloned().collect(),
            _ => Vec::new(),
        };
        if one_of.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(Value::Undefined);
        }
        // `cancelTriggers`: the event this wait takes must not start its listeners.
        let cancelling: Vec<Map> = one_of
            .iter()
            .filter(|c| matches!(c.get("cancelTriggers"), Some(Value::Bool(true))))
            .cloned()
            .collect();
        let _cancel =
            (!cancelling.is_empty()).then(|| self.rt.cancels.register(&self.ws.id, cancelling));
        // The bus runs the filter on this workspace's events and sends only the
        // first match here, so no flood can push the awaited event out.
        let mut waiter = self.rt.bus.wait_for(
            &self.ws.id,
            Box::new(move |event: &crate::bus::Event| {
                // Most events are of other types: skip them before building their value.
                if !one_of
                    .iter()
                    .any(|c| c.get("event").and_then(Value::as_str) == Some(&event.kind))
                {
                    return false;
                }
                let value = event.to_value();
                one_of
                    .iter()
                    .any(|c| matches_condition(c, &event.kind, &value))
            }),
        );
        match tokio::time::timeout(timeout, waiter.recv()).await {
            Ok(Some(event)) => Ok(event.to_value()),
            Err(_) | Ok(None) => Ok(Value::Undefined),
        }
    }
}

impl Exec<'_> {
    /// The `timeout` of a `wait`: seconds as a number or numeric text, the default
    /// when absent or not numeric (as the reference), refused when negative, NaN
    /// or over the workspace's `max_wait_secs`.
    fn wait_timeout(&self, given: Option<&Value>) -> Result<Duration, ExecError> {
        let secs = match given {
            Some(Value::Number(n)) => *n,
            Some(Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(n) => n,
                Err(_) => self.rt.settings.runtime.wait_timeout_secs,
            },
            _ => self.rt.settings.runtime.wait_timeout_secs,
        };
        if secs.is_nan() || secs < 0.0 {
            return Err(ExecError::new(
                ErrorKind::InvalidInstruction,
                format!(
                    "Invalid wait instruction: `timeout` must be a number of seconds of at least 0, got {}",
                    crate::expr::js_number_to_string(secs)
                ),
            ));
        }
        let budgets = &self.ws.budgets;
        if secs > budgets.max_wait_secs as f64 {
            return Err(BudgetExceeded::new(
                budgets,
                "max_wait_secs",
                format!(
                    "a wait of {} seconds",
                    crate::expr::js_number_to_string(secs)
                ),
                secs.min(u64::MAX as f64) as u64,
            )
            .into());
        }
        // Ten years is forever for a wait, and keeps deadline arithmetic far from overflow
        // whatever an operator sets.
        Ok(Duration::from_secs_f64(secs.min(315_360_000.0)))
    }
}

/// Whether an event matches one `oneOf` entry: same type and every filter equal
/// (loosely) to the value at its dotted path in the event.
pub(super) fn matches_condition(c: &Map, kind: &str, event: &Value) -> bool {
    if c.get("event").and_then(Value::as_str) != Some(kind) {
        return false;
    }
    let Some(Value::Object(filters)) = c.get("filters") else {
        return true;
    };
    filters.iter().all(|(path, expected)| {
        let actual = match parse_variable_name(path) {
            Ok(keys) => get_path(event, &keys),
            Err(_) => return false,
        };
        match (&actual, expected) {
            (Value::Object(_) | Value::List(_), _) => actual == *expected,
            _ => loose_eq(&actual, expected),
        }
    })
}

/// What `repeat` iterates, read lazily by index.
enum Items {
    List(Arc<Vec<Value>>),
    Object(Arc<Map>),
    /// A string and the byte offset of the next character.
    Chars(Arc<str>, usize),
    Count(u64),
}

impl Items {
    fn len(&self) -> u64 {
        match self {
            Items::List(l) => l.len() as u64,
            Items::Object(m) => m.len() as u64,
            Items::Chars(s, _) => s.chars().count() as u64,
            Items::Count(n) => *n,
        }
    }

    /// The item of iteration `index`; strings must be read in order.
    #[inline]
    fn item(&mut self, index: u64) -> Value {
        let at = usize::try_from(index).unwrap_or(usize::MAX);
        match self {
            Items::List(l) => l.get(at).cloned().unwrap_or_default(),
            Items::Object(m) => match m.get_index(at) {
                Some((k, v)) => {
                    let mut e = Map::with_capacity(2);
                    e.insert("key".into(), Value::str(k.as_str()));
                    e.insert("value".into(), v.clone());
                    Value::object(e)
                }
                None => Value::Undefined,
            },
            Items::Chars(s, offset) => match s[*offset..].chars().next() {
                Some(c) => {
                    *offset += c.len_utf8();
                    Value::str(c.to_string())
                }
                None => Value::Undefined,
            },
            Items::Count(_) => Value::Number(index as f64),
        }
    }
}

/// A loop count from `on` or `until`: `None` for 0, an error for a negative,
/// non-finite or inexact (over 2^53) count.
fn count(field: &str, n: f64) -> Result<Option<u64>, ExecError> {
    if !(0.0..9_007_199_254_740_992.0).contains(&n) {
        return Err(ExecError::new(
            ErrorKind::InvalidInstruction,
            format!(
                "Invalid repeat instruction: `{field}` must be a number of iterations from 0 to \
                 9007199254740991, got {}",
                crate::expr::js_number_to_string(n)
            ),
        ));
    }
    Ok(Some(n.floor() as u64).filter(|n| *n > 0))
}

/// Sets a local without allocating its name when it already exists.
fn set_local(locals: &mut Map, name: &str, value: Value) {
    match locals.get_mut(name) {
        Some(slot) => *slot = value,
        None => {
            locals.insert(name.to_string(), value);
        }
    }
}

fn set_mode(kind: &Value) -> Result<Mode, ExecError> {
    match kind.as_str() {
        None | Some("replace") => Ok(Mode::Replace),
        Some("merge") => Ok(Mode::Merge),
        Some("push") => Ok(Mode::Push),
        Some(other) => Err(invalid_set(format!(
            "unknown type `{other}` (expected replace, merge or push)"
        ))),
    }
}

fn set_in_map(
    map: &mut Map,
    keys: &[Key],
    value: Value,
    mode: Mode,
    budgets: &Budgets,
) -> Result<(), ExecError> {
    let Some((first, rest)) = keys.split_first() else {
        return Err(invalid_set("empty variable name"));
    };
    let name = key_str(first);
    // Look up before inserting: most sets overwrite a variable that exists, and
    // `entry` would allocate the key every time.
    if let Some(slot) = map.get_mut(name.as_ref()) {
        return set_in_value(slot, rest, value, mode, budgets);
    }
    budget::check_entries(map.len() + 1, budgets)?;
    let slot = map.entry(name.into_owned()).or_default();
    set_in_value(slot, rest, value, mode, budgets)
}

fn set_in_value(
    slot: &mut Value,
    keys: &[Key],
    value: Value,
    mode: Mode,
    budgets: &Budgets,
) -> Result<(), ExecError> {
    let Some((first, rest)) = keys.split_first() else {
        return apply(slot, value, mode, budgets);
    };
    if slot.is_nullish() {
        // Missing parents become objects, even for numeric keys (DSUL §7.1).
        *slot = Value::empty_object();
    }
    match slot {
        Value::Object(m) => set_in_map(Arc::make_mut(m), keys, value, mode, budgets),
        Value::List(l) => match first {
            Key::Index(i) => {
                if l.len() <= *i {
                    budget::check_index(*i, budgets)?;
                    budget::check_entries(*i + 1, budgets)?;
                }
                let l = Arc::make_mut(l);
                if l.len() <= *i {
                    l.resize(*i + 1, Value::Undefined);
                }
                set_in_value(&mut l[*i], rest, value, mode, budgets)
            }
            Key::Name(n) => Err(invalid_set(format!("cannot set key `{n}` of a list"))),
        },
        other => Err(invalid_set(format!(
            "cannot set `{}` inside a {}",
            key_str(first),
            other.type_name()
        ))),
    }
}

/// Writes `value` into `slot`; lists and objects may not grow past `max_entries`.
fn apply(slot: &mut Value, value: Value, mode: Mode, budgets: &Budgets) -> Result<(), ExecError> {
    match mode {
        Mode::Replace => *slot = value,
        Mode::Push => {
            if !matches!(slot, Value::List(_)) {
                *slot = Value::list(Vec::new());
            }
            if let Value::List(l) = slot {
                budget::check_entries(l.len() + 1, budgets)?;
                Arc::make_mut(l).push(value);
            }
        }
        Mode::Merge => match slot {
            Value::List(l) => {
                let added = match &value {
                    Value::List(items) => items.len(),
                    _ => 1,
                };
                budget::check_entries(l.len() + added, budgets)?;
                let l = Arc::make_mut(l);
                match value {
                    Value::List(items) => l.extend(items.iter().cloned()),
                    other => l.push(other),
                }
            }
            Value::Object(_) | Value::Null => {
                // Strings, lists and null merge into an object as nothing (DSUL §7.1).
                if let Value::Object(add) = value {
                    if let Value::Object(m) = slot {
                        let new_keys = add.keys().filter(|k| !m.contains_key(*k)).count();
                        budget::check_entries(m.len() + new_keys, budgets)?;
                        let m = Arc::make_mut(m);
                        for (k, v) in add.iter() {
                            m.insert(k.clone(), v.clone());
                        }
                    } else {
                        *slot = Value::Object(add);
                    }
                }
            }
            _ => *slot = value,
        },
    }
    Ok(())
}

fn delete_in_map(map: &mut Map, keys: &[Key]) {
    let Some((first, rest)) = keys.split_first() else {
        return;
    };
    let name = key_str(first);
    if rest.is_empty() {
        map.shift_remove(name.as_ref());
        return;
    }
    if let Some(v) = map.get_mut(name.as_ref()) {
        delete_in_value(v, rest);
    }
}

fn delete_in_value(v: &mut Value, keys: &[Key]) {
    match v {
        Value::Object(m) => delete_in_map(Arc::make_mut(m), keys),
        Value::List(l) => {
            let Some((Key::Index(i), rest)) = keys.split_first() else {
                return;
            };
            if *i >= l.len() {
                return;
            }
            let l = Arc::make_mut(l);
            if rest.is_empty() {
                l.remove(*i);
            } else {
                delete_in_value(&mut l[*i], rest);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(s: &str) -> Vec<Key> {
        parse_variable_name(s).unwrap()
    }

    fn set(map: &mut Map, name: &str, v: serde_json::Value, mode: Mode) {
        set_in_map(map, &keys(name), Value::from(v), mode, &Budgets::default()).unwrap();
    }

    #[test]
    fn set_creates_object_parents_even_for_indexes() {
        let mut m = Map::new();
        set(&mut m, "arr[1]", json!("x"), Mode::Replace);
        assert_eq!(Value::object(m).to_json(), json!({"arr": {"1": "x"}}));
    }

    #[test]
    fn set_past_the_end_of_a_list_leaves_holes() {
        let mut m = Map::new();
        set(&mut m, "l", json!([1]), Mode::Replace);
        set(&mut m, "l[3]", json!(4), Mode::Replace);
        assert_eq!(Value::object(m).to_json(), json!({"l": [1, null, null, 4]}));
    }

    #[test]
    fn set_through_a_scalar_fails() {
        let mut m = Map::new();
        set(&mut m, "s", json!("abc"), Mode::Replace);
        assert!(set_in_map(
            &mut m,
            &keys("s.x"),
            Value::Null,
            Mode::Replace,
            &Budgets::default()
        )
        .is_err());
    }

    #[test]
    fn merge_rules() {
        let mut m = Map::new();
        set(&mut m, "o", json!({"a": 1, "n": {"x": 1}}), Mode::Replace);
        set(&mut m, "o", json!({"b": 2, "n": {"y": 2}}), Mode::Merge);
        set(&mut m, "o", json!("ignored"), Mode::Merge);
        set(&mut m, "l", json!([1]), Mode::Replace);
        set(&mut m, "l", json!([2, 3]), Mode::Merge);
        set(&mut m, "l", json!(4), Mode::Merge);
        set(&mut m, "s", json!(1), Mode::Merge);
        set(&mut m, "z", json!(null), Mode::Replace);
        set(&mut m, "z", json!({"k": 1}), Mode::Merge);
        assert_eq!(
            Value::object(m).to_json(),
            json!({"o": {"a": 1, "n": {"y": 2}, "b": 2}, "l": [1, 2, 3, 4], "s": 1, "z": {"k": 1}})
        );
    }

    #[test]
    fn push_appends_one_element() {
        let mut m = Map::new();
        set(&mut m, "p", json!("scalar"), Mode::Replace);
        set(&mut m, "p", json!([1, 2]), Mode::Push);
        assert_eq!(Value::object(m).to_json(), json!({"p": [[1, 2]]}));
    }

    #[test]
    fn delete_splices_lists_and_ignores_missing() {
        let mut m = Map::new();
        set(&mut m, "l", json!([1, 2, 3]), Mode::Replace);
        delete_in_map(&mut m, &keys("l[1]"));
        delete_in_map(&mut m, &keys("missing.deep.path"));
        assert_eq!(Value::object(m).to_json(), json!({"l": [1, 3]}));
    }
}
