//! Broker faults on the NATS path (issue 10), with a real nats-server and two
//! real `sluice serve` instances. Executions are counted by a local HTTP
//! server that each listener calls with its event and `{{source.redelivered}}`,
//! so a run twice is seen even when sluice does not know it ran twice.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value as J};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{serve_with, write, NatsServer, Serve};

/// One listener execution, as the counter received it.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    redelivered: Option<u64>,
}

type Hits = Arc<Mutex<HashMap<u64, Vec<Hit>>>>;

/// A local HTTP server recording every execution by the event's `n` (POST
/// /hit), and a gate (GET /gate) that holds listeners until the test opens it.
struct Counter {
    base: String,
    hits: Hits,
    open: tokio::sync::watch::Sender<bool>,
}

async fn counter() -> Counter {
    let hits: Hits = Arc::default();
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = {
        let hits = hits.clone();
        Router::new()
            .route(
                "/hit",
                post(move |Json(body): Json<J>| async move {
                    let n = number(&body["n"]).expect("the listener sends n");
                    let hit = Hit {
                        id: body["id"].as_str().unwrap_or_default().to_string(),
                        redelivered: number(&body["redelivered"]),
                    };
                    hits.lock().unwrap().entry(n).or_default().push(hit);
                    "ok"
                }),
            )
            .route(
                "/gate",
                get(move || async move {
                    let _ = gate.clone().wait_for(|open| *open).await;
                    "open"
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Counter { base, hits, open }
}

/// A number sent as JSON, or as the text of a template.
fn number(v: &J) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Whether a log line announces that an event will run again: a failed or
/// given-up acknowledgement, or a redelivery noticed by the consumer. Loose on
/// purpose, so the wording can change; an announcement must be a warning or an error.
fn announces_redelivery(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    (l.contains("warn") || l.contains("error"))
        && (l.contains("acknowledg") || l.contains("redeliver"))
}

fn instance(root: &Path, nats: &str, config: &str) -> Serve {
    tokio::task::block_in_place(|| {
        serve_with(
            root,
            &[("NATS_URL", nats), ("RATE_LIMIT_DISABLED", "true")],
            &["--config", config],
        )
    })
}

/// The sum of one metric over the instances' /metrics.
fn metric(instances: &[&Serve], name: &str) -> f64 {
    instances
        .iter()
        .filter_map(|s| common::get(&format!("{}/metrics", s.base)))
        .flat_map(|(_, text)| {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_runs_every_event_and_marks_every_duplicate_as_a_redelivery() {
    const N: u64 = 3_000;
    const ACK_WAIT: u64 = 3;
    let mut nats = NatsServer::restartable();
    let counter = counter().await;
    let hits = counter.hits.clone();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Listeners wait at the gate until every event is stored, then run as fast
    // as they can: the more acks in flight when the broker stops, the more land
    // in the moment when JetStream is down but connections are still open.
    write(
        root,
        "work.yml",
        &format!(
            "slug: work\nwhen: {{events: [work]}}\ndo:\n  - fetch: {{url: '{base}/gate', output: g}}\n  - fetch: {{url: '{base}/hit', method: post, body: {{n: '{{{{payload.n}}}}', id: '{{{{id}}}}', redelivered: '{{{{source.redelivered}}}}'}}, output: r}}\n",
            base = counter.base
        ),
    );
    let cfg = root.join("sluice.yaml");
    // A short ack_wait brings the redeliveries back within the test's time.
    std::fs::write(
        &cfg,
        format!(
            "nats:\n  ack_wait_secs: {ACK_WAIT}\n  shutdown_grace_secs: 2\nfetch:\n  max_connections_per_host: 1000\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let a = instance(root, &nats.url, &cfg);
    let b = instance(root, &nats.url, &cfg);

    let client = reqwest::Client::new();
    for start in (0..N).step_by(500) {
        let batch: Vec<J> = (start..(start + 500).min(N))
            .map(|n| json!({"type": "work", "payload": {"n": n}}))
            .collect();
        let r = client
            .post(format!("{}/v2/workspaces/demo/events", a.base))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }

    counter.open.send_replace(true);
    let ran = |hits: &Hits| hits.lock().unwrap().len() as u64;
    let started = Instant::now();
    while ran(&hits) < N / 10 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} events ran before the restart; logs:\n{}",
            ran(&hits),
            a.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = ran(&hits);
    tokio::task::block_in_place(|| {
        nats.stop();
        std::thread::sleep(Duration::from_secs(1));
        nats.restart();
    });
    assert!(
        before < N,
        "every event ran before the restart: nothing was in flight"
    );

    // Every event runs; then the redeliveries of unacknowledged ones come back
    // within ack_wait, so wait for the counter to stay still that long.
    let deadline = Instant::now() + Duration::from_secs(40);
    let total = |hits: &Hits| hits.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let (mut last, mut still_since) = (total(&hits), Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total(&hits);
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if ran(&hits) == N && still_since.elapsed() > Duration::from_secs(ACK_WAIT + 1) {
            break;
        }
    }

    let hits = hits.lock().unwrap().clone();
    let missing: Vec<u64> = (0..N).filter(|n| !hits.contains_key(n)).collect();
    let executions: usize = hits.values().map(Vec::len).sum();
    let duplicates = executions - hits.len();
    // Beyond one first delivery per event, an execution without a mark is a
    // silent duplicate: its listener had no way to know it ran again.
    let unmarked: usize = hits
        .values()
        .map(|runs| {
            let plain = runs
                .iter()
                .filter(|h| h.redelivered.unwrap_or(0) == 0)
                .count();
            plain.saturating_sub(1)
        })
        .sum();
    let ids: HashSet<&str> = hits.values().flatten().map(|h| h.id.as_str()).collect();
    let logs = format!("{}{}", a.logs.lock().unwrap(), b.logs.lock().unwrap());
    let announced = logs.lines().filter(|l| announces_redelivery(l)).count();
    let redelivered =
        tokio::task::block_in_place(|| metric(&[&a, &b], "sluice_bus_redeliveries_total"));
    println!(
        "{before} of {N} events had run when NATS stopped; {executions} executions of {} events \
         ({} event ids); {duplicates} beyond one per event, {unmarked} of them without \
         source.redelivered; {announced} log lines announce a redelivery; \
         sluice_bus_redeliveries_total {redelivered}",
        hits.len(),
        ids.len()
    );
    assert!(
        missing.is_empty(),
        "{} events never ran (first: {:?}); logs:\n{logs}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        unmarked, 0,
        "{unmarked} of {duplicates} duplicate executions did not carry source.redelivered"
    );
    assert!(
        duplicates <= announced,
        "{duplicates} duplicate executions, but the logs announce only {announced} redeliveries"
    );
}
