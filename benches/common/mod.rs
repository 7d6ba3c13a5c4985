//! A throwaway nats-server for the benches that need one, started and stopped through
//! scripts/nats-test-server.sh like the tests do.

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats-test-server.sh");

/// A nats-server for one bench, stopped when dropped (also when the bench panics).
pub(crate) struct Nats {
    /// The server's URL.
    pub(crate) url: String,
    pidfile: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts a JetStream nats-server on loopback.
    pub(crate) fn start() -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("nats.pid");
        Nats {
            url: start_server(&pidfile),
            pidfile,
            _dir: dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        stop_server(&self.pidfile);
    }
}

/// The two-worker runtime the NATS benches drive.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// Starts a JetStream nats-server on loopback; its URL.
fn start_server(pidfile: &Path) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(["start", "--jetstream", "--max-lifetime", "600", "--pidfile"])
        .arg(pidfile)
        .output()
        .expect("run nats-test-server.sh");
    assert!(
        out.status.success(),
        "nats-server did not start (run scripts/nats-test-server.sh install):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops the server `start_server` wrote to `pidfile`.
fn stop_server(pidfile: &Path) {
    let _ = Command::new("bash")
        .arg(SCRIPT)
        .arg("stop")
        .arg(pidfile)
        .output();
}
