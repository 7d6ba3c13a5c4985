//! CPU fairness through a real `sluice serve`: loops that no limiter slows down
//! in one workspace must not hold back another workspace's webhook. Alone in its
//! test binary so that no other test competes for the cores it measures.

use std::time::{Duration, Instant};

mod common;
use common::{put, serve};

#[test]
fn two_unthrottled_loops_do_not_hold_back_another_workspaces_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (started, running) = common::started_signal();
    put(
        dir.path(),
        "victim",
        "ping.yml",
        "slug: ping\nwhen: {endpoint: true}\ndo: []\noutput: pong\n",
    );
    put(
        dir.path(),
        "spinner",
        "spin.yml",
        &format!("slug: spin\nwhen: {{endpoint: true}}\ndo:\n  - fetch: {{url: '{started}'}}\n  - repeat:\n      on: 10000000\n      do:\n        - set: {{name: x, value: '{{{{$index}}}}'}}\n"),
    );
    common::secrets(
        dir.path(),
        "spinner",
        "prismeai_ratelimit_disabled: true\nsluice_max_instructions: 100000000\n",
    );
    let s = serve(dir.path());
    let spin = format!("{}/v2/workspaces/spinner/webhooks/spin", s.base);
    let ping = format!("{}/v2/workspaces/victim/webhooks/ping", s.base);
    // The loops run for far longer than the test; their callers give up after
    // 20 s and the server is killed at the end.
    for _ in 0..2 {
        let spin = spin.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let _ = client.get(&spin).send();
        });
    }
    // Both loops are going once each told so: each takes far longer than the whole test.
    for _ in 0..2 {
        running
            .recv_timeout(Duration::from_secs(10))
            .expect("a loop never started");
    }
    let client = reqwest::blocking::Client::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let answer = client.get(&ping).send().unwrap().text().unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer, "pong");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_millis(50),
        "the slowest webhook took {slowest:?} while two loops ran"
    );
}
