//! Events and the bus that carries them between automations.
//!
//! One trait, [`Bus`], with an embedded in-process implementation (the default,
//! no external service) and a NATS implementation for several instances.
//! The bus only moves events: running the listeners of an event is the job of
//! the [`EventHandler`] the runtime registers, so every implementation decides
//! where (on which instance) an event runs and when it counts as handled.

mod embedded;
mod feeds;
mod nats;

pub use embedded::EmbeddedBus;
pub use feeds::{EventFilter, Waiter, Watch, WATCH_CAPACITY};
pub use nats::NatsBus;

use crate::value::{Map, Value};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Type of the event sent after every execution.
pub const EXECUTED: &str = "runtime.automations.executed";

/// Prefix of the event types only the runtime sends.
pub const RESERVED_PREFIX: &str = "runtime.";

/// Why a name cannot be the type of an event sent by an automation or a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    /// Empty, or holding a character outside the valid set.
    #[error("invalid event type `{0}`: use letters, digits, spaces, `.`, `_` and `-`")]
    Invalid(String),
    /// A `runtime.*` type, which only the runtime sends.
    #[error("event type `{0}` is reserved: `runtime.*` events are sent by the runtime only; use another prefix (letters, digits, spaces, `.`, `_` and `-`)")]
    Reserved(String),
}

/// The one rule for event types that automations (`emit`), clients
/// (`POST /events`) and `sluice validate` may use: letters, digits, spaces,
/// `.`, `_` and `-`, and no `runtime.` prefix, so nobody can forge the
/// runtime's own events (executed events that `wait` and SSE clients trust).
pub fn check_event_type(kind: &str) -> Result<(), EventTypeError> {
    let valid = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
    if !valid {
        return Err(EventTypeError::Invalid(kind.to_string()));
    }
    if kind.starts_with(RESERVED_PREFIX) {
        return Err(EventTypeError::Reserved(kind.to_string()));
    }
    Ok(())
}

/// Where an event comes from (`source` in SPEC §5): which run sent it, so its
/// listeners share that run's `run` context and continue its depth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The run the event belongs to; its listeners continue it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The workspace of the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The automation that sent it (absent for events from outside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automation_slug: Option<String>,
    /// The sender's call depth (absent for events from outside: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// For executed events of endpoint runs: the request's method and path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// For executed events: the instance that ran the automation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    /// Earlier deliveries of this event (absent on the first), set by the bus
    /// that redelivers it so listeners can make side effects idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u32>,
}

/// The request that started an endpoint run (`source.http`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSource {
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
}

/// The instance that ran an automation (`source.host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The replica's name (host name and process id).
    pub replica: String,
    /// Always `sluice`.
    pub service: String,
}

impl Source {
    /// The source as automations read it (`{{source.correlationId}}`), with the
    /// keys in the order and spelling of its JSON.
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(4);
        let mut text = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(key.into(), Value::str(v.as_str()));
            }
        };
        text("correlationId", &self.correlation_id);
        text("workspaceId", &self.workspace_id);
        text("automationSlug", &self.automation_slug);
        if let Some(depth) = self.depth {
            m.insert("depth".into(), Value::Number(depth.into()));
        }
        if let Some(http) = &self.http {
            let mut h = Map::with_capacity(2);
            h.insert("method".into(), Value::str(http.method.as_str()));
            h.insert("path".into(), Value::str(http.path.as_str()));
            m.insert("http".into(), Value::object(h));
        }
        if let Some(host) = &self.host {
            let mut h = Map::with_capacity(2);
            h.insert("replica".into(), Value::str(host.replica.as_str()));
            h.insert("service".into(), Value::str(host.service.as_str()));
            m.insert("host".into(), Value::object(h));
        }
        if let Some(n) = self.redelivered {
            m.insert("redelivered".into(), Value::Number(n.into()));
        }
        Value::object(m)
    }
}

/// An event of a workspace.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique id.
    pub id: String,
    /// Workspace the event belongs to.
    pub workspace: String,
    /// Event type (`user.created`).
    pub kind: String,
    /// The event payload.
    pub payload: Value,
    /// Where it comes from.
    pub source: Source,
    /// ISO 8601 creation time.
    pub created_at: String,
}

impl Event {
    /// The event as automations see it (`{id, type, source, payload, createdAt}`);
    /// `emit` adds `size`, which costs a serialization nobody else needs.
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(6);
        m.insert("id".into(), Value::str(self.id.as_str()));
        m.insert("type".into(), Value::str(self.kind.as_str()));
        m.insert("source".into(), self.source.to_value());
        m.insert("payload".into(), self.payload.clone());
        m.insert("createdAt".into(), Value::str(self.created_at.as_str()));
        Value::object(m)
    }
}

/// Runs the listeners of an event; implemented by the runtime.
pub trait EventHandler: Send + Sync + 'static {
    /// Runs every automation listening to `event` and resolves when they finished.
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, ()>;
}

/// Why the bus could not take an event.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is shut down.
    #[error("the event bus is closed")]
    Closed,
    /// The broker cannot be reached or set up: connecting, creating a stream or
    /// a consumer, subscribing.
    #[error("event bus: {step}: {reason}")]
    Connect {
        /// What was being done (`connecting to NATS`, `creating the events stream`).
        step: &'static str,
        /// The broker's or the client's answer.
        reason: String,
    },
    /// An event could not be written for the wire.
    #[error("event bus: encoding an event: {0}")]
    Encode(String),
    /// The broker refused a publish, or it never left: surely not stored.
    #[error("event bus: {step}: {reason}")]
    Publish {
        /// What was published (`publishing an event`, `publishing a claim`).
        step: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The broker answered the store with a refusal: surely not stored.
    #[error("event bus: {step}: {reason}")]
    Ack {
        /// What was being stored (`storing an event`, `storing a claim`).
        step: &'static str,
        /// The broker's answer.
        reason: String,
    },
    /// No answer in time: the event may or may not be stored (a client buffers
    /// publishes while disconnected). Publishing it again with the same id is
    /// safe: the bus stores an id once within its duplicate window.
    #[error("event bus: outcome unknown: {step}: {reason}")]
    Timeout {
        /// What was being stored.
        step: &'static str,
        /// What the client said.
        reason: String,
    },
}

impl BusError {
    /// Whether the event may have been stored all the same (a time-out), so that the
    /// caller should send it again with its id rather than give it up.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BusError::Timeout { .. })
    }
}

/// A published event on its way to being stored: the emitter goes on at once
/// and collects the store answer later (NATS: the JetStream ack), so emits are
/// pipelined instead of waiting a round trip each.
pub struct Receipt {
    waited: Duration,
    stored: Option<BoxFuture<'static, Result<(), BusError>>>,
}

impl Receipt {
    /// An event already stored (the embedded bus), after `waited` for room.
    pub fn stored_after(waited: Duration) -> Receipt {
        Receipt {
            waited,
            stored: None,
        }
    }

    /// An event whose store answer `stored` resolves to.
    pub fn pending(stored: BoxFuture<'static, Result<(), BusError>>) -> Receipt {
        Receipt {
            waited: Duration::ZERO,
            stored: Some(stored),
        }
    }

    /// How long the publish waited for room in a full queue (back-pressure the
    /// emitter counts as throttled time).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The store answer still to come, if any.
    pub fn into_pending(self) -> Option<BoxFuture<'static, Result<(), BusError>>> {
        self.stored
    }

    /// Resolves once the event is stored, or with why it may not be.
    pub async fn stored(self) -> Result<(), BusError> {
        match self.stored {
            Some(stored) => stored.await,
            None => Ok(()),
        }
    }
}

/// Carries events to the automations that listen to them, and to watchers.
pub trait Bus: Send + Sync + 'static {
    /// Registers the handler that runs listeners; call once before publishing.
    fn start(&self, handler: Arc<dyn EventHandler>);
    /// Publishes an emitted event: watchers see it and its listeners run once;
    /// an id published again within the duplicate window is dropped. Resolves
    /// once the event is handed over (in order with this caller's earlier
    /// publishes), with a [`Receipt`] for its store answer.
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Receipt, BusError>>;
    /// Publishes a notification (the executed event): watchers only, no listeners.
    fn notify(&self, event: Event);
    /// Whether the bus can take events now (NATS: the connection is up); the
    /// healthcheck reports it so load balancers stop sending work that would fail.
    fn connected(&self) -> bool;
    /// Whether anyone (a `wait`, an SSE client, other instances) can see notifications.
    fn has_watchers(&self) -> bool;
    /// Every event of `workspace` this instance sees, for the SSE stream.
    fn watch(&self, workspace: &str) -> Watch;
    /// The first event of `workspace` that `filter` accepts, for `wait`; register
    /// before emitting what should answer it.
    fn wait_for(&self, workspace: &str, filter: EventFilter) -> Waiter;
    /// Resolves once every event published so far has been handled (used by `sluice run`).
    fn settled(&self) -> BoxFuture<'_, ()>;
    /// Claims `key` for this instance: true for the first claim in the cluster
    /// (used so that each schedule tick runs once), false for later ones.
    fn claim(&self, key: String) -> BoxFuture<'_, Result<bool, BusError>>;
    /// Stops taking new events, then resolves once the events this instance
    /// took have been handled (or handed back to other instances).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types() {
        assert_eq!(check_event_type("user.created v2_x-y"), Ok(()));
        assert_eq!(check_event_type("runtimes.x"), Ok(()));
        assert!(matches!(
            check_event_type("bad/name"),
            Err(EventTypeError::Invalid(_))
        ));
        assert!(matches!(
            check_event_type(""),
            Err(EventTypeError::Invalid(_))
        ));
        let forged = check_event_type(EXECUTED).unwrap_err();
        assert!(matches!(forged, EventTypeError::Reserved(_)));
        let message = forged.to_string();
        assert!(message.contains("reserved") && message.contains("letters, digits"));
    }
}
