//! Reloads through a real `sluice serve` (issue 9 item 7): an edit that breaks
//! a file — bad YAML, a bad expression, a malformed instruction, a call to an
//! automation that does not exist — never replaces the running version, and
//! the log says where the problem is.

use std::time::Duration;

mod common;
use common::{get, put, serve, within, write};

const GOOD: &str = "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v1\n";
const KEPT: &str = "keeping the last good version";

/// Whether a log line keeps the last good version because of `file` at `line`
/// and some column: `…/file:line:column: message; keeping the last good version`.
fn located(logs: &str, file: &str, line: usize) -> bool {
    let at = format!("/{file}:{line}:");
    logs.lines().filter(|l| l.contains(KEPT)).any(|l| {
        l.split_once(&at).is_some_and(|(_, rest)| {
            rest.split_once(':')
                .is_some_and(|(column, _)| column.parse::<usize>().is_ok_and(|c| c > 0))
        })
    })
}

#[test]
fn a_bad_edit_of_any_kind_keeps_the_running_version_and_is_logged_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yml", GOOD);
    let s = serve(dir.path());
    let a = format!("{}/v2/workspaces/demo/webhooks/a", s.base);
    assert_eq!(get(&a), Some((200, "v1".into())));

    let bad_edits = [
        ("bad YAML", "slug: a\nwhen: {endpoint: true}\ndo: [\n", 4),
        (
            "bad expression",
            "slug: a\nwhen: {endpoint: true}\ndo:\n  - set: {name: x, value: 1}\n  - set: {name: y, value: 1}\n  - set: {name: z, value: 1}\noutput: 'v2 {% 1 + %}'\n",
            7,
        ),
        (
            "malformed instruction",
            "slug: a\nwhen: {endpoint: true}\ndo:\n  - delete: {name: x}\n  - set: {value: 1}\noutput: v2\n",
            5,
        ),
        (
            "call to a missing automation",
            "slug: a\nwhen: {endpoint: true}\ndo:\n  - set: {name: x, value: 1}\n  - set: {name: y, value: 1}\n  - nobody: {}\noutput: v2\n",
            6,
        ),
    ];
    for (what, text, line) in bad_edits {
        write(dir.path(), "a.yml", text);
        let logged = within(Duration::from_secs(3), || {
            located(&s.logs.lock().unwrap(), "a.yml", line)
        });
        assert!(
            logged.is_some(),
            "{what}: no a.yml:{line}:column in the logs:\n{}",
            s.logs.lock().unwrap()
        );
        assert_eq!(get(&a), Some((200, "v1".into())), "{what}");
        // Back to good, so the next bad edit is judged on its own.
        write(dir.path(), "a.yml", GOOD);
    }

    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v3\n",
    );
    let live = within(Duration::from_secs(3), || {
        get(&a) == Some((200, "v3".into()))
    });
    assert!(live.is_some(), "a good edit after bad ones is not live");

    // A workspace that never loaded is not served at all.
    put(
        dir.path(),
        "fresh",
        "b.yml",
        "when: {endpoint: true}\ndo: [\n",
    );
    let logged = within(Duration::from_secs(3), || {
        s.logs.lock().unwrap().contains("fresh/b.yml:")
    });
    assert!(logged.is_some(), "{}", s.logs.lock().unwrap());
    let b = format!("{}/v2/workspaces/fresh/webhooks/b", s.base);
    assert_eq!(get(&b).map(|(status, _)| status), Some(404));
}
