//! `delete: {name}` (DSUL §7.2): removes a variable or a key inside one.

use super::{Instruction, mapping, Instr};
use crate::dsl::{Compiler, Node, Span};
use crate::expr::parse_variable_name;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::Value;
use std::future::Future;

const FIELDS: &[&str] = &["name"];

/// A compiled `delete`.
#[derive(Debug)]
pub(crate) struct Delete {
    name: Node,
}

fn invalid(message: String) -> ExecError {
    ExecError::new(
        ErrorKind::InvalidInstruction,
        format!("Invalid delete instruction: {message}"),
    )
}

impl Instr for Delete {
    const NAME: &'static str = "delete";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Delete, String> {
        let m = mapping(value, "delete", "`name`")?;
        let mut name = None;
        for (field, v) in m.iter() {
            match field.as_str() {
                "name" => name = Some(cx.node(v)),
                other => cx.unknown_field(other, "delete", FIELDS),
            }
        }
        let name = name.ok_or("`delete` needs a `name` field")?;
        Ok(Delete { name })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let name = self.name.eval(x)?;
        Ok(async move {
            let Value::String(name) = name else {
                return Err(invalid("`name` must be a string".into()));
            };
            let keys = parse_variable_name(&name).map_err(|e| invalid(e.to_string()))?;
            x.delete(&keys)?;
            Ok(Flow::Continue)
        })
    }
}
