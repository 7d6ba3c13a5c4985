//! The usage API and the operator page, driven through the router without a socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{json, Value as J};
use sluice::http::usage::{routes, LimitActivity, LimitsActivity, UsageHost, UsageState};
use sluice::quota::{QuotaSettings, Quotas, RedbStore};
use std::sync::Arc;
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

struct Host {
    names: Vec<&'static str>,
    now: DateTime<Utc>,
}

impl UsageHost for Host {
    fn exists(&self, ws: &str) -> bool {
        self.names.contains(&ws)
    }

    fn activity(&self, ws: &str) -> LimitsActivity {
        let busy = ws == "acme";
        std::array::from_fn(|i| LimitActivity {
            rate: (i != 3).then_some(100.0 * (i + 1) as f64),
            throttled: if busy && i == 2 { 1.5 } else { 0.0 },
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.now
    }
}

struct Api {
    router: axum::Router,
    quotas: Quotas,
    now: DateTime<Utc>,
    _dir: tempfile::TempDir,
}

fn api(token: Option<&str>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let settings: QuotaSettings =
        serde_yaml::from_str("plans: {starter: {credits: 100}}\ndefault_plan: starter\n").unwrap();
    settings.validate().unwrap();
    let quotas = Quotas::new(settings, Arc::new(RedbStore::open(dir.path()).unwrap()));
    let now = DateTime::parse_from_rfc3339("2026-11-10T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    for ws in ["acme", "beta"] {
        quotas.set_policy(ws, quotas.settings().default_policy(), now);
    }
    let state = UsageState {
        quotas: quotas.clone(),
        admin_token: token.map(Arc::from),
        host: Arc::new(Host {
            names: vec!["acme", "beta"],
            now,
        }),
    };
    Api {
        router: routes(state),
        quotas,
        now,
        _dir: dir,
    }
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, J) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(J::Null))
}

fn message(body: &J) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_workspace_usage_has_the_spec_shape() {
    let a = api(Some(TOKEN));
    a.quotas.charge("acme", "summarize", 60.5, a.now).unwrap();
    a.quotas.charge("acme", "cheap", 25.0, a.now).unwrap();
    let (status, body) = call(
        &a.router,
        "GET",
        "/v2/workspaces/acme/usage",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "plan": "starter",
            "credits": {"plan": 100.0, "added": 0.0, "total": 100.0},
            "used": 85.5,
            "remaining": 14.5,
            "percent": 85.5,
            "band": 1,
            "restrict": [],
            "cycle": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
            "byAutomation": {"cheap": 25.0, "summarize": 60.5}
        })
    );
}

#[tokio::test]
async fn the_api_needs_the_admin_token() {
    let a = api(Some(TOKEN));
    for (method, uri) in [
        ("GET", "/v2/usage"),
        ("GET", "/v2/workspaces/acme/usage"),
        ("POST", "/v2/workspaces/acme/usage/credits"),
    ] {
        let (status, body) = call(&a.router, method, uri, None, "{\"credits\": 1}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(message(&body).contains("Authorization: Bearer"));
        let (status, body) = call(&a.router, method, uri, Some("wrong"), "{\"credits\": 1}").await;
        assert_eq!(
            (status, message(&body)),
            (StatusCode::FORBIDDEN, "wrong admin token"),
            "{uri}"
        );
    }
    let off = api(None);
    let (status, body) = call(&off.router, "GET", "/v2/usage", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message(&body).contains("set SLUICE_ADMIN_TOKEN"), "{body}");
}

#[tokio::test]
async fn unknown_workspaces_and_cycles_are_refused() {
    let a = api(Some(TOKEN));
    let (status, body) = call(
        &a.router,
        "GET",
        "/v2/workspaces/nope/usage",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(
        (status, message(&body)),
        (StatusCode::NOT_FOUND, "unknown workspace `nope`")
    );
    let (status, body) = call(
        &a.router,
        "GET",
        "/v2/workspaces/acme/usage?cycle=2026-11-05",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("such as 2026-11-01"), "{body}");
    let (status, body) = call(
        &a.router,
        "GET",
        "/v2/workspaces/acme/usage?month=11",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).contains("the only parameter is cycle=YYYY-MM-DD"),
        "{body}"
    );
    let (status, body) = call(
        &a.router,
        "GET",
        "/v2/workspaces/acme/usage?cycle=2026-10-01",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cycle"]["start"], "2026-10-01T00:00:00Z");
}

#[tokio::test]
async fn added_credits_lift_the_band_and_bad_bodies_change_nothing() {
    let a = api(Some(TOKEN));
    a.quotas.charge("acme", "summarize", 110.0, a.now).unwrap();
    let uri = "/v2/workspaces/acme/usage/credits";
    let bad = [
        ("", "invalid JSON body"),
        ("[1]", "the body is not an object"),
        ("{}", "missing `credits`"),
        ("{\"credits\": -5}", "credits: -5 is not valid"),
        ("{\"credits\": 0}", "credits: 0 is not valid"),
        ("{\"credits\": \"ten\"}", "credits: \"ten\" is not valid"),
        ("{\"credits\": 5, \"note\": 1}", "unknown field `note`"),
        ("{\"credits\": 1e13}", "credits: 10000000000000 is not valid, expected a number of credits from 0 to 1000000000000"),
    ];
    for (body, expected) in bad {
        let (status, answer) = call(&a.router, "POST", uri, Some(TOKEN), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&answer).contains(expected), "{body}: {answer}");
    }
    let (_, usage) = call(
        &a.router,
        "GET",
        "/v2/workspaces/acme/usage",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(
        (usage["credits"]["added"].clone(), usage["band"].clone()),
        (json!(0.0), json!(2))
    );
    let (status, usage) = call(&a.router, "POST", uri, Some(TOKEN), "{\"credits\": 50}").await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(
        usage["credits"],
        json!({"plan": 100.0, "added": 50.0, "total": 150.0})
    );
    assert_eq!(usage["band"], J::Null);
    assert!(a
        .quotas
        .decision("acme", sluice::quota::QuotaClass::Premium, a.now)
        .restricted
        .is_none());
}

#[tokio::test]
async fn the_overview_lists_every_workspace_with_flags_and_limits() {
    let a = api(Some(TOKEN));
    a.quotas.charge("acme", "x", 105.0, a.now).unwrap();
    a.quotas.charge("beta", "x", 80.0, a.now).unwrap();
    // Charged, but not a loaded workspace: not listed.
    a.quotas.charge("ghost", "x", 1.0, a.now).unwrap();
    let (status, body) = call(&a.router, "GET", "/v2/usage", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bands"], json!([80.0, 100.0, 120.0, 150.0]));
    assert_eq!(body["at"], "2026-11-10T12:00:00Z");
    let ws = body["workspaces"].as_array().unwrap();
    let names: Vec<&str> = ws
        .iter()
        .map(|w| w["workspace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(
        (
            ws[0]["percent"].clone(),
            ws[0]["near"].clone(),
            ws[0]["over"].clone()
        ),
        (json!(105.0), json!(true), json!(true))
    );
    assert_eq!(
        (ws[1]["near"].clone(), ws[1]["over"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(ws[0]["cycle"]["end"], "2026-12-01T00:00:00Z");
    assert_eq!(
        ws[0]["limits"]["fetchs"],
        json!({"rate": 300.0, "throttled": 1.5})
    );
    assert_eq!(
        ws[0]["limits"]["repeats"],
        json!({"rate": null, "throttled": 0.0})
    );
}

#[tokio::test]
async fn the_page_is_served_whole_without_outside_assets() {
    let a = api(Some(TOKEN));
    let response = a
        .router
        .clone()
        .oneshot(Request::get("/ui").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ct = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let html = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(html.contains("/v2/usage") && html.contains("sessionStorage"));
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("src="));
}
