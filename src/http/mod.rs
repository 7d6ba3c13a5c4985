//! The HTTP routes of `sluice serve` (SPEC §3): webhooks, event ingestion, the
//! per-workspace event stream (guarded by a token), the operator secrets API,
//! health and metrics.
//!
//! Handlers stay thin: they translate HTTP to a [`Runtime`] call and back. The
//! state they share is explicit in [`AppState`].

mod auth;
mod limits;
mod listen;
mod secrets;
pub mod usage;

pub use listen::{serve, Shutdown};

use crate::bus::{check_event_type, Watch};
use crate::config::Settings;
use crate::runtime::{Redactor, Runtime, Start, Trigger, TriggerKind};
use crate::value::{Map, Value};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub runtime: Runtime,
    /// The settings the server started with.
    pub settings: Arc<Settings>,
    /// Set once workspaces are loaded and the bus is connected.
    pub ready: Arc<AtomicBool>,
    /// The workspaces on disk (the secrets API reloads through it).
    pub library: Arc<crate::runtime::Library>,
    /// Ends event streams on SIGTERM and owns webhook runs until the deadline.
    pub shutdown: Shutdown,
}

/// The router with every route of SPEC §3, and the usage routes of §8 when the runtime
/// has quotas.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.http.max_body;
    let usage = state.runtime.quotas().cloned().map(|quotas| {
        usage::routes(usage::UsageState {
            quotas,
            admin_token: state.settings.admin_token.as_deref().map(Arc::from),
            host: Arc::new(usage::RuntimeHost(state.runtime.clone())),
        })
    });
    let router = Router::new()
        .route(
            "/v2/workspaces/{ws}/webhooks/{slug}",
            get(webhook).post(webhook),
        )
        .route("/v2/workspaces/{ws}/events", get(stream).post(ingest))
        .route(
            "/v2/workspaces/{ws}/secrets",
            get(secrets::read)
                .put(secrets::replace)
                .patch(secrets::merge),
        )
        .route("/v2/workspaces/{ws}/limits", get(limits::read))
        .route("/sys/healthcheck", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    let router = match usage {
        Some(usage) => router.merge(usage),
        None => router,
    };
    router.layer(DefaultBodyLimit::max(max_body))
}

/// An error answer: its status and a message for the caller.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": {"message": self.message}})),
        )
            .into_response()
    }
}

/// An error response: `{"error": {"message": ...}}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    api_error(status, message).into_response()
}

/// An error to return with `?` before it becomes a response.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// Request headers as the automation sees them: lower-case names, credentials dropped.
fn headers_value(headers: &HeaderMap) -> Value {
    let mut m = Map::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION || name == header::COOKIE {
            continue;
        }
        let v = Value::str(String::from_utf8_lossy(value.as_bytes()).into_owned());
        insert_repeated(&mut m, name.as_str(), v);
    }
    Value::object(m)
}

/// Inserts `v` at `key`; a key seen again turns into a list of its values.
fn insert_repeated(m: &mut Map, key: &str, v: Value) {
    match m.get_mut(key) {
        Some(Value::List(l)) => Arc::make_mut(l).push(v),
        Some(existing) => *existing = Value::list(vec![existing.clone(), v]),
        None => {
            m.insert(key.to_string(), v);
        }
    }
}

/// Marks a webhook's runs as orphaned when its handler is dropped, i.e. the
/// caller went away. Dropped after the runs end too, when it no longer matters:
/// their executed events are already out.
struct CallerGone(Arc<AtomicBool>);

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The query string as an object; a repeated key becomes a list.
fn query_value(raw: Option<&str>) -> Value {
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        insert_repeated(&mut m, &k, Value::str(v.into_owned()));
    }
    Value::object(m)
}

/// The body: JSON parsed, anything else kept as text; empty is `{}`.
fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::empty_object());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if json {
        return serde_json::from_slice::<serde_json::Value>(body)
            .map(Value::from)
            .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")));
    }
    Ok(Value::str(String::from_utf8_lossy(body).into_owned()))
}

async fn webhook(
    State(state): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let Some(workspace) = state.runtime.workspace(&ws) else {
        return error(StatusCode::NOT_FOUND, format!("unknown workspace `{ws}`"));
    };
    let Some(automations) = workspace.endpoints.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no endpoint `{name}` in workspace `{ws}`"),
        );
    };
    let body = match body_value(&headers, &body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut payload = Map::with_capacity(4);
    payload.insert("body".into(), body);
    payload.insert("headers".into(), headers_value(&headers));
    payload.insert("method".into(), Value::str(method.as_str()));
    payload.insert("query".into(), query_value(query.as_deref()));
    let path = format!("/v2/workspaces/{ws}/webhooks/{name}");
    let gone = CallerGone(Arc::default());
    // Several automations may share an endpoint: all run, the first one answers.
    // Named here rather than by the runtime so that a failure can be logged with it.
    let correlation_ids: Vec<String> = automations
        .iter()
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let starts: Vec<_> = automations
        .iter()
        .zip(&correlation_ids)
        .map(|(a, correlation_id)| {
            let trigger = Trigger {
                caller_gone: Some(gone.0.clone()),
                ..Trigger::new(TriggerKind::Endpoint, name.as_str())
            };
            let start = Start {
                http: Some((method.to_string(), path.clone())),
                correlation_id: Some(correlation_id.clone()),
                ..Start::new(&ws, &a.slug, trigger).with_payload(payload.clone())
            };
            (a.clone(), start)
        })
        .collect();
    let runtime = state.runtime.clone();
    let resolved = workspace.clone();
    // The runs belong to the server, not to this request: a caller that hangs
    // up must not leave an automation half-applied.
    let runs = state.shutdown.spawn(async move {
        let runs = starts
            .into_iter()
            .map(|(a, s)| runtime.run_resolved(resolved.clone(), a, s));
        futures::future::join_all(runs).await
    });
    let results = match runs.await {
        Ok(Some(results)) => results,
        Ok(None) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the run failed: {e}"),
            )
        }
    };
    drop(gone);
    for ((result, automation), correlation_id) in
        results.iter().zip(&automations).zip(&correlation_ids)
    {
        if let Err(e) = result {
            tracing::warn!(
                workspace = %ws,
                slug = %automation.slug,
                correlation_id = %correlation_id,
                error = %e,
                "webhook execution failed"
            );
        }
    }
    match results.into_iter().next() {
        Some(Ok(outcome)) => match outcome.output {
            Value::String(s) => (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                s.to_string(),
            )
                .into_response(),
            other => Json(other.to_json()).into_response(),
        },
        Some(Err(e)) => {
            // The latest secrets: an edit during the run may have added one.
            let latest = state.runtime.workspace(&ws).unwrap_or(workspace);
            let message = latest.redactor.text(&e.to_string()).into_owned();
            let message = without_paths(&message, &state.settings.workspaces);
            if e.kind.code().is_some() {
                return refused(message, &e);
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
        None => error(StatusCode::NOT_FOUND, format!("no endpoint `{name}`")),
    }
}

/// 429 for an execution a named limit or a credit quota refused: `Retry-After` in whole
/// seconds rounded up (1 when capacity returns only as holders release it), and the error's
/// code and limit.
fn refused(message: String, e: &crate::runtime::ExecError) -> Response {
    let secs = e
        .retry_after
        .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        Json(serde_json::json!({"error": {
            "message": message,
            "code": e.kind.code(),
            "limit": e.limit,
        }})),
    )
        .into_response()
}

/// `message` without the server's folders: a caller may see a file's name in the
/// workspace, never where the server keeps it.
fn without_paths(message: &str, workspaces: &std::path::Path) -> String {
    let mut roots = vec![workspaces.to_path_buf()];
    roots.extend(workspaces.canonicalize());
    roots.iter().fold(message.to_string(), |text, root| {
        let root = root.to_string_lossy();
        let root = root.trim_end_matches('/');
        if root.is_empty() {
            return text;
        }
        // Longest first: `root/ws/` leaves `file.yml`, then a bare `root` goes too.
        let within = regex::Regex::new(&format!("{}/([^/\\s]+/)*", regex::escape(root)));
        let text = match within {
            Ok(re) => re.replace_all(&text, "").into_owned(),
            Err(_) => text,
        };
        text.replace(root, "")
    })
}

async fn ingest(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    if state.runtime.workspace(&ws).is_none() {
        return error(StatusCode::NOT_FOUND, format!("unknown workspace `{ws}`"));
    }
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let items = match parsed {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(kind) = item.get("type").and_then(|t| t.as_str()) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("event {i}: `type` must be a string"),
            );
        };
        if let Err(e) = check_event_type(kind) {
            return error(StatusCode::BAD_REQUEST, format!("event {i}: {e}"));
        }
        let payload = match item.get("payload") {
            None | Some(serde_json::Value::Null) => Value::empty_object(),
            Some(p @ serde_json::Value::Object(_)) => Value::from(p.clone()),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("event {i}: `payload` must be an object"),
                )
            }
        };
        let id = match item.get("id") {
            None | Some(serde_json::Value::Null) => state.runtime.new_event_id(),
            Some(serde_json::Value::String(id)) if valid_event_id(id) => id.clone(),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("event {i}: `id` must be 1 to 64 letters, digits, `_` or `-`"),
                )
            }
        };
        events.push((id, kind.to_string(), payload));
    }
    let ids: Vec<String> = events.iter().map(|(id, _, _)| id.clone()).collect();
    for (id, kind, payload) in events {
        let Err(e) = state
            .runtime
            .publish_external(&ws, id, &kind, payload)
            .await
        else {
            continue;
        };
        let status = if e.outcome_unknown() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // Some events may be stored: the ids let the client retry them all safely.
        let message = format!("{e}; send the same events with these ids again");
        return (
            status,
            Json(serde_json::json!({"error": {"message": message, "ids": ids}})),
        )
            .into_response();
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": ids.len(), "ids": ids})),
    )
        .into_response()
}

/// Client event ids: short, and safe in a NATS header and a log line.
fn valid_event_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn stream(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    let workspace = state.runtime.workspace(&ws);
    if let Err(e) = auth::reader(&state, &headers, workspace.as_deref()) {
        return e.into_response();
    }
    let Some(workspace) = workspace else {
        return error(StatusCode::NOT_FOUND, format!("unknown workspace `{ws}`"));
    };
    let feed = state.runtime.bus().watch(&ws);
    // Each event is redacted with the workspace's latest secrets; once the
    // workspace is removed, with the last ones it had.
    let (runtime, mut last) = (state.runtime.clone(), workspace.redactor.clone());
    let redactor = move || {
        if let Some(w) = runtime.workspace(&ws) {
            last = w.redactor.clone();
        }
        last.clone()
    };
    // Endless by nature: ended at once on shutdown, or the server would wait for it.
    let shutdown = state.shutdown.clone();
    let events = events_of(feed, redactor).take_until(async move { shutdown.stopping().await });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The events of one workspace as SSE messages, with the secrets of
/// `redactor()` hidden. A client that falls too far behind gets an
/// `event: lagged` message saying how many events it missed, and the stream
/// ends: it never sees a feed with silent holes, and it can reconnect.
fn events_of(
    feed: Watch,
    redactor: impl FnMut() -> Redactor + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(Some((feed, redactor)), |state| async move {
        let (mut feed, mut redactor) = state?;
        match feed.recv().await {
            Ok(e) => {
                let r = redactor();
                let json = r.value(&e.to_value()).to_json();
                let message = SseEvent::default()
                    .id(e.id.clone())
                    .event(r.text(&e.kind))
                    .data(json.to_string());
                Some((Ok(message), Some((feed, redactor))))
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(missed, "SSE client lagging behind: disconnected");
                let message = SseEvent::default()
                    .event("lagged")
                    .data(serde_json::json!({"missed": missed}).to_string());
                Some((Ok(message), None))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

async fn health(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"healthy": false})),
        )
            .into_response();
    }
    if !state.runtime.bus().connected() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"healthy": false, "bus": "disconnected"})),
        )
            .into_response();
    }
    Json(serde_json::json!({"healthy": true})).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.runtime.metrics().render()
            + &crate::metrics::render_named(&state.runtime.all_named_limits()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, EmbeddedBus, Event, EventHandler, WATCH_CAPACITY};
    use futures::future::BoxFuture;

    #[test]
    fn error_bodies_keep_file_names_but_not_the_folders_holding_them() {
        let root = std::path::Path::new("/srv/sluice/automations");
        let message = "automation `a` (/srv/sluice/automations/demo/sub/a.yml:3): boom; root /srv/sluice/automations";
        assert_eq!(
            without_paths(message, root),
            "automation `a` (a.yml:3): boom; root "
        );
        assert_eq!(without_paths("a.yml:3: boom", root), "a.yml:3: boom");
    }

    struct NoListeners;

    impl EventHandler for NoListeners {
        fn handle(&self, _: Arc<Event>) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    fn event(n: usize) -> Event {
        Event {
            id: format!("e{n}"),
            workspace: "ws".into(),
            kind: "tick".into(),
            payload: Value::empty_object(),
            source: Default::default(),
            created_at: String::new(),
        }
    }

    #[tokio::test]
    async fn a_lagging_client_is_told_and_disconnected() {
        let bus = EmbeddedBus::new();
        bus.start(Arc::new(NoListeners));
        let sse = Sse::new(events_of(bus.watch("ws"), Redactor::default)).into_response();
        let extra = 10;
        for n in 0..WATCH_CAPACITY + extra {
            bus.notify(event(n));
        }
        // The whole body: the stream ends by itself after telling the client.
        let body = axum::body::to_bytes(sse.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            text,
            format!("event: lagged\ndata: {{\"missed\":{extra}}}\n\n")
        );
    }
}
