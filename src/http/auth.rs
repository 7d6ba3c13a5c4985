//! Bearer tokens of the guarded routes: the operator's admin token
//! (`SLUICE_ADMIN_TOKEN`) for the secrets and usage APIs, and for a workspace's event
//! stream either that token or the workspace's read token (its secret
//! `sluice_events_token`).
//!
//! Tokens are compared in constant time, so timing tells nothing about how
//! much of a guess was right.

use super::{api_error, ApiError, AppState};
use crate::runtime::Workspace;
use axum::http::{header, HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

/// The workspace secret holding the token that may read its event stream.
const EVENTS_TOKEN: &str = "sluice_events_token";

/// The token of `Authorization: Bearer <token>`, or 401 without one.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <token>` header",
            )
        })
}

/// Whether `given` is `expected`, an empty expected token matching nothing.
fn same(given: &str, expected: Option<&str>) -> bool {
    expected
        .filter(|t| !t.is_empty())
        .is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.as_bytes())))
}

/// Checks `Authorization: Bearer <SLUICE_ADMIN_TOKEN>`.
pub(super) fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    admin_token(state.settings.admin_token.as_deref(), headers)
}

/// Checks `Authorization: Bearer <expected>`, the operator's admin token.
pub(super) fn admin_token(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    if expected.is_none_or(str::is_empty) {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "the operator API is off: set SLUICE_ADMIN_TOKEN to enable it",
        ));
    }
    if same(bearer(headers)?, expected) {
        Ok(())
    } else {
        Err(api_error(StatusCode::FORBIDDEN, "wrong admin token"))
    }
}

/// Checks that the bearer may read the events of `ws` (`None` when it is not
/// loaded): the admin token, or the workspace's `sluice_events_token`.
pub(super) fn reader(
    state: &AppState,
    headers: &HeaderMap,
    ws: Option<&Workspace>,
) -> Result<(), ApiError> {
    let given = bearer(headers)?;
    let own = ws
        .and_then(|w| w.secrets.get(EVENTS_TOKEN))
        .and_then(|v| v.as_str());
    // Both comparisons always run, so timing does not tell which token matched.
    let is_admin = same(given, state.settings.admin_token.as_deref());
    let is_reader = same(given, own);
    if is_admin | is_reader {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::FORBIDDEN,
            format!("this token may not read these events (the admin token or the workspace secret {EVENTS_TOKEN})"),
        ))
    }
}
