//! `fetch` against a real HTTP server started on 127.0.0.1 by the test.

use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value as J};
use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::runtime::{Runtime, Start};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Echoes the request: method, headers, query and body.
async fn echo(Query(q): Query<Vec<(String, String)>>, headers: HeaderMap, req: Request) -> Json<J> {
    let method = req.method().to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Json(json!({
        "method": method,
        "headers": h,
        "query": q,
        "body": String::from_utf8_lossy(&bytes),
    }))
}

async fn server() -> String {
    server_on("127.0.0.1").await
}

/// Answers `/to?url=U` with a redirect to U.
async fn redirect(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let to = q.get("url").cloned().unwrap_or_default();
    (StatusCode::FOUND, [("location", to)])
}

async fn server_on(ip: &str) -> String {
    let app = Router::new()
        .route("/to", get(redirect))
        .route("/echo", any(echo))
        .route("/text", get(|| async { "plain text" }))
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "nope"}))) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/sse",
            get(|| async {
                (
                    [("content-type", "text/event-stream")],
                    "data: {\"text\": \"Hel\"}\n\ndata: {\"text\": \"lo\"}\n\ndata: [DONE]\n\n",
                )
            }),
        )
        .route(
            "/big",
            get(|| async { "x".repeat(64 * 1024).into_response() }),
        );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Runs `body` (the `do:` list as YAML) in a fresh workspace and returns the
/// run's output (or error message) and the emitted events.
async fn run(
    body: &str,
    output: &str,
    tweak: impl FnOnce(&mut Settings),
) -> (Result<J, String>, Vec<(String, J)>) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("fetchws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(
        ws.join("main.yml"),
        format!("slug: main\ndo:\n{body}\noutput: {output}\n"),
    )
    .unwrap();
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.limits.disabled = true;
    tweak(&mut settings);
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).unwrap();
    rt.install(sluice::workspace::load(&ws, None).unwrap());
    rt.record_emits();
    let result = rt
        .run(Start {
            correlation_id: Some("corr-1".into()),
            ..Start::endpoint("fetchws", "main")
        })
        .await;
    rt.bus().settled().await;
    let events = rt
        .take_recorded()
        .into_iter()
        .map(|e| (e.kind.clone(), e.payload.to_json()))
        .collect();
    (
        result
            .map(|o| o.output.to_json())
            .map_err(|e| e.to_string()),
        events,
    )
}

#[tokio::test]
async fn methods_headers_query_and_json_body() {
    let base = server().await;
    let (out, _) = run(
        &format!(
            "  - fetch:\n      url: '{base}/echo'\n      method: POST\n      headers: {{X-Custom: yes}}\n      query: {{a: 1, b: [x, y]}}\n      body: {{k: v}}\n      output: r\n"
        ),
        "'{{r}}'",
        |_| {},
    )
    .await;
    let r = out.unwrap();
    assert_eq!(r["method"], "POST");
    assert_eq!(r["headers"]["x-custom"], "yes");
    assert_eq!(r["headers"]["content-type"], "application/json");
    assert_eq!(r["headers"]["x-correlation-id"], "corr-1");
    assert_eq!(r["headers"]["x-prismeai-workspace-id"], "fetchws");
    assert_eq!(r["query"], json!([["a", "1"], ["b", "x"], ["b", "y"]]));
    assert_eq!(r["body"], "{\"k\":\"v\"}");
}

#[tokio::test]
async fn get_sends_no_body_and_form_bodies_are_encoded() {
    let base = server().await;
    let (out, _) = run(
        &format!(
            "  - fetch: {{url: '{base}/echo', body: {{ignored: true}}, output: g}}\n  - fetch:\n      url: '{base}/echo'\n      method: put\n      headers: {{content-type: application/x-www-form-urlencoded}}\n      body: {{a: 1, b: two words}}\n      output: f\n"
        ),
        "{get: '{{g.body}}', form: '{{f.body}}', method: '{{f.method}}'}",
        |_| {},
    )
    .await;
    assert_eq!(
        out.unwrap(),
        json!({"get": "", "form": "a=1&b=two+words", "method": "PUT"})
    );
}

#[tokio::test]
async fn text_bodies_and_output_modes() {
    let base = server().await;
    let (out, _) = run(
        &format!(
            "  - fetch: {{url: '{base}/text', output: t}}\n  - fetch: {{url: '{base}/text', outputMode: detailed_response, output: d}}\n  - fetch: {{url: '{base}/text', outputMode: data_url, output: u}}\n"
        ),
        "{t: '{{t}}', status: '{{d.status}}', body: '{{d.body}}', type: '{{d.headers.content-type}}', url: '{{u}}'}",
        |_| {},
    )
    .await;
    assert_eq!(
        out.unwrap(),
        json!({"t": "plain text", "status": 200, "body": "plain text",
               "type": "text/plain; charset=utf-8",
               "url": "data:text/plain; charset=utf-8;base64,cGxhaW4gdGV4dA=="})
    );
}

#[tokio::test]
async fn non_2xx_is_not_an_error_and_emits_fetch_failed() {
    let base = server().await;
    let (out, events) = run(
        &format!(
            "  - fetch: {{url: '{base}/missing', output: a}}\n  - fetch: {{url: '{base}/missing', emitErrors: false, output: b}}\n"
        ),
        "{a: '{{a}}', b: '{{b}}'}",
        |_| {},
    )
    .await;
    assert_eq!(
        out.unwrap(),
        json!({"a": {"error": "nope"}, "b": {"error": "nope"}})
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "runtime.fetch.failed");
    assert_eq!(events[0].1["response"]["status"], 404);
    assert_eq!(events[0].1["response"]["body"], json!({"error": "nope"}));
}

#[tokio::test]
async fn timeouts_and_size_cap_fail_the_instruction() {
    let base = server().await;
    let (out, _) = run(
        &format!("  - fetch: {{url: '{base}/slow'}}\n"),
        "done",
        |s| s.fetch.timeout_ms = 200,
    )
    .await;
    let err = out.unwrap_err();
    assert!(err.contains("timed out after 200 ms"), "{err}");
    let (out, _) = run(
        &format!("  - fetch: {{url: '{base}/big'}}\n"),
        "done",
        |s| s.fetch.max_response_bytes = 1024,
    )
    .await;
    let err = out.unwrap_err();
    assert!(err.contains("larger than 1024 bytes"), "{err}");
}

#[tokio::test]
async fn connection_refused_and_empty_url_fail_clearly() {
    // Bind then drop a listener: its port is closed for the request that follows.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, _) = run(
        &format!("  - fetch: {{url: 'http://127.0.0.1:{port}/x'}}\n"),
        "done",
        |_| {},
    )
    .await;
    let err = out.unwrap_err();
    assert!(err.contains("FetchError"), "{err}");
    assert!(err.contains("main.yml:"), "{err}");
    let (out, _) = run("  - fetch: {url: ''}\n", "done", |_| {}).await;
    assert!(out.unwrap_err().contains("`url` is required"));
}

#[tokio::test]
async fn server_sent_events_become_chunks_and_stream_events() {
    let base = server().await;
    let (out, events) = run(
        &format!(
            "  - fetch: {{url: '{base}/sse', output: r}}\n  - repeat:\n      on: '{{{{r.body}}}}'\n      do:\n        - set: {{name: 'seen[]', value: '{{{{item.chunk.data[0]}}}}'}}\n  - fetch:\n      url: '{base}/sse'\n      stream: {{event: piece, payload: {{k: 1}}, concatenate: {{path: text}}}}\n"
        ),
        "{status: '{{r.status}}', seen: '{{seen}}'}",
        |_| {},
    )
    .await;
    assert_eq!(
        out.unwrap(),
        json!({"status": 200, "seen": [{"text": "Hel"}, {"text": "lo"}, "[DONE]"]})
    );
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].0, "piece");
    assert_eq!(
        events[1].1,
        json!({"index": 1, "concatenated": {"value": "Hello"}, "chunk": {"data": [{"text": "lo"}]}, "additionalPayload": {"k": 1}})
    );
}

fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

/// Fetches `url` as text with `deny` as `fetch.deny_networks` and `listen` as sluice's address.
async fn fetch_text(url: &str, deny: &[&str], listen: &str) -> Result<J, String> {
    let deny = nets(deny);
    let listen = listen.to_owned();
    let (out, _) = run(
        &format!("  - fetch: {{url: '{url}', output: r}}\n"),
        "'{{r}}'",
        |s| {
            s.fetch.deny_networks = deny;
            s.listen = listen;
        },
    )
    .await;
    out
}

#[tokio::test]
async fn denied_networks_are_refused_by_ip_decimal_ip_name_and_redirect() {
    // Everything is on loopback: the target listens on 127.0.0.2, which is denied,
    // while the redirecting server on 127.0.0.1 stays allowed.
    let target = server_on("127.0.0.2").await;
    let port = target.rsplit(':').next().unwrap();
    let allowed = server().await;
    let refusal = "fetch to 127.0.0.2 refused: address in fetch.deny_networks (127.0.0.2/32)";
    let redirect = format!("{allowed}/to?url={target}/text");
    for url in [
        format!("{target}/text"),
        format!("http://2130706434:{port}/text"),
        format!("http://0x7f.0.0.2:{port}/text"),
        redirect.clone(),
    ] {
        assert_eq!(
            fetch_text(&url, &[], "127.0.0.1:0").await,
            Ok(json!("plain text")),
            "{url}"
        );
        let err = fetch_text(&url, &["127.0.0.2/32"], "127.0.0.1:0")
            .await
            .unwrap_err();
        assert!(err.contains(refusal), "{url}: {err}");
        assert!(err.contains("FetchError"), "{url}: {err}");
    }

    // A name is checked on the addresses it resolves to.
    let local_port = allowed.rsplit(':').next().unwrap();
    let by_name = format!("http://localhost:{local_port}/text");
    assert_eq!(
        fetch_text(&by_name, &[], "127.0.0.1:0").await,
        Ok(json!("plain text"))
    );
    let err = fetch_text(&by_name, &["127.0.0.0/8", "::1/128"], "127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(
        err.contains("refused: address in fetch.deny_networks"),
        "{err}"
    );
}

#[tokio::test]
async fn sluice_own_listen_address_is_refused() {
    let own = server().await;
    let listen: SocketAddr = own.trim_start_matches("http://").parse().unwrap();
    let other = server().await;
    for url in [
        format!("{own}/text"),
        format!("http://localhost:{}/text", listen.port()),
        format!("{other}/to?url={own}/text"),
    ] {
        let err = fetch_text(&url, &[], &listen.to_string())
            .await
            .unwrap_err();
        assert!(
            err.contains(&format!("refused: sluice's own listen address ({listen})")),
            "{url}: {err}"
        );
    }
    // Another port on the same address stays reachable.
    assert_eq!(
        fetch_text(&format!("{other}/text"), &[], &listen.to_string()).await,
        Ok(json!("plain text"))
    );
}
