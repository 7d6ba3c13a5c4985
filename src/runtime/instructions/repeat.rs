//! `repeat: {on, until, do}` (DSUL §7.4): runs its body once per item of `on`,
//! at most `until` times.

use super::{eval, mapping, Instr, Instruction};
use crate::dsl::{Compiler, Node, Span};
use crate::limits::LimitKind;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::{Map, Value};
use std::future::Future;
use std::sync::Arc;

const FIELDS: &[&str] = &["on", "until", "do"];

/// A compiled `repeat`.
#[derive(Debug)]
pub(crate) struct Repeat {
    /// What to iterate.
    on: Option<Node>,
    /// Maximum number of iterations.
    until: Option<Node>,
    /// The loop body.
    body: Vec<Instruction>,
}

impl Instr for Repeat {
    const NAME: &'static str = "repeat";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Repeat, String> {
        let m = mapping(value, "repeat", "`do`")?;
        let mut repeat = Repeat {
            on: None,
            until: None,
            body: Vec::new(),
        };
        for (field, v) in m.iter() {
            match field.as_str() {
                "on" => repeat.on = Some(cx.node(v)),
                "until" => repeat.until = Some(cx.node(v)),
                "do" => repeat.body = cx.block(v, "do"),
                other => cx.unknown_field(other, "repeat", FIELDS),
            }
        }
        Ok(repeat)
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let on = eval(&self.on, x)?;
        let until = eval(&self.until, x)?;
        Ok(Box::pin(self.run(x, on, until)))
    }

    fn blocks(&self) -> Vec<&[Instruction]> {
        vec![&self.body]
    }
}

impl Repeat {
    async fn run<'a>(&'a self, x: &'a Exec<'a>, on: Value, until: Value) -> Result<Flow, ExecError> {
        // A falsy `on` counts as absent (DSUL §7.4), and so does an `until` of 0.
        let until = match until {
            Value::Number(n) => count("until", n)?,
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(n) => count("until", n)?,
                Err(_) => None,
            },
            _ => None,
        };
        // Items are read one at a time from the value itself: nothing is built up
        // front, so a huge `on` costs what its iterations cost and no more.
        let items = match on {
            v if !v.truthy() => None,
            Value::List(l) => Some(Items::List(l)),
            Value::Object(m) => Some(Items::Object(m)),
            Value::String(s) => Some(Items::Chars(s, 0)),
            // A number runs that many times (§10.1).
            Value::Number(n) => Some(Items::Count(count("on", n)?.unwrap_or(0))),
            _ => None,
        };
        let count = match (&items, until) {
            (Some(items), Some(u)) => items.len().min(u),
            (Some(items), None) => items.len(),
            (None, Some(u)) => u,
            (None, None) => 0,
        };
        let mut items = items.unwrap_or(Items::Count(count));
        let mut flow = Flow::Continue;
        for index in 0..count {
            // An iteration counts as an instruction, so an empty body still ends.
            if x.tick()? {
                tokio::task::yield_now().await;
            }
            x.take(LimitKind::Repeats, 1).await;
            x.set_loop_variables(items.item(index), index);
            flow = x.block(&self.body).await?;
            if flow != Flow::Continue {
                break;
            }
        }
        x.end_loop();
        Ok(flow)
    }
}

/// What `repeat` iterates, read lazily by index.
enum Items {
    List(Arc<Vec<Value>>),
    Object(Arc<Map>),
    /// A string and the byte offset of the next character.
    Chars(Arc<str>, usize),
    Count(u64),
}

impl Items {
    fn len(&self) -> u64 {
        match self {
            Items::List(l) => l.len() as u64,
            Items::Object(m) => m.len() as u64,
            Items::Chars(s, _) => s.chars().count() as u64,
            Items::Count(n) => *n,
        }
    }

    /// The item of iteration `index`; strings must be read in order.
    #[inline]
    fn item(&mut self, index: u64) -> Value {
        let at = usize::try_from(index).unwrap_or(usize::MAX);
        match self {
            Items::List(l) => l.get(at).cloned().unwrap_or_default(),
            Items::Object(m) => match m.get_index(at) {
                Some((k, v)) => {
                    let mut e = Map::with_capacity(2);
                    e.insert("key".into(), Value::str(k.as_str()));
                    e.insert("value".into(), v.clone());
                    Value::object(e)
                }
                None => Value::Undefined,
            },
            Items::Chars(s, offset) => match s[*offset..].chars().next() {
                Some(c) => {
                    *offset += c.len_utf8();
                    Value::str(c.to_string())
                }
                None => Value::Undefined,
            },
            Items::Count(_) => Value::Number(index as f64),
        }
    }
}

/// A loop count from `on` or `until`: `None` for 0, an error for a negative,
/// non-finite or inexact (over 2^53) count.
fn count(field: &str, n: f64) -> Result<Option<u64>, ExecError> {
    if !(0.0..9_007_199_254_740_992.0).contains(&n) {
        return Err(ExecError::new(
            ErrorKind::InvalidInstruction,
            format!(
                "Invalid repeat instruction: `{field}` must be a number of iterations from 0 to \
                 9007199254740991, got {}",
                crate::expr::js_number_to_string(n)
            ),
        ));
    }
    Ok(Some(n.floor() as u64).filter(|n| *n > 0))
}
