//! Several `sluice serve` processes on one real nats-server: an instance
//! killed with SIGKILL mid-run loses no event, its events run elsewhere within
//! the default ack wait, and schedules tick once per cluster. Events are
//! observed from the test through a NATS subscription.

use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

mod common;
use common::{serve_with, write, NatsServer, Serve};

/// Config for the instances: a short ack wait so a dead instance's events
/// come back quickly.
fn config(root: &std::path::Path) -> String {
    let file = root.join("sluice.yaml");
    std::fs::write(
        &file,
        "nats:\n  ack_wait_secs: 2\n  shutdown_grace_secs: 2\n",
    )
    .unwrap();
    file.to_string_lossy().into_owned()
}

/// Starts an instance; its start-up check is blocking HTTP, so it leaves the
/// async worker thread meanwhile.
fn instance(root: &std::path::Path, nats: &str, config: &str) -> Serve {
    tokio::task::block_in_place(|| {
        serve_with(
            root,
            &[("NATS_URL", nats), ("RATE_LIMIT_DISABLED", "true")],
            &["--config", config],
        )
    })
}

/// Emits `n` `work` events (`payload.n` = 0..n) through `POST …/events` of the instance at `base`.
async fn post_work(base: &str, n: usize) {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|n| serde_json::json!({"type": "work", "payload": {"n": n}}))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/workspaces/demo/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_no_event() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "work.yml",
        "slug: work\nwhen: {events: [work]}\ndo:\n  - wait: {timeout: 0.3}\n  - emit: {event: done, payload: {n: '{{payload.n}}'}}\n",
    );
    let cfg = config(dir.path());
    let a = instance(dir.path(), &nats.url, &cfg);
    let mut b = instance(dir.path(), &nats.url, &cfg);

    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut done = client.subscribe("sluice.demo.events.done").await.unwrap();

    const N: usize = 300;
    post_work(&a.base, N).await;

    // Let both instances take work, then kill one in the middle of the run.
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let kill_after = tokio::time::Instant::now() + Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    while seen.len() < N {
        if !killed && tokio::time::Instant::now() >= kill_after {
            b.child.kill().unwrap();
            b.child.wait().unwrap();
            killed = true;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), done.next()).await;
        if tokio::time::Instant::now() > deadline {
            panic!(
                "only {} of {N} events ran; logs of the survivor:\n{}",
                seen.len(),
                a.logs.lock().unwrap()
            );
        }
        if let Ok(Some(msg)) = next {
            let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            let n = event["payload"]["n"].as_u64().unwrap();
            *seen.entry(n).or_default() += 1;
        }
    }
    assert!(killed, "the run ended before an instance could be killed");
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    println!("all {N} events ran; {duplicates} ran twice (redelivered after the kill)");
    assert_eq!(seen.len(), N);
}

/// Counts one `done` event: runs of its job, and those marked as redeliveries.
fn count_run(runs: &mut HashMap<u64, (u32, u32)>, done: &[u8]) {
    let event: serde_json::Value = serde_json::from_slice(done).unwrap();
    let n = event["payload"]["n"].as_u64().unwrap();
    let marked = event["payload"]["r"].as_u64().is_some_and(|r| r >= 1);
    let entry = runs.entry(n).or_default();
    entry.0 += 1;
    entry.1 += u32::from(marked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_fails_over_within_ack_wait_and_marks_reruns() {
    // The default ack wait, on purpose: failover in seconds is the default.
    let ack_wait = Duration::from_secs(sluice::config::NatsSettings::default().ack_wait_secs);
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "work.yml",
        "slug: work\nwhen: {events: [work]}\ndo:\n  - wait: {timeout: 0.5}\n  - emit: {event: done, payload: {n: '{{payload.n}}', r: '{{source.redelivered}}'}}\n",
    );
    let cfg = dir.path().join("sluice.yaml");
    std::fs::write(&cfg, "nats:\n  shutdown_grace_secs: 2\n").unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let a = instance(dir.path(), &nats.url, &cfg);
    let mut b = instance(dir.path(), &nats.url, &cfg);
    let _c = instance(dir.path(), &nats.url, &cfg);

    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut done = client.subscribe("sluice.demo.events.done").await.unwrap();
    const N: usize = 300;
    post_work(&a.base, N).await;
    // Kill `b` once it holds events in the middle of their runs (each waits 0.5 s).
    let holding = tokio::task::block_in_place(|| {
        common::within(Duration::from_secs(10), || {
            common::get(&format!("{}/metrics", b.base)).is_some_and(|(_, text)| {
                text.lines()
                    .find_map(|l| l.strip_prefix("sluice_bus_pending_events "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    });
    assert!(holding.is_some(), "instance b never held an event");
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = tokio::time::Instant::now();

    // Runs per event, and how many of them were marked as redeliveries.
    let mut runs: HashMap<u64, (u32, u32)> = HashMap::new();
    let deadline = killed + ack_wait + Duration::from_secs(2);
    while runs.len() < N {
        match tokio::time::timeout_at(deadline, done.next()).await {
            Ok(Some(msg)) => {
                count_run(&mut runs, &msg.payload);
            }
            _ => panic!(
                "{} of {N} events done {:?} after the kill (ack wait {ack_wait:?}); logs:\n{}",
                runs.len(),
                killed.elapsed(),
                a.logs.lock().unwrap()
            ),
        }
    }
    let took = killed.elapsed();
    // Late reruns of events already seen: collect until quiet.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(700), done.next()).await {
        count_run(&mut runs, &msg.payload);
    }
    let reruns: u32 = runs.values().map(|(_, m)| m).sum();
    let duplicates: u32 = runs.values().map(|(c, _)| c - 1).sum();
    println!(
        "all {N} events done {took:?} after the kill; {reruns} redelivered runs, {duplicates} events ran twice"
    );
    assert!(reruns > 0, "the killed instance held no event: {runs:?}");
    for (n, (count, marked)) in &runs {
        assert!(
            count - marked <= 1,
            "event {n} ran {count} times, only {marked} marked as redelivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_tick_once_per_cluster() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tick.yml",
        "slug: tick\nwhen: {schedules: ['* * * * * *']}\ndo: []\n",
    );
    let cfg = config(dir.path());
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut executed = client.subscribe("sluice.demo.executed").await.unwrap();
    let _a = instance(dir.path(), &nats.url, &cfg);
    let _b = instance(dir.path(), &nats.url, &cfg);

    // Count runs per tick second over about four seconds.
    let mut per_second: HashMap<String, u32> = HashMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, executed.next()).await {
        let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        if event["payload"]["trigger"]["type"] == "schedule" {
            let started = event["payload"]["startedAt"].as_str().unwrap_or("");
            *per_second
                .entry(started[..19.min(started.len())].to_string())
                .or_default() += 1;
        }
    }
    assert!(per_second.len() >= 3, "too few ticks: {per_second:?}");
    assert!(
        per_second.values().all(|&c| c == 1),
        "a tick ran more than once: {per_second:?}"
    );
}
