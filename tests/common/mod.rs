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

/// A nats-server with JetStream, stopped on drop.
pub(crate) struct NatsServer {
    pub url: String,
    pidfile: PathBuf,
    /// `--port` and `--store` of a server that can be stopped and started again.
    fixed: Option<(u16, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub(crate) fn start() -> NatsServer {
        Self::launch(None)
    }

    /// A server on a fixed port and store, so that [`NatsServer::stop`] then
    /// [`NatsServer::restart`] bring it back where clients reconnect, streams kept.
    pub(crate) fn restartable() -> NatsServer {
        let store = tempfile::tempdir().unwrap().keep();
        Self::launch(Some((free_port(), store)))
    }

    /// Stops the server (as on drop); clients see it go away.
    pub(crate) fn stop(&self) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.pidfile)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a stopped restartable server again on its port and store.
    pub(crate) fn restart(&mut self) {
        let again = Self::launch(self.fixed.take());
        assert_eq!(again.url, self.url);
        *self = again;
    }

    fn launch(fixed: Option<(u16, PathBuf)>) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("nats.pid");
        let mut command = Command::new("bash");
        command
            .arg(SCRIPT)
            .args(["start", "--jetstream", "--max-lifetime", "600", "--pidfile"])
            .arg(&pidfile);
        if let Some((port, store)) = &fixed {
            command
                .args(["--port", &port.to_string(), "--store"])
                .arg(store);
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
        assert!(
            out.status.success(),
            "nats-server did not start; these tests need nats-server >= 2.11 \
             (run `scripts/nats-test-server.sh install` and export NATS_SERVER_BIN, \
             or use scripts/test.sh). Script output:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        NatsServer {
            url,
            pidfile,
            fixed,
            _dir: dir,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.pidfile)
            .output();
        if let Some((_, store)) = &self.fixed {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

pub(crate) struct Serve {
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

/// The address in the server's `sluice is serving listen=…` log line (text or JSON logs).
fn serving_address(logs: &str) -> Option<String> {
    let line = logs.lines().find(|l| l.contains("sluice is serving"))?;
    // Text logs may carry colour codes around the field name.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let rest = plain
        .split_once("listen=")
        .or_else(|| plain.split_once("\"listen\":\""))?
        .1;
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (!address.is_empty()).then_some(address)
}

/// Whether the child process has ended (a start-up error).
fn child_exited(child: &mut Child) -> bool {
    child.try_wait().ok().flatten().is_some()
}

/// An HTTP endpoint on 127.0.0.1 that tells the test each time it is fetched: its URL and
/// the receiving end. An automation fetches it first so that the test knows the run started,
/// instead of sleeping and hoping it did.
pub(crate) fn started_signal() -> (String, std::sync::mpsc::Receiver<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/started", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` as `automations/demo/<name>` under `root`.
/// `sluice ARGS…` as a user runs it, with the built-in limits off and no log filter.
pub(crate) fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("RATE_LIMIT_DISABLED", "true")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub(crate) fn write(root: &Path, name: &str, text: &str) {
    put(root, "demo", name, text);
}

/// Writes `text` as `automations/<ws>/<name>` under `root`.
pub(crate) fn put(root: &Path, ws: &str, name: &str, text: &str) {
    let dir = root.join("automations").join(ws);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes `text` as the secrets file of `ws` under `root/secrets`.
pub(crate) fn secrets(root: &Path, ws: &str, text: &str) {
    let dir = root.join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{ws}.yml")), text).unwrap();
}

pub(crate) fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::blocking::get(url).ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().unwrap_or_default()))
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
pub(crate) fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `sluice serve` over `root` with `settings` (YAML) as its `--config` file.
pub(crate) fn serve_configured(root: &Path, settings: &str, env: &[(&str, &str)]) -> Serve {
    let file = root.join("settings.yml");
    std::fs::write(&file, settings).unwrap();
    serve_with(root, env, &["--config", file.to_str().unwrap()])
}

pub(crate) fn serve(root: &Path) -> Serve {
    serve_with(root, &[], &[])
}

/// `sluice serve` over `root` with extra environment variables and arguments.
pub(crate) fn serve_with(root: &Path, env: &[(&str, &str)], args: &[&str]) -> Serve {
    // Port 0: the server binds a free port itself and logs it, so no other process can
    // take the port between a test choosing it and the server binding it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workspaces"])
        .arg(root.join("automations"))
        .args(args)
        .env("SLUICE_SECRETS", root.join("secrets"))
        .env("SLUICE_DATA", root.join("data"))
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
    let mut address = None;
    within(Duration::from_secs(10), || {
        address = serving_address(&logs.lock().unwrap());
        address.is_some() || child_exited(&mut child)
    });
    let Some(address) = address else {
        panic!("server did not start serving: {}", logs.lock().unwrap());
    };
    let base = format!("http://{address}");
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
