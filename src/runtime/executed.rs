//! The event `runtime.automations.executed` (SPEC section 5) that reports each execution:
//! its trigger, output, timings, waits per limit, and a refusal's error.

use super::{to_millis, ExecError, Execution, Inner, Outcome};
use crate::bus::{Host, HttpSource, Source, EXECUTED};
use crate::value::{Map, Value};
use std::sync::atomic::Ordering;

impl Inner {
    /// Publishes the executed event of `x`, with `error` when it failed.
    pub(super) fn executed(
        &self,
        x: &Execution,
        o: &Outcome,
        payload: Map,
        started_at: String,
        error: Option<&ExecError>,
    ) {
        let source = Source {
            http: x.http.as_ref().map(|(method, path)| HttpSource {
                method: method.clone(),
                path: path.clone(),
            }),
            host: Some(Host {
                replica: self.replica.clone(),
                service: "sluice".into(),
            }),
            ..x.source(None)
        };
        let mut p = Map::new();
        p.insert("slug".into(), Value::str(x.automation.slug.as_str()));
        p.insert("payload".into(), Value::object(payload));
        p.insert("output".into(), o.output.clone());
        p.insert(
            "duration".into(),
            Value::Number(o.duration.as_millis() as f64),
        );
        let throttled_ms = o.throttled.as_millis();
        if throttled_ms >= 1 {
            p.insert("throttled".into(), Value::Number(throttled_ms as f64));
        }
        if let Some(by) = to_millis(&o.throttled_by) {
            p.insert("throttledBy".into(), Value::object(by));
        }
        if let Some(shadow) = to_millis(&o.shadow) {
            p.insert("shadow".into(), Value::object(shadow));
        }
        if let Some(e) = error {
            p.insert("error".into(), error_value(e));
        }
        p.insert("startedAt".into(), Value::str(started_at));
        p.insert("trigger".into(), x.trigger.to_value());
        p.insert("break".into(), Value::Bool(o.broke));
        if let Some(gone) = &x.trigger.caller_gone {
            if gone.load(Ordering::Acquire) {
                p.insert("callerGone".into(), Value::Bool(true));
            }
        }
        // One pass over the whole payload: the trigger's value (an event name)
        // can hold a secret as much as the output can.
        let p = x.ws.redactor.value(&Value::object(p));
        let event = self.event(&x.ws.id, EXECUTED, p, source);
        self.bus.notify(event);
    }
}

/// `{message, code, limit}` of a failed execution, as executed events and reports show it.
pub fn error_value(e: &ExecError) -> Value {
    let mut m = Map::new();
    m.insert("message".into(), Value::str(e.to_string()));
    if let Some(code) = e.kind.code() {
        m.insert("code".into(), Value::str(code));
    }
    if let Some(limit) = &e.limit {
        m.insert("limit".into(), Value::str(limit.as_str()));
    }
    Value::object(m)
}
