//! `all:` (DSUL §7.5): starts every instruction of the list together and waits
//! for all of them. Every branch is interpolated before any of them runs.

use super::{Instr, Instruction};
use crate::dsl::{describe, Compiler, Span};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::ExecError;
use crate::value::Value;
use std::future::Future;

/// A compiled `all`.
#[derive(Debug)]
pub(crate) struct All {
    list: Vec<Instruction>,
}

impl Instr for All {
    const NAME: &'static str = "all";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<All, String> {
        match value {
            Value::List(_) => Ok(All {
                list: cx.block(value, "all"),
            }),
            other => Err(format!(
                "`all` takes a list of instructions, found {}",
                describe(other)
            )),
        }
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        // Nothing of its own to interpolate: an `all` nested in an `all`
        // interpolates its branches when it starts.
        Ok(Box::pin(async move {
            let runs = self
                .list
                .iter()
                .map(|i| i.start(x))
                .collect::<Result<Vec<_>, _>>()?;
            let mut flow = Flow::Continue;
            for result in futures::future::join_all(runs).await {
                let f = result?;
                if flow == Flow::Continue {
                    flow = f;
                }
            }
            Ok(flow)
        }))
    }

    fn blocks(&self) -> Vec<&[Instruction]> {
        vec![&self.list]
    }
}
