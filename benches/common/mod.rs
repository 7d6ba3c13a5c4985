//! A throwaway nats-server for the benches that need one, started and stopped through
//! scripts/nats-test-server.sh like the tests do.

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats-test-server.sh");

/// Starts a JetStream nats-server on loopback; its URL.
pub(crate) fn start_server(pidfile: &Path) -> String {
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
pub(crate) fn stop_server(pidfile: &Path) {
    let _ = Command::new("bash")
        .arg(SCRIPT)
        .arg("stop")
        .arg(pidfile)
        .output();
}
