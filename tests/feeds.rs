//! Resource isolation of events through a real `sluice serve` (issue 8): one
//! workspace's flood cannot make another's `wait` miss its event, fan-outs on
//! the embedded bus stay under `runtime.max_inflight_events`, and nobody but
//! the runtime emits `runtime.*` events.

mod common;

use axum::routing::get;
use axum::Router;
use common::Serve;
use serde_json::{json, Value as J};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Writes `files` into workspace `ws` under `root/automations`.
fn workspace(root: &Path, ws: &str, files: &[(&str, &str)]) {
    for (name, text) in files {
        common::put(root, ws, name, text);
    }
}

/// Turns the rate limits of `ws` off, so only the bus bounds it.
fn unlimited(root: &Path, ws: &str) {
    common::secrets(root, ws, "prismeai_ratelimit_disabled: true\n");
}

/// `sluice serve` with `settings` (YAML) as its settings file, once healthy.
async fn serve_with_settings(root: &Path, settings: &str) -> Serve {
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    let (root, settings) = (root.to_path_buf(), settings.to_string());
    // The helper polls health with a blocking client: keep it off the runtime.
    tokio::task::spawn_blocking(move || common::serve_configured(&root, &settings, &[]))
        .await
        .unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: &J) -> (u16, J) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(J::Null))
}

/// Posts `count` events of type `kind` into `ws` in batches.
async fn flood(client: &reqwest::Client, base: &str, ws: &str, kind: &str, count: usize) {
    const BATCH: usize = 5_000;
    let url = format!("{base}/v2/workspaces/{ws}/events");
    for start in (0..count).step_by(BATCH) {
        let batch: Vec<J> = (start..(start + BATCH).min(count))
            .map(|n| json!({"type": kind, "payload": {"n": n}}))
            .collect();
        let (status, body) = post(client, url.clone(), &J::Array(batch)).await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_in_one_workspace_cannot_make_another_miss_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(
        root,
        "quiet",
        &[(
            "waiter.yml",
            "slug: waiter\nwhen: {endpoint: true}\ndo:\n  - wait: {oneOf: [{event: ping, filters: {payload.n: 2}}], timeout: 15, output: got}\noutput: '{{got.payload}}'\n",
        )],
    );
    workspace(
        root,
        "noisy",
        &[("idle.yml", "slug: idle\nwhen: {endpoint: true}\ndo: []\n")],
    );
    let server = serve_with_settings(root, "{}\n").await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let mut waiting = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/v2/workspaces/quiet/webhooks/waiter");
        async move { post(&client, url, &json!({})).await }
    });
    let floods = (0..2).map(|_| flood(&client, &base, "noisy", "spam", 50_000));
    let pings = async {
        // Pings that do not match the filter first, then the awaited one, again until the
        // waiter answers: its wait registers when its request arrives, which nothing shows.
        flood(&client, &base, "quiet", "ping", 2).await;
        let url = format!("{base}/v2/workspaces/quiet/events");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ping = json!({"type": "ping", "payload": {"n": 2}});
            let (status, _) = post(&client, url.clone(), &ping).await;
            assert_eq!(status, 202);
            if let Ok(answer) = tokio::time::timeout(Duration::from_millis(200), &mut waiting).await
            {
                return answer.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waiter never answered"
            );
        }
    };
    let (_, (status, output)) = futures::join!(futures::future::join_all(floods), pings);
    assert_eq!((status, output), (200, json!({"n": 2})));
}

/// A local HTTP server that counts the requests it is answering at once.
struct Counter {
    url: String,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

async fn counter() -> Counter {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let app = {
        let (now, most, total) = (now.clone(), most.clone(), total.clone());
        Router::new().route(
            "/hit",
            get(move || async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                // Long enough for unbounded listeners to pile up.
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                total.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hit", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Counter {
        url,
        now,
        most,
        total,
    }
}

/// Emits `events` jobs whose listeners fetch the counter (every `every`th
/// one, so big fan-outs stay quick in debug builds), and checks that no more
/// listeners than `runtime.max_inflight_events` ever fetched at once.
async fn fan_out(events: usize, every: usize) {
    const INFLIGHT: usize = 8;
    let counter = counter().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(
        root,
        "fan",
        &[(
            "onjob.yml",
            &format!(
                "slug: onjob\nwhen: {{events: [job]}}\ndo:\n  - conditions:\n      '{{{{payload.n}}}} % {every} == 0':\n        - fetch: {{url: '{}', output: r}}\n",
                counter.url
            ),
        )],
    );
    unlimited(root, "fan");
    // The per-host bound is raised out of the way: only the bus bounds here.
    let server = serve_with_settings(
        root,
        &format!(
            "runtime: {{max_inflight_events: {INFLIGHT}, event_queue: 1000}}\nfetch: {{max_connections_per_host: 10000}}\n"
        ),
    )
    .await;
    let client = reqwest::Client::new();
    flood(&client, &server.base, "fan", "job", events).await;
    let fetches = events / every;
    let all_ran = async {
        while counter.total.load(Ordering::SeqCst) < fetches {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), all_ran)
            .await
            .is_ok(),
        "{} of {fetches} listeners fetched",
        counter.total.load(Ordering::SeqCst)
    );
    assert_eq!(counter.now.load(Ordering::SeqCst), 0);
    let most = counter.most.load(Ordering::SeqCst);
    assert!(
        (2..=INFLIGHT).contains(&most),
        "{most} listeners fetched at once, the bound is {INFLIGHT}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_event_fan_out_stays_under_the_bound() {
    fan_out(5_000, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50000_event_fan_out_stays_under_the_bound() {
    fan_out(50_000, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_executed_event_is_refused_and_flagged_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let forge = "slug: forge\nwhen: {endpoint: true}\ndo:\n  - emit:\n      event: runtime.automations.executed\n      payload: {slug: trusted}\n";
    workspace(root, "demo", &[("forge.yml", forge)]);
    let server = serve_with_settings(root, "{}\n").await;
    let url = format!("{}/v2/workspaces/demo/webhooks/forge", server.base);
    let (status, body) = post(&reqwest::Client::new(), url, &json!({})).await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(status, 500, "{body}");
    assert!(
        message.contains("runtime.automations.executed") && message.contains("reserved"),
        "{message}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(root.join("automations/demo"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("forge.yml:5:14:") && err.contains("reserved"),
        "{err}"
    );
}
