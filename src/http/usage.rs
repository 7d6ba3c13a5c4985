//! The operator's usage API and page (SPEC section 8): a workspace's credit usage, every
//! workspace's at once, credits added to a cycle, and `GET /ui`, the page that shows them.
//!
//! The routes take their own [`UsageState`] rather than the server's state, so they are
//! tested without a runtime; what they need from the server (which workspaces exist, the
//! built-in limits' recent activity, the time) comes through [`UsageHost`].

use super::{api_error, auth, ApiError};
use crate::quota::{QuotaError, Quotas, UsageView};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The operator page, served as is.
const PAGE: &str = include_str!("ui.html");

/// Usage from which the page flags a workspace as near its limit, in percent.
const NEAR: f64 = 80.0;
/// Usage from which the page flags a workspace as over its limit, in percent.
const OVER: f64 = 100.0;

/// One built-in limit's recent activity in one workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitActivity {
    /// Tokens per second the limit allows now (a band's `slow` included); `None` when the
    /// limit is off.
    pub rate: Option<f64>,
    /// Seconds that executions waited on this limit over the last 5 minutes.
    pub throttled: f64,
}

/// The four built-in limits' activity, in `LimitKind::ALL` order.
pub type LimitsActivity = [LimitActivity; 4];

/// What the usage routes need from the server.
pub trait UsageHost: Send + Sync {
    /// Whether workspace `ws` is loaded.
    fn exists(&self, ws: &str) -> bool;
    /// The built-in limits' activity of `ws`.
    fn activity(&self, ws: &str) -> LimitsActivity;
    /// The time (the cycles are calendar months).
    fn now(&self) -> DateTime<Utc>;
}

/// The server as the usage routes see it.
pub struct RuntimeHost(pub crate::runtime::Runtime);

impl UsageHost for RuntimeHost {
    fn exists(&self, ws: &str) -> bool {
        self.0.workspace(ws).is_some()
    }

    fn activity(&self, ws: &str) -> LimitsActivity {
        let limiters = self.0.limiters();
        // The band as of now, so a page shows `slow` lifted at once after credits are added.
        if let Some(quotas) = self.0.quotas() {
            limiters.set_slow(ws, quotas.slow(ws, Utc::now()));
        }
        let limits = limiters.workspace(ws);
        crate::limits::LimitKind::ALL.map(|kind| LimitActivity {
            rate: limits
                .quota(kind)
                .map(|q| 1.0 / q.replenish_interval().as_secs_f64()),
            throttled: limiters.recent_waits(ws, kind).as_secs_f64(),
        })
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What the usage routes share.
#[derive(Clone)]
pub struct UsageState {
    /// The credit quotas.
    pub quotas: Quotas,
    /// The operator's token (`SLUICE_ADMIN_TOKEN`); `None` turns the API off.
    pub admin_token: Option<Arc<str>>,
    /// The server.
    pub host: Arc<dyn UsageHost>,
}

/// The usage routes and the page, ready to merge into the server's router.
pub fn routes(state: UsageState) -> Router {
    Router::new()
        .route("/v2/workspaces/{ws}/usage", get(workspace_usage))
        .route("/v2/workspaces/{ws}/usage/credits", post(add_credits))
        .route("/v2/usage", get(all_usage))
        .route("/ui", get(page))
        .with_state(state)
}

/// `?cycle=YYYY-MM-DD`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CycleQuery {
    cycle: Option<String>,
}

/// One workspace in `GET /v2/usage`.
#[derive(Debug, Serialize)]
struct Overview {
    workspace: String,
    #[serde(flatten)]
    usage: UsageView,
    /// At or above 80 %.
    near: bool,
    /// At or above 100 %.
    over: bool,
    /// The built-in limits, by name.
    limits: indexmap::IndexMap<&'static str, LimitActivity>,
}

fn checked(state: &UsageState, headers: &HeaderMap) -> Result<(), ApiError> {
    auth::admin_token(state.admin_token.as_deref(), headers)
}

fn known(state: &UsageState, ws: &str) -> Result<(), ApiError> {
    if state.host.exists(ws) {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::NOT_FOUND,
            format!("unknown workspace `{ws}`"),
        ))
    }
}

fn quota_error(e: QuotaError) -> ApiError {
    let status = match &e {
        QuotaError::BadAmount { .. } | QuotaError::BadCycle { .. } => StatusCode::BAD_REQUEST,
        QuotaError::NoQuota(_) => StatusCode::CONFLICT,
        QuotaError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    api_error(status, e.to_string())
}

/// `GET /v2/workspaces/{ws}/usage[?cycle=YYYY-MM-DD]`.
pub(crate) async fn workspace_usage(
    State(state): State<UsageState>,
    Path(ws): Path<String>,
    query: Result<Query<CycleQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<UsageView>, ApiError> {
    checked(&state, &headers)?;
    let Query(query) = query.map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("{}; the only parameter is cycle=YYYY-MM-DD", e.body_text()),
        )
    })?;
    known(&state, &ws)?;
    let now = state.host.now();
    let view = state
        .quotas
        .usage(&ws, query.cycle.as_deref(), now)
        .await
        .map_err(quota_error)?;
    Ok(Json(view))
}

/// `GET /v2/usage`: every loaded workspace, with what the page shows.
pub(crate) async fn all_usage(
    State(state): State<UsageState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    checked(&state, &headers)?;
    let now = state.host.now();
    let all = state.quotas.list(now).await.map_err(quota_error)?;
    let workspaces: Vec<Overview> = all
        .into_iter()
        .filter(|(ws, _)| state.host.exists(ws))
        .map(|(workspace, usage)| {
            let percent = usage.percent.unwrap_or(0.0);
            let activity = state.host.activity(&workspace);
            let limits = crate::limits::LimitKind::ALL
                .into_iter()
                .zip(activity)
                .map(|(kind, a)| (kind.as_str(), a))
                .collect();
            Overview {
                near: percent >= NEAR,
                over: percent >= OVER,
                workspace,
                usage,
                limits,
            }
        })
        .collect();
    let bands: Vec<f64> = state.quotas.settings().bands.iter().map(|b| b.at).collect();
    Ok(Json(serde_json::json!({
        "at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "bands": bands,
        "workspaces": workspaces,
    }))
    .into_response())
}

/// `POST /v2/workspaces/{ws}/usage/credits` with `{"credits": N}`.
pub(crate) async fn add_credits(
    State(state): State<UsageState>,
    Path(ws): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UsageView>, ApiError> {
    checked(&state, &headers)?;
    known(&state, &ws)?;
    let body = body.map_err(|e| api_error(e.status(), e.body_text()))?;
    let credits = credits_of(&body)?;
    let now = state.host.now();
    let view = state
        .quotas
        .add_credits(&ws, credits, now)
        .await
        .map_err(quota_error)?;
    Ok(Json(view))
}

/// The `N` of `{"credits": N}`, or a 400 saying what is expected.
fn credits_of(body: &[u8]) -> Result<f64, ApiError> {
    const EXPECTED: &str = r#"expected {"credits": N} with N a number of credits above 0"#;
    let bad = |m: String| api_error(StatusCode::BAD_REQUEST, m);
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid JSON body ({e}), {EXPECTED}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(bad(format!("the body is not an object, {EXPECTED}")));
    };
    if let Some(other) = fields.keys().find(|k| *k != "credits") {
        return Err(bad(format!("unknown field `{other}`, {EXPECTED}")));
    }
    let given = fields
        .get("credits")
        .ok_or_else(|| bad(format!("missing `credits`, {EXPECTED}")))?;
    match given.as_f64() {
        Some(n) if n > 0.0 => Ok(n),
        _ => Err(bad(format!("credits: {given} is not valid, {EXPECTED}"))),
    }
}

/// `GET /ui`: the operator page. It holds no data: it asks for the admin token and reads
/// `GET /v2/usage` with it.
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}
