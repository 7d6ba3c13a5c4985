//! Secrets and tokens through a real `sluice serve` (issue 9): acknowledged
//! secret changes survive concurrent writers and a kill -9, and the event
//! stream needs the admin token or the workspace's read token.

use serde_json::{json, Value as J};
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

#[test]
fn concurrent_patches_are_all_kept_through_a_kill_and_a_restart() {
    const WRITERS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(root, "demo", "idle.yml", IDLE);
    secrets(root, "demo", "first: 1\n");
    let env = [("SLUICE_ADMIN_TOKEN", "adm1n")];
    let mut s = serve_with(root, &env, &[]);
    let url = format!("{}/v2/workspaces/demo/secrets", s.base);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let answers: Vec<(usize, u16, String)> = std::thread::scope(|scope| {
        let patches: Vec<_> = (0..WRITERS)
            .map(|n| {
                let (client, url) = (&client, &url);
                scope.spawn(move || {
                    let r = client
                        .patch(url)
                        .bearer_auth("adm1n")
                        .json(&json!({format!("k{n}"): format!("v{n}")}))
                        .send()
                        .unwrap();
                    (n, r.status().as_u16(), r.text().unwrap_or_default())
                })
            })
            .collect();
        patches.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let acknowledged: Vec<String> = answers
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(n, _, _)| format!("k{n}"))
        .collect();
    for (n, status, body) in &answers {
        assert_eq!(*status, 200, "PATCH k{n}: {body}");
        assert!(!body.contains(root.to_str().unwrap()), "a path in {body}");
    }

    // No time to flush anything: a 200 must already be on disk.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let file = root.join("secrets/demo.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    let parsed: serde_yaml::Mapping = serde_yaml::from_str(&text).unwrap();
    assert_eq!(parsed.len(), WRITERS + 1, "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    let s = serve_with(root, &env, &[]);
    let keys: J = client
        .get(format!("{}/v2/workspaces/demo/secrets", s.base))
        .bearer_auth("adm1n")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let keys: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(J::as_str)
        .collect();
    for key in acknowledged.iter().map(String::as_str).chain(["first"]) {
        assert!(keys.contains(&key), "{key} lost: {keys:?}");
    }
}
