//! The publish side of the NATS bus against a real nats-server and real
//! `sluice serve` processes: the healthcheck follows the connection, and
//! `POST /events` during an outage answers 504 with ids that make a retry safe
//! (and the embedded bus drops a resent id too). Listener runs are counted by
//! a local HTTP server each listener fetches.
//!
//! Each test starts its own server through `scripts/nats-test-server.sh` on a
//! fixed loopback port and store, so it can be stopped and started again.

use axum::extract::{Path, State};
use axum::routing::get as route_get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{get, serve_with, within, write, NatsServer, Serve};

const NOOP: &str = "slug: noop\nwhen: {events: [noop]}\ndo: []\n";

#[test]
fn healthcheck_follows_the_nats_connection() {
    let mut nats = NatsServer::restartable();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "noop.yml", NOOP);
    let serve = serve_with(dir.path(), &[("NATS_URL", nats.url.as_str())], &[]);
    let health = format!("{}/sys/healthcheck", serve.base);
    let answer = || {
        get(&health).map(|(status, body)| {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            (status, body)
        })
    };

    nats.stop();
    let down = within(Duration::from_secs(1), || {
        answer() == Some((503, json!({"healthy": false, "bus": "disconnected"})))
    });
    assert!(down.is_some(), "still healthy without NATS: {:?}", answer());

    nats.restart();
    let up = within(Duration::from_secs(1), || {
        answer() == Some((200, json!({"healthy": true})))
    });
    assert!(up.is_some(), "not healthy again: {:?}", answer());
}

type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// A local HTTP server counting the requests to `/hit/<n>` by `n`.
async fn counter() -> (String, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/hit/{n}",
            route_get(
                |State(hits): State<Hits>, Path(n): Path<String>| async move {
                    *hits.lock().unwrap().entry(n).or_default() += 1;
                    "ok"
                },
            ),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// A workspace whose `hit` listener fetches the counter once per event.
fn hit_workspace(counter: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "hit.yml",
        &format!(
            "slug: hit\nwhen: {{events: [hit]}}\ndo:\n  - fetch: {{url: '{counter}/hit/{{{{payload.n}}}}', output: r}}\n"
        ),
    );
    dir
}

/// Starts `sluice serve`; its start-up check is blocking HTTP, so it leaves the
/// async worker thread meanwhile.
fn start(root: &std::path::Path, env: &[(&str, &str)]) -> Serve {
    let mut env = env.to_vec();
    env.push(("RATE_LIMIT_DISABLED", "true"));
    tokio::task::block_in_place(|| serve_with(root, &env, &[]))
}

async fn post(serve: &Serve, events: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v2/workspaces/demo/events", serve.base))
        .json(events)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Waits until `n` events were counted, then a little longer so that a
/// second run of any of them would be counted too.
async fn settle(hits: &Hits, n: usize) -> HashMap<String, usize> {
    for _ in 0..360 {
        if hits.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hits.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_during_an_outage_and_retried_with_their_ids_run_once() {
    let mut nats = NatsServer::restartable();
    let (counter, hits) = counter().await;
    let dir = hit_workspace(&counter);
    let serve = start(dir.path(), &[("NATS_URL", nats.url.as_str())]);
    let health = format!("{}/sys/healthcheck", serve.base);
    let healthy = |want: u16| {
        let health = health.clone();
        tokio::task::block_in_place(move || {
            within(Duration::from_secs(5), || {
                get(&health).is_some_and(|(s, _)| s == want)
            })
        })
    };

    nats.stop();
    assert!(
        healthy(503).is_some(),
        "NATS is gone but sluice looks healthy"
    );
    let events: Vec<Value> = (0..3)
        .map(|n| json!({"type": "hit", "payload": {"n": n}}))
        .collect();
    let (status, body) = post(&serve, &json!(events)).await;
    assert_eq!(status, 504, "{body}");
    let ids = body["error"]["ids"].as_array().cloned().unwrap_or_default();
    assert_eq!(ids.len(), 3, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown"),
        "{body}"
    );

    nats.restart();
    assert!(healthy(200).is_some(), "not healthy after NATS came back");
    let retry: Vec<Value> = events
        .iter()
        .zip(&ids)
        .map(|(e, id)| {
            let mut e = e.clone();
            e["id"] = id.clone();
            e
        })
        .collect();
    let (status, body) = post(&serve, &json!(retry)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ids"], json!(ids));

    let hits = settle(&hits, 3).await;
    let expected: HashMap<String, usize> = (0..3).map(|n| (n.to_string(), 1)).collect();
    assert_eq!(hits, expected, "each event must run exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_bus_runs_a_resent_id_once_and_refuses_bad_ids() {
    let (counter, hits) = counter().await;
    let dir = hit_workspace(&counter);
    let serve = start(dir.path(), &[]);
    let event = json!({"type": "hit", "id": "order-42_a", "payload": {"n": 1}});
    for _ in 0..2 {
        let (status, body) = post(&serve, &event).await;
        assert_eq!(
            (status, body),
            (202, json!({"accepted": 1, "ids": ["order-42_a"]}))
        );
    }
    for bad in [json!(""), json!("a b"), json!("x".repeat(65)), json!(7)] {
        let (status, body) = post(
            &serve,
            &json!([{"type": "hit"}, {"type": "hit", "id": bad}]),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with("event 1: `id`"), "{message}");
    }
    let hits = settle(&hits, 1).await;
    assert_eq!(hits, HashMap::from([("1".to_string(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_emitting_2000_events_over_nats_stores_them_all_and_each_runs_once() {
    const N: usize = 2000;
    let nats = NatsServer::start();
    let (counter, hits) = counter().await;
    let dir = hit_workspace(&counter);
    write(
        dir.path(),
        "fanout.yml",
        &format!(
            "slug: fanout\nwhen: {{endpoint: true}}\ndo:\n  - repeat:\n      on: {N}\n      do:\n        - emit: {{event: hit, payload: {{n: '{{{{$index}}}}'}}}}\noutput: done\n"
        ),
    );
    let serve = start(dir.path(), &[("NATS_URL", nats.url.as_str())]);
    let r = reqwest::Client::new()
        .post(format!("{}/v2/workspaces/demo/webhooks/fanout", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "done");

    let hits = tokio::time::timeout(Duration::from_secs(25), settle(&hits, N))
        .await
        .expect("the listeners did not all run");
    assert_eq!(hits.len(), N, "events missing");
    let twice: Vec<_> = hits.iter().filter(|(_, &runs)| runs != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
}
