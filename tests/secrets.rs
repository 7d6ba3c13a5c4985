//! Secrets and tokens through a real `sluice serve` (issue 9): the event stream
//! needs the admin token or the workspace's read token.

use std::time::Duration;

mod common;
use common::{put, secrets, serve_with};

const IDLE: &str = "slug: idle\nwhen: {endpoint: true}\ndo: []\n";

/// The status of `GET {url}` with `token` as bearer (none when `None`).
fn status(client: &reqwest::blocking::Client, url: &str, token: Option<&str>) -> u16 {
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    // An SSE answer never ends: the status is all we read, then the stream is dropped.
    request.send().unwrap().status().as_u16()
}

#[test]
fn the_event_stream_needs_the_admin_or_the_workspace_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(root, "a", "idle.yml", IDLE);
    put(root, "b", "idle.yml", IDLE);
    secrets(root, "a", "sluice_events_token: read-a\n");
    secrets(root, "b", "sluice_events_token: read-b\n");
    let s = serve_with(root, &[("SLUICE_ADMIN_TOKEN", "adm1n")], &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let a = format!("{}/v2/workspaces/a/events", s.base);
    assert_eq!(status(&client, &a, None), 401);
    assert_eq!(status(&client, &a, Some("wrong")), 403);
    assert_eq!(status(&client, &a, Some("adm1n")), 200);
    assert_eq!(status(&client, &a, Some("read-a")), 200);
    assert_eq!(
        status(&client, &a, Some("read-b")),
        403,
        "another workspace's token"
    );
    let nope = format!("{}/v2/workspaces/nope/events", s.base);
    assert_eq!(status(&client, &nope, Some("read-a")), 403);
    assert_eq!(status(&client, &nope, Some("adm1n")), 404);
}
