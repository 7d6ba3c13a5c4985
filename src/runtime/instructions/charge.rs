//! `charge: {credits}` (SPEC section 8): charges credits learned while running (tokens a
//! model used, pages a converter read) to the workspace's quota, for this automation.

use super::{mapping, Instr, Instruction};
use crate::dsl::{Compiler, Node, Span};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::quota::credits_of;
use crate::runtime::ExecError;
use crate::value::Value;
use std::future::Future;

const FIELDS: &[&str] = &["credits"];

/// A compiled `charge`.
#[derive(Debug)]
pub(crate) struct Charge {
    credits: Node,
}

impl Instr for Charge {
    const NAME: &'static str = "charge";

    fn compile(
        value: &Value,
        span: &Span,
        cx: &mut Compiler<'_, Instruction>,
    ) -> Result<Charge, String> {
        let m = mapping(value, "charge", "`credits`")?;
        let mut credits = None;
        for (field, v) in m.iter() {
            match field.as_str() {
                "credits" => credits = Some(cx.node(v)),
                other => cx.unknown_field(other, "charge", FIELDS),
            }
        }
        let credits = credits.ok_or("`charge` needs a `credits` field")?;
        // A literal amount is checked now; a templated one when it runs.
        if let Some(c) = credits.as_const() {
            if let Err(e) = credits_of(c, "charge.credits") {
                cx.report(span, e.message);
            }
        }
        Ok(Charge { credits })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let credits = credits_of(&self.credits.eval(x)?, "charge.credits")?;
        x.charge(credits)?;
        Ok(std::future::ready(Ok(Flow::Continue)))
    }
}
