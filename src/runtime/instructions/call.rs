//! A call of another automation (DSUL §7.11): any instruction name that is no
//! built-in is the slug of an automation of the workspace, whose arguments are
//! the whole mapping (`output` included).

use super::{store_output, Instruction};
use crate::dsl::{Compiler, Node, Span};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::ExecError;
use crate::value::{Map, Value};
use std::future::Future;
use std::sync::Arc;

/// A compiled call.
#[derive(Debug)]
pub(crate) struct Call {
    /// The callee's slug; whether it exists is checked when the workspace loads
    /// (a diagnostic) and again when the call runs.
    slug: String,
    /// The arguments, `output` included.
    args: Node,
}

impl Call {
    /// Compiles a call of `slug` with the arguments `value`.
    pub(super) fn compile(
        slug: &str,
        value: &Value,
        _: &Span,
        cx: &mut Compiler<'_, Instruction>,
    ) -> Result<Call, String> {
        Ok(Call {
            slug: slug.to_string(),
            args: cx.node(value),
        })
    }

    /// The callee's slug.
    pub(super) fn slug(&self) -> &str {
        &self.slug
    }

    /// A call has no nested instructions.
    pub(super) fn blocks(&self) -> Vec<&[Instruction]> {
        Vec::new()
    }

    /// Interpolates the arguments in the caller, then runs the callee.
    pub(super) fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let args = self.args.eval(x)?;
        Ok(Box::pin(async move {
            let output = args
                .as_object()
                .and_then(|m| m.get("output"))
                .cloned()
                .unwrap_or_default();
            let locals = match args.deep_copy() {
                Value::Object(m) => Arc::unwrap_or_clone(m),
                _ => Map::new(),
            };
            let outcome = x.call(&self.slug, locals).await?;
            store_output(x, &output, outcome.output)?;
            Ok(if outcome.stop_callers {
                Flow::Break { all: true }
            } else {
                Flow::Continue
            })
        }))
    }
}
