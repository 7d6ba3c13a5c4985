//! `sluice serve` as an operator runs it: the real binary on a free loopback
//! port, live reload of edited files, schedules, and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Serve {
    child: Child,
    base: String,
    logs: Arc<Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(root: &Path, name: &str, text: &str) {
    let ws = root.join("automations/demo");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join(name), text).unwrap();
}

fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::get(url).ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().unwrap_or_default()))
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn serve(root: &Path) -> Serve {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workspaces",
        ])
        .arg(root.join("automations"))
        .env("SLUICE_SECRETS", root.join("secrets"))
        .env("RUST_LOG", "info")
        .env_remove("NATS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/sys/healthcheck");
    assert!(
        within(Duration::from_secs(10), || get(&health)
            .is_some_and(|(s, _)| s == 200))
        .is_some(),
        "server did not become healthy: {}",
        logs.lock().unwrap()
    );
    Serve { child, base, logs }
}

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
    write(
        dir.path(),
        "slow.yml",
        "slug: slow\nwhen: {endpoint: true}\ndo:\n  - wait: {timeout: 1}\noutput: finished\n",
    );
    let mut s = serve(dir.path());
    let url = format!("{}/v2/workspaces/demo/webhooks/slow", s.base);
    let request = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(300));
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
