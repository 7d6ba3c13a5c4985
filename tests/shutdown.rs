//! Runs that outlive their caller, and a shutdown that ends on time: the real
//! `sluice serve` binary, observed through its event stream.

mod common;

use common::{serve_configured, serve_with, within, write};
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-for-tests";

/// Opens the workspace's event stream; its `data:` lines arrive on the channel.
fn events(base: &str) -> mpsc::Receiver<String> {
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{base}/v2/workspaces/demo/events"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:") {
                if tx.send(data.trim().to_string()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn a_caller_that_hangs_up_does_not_cancel_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "slow.yml",
        "slug: slow\nwhen: {endpoint: true}\ndo:\n  - wait: {timeout: 1}\n  - emit: {event: done, payload: {from: slow}}\n",
    );
    let s = serve_with(dir.path(), &[("SLUICE_ADMIN_TOKEN", TOKEN)], &[]);
    let feed = events(&s.base);
    let gave_up = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/v2/workspaces/demo/webhooks/slow", s.base))
        .send();
    assert!(gave_up.is_err(), "the call should have timed out");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut emitted, mut executed) = (false, None);
    while !(emitted && executed.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(data) = feed.recv_timeout(left) else {
            panic!(
                "emitted {emitted}, executed {executed:?}; logs:\n{}",
                s.logs.lock().unwrap()
            );
        };
        let event: serde_json::Value = serde_json::from_str(&data).unwrap();
        match event["type"].as_str() {
            Some("done") => emitted = true,
            Some("runtime.automations.executed") => executed = Some(event["payload"].clone()),
            _ => {}
        }
    }
    let executed = executed.unwrap();
    assert_eq!(executed["slug"], "slow");
    assert_eq!(executed["callerGone"], true);
}

#[test]
fn a_caller_that_waits_is_not_marked_gone() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "quick.yml",
        "slug: quick\nwhen: {endpoint: true}\noutput: ok\n",
    );
    let s = serve_with(dir.path(), &[("SLUICE_ADMIN_TOKEN", TOKEN)], &[]);
    let feed = events(&s.base);
    let answer = reqwest::blocking::Client::new()
        .post(format!("{}/v2/workspaces/demo/webhooks/quick", s.base))
        .send()
        .unwrap();
    assert_eq!(answer.text().unwrap(), "ok");
    let data = feed.recv_timeout(Duration::from_secs(10)).unwrap();
    let event: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["type"], "runtime.automations.executed");
    assert!(event["payload"].get("callerGone").is_none(), "{event}");
}

#[test]
fn sigterm_ends_streams_and_long_waits_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (started, running) = common::started_signal();
    write(
        dir.path(),
        "forever.yml",
        &format!("slug: forever\nwhen: {{endpoint: true}}\ndo:\n  - fetch: {{url: '{started}'}}\n  - wait: {{timeout: 86400}}\noutput: never\n"),
    );
    let mut s = serve_configured(
        dir.path(),
        "http:\n  shutdown_grace_secs: 2\n",
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );
    let feed = events(&s.base);
    let url = format!("{}/v2/workspaces/demo/webhooks/forever", s.base);
    let waiting = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
            .post(url)
            .send()
            .map(|r| r.status().as_u16())
    });
    running
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook's run never started");
    let pid = s.child.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = within(Duration::from_secs(6), || {
        matches!(s.child.try_wait(), Ok(Some(_)))
    });
    let took = signalled.elapsed();
    assert!(
        exited.is_some() && took < Duration::from_secs(3),
        "exit took {took:?} (grace 2 s); logs:\n{}",
        s.logs.lock().unwrap()
    );
    assert!(s.child.try_wait().unwrap().unwrap().success());
    // The stream ended rather than hanging, and the cancelled call got an answer or a reset.
    assert!(matches!(
        feed.recv_timeout(Duration::from_secs(2)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    let answer = waiting.join().unwrap();
    assert!(matches!(answer, Err(_) | Ok(503)), "{answer:?}");
}
