//! `sluice serve` as an operator runs it: the real binary on a free loopback
//! port, live reload of edited files, schedules, and graceful shutdown.

use std::process::Command;
use std::time::Duration;

mod common;
use common::{get, serve, within, write};

#[test]
fn edits_are_live_within_two_seconds_and_broken_files_keep_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v1\n",
    );
    let s = serve(dir.path());
    let a = format!("{}/v2/workspaces/demo/webhooks/a", s.base);
    assert_eq!(get(&a), Some((200, "v1".into())));

    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: version2\n",
    );
    let took = within(Duration::from_secs(2), || {
        get(&a) == Some((200, "version2".into()))
    });
    assert!(took.is_some(), "edit not live within 2 s");

    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: [\n",
    );
    let logged = within(Duration::from_secs(3), || {
        s.logs.lock().unwrap().contains("a.yml:")
    });
    assert!(
        logged.is_some(),
        "no located error in the logs: {}",
        s.logs.lock().unwrap()
    );
    assert_eq!(get(&a), Some((200, "version2".into())));

    // A new workspace folder is picked up too.
    let other = dir.path().join("automations/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("b.yml"),
        "when: {endpoint: true}\ndo: []\noutput: b\n",
    )
    .unwrap();
    let b = format!("{}/v2/workspaces/other/webhooks/b", s.base);
    assert!(within(Duration::from_secs(2), || get(&b)
        == Some((200, "b".into())))
    .is_some());
}

#[test]
fn schedules_tick_every_second() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tick.yml",
        "slug: tick\nwhen: {schedules: ['* * * * * *']}\ndo: []\n",
    );
    let s = serve(dir.path());
    let metrics = format!("{}/metrics", s.base);
    let ticks = || {
        get(&metrics)
            .map(|(_, text)| {
                text.lines()
                    .find(|l| {
                        l.starts_with("sluice_executions_total{workspace=\"demo\",slug=\"tick\"}")
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    assert!(within(Duration::from_secs(5), || ticks() >= 2).is_some());
    let before = ticks();
    std::thread::sleep(Duration::from_millis(2_100));
    let after = ticks();
    // One run per second: two or three ticks in 2.1 s, never a burst of duplicates.
    assert!((2..=3).contains(&(after - before)), "{before} -> {after}");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (started, running) = common::started_signal();
    write(
        dir.path(),
        "slow.yml",
        &format!("slug: slow\nwhen: {{endpoint: true}}\ndo:\n  - fetch: {{url: '{started}'}}\n  - wait: {{timeout: 1}}\noutput: finished\n"),
    );
    let mut s = serve(dir.path());
    let url = format!("{}/v2/workspaces/demo/webhooks/slow", s.base);
    let request = std::thread::spawn(move || get(&url));
    running
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow run never started");
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(request.join().unwrap(), Some((200, "finished".into())));
    let exited = within(
        Duration::from_secs(5),
        || matches!(s.child.try_wait(), Ok(Some(status)) if status.success()),
    );
    assert!(
        exited.is_some(),
        "no clean exit: {}",
        s.logs.lock().unwrap()
    );
}

#[test]
fn a_failed_webhook_execution_is_logged_with_its_workspace_slug_and_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fail.yml",
        "slug: fail\nwhen: {endpoint: true}\ndo:\n  - nobody: {}\n",
    );
    let s = serve(dir.path());
    let answer = get(&format!("{}/v2/workspaces/demo/webhooks/fail", s.base));
    assert_eq!(answer.map(|(status, _)| status), Some(500));
    let logged = within(Duration::from_secs(5), || {
        let logs = s.logs.lock().unwrap();
        logs.lines().any(|l| {
            l.contains("webhook execution failed")
                && l.contains("demo")
                && l.contains("fail")
                && l.contains("correlation_id")
                && l.contains("Automation not found: nobody")
        })
    });
    assert!(logged.is_some(), "no log line: {}", s.logs.lock().unwrap());
}
