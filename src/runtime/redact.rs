//! Keeps secrets out of every view that leaves the process (SPEC §6, DSUL §8):
//! executed events, the SSE stream, webhook error bodies and the logs.
//!
//! Each workspace's [`Redactor`] is built when it loads (in `workspace`); this
//! module applies them where views leave: the log writer hides every installed
//! workspace's secrets, and executed events hide secret arguments. Arguments marked `secret: true` are hidden whole in executed events. Events
//! delivered to automations are never redacted: only what leaves the process is.

use crate::value::{Map, Value};
use crate::workspace::redact::REDACTED;
pub use crate::workspace::Redactor;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Every installed workspace's secrets, for the log writer: a log line rarely
/// says which workspace it is about, so all of them are hidden everywhere.
#[derive(Default)]
struct LogSecrets {
    by_workspace: HashMap<String, Arc<[String]>>,
    all: Redactor,
}

static LOG_SECRETS: RwLock<Option<LogSecrets>> = RwLock::new(None);

/// Records the secrets of workspace `id` (`None` once it is removed) for the logs.
pub(super) fn log_secrets(id: &str, redactor: Option<&Redactor>) {
    let mut guard = LOG_SECRETS.write().unwrap_or_else(|p| p.into_inner());
    let logs = guard.get_or_insert_with(LogSecrets::default);
    let changed = match redactor {
        Some(r) => {
            logs.by_workspace
                .insert(id.to_string(), r.texts.clone())
                .as_deref()
                != Some(&r.texts[..])
        }
        None => logs.by_workspace.remove(id).is_some(),
    };
    if changed {
        let mut all: Vec<String> = logs
            .by_workspace
            .values()
            .flat_map(|t| t.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        logs.all = Redactor::of(all);
    }
}

fn log_redactor() -> Redactor {
    LOG_SECRETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|l| l.all.clone())
        .unwrap_or_default()
}

/// Standard error with every installed workspace's secrets hidden: the writer
/// of the logs, third-party crates' lines included.
pub struct RedactedStderr;

impl std::io::Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `tracing` writes each line whole, so a secret is never cut across calls.
        let mut stderr = std::io::stderr().lock();
        match log_redactor().replace(buf) {
            Some(clean) => stderr.write_all(&clean)?,
            None => stderr.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The names of the arguments declared `secret: true`.
pub(super) fn secret_arguments(arguments: Option<&Value>) -> Vec<String> {
    let Some(Value::Object(args)) = arguments else {
        return Vec::new();
    };
    args.iter()
        .filter(|(_, schema)| {
            schema
                .as_object()
                .and_then(|s| s.get("secret"))
                .is_some_and(|s| matches!(s, Value::Bool(true)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The trigger payload as executed events show it: secret arguments hidden
/// whole and, for a webhook, only the request headers in `headers` (names
/// in lower case). Secret texts are hidden later, with the whole event.
pub(super) fn trigger_payload(
    payload: &Map,
    arguments: &[String],
    headers: Option<&[String]>,
) -> Map {
    let mut out = Map::with_capacity(payload.len());
    for (k, v) in payload {
        let v = if arguments.contains(k) {
            Value::str(REDACTED)
        } else if let (Some(keep), "headers", Value::Object(h)) = (headers, k.as_str(), v) {
            Value::object(
                h.iter()
                    .filter(|(name, _)| keep.iter().any(|n| n.eq_ignore_ascii_case(name)))
                    .map(|(name, v)| (name.clone(), v.clone()))
                    .collect(),
            )
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::redact::tests::map;
    use serde_json::json;

    #[test]
    fn executed_trigger_payload_hides_secret_arguments_and_keeps_listed_headers() {
        let args = secret_arguments(Some(&Value::from(
            json!({"password": {"type": "string", "secret": true}, "name": {"type": "string"}}),
        )));
        let payload = map(json!({
            "password": "hunter2",
            "name": "ab",
            "headers": {"x-api-key": "k", "content-type": "application/json", "X-Request-Id": "r"},
        }));
        let keep = ["content-type".to_string(), "x-request-id".to_string()];
        assert_eq!(
            Value::object(trigger_payload(&payload, &args, Some(&keep))).to_json(),
            json!({
                "password": "REDACTED",
                "name": "ab",
                "headers": {"content-type": "application/json", "X-Request-Id": "r"},
            })
        );
        // Not a webhook: `headers` is the caller's own variable, kept whole.
        assert_eq!(
            Value::object(trigger_payload(&payload, &[], None)).to_json(),
            Value::object(payload).to_json()
        );
    }

    #[test]
    fn logs_hide_the_secrets_of_installed_workspaces_only() {
        let secret = "log-secret-5b1d07e2";
        let line = format!("listener failed: {secret}");
        let r = Redactor::new(&map(json!({"k": secret})));
        log_secrets("redact-test-ws", Some(&r));
        assert_eq!(log_redactor().text(&line), "listener failed: REDACTED");
        log_secrets("redact-test-ws", None);
        assert_eq!(log_redactor().text(&line), line);
    }
}
