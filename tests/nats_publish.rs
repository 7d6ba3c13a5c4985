//! The publish side of the NATS bus against a real nats-server and real
//! `sluice serve` processes: the healthcheck follows the connection, and
//! `POST /events` during an outage answers 504 with ids that make a retry safe.
//!
//! Each test starts its own server through `scripts/nats-test-server.sh` on a
//! fixed loopback port and store, so it can be stopped and started again.

use serde_json::json;
use std::time::Duration;

mod common;
use common::{get, serve_with, within, write, NatsServer};

const NOOP: &str = "slug: noop\nwhen: {events: [noop]}\ndo: []\n";

#[test]
fn healthcheck_follows_the_nats_connection() {
    let mut nats = NatsServer::restartable();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "noop.yml", NOOP);
    let serve = serve_with(dir.path(), &[("NATS_URL", nats.url.as_str())], &[]);
    let health = format!("{}/sys/healthcheck", serve.base);
    let answer = || {
        get(&health).map(|(status, body)| {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            (status, body)
        })
    };

    nats.stop();
    let down = within(Duration::from_secs(1), || {
        answer() == Some((503, json!({"healthy": false, "bus": "disconnected"})))
    });
    assert!(down.is_some(), "still healthy without NATS: {:?}", answer());

    nats.restart();
    let up = within(Duration::from_secs(1), || {
        answer() == Some((200, json!({"healthy": true})))
    });
    assert!(up.is_some(), "not healthy again: {:?}", answer());
}
