//! The DSUL automation model: YAML in, compiled automations out.
//!
//! This module owns the YAML reading, the [`Locator`] that finds where a value
//! sits, the compile driver ([`Compiler`]) and the [`Diagnostic`]s; each
//! instruction's own parsing and checks live beside its execution, in
//! `runtime::instructions`, which the driver calls by name.
//!
//! Every string of an automation is parsed once here (templates and expressions
//! pre-compiled), so executions never re-parse text. Mistakes that the reference
//! runtime only reports when the instruction runs (a bad expression, a null
//! instruction) compile into instructions that fail when reached, which keeps the
//! reference's "events emitted before the error stay emitted" behaviour; the same
//! mistakes are collected as [`Diagnostic`]s so `sluice validate` reports them with
//! their location before anything runs.

mod compile;
mod locate;
mod suggest;

pub use compile::{describe, parse_automation, parse_yaml, Compiled, Compiler};
pub use locate::{locate_path, Locator};
pub use suggest::one_of;

use crate::expr::{ExprError, Scope, Template};
use crate::value::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A YAML value whose strings are pre-parsed templates.
#[derive(Debug)]
pub enum Node {
    /// A value without any template inside; evaluating it is a clone.
    Const(Value),
    /// A string holding `{{ }}` or `{% %}`.
    Template(Box<Template>),
    /// A list with at least one template inside.
    List(Vec<Node>),
    /// A mapping with at least one template inside (keys are never interpolated).
    Object(Vec<(String, Node)>),
    /// A string that failed to parse; evaluating it fails with this error.
    Invalid(ExprError),
}

impl Node {
    /// Interpolates the value against `scope` (DSUL §4).
    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, ExprError> {
        match self {
            Node::Const(v) => Ok(v.clone()),
            Node::Template(t) => t.render(scope),
            Node::List(items) => items
                .iter()
                .map(|n| n.eval(scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::list),
            Node::Object(members) => {
                let mut map = Map::with_capacity(members.len());
                for (k, n) in members {
                    map.insert(k.clone(), n.eval(scope)?);
                }
                Ok(Value::object(map))
            }
            Node::Invalid(e) => Err(e.clone()),
        }
    }

    /// The constant value, when the node has no template.
    pub fn as_const(&self) -> Option<&Value> {
        match self {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// `when:` triggers.
#[derive(Debug, Default)]
pub struct When {
    /// Endpoint name when exposed as a webhook (`endpoint: true` gives the slug).
    pub endpoint: Option<String>,
    /// Event types that trigger the automation.
    pub events: Vec<String>,
    /// Cron expressions (UTC), parsed once here for the scheduler.
    pub schedules: Vec<(String, croner::Cron)>,
}

/// The instructions a `do` list compiles into. `runtime` defines them (each
/// beside its execution); this module only drives their compilation, so it
/// depends on no interpreter.
pub trait Compile: Sized {
    /// Compiles the instruction `name: value` written at `span`; mistakes are
    /// reported to `cx` and compile into an instruction that fails when reached.
    fn compile(name: &str, value: &Value, span: Span, cx: &mut Compiler<'_, Self>) -> Self;
    /// An instruction that fails with `message` when it runs.
    fn invalid(span: Span, message: String) -> Self;
    /// Adds the calls of other automations in this instruction and the ones
    /// nested in it, with the place of each callee's name.
    fn calls<'a>(&'a self, out: &mut Vec<(&'a str, &'a Span)>);
    /// Adds the named limits this instruction and the ones nested in it take, with
    /// the place of each (for `validate`'s unknown-limit check).
    fn limit_uses<'a>(&'a self, out: &mut Vec<(&'a crate::limits::named::Use, &'a Span)>);
    /// Every instruction name, for "did you mean" when a name is neither an
    /// instruction nor an automation.
    const NAMES: &'static [&'static str];
}

/// A compiled automation whose body holds instructions of type `I`.
#[derive(Debug)]
pub struct Automation<I> {
    /// Unique id in its workspace.
    pub slug: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// Its triggers.
    pub when: When,
    /// `arguments`, as written.
    pub arguments: Option<Value>,
    /// Whether arguments are checked before running.
    pub validate_arguments: bool,
    /// A disabled automation cannot be triggered nor called.
    pub disabled: bool,
    /// The body.
    pub body: Vec<I>,
    /// The `output` value; `{}` when absent.
    pub output: Option<Node>,
    /// `quota:` (SPEC section 8); `None` is free and of class `standard`.
    pub quota: Option<Quota<I>>,
    /// The named limits every execution takes before its body runs (SPEC section 7),
    /// each with the place of its entry.
    pub limits: Vec<(crate::limits::named::Use, Span)>,
    /// Why `limits:` cannot be used, when it is malformed: executions then fail with it.
    pub limits_invalid: Option<String>,
    /// `limits:` rendered once, when nothing in them depends on the execution (no key,
    /// template or lane): an automation lives with one version of its workspace's
    /// declarations, since editing them reloads every automation.
    pub constant_limits: std::sync::OnceLock<Option<crate::limits::named::Prepared>>,
}

/// An automation's `quota:`: what it costs and how essential it is.
#[derive(Debug)]
pub struct Quota<I> {
    /// Credits charged when it starts (a number or a template); `None` is free.
    pub cost: Option<Node>,
    /// How essential it is; the bands restrict classes.
    pub class: crate::quota::QuotaClass,
    /// What runs instead of `do` while the class is restricted.
    pub fallback: Option<Vec<I>>,
}

impl<I: Compile> Automation<I> {
    /// Every call of another automation in the body, with the place of its name
    /// (for `validate`'s unknown-slug check).
    pub fn calls(&self) -> Vec<(&str, &Span)> {
        let mut out = Vec::new();
        for i in self.instructions() {
            i.calls(&mut out);
        }
        out
    }

    /// Every named limit the automation takes: its `limits:` entries, then each
    /// `acquire` in its body and its quota fallback, with their places.
    pub fn limit_uses(&self) -> Vec<(&crate::limits::named::Use, &Span)> {
        let mut out: Vec<_> = self.limits.iter().map(|(u, s)| (u, s)).collect();
        for i in self.instructions() {
            i.limit_uses(&mut out);
        }
        out
    }

    /// The top-level instructions that may run: the body, then the quota fallback.
    fn instructions(&self) -> impl Iterator<Item = &I> {
        let fallback = self.quota.iter().filter_map(|q| q.fallback.as_deref());
        self.body.iter().chain(fallback.flatten())
    }
}

/// Where an instruction or argument sits: its file, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The file it was read from.
    pub file: Arc<Path>,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub col: usize,
}

/// `file.yml:line:col`, the file by its name alone: run-time errors reach webhook
/// callers, who have no business knowing where the server keeps its files.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.file_name().unwrap_or(self.file.as_os_str());
        write!(
            f,
            "{}:{}:{}",
            name.to_string_lossy(),
            self.line.max(1),
            self.col.max(1)
        )
    }
}

/// A problem found in a file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line.max(1),
            self.column.max(1),
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic at `span`.
    pub fn at(span: &Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: span.file.to_path_buf(),
            line: span.line,
            column: span.col,
            message: message.into(),
        }
    }
}
