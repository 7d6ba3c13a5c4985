//! `conditions:` (DSUL §7.3): runs the first branch whose expression is true,
//! else `default`. Nothing is interpolated up front: each key is evaluated in
//! file order when the instruction runs.

use super::{Instr, Instruction};
use crate::dsl::{describe, Compiler, Span};
use crate::expr::{Expr, ExprError};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::ExecError;
use crate::value::Value;
use std::future::Future;

/// A compiled `conditions`.
#[derive(Debug)]
pub(crate) struct Conditions {
    /// Each expression (or its parse error, reported at load and raised when
    /// reached, as the reference does) with the instructions it guards.
    branches: Vec<(Result<Expr, ExprError>, Vec<Instruction>)>,
    /// The `default` branch.
    default: Option<Vec<Instruction>>,
}

impl Instr for Conditions {
    const NAME: &'static str = "conditions";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Conditions, String> {
        let Value::Object(m) = value else {
            return Err(format!(
                "`conditions` takes a mapping of expressions to instruction lists, found {}",
                describe(value)
            ));
        };
        let mut branches = Vec::new();
        let mut default = None;
        for (key, body) in m.iter() {
            if key == "default" {
                default = Some(cx.block(body, "default"));
                continue;
            }
            let span = cx.text_span(key);
            let expr = Expr::parse(key);
            if let Err(e) = &expr {
                cx.report(&span, e.to_string());
            }
            branches.push((expr, cx.block(body, key)));
        }
        Ok(Conditions { branches, default })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        Ok(Box::pin(async move {
            for (expr, body) in &self.branches {
                let expr = expr.as_ref().map_err(|e| ExecError::from(e.clone()))?;
                if expr.eval(x)?.truthy() {
                    return x.block(body).await;
                }
            }
            match &self.default {
                Some(body) => x.block(body).await,
                None => Ok(Flow::Continue),
            }
        }))
    }

    fn blocks(&self) -> Vec<&[Instruction]> {
        let mut blocks: Vec<&[Instruction]> = self.branches.iter().map(|(_, b)| &b[..]).collect();
        blocks.extend(self.default.as_deref());
        blocks
    }
}
