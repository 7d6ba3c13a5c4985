//! The operator secrets API: read the keys, replace or merge a workspace's
//! secrets. Values are written to the secrets file and never returned.
//!
//! A change is checked before anything is written (rate-limit overrides must be
//! valid), written atomically, then loaded at once, so a
//! refused request leaves both the file and the running limits as they were.

use super::{api_error, error, ApiError, AppState};
use crate::limits::Limiters;
use crate::value::{Map, Value};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

fn file_of(state: &AppState, ws: &str) -> std::path::PathBuf {
    state.settings.secrets.join(format!("{ws}.yml"))
}

fn keys_response(ws: &str, secrets: &Map) -> Response {
    let mut keys: Vec<&String> = secrets.keys().collect();
    keys.sort();
    Json(serde_json::json!({"workspace": ws, "keys": keys})).into_response()
}

/// Authorizes, finds the workspace and reads its current secrets.
fn prepare(state: &AppState, headers: &HeaderMap, ws: &str) -> Result<Map, ApiError> {
    super::auth::admin(state, headers)?;
    if state.runtime.workspace(ws).is_none() {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            format!("unknown workspace `{ws}`"),
        ));
    }
    crate::workspace::read_secrets(&file_of(state, ws))
        .map_err(|d| api_error(StatusCode::INTERNAL_SERVER_ERROR, d.to_string()))
}

/// `GET`: the names of the workspace's secrets.
pub async fn read(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    match prepare(&state, &headers, &ws) {
        Ok(secrets) => keys_response(&ws, &secrets),
        Err(e) => e.into_response(),
    }
}

/// `PUT`: replaces all secrets with the JSON object of the body.
pub async fn replace(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(state, ws, headers, body, false).await
}

/// `PATCH`: sets the given keys; a `null` value removes a key.
pub async fn merge(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(state, ws, headers, body, true).await
}

async fn update(
    state: AppState,
    ws: String,
    headers: HeaderMap,
    body: Bytes,
    merge: bool,
) -> Response {
    let current = match prepare(&state, &headers, &ws) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let changes = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object of secrets",
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let mut next = if merge { current } else { Map::new() };
    for (k, v) in changes {
        if v.is_null() {
            next.shift_remove(&k);
        } else {
            next.insert(k, Value::from(v));
        }
    }
    // Check the limit overrides on a scratch registry: nothing is written if one is bad.
    let scratch = Limiters::new(&state.settings.limits);
    if let Err(problems) = scratch.apply_secrets(&ws, &next) {
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return error(StatusCode::BAD_REQUEST, text.join("; "));
    }
    let file = file_of(&state, &ws);
    let yaml = match serde_yaml::to_string(&Value::object(next.clone()).to_json()) {
        Ok(y) => y,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = write_atomically(&file, &yaml).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write {}: {e}", file.display()),
        );
    }
    // Apply now, so the answer means the new limits are live.
    state.library.reload(&ws).await;
    keys_response(&ws, &next)
}

/// Writes through a temporary file and a rename, so readers never see half a file.
async fn write_atomically(file: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = file.with_extension("yml.tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, file).await
}
