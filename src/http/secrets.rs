//! The operator secrets API: read the keys, replace or merge a workspace's
//! secrets. Values are written to the secrets file and never returned.
//!
//! Changes to one workspace are applied one at a time, in arrival order. A
//! change is checked before anything is written (rate-limit overrides must be
//! valid), written durably (temporary file, fsync, rename, fsync of the
//! folder; mode 0600), then loaded at once, so a refused request leaves both
//! the file and the running limits as they were, and a 200 means the change
//! survives a crash. Error answers name the workspace, never a path.

use super::{api_error, error, ApiError, AppState};
use crate::limits::Limiters;
use crate::value::{Map, Value};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::atomic::{AtomicU64, Ordering};

fn file_of(state: &AppState, ws: &str) -> std::path::PathBuf {
    crate::workspace::secrets_file(&state.settings.secrets, ws)
}

fn keys_response(ws: &str, secrets: &Map) -> Response {
    let mut keys: Vec<&String> = secrets.keys().collect();
    keys.sort();
    Json(serde_json::json!({"workspace": ws, "keys": keys})).into_response()
}

/// Authorizes and checks that the workspace is loaded.
fn check(state: &AppState, headers: &HeaderMap, ws: &str) -> Result<(), ApiError> {
    super::auth::admin(state, headers)?;
    if state.runtime.workspace(ws).is_none() {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            format!("unknown workspace `{ws}`"),
        ));
    }
    Ok(())
}

/// The current secrets of `ws`; an error names the workspace, never the path.
fn current(state: &AppState, ws: &str) -> Result<Map, ApiError> {
    crate::workspace::read_secrets(&file_of(state, ws)).map_err(|d| {
        tracing::error!(workspace = %ws, "{d}");
        api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the secrets of workspace `{ws}`: {}", d.message),
        )
    })
}

/// `GET`: the names of the workspace's secrets.
pub(super) async fn read(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    match check(&state, &headers, &ws).and_then(|()| current(&state, &ws)) {
        Ok(secrets) => keys_response(&ws, &secrets),
        Err(e) => e.into_response(),
    }
}

/// `PUT`: replaces all secrets with the JSON object of the body.
pub(super) async fn replace(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update(state, ws, headers, body, false).await
}

/// `PATCH`: sets the given keys; a `null` value removes a key.
pub(super) async fn merge(
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
    if let Err(e) = check(&state, &headers, &ws) {
        return e.into_response();
    }
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
    // Held from the read to the reload: each change starts from the one before.
    let _writer = state.library.secrets_writer(&ws).await;
    let mut next = if merge {
        match current(&state, &ws) {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        }
    } else {
        Map::new()
    };
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
    // And the quota secrets (an unknown plan, a bad zone or day): refused the same way.
    if let Err(e) = state.settings.quotas.policy(&ws, &next) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let yaml = match serde_yaml::to_string(&Value::object(next.clone()).to_json()) {
        Ok(y) => y,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let file = file_of(&state, &ws);
    let written = tokio::task::spawn_blocking({
        let file = file.clone();
        move || write_durably(&file, &yaml)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    if let Err(e) = written {
        tracing::error!(workspace = %ws, file = %file.display(), "cannot write secrets: {e}");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the secrets of workspace `{ws}`: {e}"),
        );
    }
    // Apply now, so the answer means the new limits are live.
    state.library.reload(&ws).await;
    keys_response(&ws, &next)
}

/// Tells temporary files apart, within this process and from other processes.
static TEMP_SERIAL: AtomicU64 = AtomicU64::new(0);

/// Replaces `file` with `text` so that a crash at any point leaves either the
/// old file or the new one, whole: a temporary file in the same folder (its
/// name starts with a dot and does not end in `.yml`, so no reader takes it for
/// a secrets file), written and synced, renamed over `file`, then the folder
/// synced so the rename itself survives a crash. The file is readable by its
/// owner only.
fn write_durably(file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("the secrets file has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let serial = TEMP_SERIAL.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{serial}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
