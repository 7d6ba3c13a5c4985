//! The operator view of a workspace's named limits (SPEC section 7):
//! `GET /v2/workspaces/{ws}/limits`, admin token only. Every limit the workspace can use
//! (its own, then the shared ones, then its inline ones together) with its settings and
//! live state.

use super::{auth, error, AppState};
use crate::limits::named::spec::Scope;
use crate::limits::named::{LimitView, Number};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value as Json_};

/// `GET /v2/workspaces/{ws}/limits`.
pub(super) async fn read(
    State(state): State<AppState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = auth::admin(&state, &headers) {
        return e.into_response();
    }
    let Some(view) = state.runtime.named_limits(&ws) else {
        return error(StatusCode::NOT_FOUND, format!("unknown workspace `{ws}`"));
    };
    let mut limits: Vec<Json_> = view.own.iter().map(|v| limit(v, "workspace")).collect();
    // The inline limits come last, after the shared ones.
    if let Some(inline) = limits.pop() {
        limits.extend(view.shared.iter().map(|v| limit(v, "shared")));
        limits.push(inline);
    }
    Json(json!({"workspace": ws, "limits": limits})).into_response()
}

/// One limit as the view shows it; `origin` is `workspace` or `shared`.
fn limit(v: &LimitView, origin: &str) -> Json_ {
    let s = &v.state;
    let mut out = json!({
        "name": &*v.name,
        "origin": origin,
        "available": s.available,
        "held": s.held,
        "waiters": s.waiters,
        "keys": s.keys,
        "waits": s.waits,
        "waitSeconds": s.wait_seconds,
        "refusals": s.refusals,
    });
    // A cluster limit: who grants it and what waits and holds across every instance.
    if let Some(c) = &s.cluster {
        out["cluster"] = json!({"owner": c.owner, "holders": c.holders, "waiters": c.waiters});
    }
    let Some(spec) = &v.spec else {
        out["origin"] = json!("inline");
        return out;
    };
    let rate = match &spec.rate {
        Some(Number::Const(r)) => json!(r),
        Some(Number::Template(_)) => json!("template"),
        None => Json_::Null,
    };
    let burst = match (&spec.burst, &spec.rate) {
        (Some(b), _) => json!(b),
        (None, Some(Number::Const(r))) => json!(r),
        _ => Json_::Null,
    };
    let lanes: serde_json::Map<String, Json_> = spec
        .lanes
        .iter()
        .map(|(lane, weight)| (lane.to_string(), json!(weight)))
        .collect();
    for (k, value) in [
        ("rate", rate),
        ("per", json!(spec.per.as_str())),
        ("burst", burst),
        ("concurrency", json!(spec.concurrency)),
        ("keyed", json!(spec.key.is_some())),
        ("lanes", Json_::Object(lanes)),
        ("shadow", json!(spec.shadow)),
        (
            "scope",
            json!(match spec.scope {
                Scope::Instance => "instance",
                Scope::Cluster => "cluster",
            }),
        ),
    ] {
        out[k] = value;
    }
    out
}
