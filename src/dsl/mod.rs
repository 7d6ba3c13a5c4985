//! The DSUL automation model: YAML in, compiled automations out.
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

pub use compile::{parse_automation, parse_yaml, Compiled};
pub use locate::Locator;

use crate::expr::{Expr, ExprError, Key, Scope, Template};
use crate::value::{Map, Value};
use std::fmt;
use std::path::PathBuf;
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

/// The `name` of a `set`: parsed at load when it is a plain path, so hot loops
/// do not re-parse it; templated names are parsed when they run.
#[derive(Debug)]
pub enum VarName {
    /// A constant path; `push` when it ended in `[]`.
    Static {
        /// The path's keys.
        keys: Vec<Key>,
        /// Whether the name ended in `[]` (push).
        push: bool,
    },
    /// A templated (or malformed) name, resolved and parsed at run time.
    Dynamic(Node),
}

/// One instruction of a `do` list, with the 1-based line it starts on.
#[derive(Debug)]
pub struct Instruction {
    /// What the instruction does.
    pub kind: Kind,
    /// Line of the instruction in its file (0 when unknown).
    pub line: usize,
}

/// The instructions of DSUL (§7).
#[derive(Debug)]
pub enum Kind {
    /// `set: {name, value, type}`.
    Set {
        /// The variable path.
        name: VarName,
        /// The value to store.
        value: Node,
        /// `replace`, `merge` or `push`; absent means replace.
        kind: Option<Node>,
    },
    /// `delete: {name}`.
    Delete {
        /// The variable path.
        name: Node,
    },
    /// `conditions:` branches in file order; `default` runs when none matched.
    Conditions {
        /// Each expression (or its parse error) with the instructions it guards.
        branches: Vec<(Result<Expr, ExprError>, Vec<Instruction>)>,
        /// The `default` branch.
        default: Option<Vec<Instruction>>,
    },
    /// `repeat: {on, until, do}`.
    Repeat {
        /// What to iterate.
        on: Option<Node>,
        /// Maximum number of iterations.
        until: Option<Node>,
        /// The loop body.
        body: Vec<Instruction>,
    },
    /// `all:` instructions started together.
    All(Vec<Instruction>),
    /// `break: {scope}`.
    Break {
        /// `automation` (default) or `all`.
        scope: Node,
    },
    /// `comment:` does nothing.
    Comment,
    /// `emit:` the whole mapping.
    Emit(Node),
    /// `wait:` the whole mapping.
    Wait(Node),
    /// `fetch:` the whole mapping.
    Fetch(Node),
    /// A call of another automation by slug with the whole mapping as arguments.
    Call {
        /// The callee's slug.
        slug: String,
        /// The arguments (including `output`).
        args: Node,
    },
    /// An instruction the reference refuses when it runs (null value, bad shape).
    Invalid(String),
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

/// A compiled automation.
#[derive(Debug)]
pub struct Automation {
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
    pub body: Vec<Instruction>,
    /// The `output` value; `{}` when absent.
    pub output: Option<Node>,
}

impl Automation {
    /// Visits every call instruction (for `validate`'s unknown-slug check).
    pub fn calls(&self) -> Vec<(&str, usize)> {
        fn walk<'a>(body: &'a [Instruction], out: &mut Vec<(&'a str, usize)>) {
            for i in body {
                match &i.kind {
                    Kind::Call { slug, .. } => out.push((slug, i.line)),
                    Kind::Conditions { branches, default } => {
                        for (_, b) in branches {
                            walk(b, out);
                        }
                        if let Some(d) = default {
                            walk(d, out);
                        }
                    }
                    Kind::Repeat { body, .. } => walk(body, out),
                    Kind::All(list) => walk(list, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.body, &mut out);
        out
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

/// Shared handle to a compiled automation.
pub type AutomationRef = Arc<Automation>;
