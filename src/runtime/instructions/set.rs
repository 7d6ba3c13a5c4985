//! `set: {name, value, type}` (DSUL §7.1): writes a variable.

use super::{Instruction, eval, mapping, Instr};
use crate::dsl::{Compiler, Node, Span};
use crate::expr::{parse_variable_name, Key};
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::vars::{invalid_set, Mode};
use crate::runtime::ExecError;
use crate::value::Value;
use std::future::Future;

const FIELDS: &[&str] = &["name", "value", "type", "output"];

/// A compiled `set`.
#[derive(Debug)]
pub(crate) struct Set {
    name: Name,
    value: Node,
    /// `replace`, `merge` or `push`; absent means replace.
    mode: Option<Node>,
}

/// The variable a `set` writes: parsed at load when it is a plain path, so hot
/// loops do not re-parse it; templated names are parsed when they run.
#[derive(Debug)]
enum Name {
    /// A constant path; `push` when it ended in `[]`.
    Static { keys: Vec<Key>, push: bool },
    /// A templated (or malformed) name, resolved and parsed at run time, where
    /// a malformed name fails as "Invalid set instruction" like in the reference.
    Dynamic(Node),
}

impl Name {
    fn compile(node: Node) -> Name {
        if let Node::Const(Value::String(s)) = &node {
            let (path, push) = match s.strip_suffix("[]") {
                Some(base) => (base, true),
                None => (&**s, false),
            };
            if let Ok(keys) = parse_variable_name(path) {
                return Name::Static { keys, push };
            }
        }
        Name::Dynamic(node)
    }
}

/// The mode a `type` names.
fn mode(kind: &Value) -> Result<Mode, ExecError> {
    match kind.as_str() {
        None | Some("replace") => Ok(Mode::Replace),
        Some("merge") => Ok(Mode::Merge),
        Some("push") => Ok(Mode::Push),
        Some(other) => Err(invalid_set(format!(
            "unknown type `{other}` (expected replace, merge or push)"
        ))),
    }
}

impl Instr for Set {
    const NAME: &'static str = "set";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Set, String> {
        let m = mapping(value, "set", "`name`")?;
        let (mut name, mut val, mut kind) = (None, None, None);
        for (field, v) in m.iter() {
            match field.as_str() {
                "name" => name = Some(cx.node(v)),
                "value" => val = Some(cx.node(v)),
                "type" => {
                    let node = cx.node(v);
                    // A literal mode is checked now; the reference fails when it runs.
                    if let Some(Err(e)) = node.as_const().map(mode) {
                        let span = cx.key_span("type");
                        cx.report(&span, e.message);
                    }
                    kind = Some(node);
                }
                // The result of `set` is nothing, so `output` is ignored (DSUL §7.1).
                "output" => {}
                other => cx.unknown_field(other, "set", FIELDS),
            }
        }
        let name = name.ok_or("`set` needs a `name` field")?;
        Ok(Set {
            name: Name::compile(name),
            value: val.unwrap_or(Node::Const(Value::Undefined)),
            mode: kind,
        })
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let name = match &self.name {
            Name::Static { .. } => Value::Undefined,
            Name::Dynamic(n) => n.eval(x)?,
        };
        let value = self.value.eval(x)?;
        let kind = eval(&self.mode, x)?;
        Ok(async move {
            let mode = mode(&kind)?;
            match &self.name {
                Name::Static { keys, push } => {
                    let mode = if *push { Mode::Push } else { mode };
                    x.write_keys(keys, value.deep_copy(), mode)?;
                }
                Name::Dynamic(_) => {
                    let Value::String(name) = &name else {
                        return Err(invalid_set(format!(
                            "`name` must be a string, found {}",
                            name.type_name()
                        )));
                    };
                    match name.strip_suffix("[]") {
                        Some(base) => x.write(base, value.deep_copy(), Mode::Push)?,
                        None => x.write(name, value.deep_copy(), mode)?,
                    }
                }
            }
            Ok(Flow::Continue)
        })
    }
}
