//! `break: {scope}` (DSUL §7.6): stops the automation, and with `scope: all`
//! its callers too.

use super::{Instr, Instruction};
use crate::dsl::{Compiler, Node, Span};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::ExecError;
use crate::value::Value;
use std::future::Future;

const FIELDS: &[&str] = &["scope"];

/// A compiled `break`.
#[derive(Debug)]
pub(crate) struct Break {
    /// `automation` (default) or `all`.
    scope: Option<Node>,
}

impl Instr for Break {
    const NAME: &'static str = "break";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Break, String> {
        let mut scope = None;
        // Any other value is a break of the automation, as in the reference.
        if let Value::Object(m) = value {
            for (field, v) in m.iter() {
                match field.as_str() {
                    "scope" => scope = Some(cx.node(v)),
                    other => cx.unknown_field(other, "break", FIELDS),
                }
            }
        }
        Ok(Break { scope })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let scope = super::eval(&self.scope, x)?;
        let all = scope.as_str() == Some("all");
        Ok(async move { Ok(Flow::Break { all }) })
    }
}
