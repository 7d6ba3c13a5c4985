//! What starts an execution and what it gives back: the trigger (`run.trigger`),
//! the request to run one automation, and the outcome.

use crate::value::{Map, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// What kind of thing started an execution (`run.trigger.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// An HTTP request to a webhook (or `sluice run`).
    Endpoint,
    /// An event the automation listens to.
    Event,
    /// A tick of one of its schedules.
    Schedule,
    /// A call from another automation.
    Automation,
}

impl TriggerKind {
    /// The name automations and executed events see.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Endpoint => "endpoint",
            TriggerKind::Event => "event",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Automation => "automation",
        }
    }
}

/// What started an execution (`run.trigger`).
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Endpoint, event, schedule or automation.
    pub kind: TriggerKind,
    /// Endpoint name, event type, cron expression or caller slug.
    pub value: String,
    /// For events: the triggering event's id.
    pub event_id: Option<String>,
    /// For endpoints: set once the HTTP caller has gone away; the executed
    /// event then says `callerGone: true`.
    pub caller_gone: Option<Arc<AtomicBool>>,
}

impl Trigger {
    /// A trigger of `kind` with `value`.
    pub fn new(kind: TriggerKind, value: impl Into<String>) -> Trigger {
        Trigger {
            kind,
            value: value.into(),
            event_id: None,
            caller_gone: None,
        }
    }

    /// The trigger as automations read it (`{{run.trigger}}`).
    pub(super) fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(3);
        m.insert("type".into(), Value::str(self.kind.as_str()));
        m.insert("value".into(), Value::str(self.value.as_str()));
        if let Some(id) = &self.event_id {
            m.insert("id".into(), Value::str(id.as_str()));
        }
        Value::object(m)
    }
}

/// The result of one execution.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The automation's output (`{}` when it declares none).
    pub output: Value,
    /// Whether the body ended with `break`.
    pub broke: bool,
    /// Whether a `break: {scope: all}` must stop the callers too.
    pub stop_callers: bool,
    /// Time spent waiting on limiters, the execution's own and its callees'.
    pub throttled: Duration,
    /// That time per limit (`throttledBy`): built-in kinds by name, named limits by theirs.
    pub throttled_by: super::Waits,
    /// Would-be waits of shadow limits (`shadow`).
    pub shadow: super::Waits,
    /// Wall time of the execution, throttling included.
    pub duration: Duration,
    /// Instructions counted when it ended, its callees' included (for a call,
    /// counting from the caller's count when the call started).
    pub instructions: u64,
}

/// A request to run one automation from a trigger.
pub struct Start {
    /// The workspace id.
    pub workspace: String,
    /// The automation slug.
    pub slug: String,
    /// The trigger payload: each top-level key becomes a local variable.
    pub payload: Map,
    /// What triggered it.
    pub trigger: Trigger,
    /// Correlation id to continue (a new one when absent).
    pub correlation_id: Option<String>,
    /// Depth of the emitter for event triggers (0 otherwise).
    pub depth: u32,
    /// HTTP method and path for endpoint triggers (executed event `source.http`).
    pub http: Option<(String, String)>,
}

impl Start {
    /// A start of `slug` by `trigger`, with an empty payload and a new correlation id.
    pub fn new(workspace: &str, slug: &str, trigger: Trigger) -> Start {
        Start {
            workspace: workspace.to_string(),
            slug: slug.to_string(),
            payload: Map::new(),
            trigger,
            correlation_id: None,
            depth: 0,
            http: None,
        }
    }

    /// A webhook-style start of `slug` (as `sluice run` does).
    pub fn endpoint(workspace: &str, slug: &str) -> Start {
        Start::new(workspace, slug, Trigger::new(TriggerKind::Endpoint, slug))
    }

    /// A start of `slug` by a tick of its schedule `cron`.
    pub fn schedule(workspace: &str, slug: &str, cron: &str) -> Start {
        Start::new(workspace, slug, Trigger::new(TriggerKind::Schedule, cron))
    }

    /// The same start with `payload` as its local variables.
    pub fn with_payload(self, payload: Map) -> Start {
        Start { payload, ..self }
    }
}
