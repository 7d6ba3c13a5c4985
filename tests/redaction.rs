//! Secrets never leave a real `sluice serve` (issue 9 item 2): a long, a
//! 3-character and a numeric secret, used in emits, an event name, a failing
//! fetch URL, a bad event name and a failing listener, are hidden in the SSE
//! stream, webhook error bodies, debug logs, executed events and `/metrics`,
//! while the automations themselves still get the clear values.

mod common;

use common::{put, secrets, serve_with, within};
use serde_json::{json, Value as J};
use std::io::Read;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const API_KEY: &str = "s3cr3t-api-key-7f3a9";
const PIN: &str = "987654321";
const TAG: &str = "q7z";
const ADMIN: &str = "admin-token-for-redaction";

/// The workspace: every automation below puts a secret somewhere it could leak.
fn workspace(root: &std::path::Path, closed_port: u16) {
    secrets(
        root,
        "demo",
        &format!("apiKey: {API_KEY}\npin: {PIN}\ntag: {TAG}\n"),
    );
    put(
        root,
        "demo",
        "leak.yml",
        "slug: leak\nwhen: {endpoint: true}\ndo:\n\
         \x20 - emit: {event: 'custom.{{secret.tag}}', payload: {line: 'pin {{secret.pin}} tag {{secret.tag}}'}}\n\
         \x20 - emit: {event: secretly, payload: {key: '{{secret.apiKey}}', pin: '{{secret.pin}}'}}\n\
         output: {key: '{{secret.apiKey}}', pin: '{{secret.pin}}', headers: '{{headers}}'}\n",
    );
    // Proves delivery is unchanged: the listener compares what it got with the secrets.
    put(
        root,
        "demo",
        "listener.yml",
        "slug: listener\nwhen: {events: [secretly]}\ndo:\n\
         \x20 - emit: {event: checked, payload: {same: '{% {{payload.key}} == {{secret.apiKey}} && {{payload.pin}} == {{secret.pin}} %}'}}\n",
    );
    // Fails with the event's secret text in its error, which is logged.
    put(
        root,
        "demo",
        "thrower.yml",
        "slug: thrower\nwhen: {events: [custom.q7z]}\ndo:\n\
         \x20 - set: {name: x, value: '{% round({{payload.line}}) %}'}\n",
    );
    put(
        root,
        "demo",
        "badfetch.yml",
        &format!(
            "slug: badfetch\nwhen: {{endpoint: true}}\ndo:\n\
             \x20 - fetch: {{url: 'http://127.0.0.1:{closed_port}/{{{{secret.apiKey}}}}?pin={{{{secret.pin}}}}&t={{{{secret.tag}}}}'}}\n"
        ),
    );
    put(
        root,
        "demo",
        "badname.yml",
        "slug: badname\nwhen: {endpoint: true}\ndo:\n\
         \x20 - emit: {event: 'bad/{{secret.apiKey}}/{{secret.tag}}'}\n",
    );
}

/// The SSE events read so far as (event name, data).
fn parse_sse(text: &str) -> Vec<(String, J)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

fn assert_hidden(channel: &str, text: &str) {
    for secret in [API_KEY, PIN, TAG] {
        assert!(
            !text.contains(secret),
            "{channel} shows the secret {secret}:\n{text}"
        );
    }
}

#[test]
fn secrets_are_hidden_on_every_external_view_and_delivered_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(root, common::free_port());
    let server = serve_with(
        root,
        &[("SLUICE_ADMIN_TOKEN", ADMIN), ("RUST_LOG", "debug")],
        &[],
    );
    let base = server.base.clone();

    // The event stream, read by a thread until the server goes away.
    let sse = Arc::new(Mutex::new(String::new()));
    let (connected, is_connected) = mpsc::channel();
    std::thread::spawn({
        let (sse, url) = (sse.clone(), format!("{base}/v2/workspaces/demo/events"));
        move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(None)
                .build()
                .unwrap();
            let mut r = client.get(url).bearer_auth(ADMIN).send().unwrap();
            connected.send(r.status().as_u16()).unwrap();
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                sse.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let status = is_connected.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);

    let client = reqwest::blocking::Client::new();
    let webhook = |slug: &str| {
        let r = client
            .post(format!("{base}/v2/workspaces/demo/webhooks/{slug}"))
            .header("x-api-key", "caller-credential")
            .header("x-request-id", "req-1")
            .json(&json!({}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };

    // A webhook's 200 answer is the automation's own output: unchanged.
    let (status, body) = webhook("leak");
    assert_eq!(status, 200, "{body}");
    let output: J = serde_json::from_str(&body).unwrap();
    assert_eq!(output["key"], API_KEY);
    assert_eq!(output["pin"], 987654321);
    assert_eq!(output["headers"]["x-api-key"], "caller-credential");

    for (slug, kind) in [("badfetch", "FetchError"), ("badname", "InvalidEventError")] {
        let (status, body) = webhook(slug);
        assert_eq!(status, 500, "{body}");
        let message = serde_json::from_str::<J>(&body).unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("REDACTED") && message.contains(kind),
            "{message}"
        );
        assert_hidden(&format!("the {slug} error body"), &body);
    }

    let seen = within(Duration::from_secs(10), || {
        let events = parse_sse(&sse.lock().unwrap());
        let executed = |slug: &str| {
            events.iter().any(|(name, e)| {
                name == "runtime.automations.executed" && e["payload"]["slug"] == slug
            })
        };
        executed("leak") && executed("listener")
    });
    let text = sse.lock().unwrap().clone();
    assert!(seen.is_some(), "the events never came:\n{text}");
    let logs_seen = within(Duration::from_secs(5), || {
        server.logs.lock().unwrap().contains("listener failed")
    });
    let logs = server.logs.lock().unwrap().clone();
    assert!(logs_seen.is_some(), "no listener failure logged:\n{logs}");

    // The listener got the clear values.
    let events = parse_sse(&text);
    let checked = events.iter().find(|(name, _)| name == "checked");
    assert_eq!(
        checked.map(|(_, e)| &e["payload"]),
        Some(&json!({"same": true}))
    );

    // Emitted events, their names included, are redacted on the stream.
    let custom = events.iter().find(|(name, _)| name == "custom.REDACTED");
    assert_eq!(
        custom.map(|(_, e)| &e["payload"]),
        Some(&json!({"line": "pin REDACTED tag REDACTED"}))
    );
    let secretly = events.iter().find(|(name, _)| name == "secretly");
    assert_eq!(
        secretly.map(|(_, e)| &e["payload"]),
        Some(&json!({"key": "REDACTED", "pin": "REDACTED"}))
    );

    // The executed event: redacted output, only the listed request headers.
    let (_, leak) = events
        .iter()
        .find(|(name, e)| name == "runtime.automations.executed" && e["payload"]["slug"] == "leak")
        .unwrap();
    let executed = &leak["payload"];
    assert_eq!(executed["output"]["key"], "REDACTED");
    assert_eq!(executed["output"]["pin"], "REDACTED");
    let headers = &executed["payload"]["headers"];
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-api-key").is_none(), "{headers}");
    // What the automation outputs is its own choice: only secrets are hidden there.
    assert_eq!(
        executed["output"]["headers"]["x-api-key"],
        "caller-credential"
    );

    assert_hidden("the SSE stream", &text);

    // Debug logs: the failing listener's error is there, redacted.
    let failure = logs
        .lines()
        .find(|l| l.contains("listener failed"))
        .unwrap();
    assert!(
        failure.contains("Invalid parameters pin REDACTED tag REDACTED"),
        "{failure}"
    );
    assert_hidden("the logs", &logs);

    let (status, metrics) = common::get(&format!("{base}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("workspace=\"demo\""), "{metrics}");
    assert_hidden("/metrics", &metrics);
}
