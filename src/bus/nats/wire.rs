//! The wire codec: an [`Event`] as JSON on NATS, and the subjects that route it
//! (`sluice.<workspace>.events.<type>`, `sluice.<workspace>.executed`).

use crate::bus::{BusError, Event};
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// An event as it travels on NATS: the whole [`Event`] as JSON.
#[derive(Serialize, Deserialize)]
pub(super) struct Wire {
    pub(super) id: String,
    pub(super) workspace: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) payload: serde_json::Value,
    pub(super) source: crate::bus::Source,
    #[serde(rename = "createdAt")]
    pub(super) created_at: String,
}

pub(super) fn encode(event: &Event) -> Result<Vec<u8>, BusError> {
    let wire = Wire {
        id: event.id.clone(),
        workspace: event.workspace.clone(),
        kind: event.kind.clone(),
        payload: event.payload.to_json(),
        source: event.source.clone(),
        created_at: event.created_at.clone(),
    };
    serde_json::to_vec(&wire).map_err(|e| BusError::Encode(e.to_string()))
}

pub(super) fn decode(bytes: &[u8]) -> Result<Event, serde_json::Error> {
    let wire: Wire = serde_json::from_slice(bytes)?;
    Ok(Event {
        id: wire.id,
        workspace: wire.workspace,
        kind: wire.kind,
        payload: Value::from_json(&wire.payload),
        source: wire.source,
        created_at: wire.created_at,
    })
}

/// One subject token: NATS tokens cannot be empty nor hold spaces, `.`, `*` or `>`.
/// The real names travel in the body; the subject only routes.
pub(super) fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `sluice.<workspace>.events.<type>`, the type's dots kept as subject levels.
pub(super) fn events_subject(workspace: &str, kind: &str) -> String {
    let kind: Vec<String> = kind.split('.').map(token).collect();
    format!("sluice.{}.events.{}", token(workspace), kind.join("."))
}

pub(super) fn executed_subject(workspace: &str) -> String {
    format!("sluice.{}.executed", token(workspace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_levels_and_replace_what_nats_refuses() {
        assert_eq!(
            events_subject("ws", "user.created"),
            "sluice.ws.events.user.created"
        );
        assert_eq!(
            events_subject("my.ws", "a b..*>"),
            "sluice.my_ws.events.a_b._.__"
        );
        assert_eq!(events_subject("", ""), "sluice._.events._");
        assert_eq!(executed_subject("w s"), "sluice.w_s.executed");
    }

    #[test]
    fn events_survive_the_wire() {
        let source = crate::bus::Source {
            correlation_id: Some("c1".into()),
            depth: Some(2),
            ..Default::default()
        };
        let event = Event {
            id: "e1".into(),
            workspace: "ws".into(),
            kind: "a b".into(),
            payload: Value::from(serde_json::json!({"n": 1, "l": [true, null]})),
            source,
            created_at: "2026-11-22T15:03:42.056Z".into(),
        };
        let back = decode(&encode(&event).unwrap()).unwrap();
        assert_eq!(back.to_value(), event.to_value());
        assert!(decode(b"{\"id\": 1}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
