//! Helpers shared by the integration tests: a real nats-server and real
//! `sluice serve` processes on loopback.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats-test-server.sh");

/// A nats-server with JetStream, stopped on drop. Its store lives in its own
/// temp dir, so `stop` then `start_again` brings back its streams and consumers
/// on the same port (a broker restart, as clients see it).
pub struct NatsServer {
    pub url: String,
    pidfile: PathBuf,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("nats.pid");
        let store = dir.path().join("store");
        let url = launch(&pidfile, &store, &[]);
        NatsServer {
            url,
            pidfile,
            store,
            _dir: dir,
        }
    }

    /// Stops the server the way an operator does (SIGTERM, so JetStream shuts
    /// down before the connections close); the store stays.
    pub fn stop(&self) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.pidfile)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server did not stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the stopped server again on its port with its store.
    pub fn start_again(&self) {
        let port = self.url.rsplit(':').next().unwrap();
        let url = launch(&self.pidfile, &self.store, &["--port", port]);
        assert_eq!(url, self.url, "nats-server came back elsewhere");
    }
}

/// Runs the script's `start` with JetStream in `store`; returns the URL.
fn launch(pidfile: &Path, store: &Path, extra: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(["start", "--jetstream", "--max-lifetime", "600", "--pidfile"])
        .arg(pidfile)
        .arg("--store-dir")
        .arg(store)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "nats-server did not start; these tests need nats-server >= 2.11 \
         (run `scripts/nats-test-server.sh install` and export NATS_SERVER_BIN, \
         or use scripts/test.sh). Script output:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.pidfile)
            .output();
    }
}

pub struct Serve {
    pub child: Child,
    pub base: String,
    pub logs: Arc<Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` as `automations/demo/<name>` under `root`.
pub fn write(root: &Path, name: &str, text: &str) {
    put(root, "demo", name, text);
}

/// Writes `text` as `automations/<ws>/<name>` under `root`.
pub fn put(root: &Path, ws: &str, name: &str, text: &str) {
    let dir = root.join("automations").join(ws);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes `text` as the secrets file of `ws` under `root/secrets`.
pub fn secrets(root: &Path, ws: &str, text: &str) {
    let dir = root.join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{ws}.yml")), text).unwrap();
}

pub fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::get(url).ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().unwrap_or_default()))
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub fn serve(root: &Path) -> Serve {
    serve_with(root, &[], &[])
}

/// `sluice serve` over `root` with extra environment variables and arguments.
pub fn serve_with(root: &Path, env: &[(&str, &str)], args: &[&str]) -> Serve {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workspaces",
        ])
        .arg(root.join("automations"))
        .args(args)
        .env("SLUICE_SECRETS", root.join("secrets"))
        .env("RUST_LOG", "info")
        .env_remove("NATS_URL")
        .envs(env.iter().copied())
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
