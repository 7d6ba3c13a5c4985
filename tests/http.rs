//! The HTTP routes of SPEC §3 on a real server (`server::Server`) bound to port 0 on 127.0.0.1.

use futures::StreamExt;
use serde_json::{json, Value as J};
use sluice::config::Settings;
use sluice::limits::LimitKind;
use sluice::runtime::Runtime;
use std::path::Path;
use std::time::Duration;

struct Server {
    base: String,
    runtime: Runtime,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

const HELLO: &str = "slug: hello\nwhen: {endpoint: true}\ndo:\n  - emit: {event: greeted, payload: {name: '{{body.name}}'}}\noutput: 'Hello {{body.name}}'\n";
const ECHO: &str = "slug: echo\nwhen: {endpoint: true}\ndo: []\noutput: {body: '{{body}}', method: '{{method}}', query: '{{query}}', headers: '{{headers}}'}\n";
const FAIL: &str = "slug: fail\nwhen: {endpoint: true}\ndo:\n  - nobody: {}\n";
const PRIVATE: &str = "slug: private\ndo: []\n";
const LEAK: &str = "slug: leak\nwhen: {endpoint: true}\narguments: {password: {type: string, secret: true}}\ndo: []\noutput: 'key={{secret.apiKey}}'\n";
const LISTENER: &str =
    "slug: listener\nwhen: {events: [greeted, ping]}\ndo: []\noutput: 'got {{payload.name}}'\n";

fn write(root: &Path, files: &[(&str, &str)]) {
    let ws = root.join("automations/demo");
    std::fs::create_dir_all(&ws).unwrap();
    for (name, text) in files {
        std::fs::write(ws.join(format!("{name}.yml")), text).unwrap();
    }
}

async fn server(admin_token: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("hello", HELLO),
            ("echo", ECHO),
            ("fail", FAIL),
            ("private", PRIVATE),
            ("listener", LISTENER),
            ("leak", LEAK),
        ],
    );
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/demo.yml"),
        "apiKey: sup3r-s3cret\nsluice_events_token: read-t0ken\n",
    )
    .unwrap();
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.workspaces = dir.path().join("automations");
    settings.secrets = dir.path().join("secrets");
    settings.quotas.data_dir = dir.path().join("data");
    settings.admin_token = admin_token.map(str::to_string);
    settings.http.max_body = 1024;
    let server = sluice::server::Server::start(settings).await.unwrap();
    let runtime = server.runtime().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server.serve(listener, std::future::pending()));
    Server {
        base,
        runtime,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens the workspace's event stream with its read token.
    async fn events(&self) -> reqwest::Response {
        let r = self
            .client
            .get(self.url("/v2/workspaces/demo/events"))
            .bearer_auth("read-t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r
    }

    /// POSTs `body` as JSON.
    async fn post(&self, path: &str, body: &J) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn webhook_runs_the_automation_and_answers_its_output() {
    let s = server(None).await;
    let r = s
        .post(
            "/v2/workspaces/demo/webhooks/hello",
            &json!({"name": "Ada"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Hello Ada");

    let r = s
        .client
        .get(s.url("/v2/workspaces/demo/webhooks/echo?a=1&b=x&b=y"))
        .header("authorization", "Bearer secret")
        .header("cookie", "c=1")
        .header("x-custom", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: J = r.json().await.unwrap();
    assert_eq!(out["method"], "GET");
    assert_eq!(out["query"], json!({"a": "1", "b": ["x", "y"]}));
    assert_eq!(out["body"], json!({}));
    assert_eq!(out["headers"]["x-custom"], "yes");
    assert!(out["headers"].get("authorization").is_none());
    assert!(out["headers"].get("cookie").is_none());

    let r = s
        .client
        .post(s.url("/v2/workspaces/demo/webhooks/echo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1&b=2")
        .send()
        .await
        .unwrap();
    let out: J = r.json().await.unwrap();
    assert_eq!(out["body"], "a=1&b=2");
}

#[tokio::test]
async fn webhook_status_codes() {
    let s = server(None).await;
    let status = |path: &'static str| {
        let c = s.client.clone();
        let url = s.url(path);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v2/workspaces/nope/webhooks/hello").await, 404);
    assert_eq!(status("/v2/workspaces/demo/webhooks/nope").await, 404);
    assert_eq!(status("/v2/workspaces/demo/webhooks/private").await, 404);

    let r = s
        .client
        .post(s.url("/v2/workspaces/demo/webhooks/hello"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = s
        .client
        .post(s.url("/v2/workspaces/demo/webhooks/hello"))
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{}\"}}", "x".repeat(2048)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = s
        .client
        .post(s.url("/v2/workspaces/demo/webhooks/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: J = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Automation not found: nobody"),
        "{message}"
    );
    assert!(message.contains("(fail.yml:4:5)"), "{message}");
    let folder = s._dir.path().to_string_lossy().into_owned();
    assert!(!message.contains(&folder), "{message}");
}

/// Reads SSE messages until `pred` has seen what it wants (bounded in time).
async fn read_sse(resp: reqwest::Response, mut want: impl FnMut(&str, &J) -> bool) {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE timed out")
            .expect("SSE ended")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let message: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = J::Null;
            for line in message.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = serde_json::from_str(d.trim()).unwrap_or(J::Null);
                }
            }
            if want(event, &data) {
                return;
            }
        }
    }
}

#[tokio::test]
async fn events_are_ingested_and_streamed_with_executed_events() {
    let s = server(None).await;
    let sse = s.events().await;
    let r = s
        .post(
            "/v2/workspaces/demo/events",
            &json!([{"type": "ping", "payload": {"name": "Bob"}}]),
        )
        .await;
    assert_eq!(r.status(), 202);
    let mut saw_ping = false;
    read_sse(sse, |event, data| {
        if event == "ping" {
            assert_eq!(data["payload"], json!({"name": "Bob"}));
            saw_ping = true;
        }
        event == "runtime.automations.executed"
            && data["payload"]["slug"] == "listener"
            && data["payload"]["output"] == "got Bob"
            && data["payload"]["trigger"]["type"] == "event"
    })
    .await;
    assert!(saw_ping);

    let bad = s
        .post("/v2/workspaces/demo/events", &json!({"type": "bad/name"}))
        .await;
    assert_eq!(bad.status(), 400);
    let forged = s
        .post(
            "/v2/workspaces/demo/events",
            &json!([{"type": "ok"}, {"type": "runtime.fetch.failed"}]),
        )
        .await;
    assert_eq!(forged.status(), 400);
    let message = forged.json::<J>().await.unwrap()["error"]["message"].to_string();
    assert!(
        message.contains("event 1") && message.contains("reserved"),
        "{message}"
    );
    let unknown = s
        .post("/v2/workspaces/nope/events", &json!({"type": "x"}))
        .await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn webhook_executed_event_carries_http_source_and_correlation() {
    let s = server(None).await;
    let sse = s.events().await;
    s.post("/v2/workspaces/demo/webhooks/hello", &json!({"name": "Cy"}))
        .await;
    let mut correlation = None;
    let mut listener_correlation = None;
    read_sse(sse, |event, data| {
        if event == "runtime.automations.executed" {
            match data["payload"]["slug"].as_str() {
                Some("hello") => {
                    assert_eq!(data["source"]["http"]["method"], "POST");
                    assert_eq!(
                        data["source"]["http"]["path"],
                        "/v2/workspaces/demo/webhooks/hello"
                    );
                    assert_eq!(
                        data["payload"]["trigger"],
                        json!({"type": "endpoint", "value": "hello"})
                    );
                    assert_eq!(data["payload"]["payload"]["body"], json!({"name": "Cy"}));
                    correlation = data["source"]["correlationId"].as_str().map(str::to_string);
                }
                Some("listener") => {
                    listener_correlation =
                        data["source"]["correlationId"].as_str().map(str::to_string);
                }
                _ => {}
            }
        }
        correlation.is_some() && listener_correlation.is_some()
    })
    .await;
    assert_eq!(correlation, listener_correlation);
}

#[tokio::test]
async fn health_and_metrics() {
    let s = server(None).await;
    let r = s
        .client
        .get(s.url("/sys/healthcheck"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<J>().await.unwrap(), json!({"healthy": true}));
    s.post("/v2/workspaces/demo/webhooks/hello", &json!({"name": "M"}))
        .await;
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sluice_executions_total{workspace=\"demo\",slug=\"hello\"} 1"),
        "{text}"
    );
    assert!(text.contains("sluice_execution_duration_seconds_count{workspace=\"demo\"}"));
}

#[tokio::test]
async fn secrets_api_is_off_without_a_token() {
    let s = server(None).await;
    let r = s
        .client
        .get(s.url("/v2/workspaces/demo/secrets"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn secrets_api_authorizes_hides_values_and_applies_limits_live() {
    let s = server(Some("t0ken")).await;
    let url = s.url("/v2/workspaces/demo/secrets");
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        s.client
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let r = s
        .client
        .put(&url)
        .bearer_auth("t0ken")
        .json(&json!({"apiKey": "hunter2", "prismeai_ratelimit_emits": 2, "prismeai_ratelimit_emits_burst": "3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let body: J = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["keys"],
        json!([
            "apiKey",
            "prismeai_ratelimit_emits",
            "prismeai_ratelimit_emits_burst"
        ])
    );
    let quota = s
        .runtime
        .limiters()
        .workspace("demo")
        .quota(LimitKind::Emits)
        .unwrap();
    assert_eq!(quota.burst_size().get(), 3);

    // A bad override is refused and changes nothing.
    let r = s
        .client
        .patch(&url)
        .bearer_auth("t0ken")
        .json(&json!({"prismeai_ratelimit_emits": "fast", "other": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("prismeai_ratelimit_emits"), "{msg}");

    let r = s
        .client
        .patch(&url)
        .bearer_auth("t0ken")
        .json(&json!({"apiKey": null, "prismeai_ratelimit_disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: J = r.json().await.unwrap();
    assert_eq!(
        body["keys"],
        json!([
            "prismeai_ratelimit_disabled",
            "prismeai_ratelimit_emits",
            "prismeai_ratelimit_emits_burst"
        ])
    );
    assert!(s
        .runtime
        .limiters()
        .workspace("demo")
        .quota(LimitKind::Emits)
        .is_none());
    let r = s
        .client
        .get(s.url("/v2/workspaces/nope/secrets"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn executed_events_never_show_secret_values() {
    let s = server(None).await;
    let sse = s.events().await;
    let r = s
        .post(
            "/v2/workspaces/demo/webhooks/leak",
            &json!({"note": "uses sup3r-s3cret"}),
        )
        .await;
    // The caller gets what the automation returns; the event stream does not.
    assert_eq!(r.text().await.unwrap(), "key=sup3r-s3cret");
    read_sse(sse, |event, data| {
        if event != "runtime.automations.executed" {
            return false;
        }
        let text = data.to_string();
        assert!(!text.contains("sup3r-s3cret"), "{text}");
        assert_eq!(data["payload"]["output"], "key=REDACTED");
        assert_eq!(data["payload"]["payload"]["body"]["note"], "uses REDACTED");
        true
    })
    .await;
}
