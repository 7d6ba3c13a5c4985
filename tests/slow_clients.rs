//! Slow clients against the real `sluice serve`: thousands of connections
//! trickling a request line must not stop the health check from answering,
//! and their file descriptors must be released.

mod common;

use common::{serve_configured, within, write};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Open files of this process (`ulimit -n`).
fn fd_limit() -> usize {
    let out = Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text == "unlimited" {
        return usize::MAX;
    }
    text.parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// One health check on a new connection: its status and how long it took.
fn probe(address: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /sys/healthcheck HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or("").to_string();
    (status, started.elapsed())
}

#[test]
fn thousands_of_slow_connections_leave_the_health_check_fast() {
    // The test's own end of every connection is a file descriptor too.
    let limit = fd_limit();
    let count = if limit >= 6_000 { 5_000 } else { 1_000 };
    assert!(
        limit >= count + 200,
        "ulimit -n is {limit}: raise it to run {count} slow connections"
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "hello.yml",
        "slug: hello\nwhen: {endpoint: true}\noutput: hi\n",
    );
    let s = serve_configured(
        dir.path(),
        "http:\n  header_read_timeout_ms: 500\n  idle_timeout_secs: 1\n  max_connections: 200\n",
        &[],
    );
    let pid = s.child.id();
    let address = s.base.trim_start_matches("http://").to_string();
    let baseline = open_fds(pid);

    let mut slow = Vec::with_capacity(count);
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    // Open the slow connections in bursts, trickling one more byte into each
    // open one between bursts, and probe the health check after every burst.
    let line = b"GET /sys/healthcheck HTTP/1.1\r\n";
    for burst in 0..count / 250 {
        for _ in 0..250 {
            let mut c = TcpStream::connect(&address).unwrap();
            c.set_nonblocking(true).unwrap();
            let _ = c.write(&line[..3]);
            slow.push(c);
        }
        for c in &mut slow {
            let _ = c.write(&line[3 + burst % 20..4 + burst % 20]);
        }
        let (status, took) = probe(&address);
        assert!(status.contains(" 200 "), "probe answered {status:?}");
        worst = worst.max(took);
        probes += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        worst < Duration::from_millis(100),
        "slowest of {probes} health checks: {worst:?}"
    );
    let during = open_fds(pid);
    assert!(
        during <= baseline + 200 + 20,
        "{during} fds open, baseline {baseline}"
    );

    // A normal request still works, and the server lets go of every slow connection.
    drop(slow);
    let (status, _) = probe(&address);
    assert!(status.contains(" 200 "), "after: {status:?}");
    let settled = within(Duration::from_secs(5), || open_fds(pid) <= baseline + 5);
    assert!(
        settled.is_some(),
        "{} fds open after the slow clients left, baseline {baseline}",
        open_fds(pid)
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_but_a_long_request_is_not() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "slow.yml",
        "slug: slow\nwhen: {endpoint: true}\ndo:\n  - wait: {timeout: 2}\noutput: finished\n",
    );
    let s = serve_configured(
        dir.path(),
        "http:\n  header_read_timeout_ms: 300\n  idle_timeout_secs: 1\n",
        &[],
    );
    let address = s.base.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&address).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A request longer than both timeouts is answered in full.
    c.write_all(b"GET /v2/workspaces/demo/webhooks/slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");
    // Then, idle, the connection is closed after about a second.
    let idle = Instant::now();
    assert_eq!(c.read(&mut buf).unwrap(), 0, "expected the server to close");
    let waited = idle.elapsed();
    assert!(
        waited > Duration::from_millis(700) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

#[test]
fn oversized_and_malformed_bodies_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "hello.yml",
        "slug: hello\nwhen: {endpoint: true}\noutput: hi\n",
    );
    let s = serve_configured(dir.path(), "http:\n  max_body: 16\n", &[]);
    let client = reqwest::blocking::Client::new();
    for (path, body, status) in [
        ("webhooks/hello", "x".repeat(100), 413),
        ("events", "y".repeat(100), 413),
        ("webhooks/hello", "{nope".to_string(), 400),
    ] {
        let r = client
            .post(format!("{}/v2/workspaces/demo/{path}", s.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let json: serde_json::Value = r.json().unwrap();
        assert!(json["error"]["message"].is_string(), "{path}: {json}");
    }
}
