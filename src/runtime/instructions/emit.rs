//! `emit: {event, payload, output}` (DSUL §7.7): sends an event to the
//! workspace's listeners and watchers.

use super::{Instruction, eval, mapping, store_output, Instr};
use crate::bus::check_event_type;
use crate::dsl::{Compiler, Node, Span};
use crate::limits::LimitKind;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::{Map, Value};
use std::future::Future;
use std::sync::Arc;

const FIELDS: &[&str] = &["event", "payload", "target", "options", "output"];

/// A compiled `emit`.
#[derive(Debug)]
pub(crate) struct Emit {
    event: Option<Node>,
    payload: Option<Node>,
    output: Option<Node>,
}

impl Instr for Emit {
    const NAME: &'static str = "emit";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Emit, String> {
        let m = mapping(value, "emit", "`event`")?;
        let mut emit = Emit {
            event: None,
            payload: None,
            output: None,
        };
        for (field, v) in m.iter() {
            match field.as_str() {
                "event" => {
                    let node = cx.node(v);
                    // A literal type is checked now; a templated one when it runs.
                    if let Some(Value::String(kind)) = node.as_const() {
                        if let Err(e) = check_event_type(kind) {
                            let span = cx.text_span(kind);
                            cx.report(&span, e.to_string());
                        }
                    }
                    emit.event = Some(node);
                }
                "payload" => emit.payload = Some(cx.node(v)),
                "output" => emit.output = Some(cx.node(v)),
                // Delivery options of the reference's user topics: nothing to do here.
                "target" | "options" => {}
                other => cx.unknown_field(other, "emit", FIELDS),
            }
        }
        Ok(emit)
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let event = self.event.as_ref().map(|n| n.eval(x)).transpose()?;
        let payload = eval(&self.payload, x)?;
        let output = eval(&self.output, x)?;
        Ok(Box::pin(async move {
            let sent = emit(x, event, payload).await?;
            store_output(x, &output, sent)?;
            Ok(Flow::Continue)
        }))
    }
}

/// Sends the event and returns it as `output` receives it (with its `size`).
async fn emit(x: &Exec<'_>, event: Option<Value>, payload: Value) -> Result<Value, ExecError> {
    let kind = match event {
        Some(Value::String(s)) => {
            check_event_type(&s)
                .map_err(|e| ExecError::new(ErrorKind::InvalidEvent, e.to_string()))?;
            s.to_string()
        }
        other => {
            return Err(ExecError::new(
                ErrorKind::InvalidEvent,
                format!(
                    "invalid event type {}: `event` must be a string of letters, digits, spaces, `.`, `_` and `-`",
                    other
                        .map(|v| v.to_json_string())
                        .unwrap_or_else(|| "(missing)".into())
                ),
            ))
        }
    };
    let (kind, payload) = match payload {
        Value::Undefined | Value::Null => (kind, Value::empty_object()),
        p @ Value::Object(_) => (kind, p),
        other => {
            // The reference sends an `error` event instead of failing (DSUL §7.7).
            let mut details = Map::new();
            details.insert("event".into(), Value::str(kind.as_str()));
            details.insert("payload".into(), other.clone());
            let mut e = Map::new();
            e.insert("error".into(), Value::str("InvalidEventError"));
            e.insert(
                "message".into(),
                Value::str(format!(
                    "Event payload must be an object, received {}",
                    other.type_name()
                )),
            );
            e.insert("details".into(), Value::object(details));
            ("error".to_string(), Value::object(e))
        }
    };
    x.take(LimitKind::Emits, 1).await;
    let event = x.event(&kind, payload);
    let mut value = event.to_value();
    let size = value.to_json_string().len();
    if let Value::Object(m) = &mut value {
        Arc::make_mut(m).insert("size".into(), Value::Number(size as f64));
    }
    let max = x.settings().runtime.max_event_bytes;
    if size > max {
        return Err(ExecError::new(
            ErrorKind::InvalidEvent,
            format!(
                "event `{kind}` is {size} bytes, over the limit of {max} (runtime.max_event_bytes)"
            ),
        ));
    }
    x.publish(event).await?;
    Ok(value)
}
