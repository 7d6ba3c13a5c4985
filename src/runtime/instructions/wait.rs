//! `wait: {oneOf, timeout, output}` (DSUL §7.9): pauses until a matching event
//! is emitted in the workspace, or for `timeout` seconds.

use super::{Instruction, eval, mapping, store_output, Instr};
use crate::dsl::{Compiler, Node, Span};
use crate::expr::{get_path, js_number_to_string, loose_eq, parse_variable_name, Scope};
use crate::limits::BudgetExceeded;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::{Map, Value};
use std::future::Future;
use std::time::Duration;

const FIELDS: &[&str] = &["oneOf", "timeout", "output"];

/// A compiled `wait`.
#[derive(Debug)]
pub(crate) struct Wait {
    one_of: Option<Node>,
    timeout: Option<Node>,
    output: Option<Node>,
}

impl Instr for Wait {
    const NAME: &'static str = "wait";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Wait, String> {
        let m = mapping(value, "wait", "`oneOf` or `timeout`")?;
        let mut wait = Wait {
            one_of: None,
            timeout: None,
            output: None,
        };
        for (field, v) in m.iter() {
            match field.as_str() {
                "oneOf" => wait.one_of = Some(cx.node(v)),
                "timeout" => wait.timeout = Some(cx.node(v)),
                "output" => wait.output = Some(cx.node(v)),
                other => cx.unknown_field(other, "wait", FIELDS),
            }
        }
        Ok(wait)
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let one_of = eval(&self.one_of, x)?;
        let timeout = eval(&self.timeout, x)?;
        let output = eval(&self.output, x)?;
        Ok(Box::pin(async move {
            let event = wait(x, one_of, &timeout).await?;
            store_output(x, &output, event)?;
            Ok(Flow::Continue)
        }))
    }
}

/// Waits for the first event matching one of `one_of`; undefined on timeout.
async fn wait(x: &Exec<'_>, one_of: Value, timeout: &Value) -> Result<Value, ExecError> {
    // No await before the waiter is registered: only events emitted after the
    // wait started count, and `all` starts the emit right after this first poll.
    let timeout = wait_timeout(x, timeout)?;
    let one_of: Vec<Map> = match one_of {
        Value::List(l) => l.iter().filter_map(Value::as_object).cloned().collect(),
        _ => Vec::new(),
    };
    if one_of.is_empty() {
        tokio::time::sleep(timeout).await;
        return Ok(Value::Undefined);
    }
    // `cancelTriggers`: the event this wait takes must not start its listeners.
    let cancelling: Vec<Map> = one_of
        .iter()
        .filter(|c| matches!(c.get("cancelTriggers"), Some(Value::Bool(true))))
        .cloned()
        .collect();
    let _cancel = (!cancelling.is_empty()).then(|| x.cancel_triggers(cancelling));
    // The bus runs the filter on this workspace's events and sends only the
    // first match here, so no flood can push the awaited event out.
    let mut waiter = x.wait_for(Box::new(move |event: &crate::bus::Event| {
        // Most events are of other types: skip them before building their value.
        if !one_of
            .iter()
            .any(|c| c.get("event").and_then(Value::as_str) == Some(&event.kind))
        {
            return false;
        }
        let value = event.to_value();
        one_of
            .iter()
            .any(|c| matches_condition(c, &event.kind, &value))
    }));
    match tokio::time::timeout(timeout, waiter.recv()).await {
        Ok(Some(event)) => Ok(event.to_value()),
        Err(_) | Ok(None) => Ok(Value::Undefined),
    }
}

/// The `timeout` of a `wait`: seconds as a number or numeric text, the default
/// when absent or not numeric (as the reference), refused when negative, NaN
/// or over the workspace's `max_wait_secs`.
fn wait_timeout(x: &Exec<'_>, given: &Value) -> Result<Duration, ExecError> {
    let default = x.settings().runtime.wait_timeout_secs;
    let secs = match given {
        Value::Number(n) => *n,
        Value::String(s) => s.trim().parse::<f64>().unwrap_or(default),
        _ => default,
    };
    if secs.is_nan() || secs < 0.0 {
        return Err(ExecError::new(
            ErrorKind::InvalidInstruction,
            format!(
                "Invalid wait instruction: `timeout` must be a number of seconds of at least 0, got {}",
                js_number_to_string(secs)
            ),
        ));
    }
    let budgets = x.budgets();
    if secs > budgets.max_wait_secs as f64 {
        return Err(BudgetExceeded::new(
            budgets,
            "max_wait_secs",
            format!("a wait of {} seconds", js_number_to_string(secs)),
            secs.min(u64::MAX as f64) as u64,
        )
        .into());
    }
    // Ten years is forever for a wait, and keeps deadline arithmetic far from overflow
    // whatever an operator sets.
    Ok(Duration::from_secs_f64(secs.min(315_360_000.0)))
}

/// Whether an event matches one `oneOf` entry: same type and every filter equal
/// (loosely) to the value at its dotted path in the event.
pub(crate) fn matches_condition(c: &Map, kind: &str, event: &Value) -> bool {
    if c.get("event").and_then(Value::as_str) != Some(kind) {
        return false;
    }
    let Some(Value::Object(filters)) = c.get("filters") else {
        return true;
    };
    filters.iter().all(|(path, expected)| {
        let actual = match parse_variable_name(path) {
            Ok(keys) => get_path(event, &keys),
            Err(_) => return false,
        };
        match (&actual, expected) {
            (Value::Object(_) | Value::List(_), _) => actual == *expected,
            _ => loose_eq(&actual, expected),
        }
    })
}
