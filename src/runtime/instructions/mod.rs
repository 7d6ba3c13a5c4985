//! The instructions of DSUL (§7), one file each: its typed arguments, how they
//! are compiled and checked when the file loads, and how it runs.
//!
//! An instruction is compiled once (`compile`, with the [`Compiler`] that
//! `dsl` drives over a file) into a struct whose fields are pre-parsed nodes,
//! and every run goes through [`Instr::execute`]: first the arguments are
//! interpolated (DSUL §2.4), then the returned future does the work. The two
//! halves are apart because `all` interpolates every branch before any runs.
//!
//! Adding an instruction: write `name.rs` with a struct implementing [`Instr`]
//! and add `name::Type` to the [`registry!`] list below; nothing else changes.
//! A name that is no built-in is a call of the automation of that slug
//! ([`call::Call`]), and `comment` does nothing.

use super::exec::{Exec, Flow};
use super::{ErrorKind, ExecError};
use crate::dsl::{describe, Compile, Compiler, Span};
use crate::value::{Map, Value};
use futures::future::BoxFuture;
use std::fmt;
use std::future::Future;

/// One instruction of DSUL: how it compiles and how it runs.
pub(crate) trait Instr: Sized + Send + Sync + fmt::Debug {
    /// Its name in a `do` list.
    const NAME: &'static str;

    /// Compiles the instruction's (non-null) value, reporting problems to `cx`;
    /// `Err` is the message the instruction fails with when it is reached (the
    /// reference fails at run time), which the caller reports at `span` too.
    fn compile(
        value: &Value,
        span: &Span,
        cx: &mut Compiler<'_, Instruction>,
    ) -> Result<Self, String>;

    /// Interpolates the arguments against the variables as they are now, and
    /// returns the work still to do. The future sits inline in the loop that
    /// runs blocks, whose size is that of the largest instruction: one that
    /// waits (I/O, limiters, nested blocks) returns it boxed.
    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError>;

    /// The instruction lists nested inside, for walks over a whole body.
    fn blocks(&self) -> Vec<&[Instruction]> {
        Vec::new()
    }
}

/// Declares the built-in instructions: their modules, the [`Op`] enum over
/// them, and the dispatch by name at compile time and by variant at run time.
macro_rules! registry {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        $(mod $module;)*
        mod call;

        /// What an instruction does.
        #[derive(Debug)]
        enum Op {
            $($ty($module::$ty),)*
            /// A call of another automation by slug.
            Call(call::Call),
            /// `comment:` does nothing.
            Comment,
            /// An instruction the reference refuses when it runs (null value, bad shape).
            Invalid(String),
        }

        /// The names of the built-in instructions, in the order diagnostics list them.
        pub const NAMES: &[&str] = &[$(<$module::$ty as Instr>::NAME,)* "comment"];

        impl Op {
            fn compile(
                name: &str,
                value: &Value,
                span: &Span,
                cx: &mut Compiler<'_, Instruction>,
            ) -> Result<Op, String> {
                $(if name == <$module::$ty as Instr>::NAME {
                    return $module::$ty::compile(value, span, cx).map(Op::$ty);
                })*
                call::Call::compile(name, value, span, cx).map(Op::Call)
            }

            async fn run<'a>(&'a self, x: &'a Exec<'a>) -> Result<Flow, ExecError> {
                match self {
                    $(Op::$ty(i) => i.execute(x)?.await,)*
                    Op::Call(i) => i.execute(x)?.await,
                    Op::Comment => Ok(Flow::Continue),
                    Op::Invalid(message) => Err(invalid(message)),
                }
            }

            fn start<'a>(
                &'a self,
                x: &'a Exec<'a>,
            ) -> Result<BoxFuture<'a, Result<Flow, ExecError>>, ExecError> {
                Ok(match self {
                    $(Op::$ty(i) => Box::pin(i.execute(x)?),)*
                    Op::Call(i) => Box::pin(i.execute(x)?),
                    Op::Comment => Box::pin(async { Ok(Flow::Continue) }),
                    Op::Invalid(message) => return Err(invalid(message)),
                })
            }

            fn blocks(&self) -> Vec<&[Instruction]> {
                match self {
                    $(Op::$ty(i) => i.blocks(),)*
                    Op::Call(i) => i.blocks(),
                    Op::Comment | Op::Invalid(_) => Vec::new(),
                }
            }
        }
    };
}

#[cfg(test)]
mod tests;

registry! {
    set::Set,
    delete::Delete,
    conditions::Conditions,
    repeat::Repeat,
    all::All,
    r#break::Break,
    emit::Emit,
    wait::Wait,
    fetch::Fetch,
    charge::Charge,
    acquire::Acquire,
}

pub(crate) use wait::matches_condition;

fn invalid(message: &str) -> ExecError {
    ExecError::new(ErrorKind::InvalidInstruction, message)
}

/// One compiled instruction of a `do` list and where it is written.
#[derive(Debug)]
pub struct Instruction {
    /// The place of its name in its file.
    pub span: Span,
    op: Op,
}

impl Compile for Instruction {
    fn compile(
        name: &str,
        value: &Value,
        span: Span,
        cx: &mut Compiler<'_, Instruction>,
    ) -> Instruction {
        if name == "comment" {
            // The reference fails on an empty comment; DSUL §10.24 prefers accepting it.
            return Instruction {
                span,
                op: Op::Comment,
            };
        }
        let op = if value.is_nullish() {
            Err(format!(
                "Invalid {name} instruction : undefined or null payload"
            ))
        } else if matches!(name, "createUserTopic" | "joinUserTopic") {
            Err(format!(
                "`{name}` needs the Prisme.ai events service, which sluice does not have"
            ))
        } else {
            Op::compile(name, value, &span, cx)
        };
        match op {
            Ok(op) => Instruction { span, op },
            Err(message) => cx.invalid(span, message),
        }
    }

    fn invalid(span: Span, message: String) -> Instruction {
        Instruction {
            span,
            op: Op::Invalid(message),
        }
    }

    const NAMES: &'static [&'static str] = NAMES;

    fn limit_uses<'a>(&'a self, out: &mut Vec<(&'a crate::limits::named::Use, &'a Span)>) {
        if let Some(u) = self.limit_use() {
            out.push((u, &self.span));
        }
        for block in self.op.blocks() {
            for i in block {
                i.limit_uses(out);
            }
        }
    }

    fn calls<'a>(&'a self, out: &mut Vec<(&'a str, &'a Span)>) {
        if let Op::Call(call) = &self.op {
            out.push((call.slug(), &self.span));
        }
        for block in self.op.blocks() {
            for i in block {
                i.calls(out);
            }
        }
    }
}

impl Instruction {
    /// Runs the instruction; an error is located here unless a nested
    /// instruction already claimed it.
    pub(super) async fn run<'a>(&'a self, x: &'a Exec<'a>) -> Result<Flow, ExecError> {
        self.op.run(x).await.map_err(|e| x.locate(e, &self.span))
    }

    /// Interpolates the arguments now and returns the run (for `all`).
    fn start<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<BoxFuture<'a, Result<Flow, ExecError>>, ExecError> {
        let run = self.op.start(x).map_err(|e| x.locate(e, &self.span))?;
        Ok(Box::pin(async move {
            run.await.map_err(|e| x.locate(e, &self.span))
        }))
    }

    /// The named limit an `acquire` takes.
    pub(crate) fn limit_use(&self) -> Option<&crate::limits::named::Use> {
        match &self.op {
            Op::Acquire(a) => Some(a.limit_use()),
            _ => None,
        }
    }

    /// Whether this instruction fails whenever it runs.
    #[cfg(test)]
    pub(crate) fn is_invalid(&self) -> bool {
        matches!(self.op, Op::Invalid(_))
    }
}

/// The mapping an instruction takes, or the message it fails with.
fn mapping<'v>(value: &'v Value, name: &str, what: &str) -> Result<&'v Map, String> {
    match value {
        Value::Object(m) => Ok(m),
        other => Err(format!(
            "`{name}` takes a mapping with {what}, found {}",
            describe(other)
        )),
    }
}

/// The generic `output:` of emit, wait, fetch and calls (DSUL §2.4): a defined
/// result goes into the variable named by the interpolated `output`.
fn store_output(x: &Exec<'_>, output: &Value, result: Value) -> Result<(), ExecError> {
    if result.is_undefined() {
        return Ok(());
    }
    match output {
        Value::String(name) if !name.is_empty() => x.replace(name, result),
        _ => Ok(()),
    }
}

/// Evaluates an optional argument (absent: undefined).
fn eval(node: &Option<crate::dsl::Node>, x: &Exec<'_>) -> Result<Value, ExecError> {
    Ok(match node {
        Some(n) => n.eval(x)?,
        None => Value::Undefined,
    })
}
