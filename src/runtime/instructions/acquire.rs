//! `acquire: {limit | key, rate, per, …, units, priority, lane, wait, do, else}`
//! (SPEC section 7): runs `do` holding a named limit, released when the block ends
//! however it ends; not granted within `wait`, runs `else`, or fails with
//! `LimitExceeded` when there is none.

use super::{mapping, Instr, Instruction};
use crate::dsl::{Compiler, Span};
use crate::limits::named::Use;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::Value;
use std::future::Future;

/// A compiled `acquire`.
#[derive(Debug)]
pub(crate) struct Acquire {
    /// The limit and how it is taken.
    limit: Use,
    /// Runs holding the limit.
    body: Vec<Instruction>,
    /// Runs instead when the limit is not granted within `wait`.
    otherwise: Option<Vec<Instruction>>,
}

impl Instr for Acquire {
    const NAME: &'static str = "acquire";

    fn compile(
        value: &Value,
        _: &Span,
        cx: &mut Compiler<'_, Instruction>,
    ) -> Result<Acquire, String> {
        let m = mapping(value, "acquire", "`limit` (or an inline `key`) and `do`")?;
        let body = m.get("do").map(|v| cx.block(v, "do"));
        let otherwise = m.get("else").map(|v| cx.block(v, "else"));
        let limit = Use::parse_acquire(m, &[]).map_err(|errors| {
            errors
                .iter()
                .map(|e| {
                    if e.path.is_empty() {
                        format!("Invalid acquire instruction: {}", e.message)
                    } else {
                        format!("Invalid acquire instruction: {e}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let Some(body) = body else {
            return Err(
                "Invalid acquire instruction: `do` is missing (the steps that run holding the limit)"
                    .into(),
            );
        };
        Ok(Acquire {
            limit,
            body,
            otherwise,
        })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let ask = x.named()?.render(&self.limit, x)?;
        Ok(Box::pin(async move {
            match x.acquire_named(std::slice::from_ref(&ask)).await {
                Ok(held) => {
                    let flow = x.block(&self.body).await;
                    drop(held);
                    flow
                }
                Err(e) if e.kind == ErrorKind::LimitExceeded => match &self.otherwise {
                    Some(otherwise) => x.block(otherwise).await,
                    None => Err(e),
                },
                Err(e) => Err(e),
            }
        }))
    }

    fn blocks(&self) -> Vec<&[Instruction]> {
        let mut blocks: Vec<&[Instruction]> = vec![&self.body];
        blocks.extend(self.otherwise.as_deref());
        blocks
    }
}

impl Acquire {
    /// The limit this instruction takes, for the checks over a whole workspace.
    pub(crate) fn limit_use(&self) -> &Use {
        &self.limit
    }
}
