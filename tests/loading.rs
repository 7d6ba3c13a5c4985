//! Loading hostile or huge workspace files: `runtime.max_file_bytes` refuses
//! oversized files before parsing, YAML bombs get one located error, and a
//! slow load in one workspace does not hold up another workspace's edit.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{get, put, serve, serve_with, within, write};

const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// One step of [`big_automation`], `NN` standing for its number.
const CHUNK: &str = "  - set:\n      name: vNN\n      value: '{{body.x}} item NN'\n  \
    - conditions:\n      '{{vNN}} == 1':\n        - emit: {event: e.NN, payload: {n: '{{vNN}}'}}\n      \
    default:\n        - repeat: {on: 2, do: [{set: {name: 'l[]', value: \"{{item}}-NN\"}}]}\n";

/// An automation of `size` bytes or just under: many instructions, long `do:`
/// lists and templates, the shapes whose positions the compiler looks up.
fn big_automation(size: usize) -> String {
    let mut text = String::from("slug: big\nwhen: {endpoint: true}\ndo:\n");
    let mut i = 0;
    loop {
        let chunk = CHUNK.replace("NN", &i.to_string());
        if text.len() + chunk.len() + 20 > size {
            break;
        }
        text.push_str(&chunk);
        i += 1;
    }
    text.push_str("output: '{{v0}}'\n");
    text
}

fn validate(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each YAML bomb with the start of the error it must give.
fn bombs() -> Vec<(&'static str, String, &'static str)> {
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(", ");
        laughs.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    laughs.push_str("do: []\n");
    let depth = 100_000;
    vec![
        (
            "laughs.yml",
            laughs,
            "aliases expand to more values than the file has bytes",
        ),
        (
            "deep_list.yml",
            format!("do: {}{}\n", "[".repeat(depth), "]".repeat(depth)),
            "nested deeper than 128 levels",
        ),
        (
            "deep_map.yml",
            format!("do: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth)),
            "nested deeper than 128 levels",
        ),
        ("curly.yml", "{{\n".to_string(), "invalid YAML"),
    ]
}

#[test]
fn yaml_bombs_get_one_located_error_each_from_validate() {
    for (name, text, expected) in bombs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), &text).unwrap();
        let (code, stderr) = validate(dir.path());
        assert_eq!(code, 1, "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        let located = format!("{}:", dir.path().join(name).display());
        assert!(lines[0].starts_with(&located), "{name}: {stderr}");
        let rest = &lines[0][located.len()..];
        let mut place = rest.splitn(3, ':');
        let line: usize = place.next().unwrap().parse().unwrap();
        let column: usize = place.next().unwrap().parse().unwrap();
        assert!(line >= 1 && column >= 1, "{name}: {stderr}");
        assert!(rest.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn validate_refuses_a_file_over_max_file_bytes_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yml");
    std::fs::write(&file, format!("do: [\n{}", "x".repeat(MAX_FILE_BYTES))).unwrap();
    let (code, stderr) = validate(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:1:1: file is {} bytes, over runtime.max_file_bytes ({MAX_FILE_BYTES})",
            file.display(),
            MAX_FILE_BYTES + 6
        )
    );
}

#[test]
fn a_ten_megabyte_file_is_refused_and_the_workspace_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v1\n",
    );
    let s = serve(dir.path());
    let a = format!("{}/v2/workspaces/demo/webhooks/a", s.base);
    assert_eq!(get(&a), Some((200, "v1".into())));

    let mut huge = big_automation(10 * 1024 * 1024);
    huge.push_str(&"#".repeat(10 * 1024 * 1024 - huge.len()));
    write(dir.path(), "huge.yml", &huge);
    let refused = within(Duration::from_secs(3), || {
        s.logs.lock().unwrap().contains(&format!(
            "huge.yml:1:1: file is {} bytes, over runtime.max_file_bytes ({MAX_FILE_BYTES})",
            10 * 1024 * 1024
        ))
    });
    assert!(
        refused.is_some(),
        "no refusal in the logs: {}",
        s.logs.lock().unwrap()
    );
    assert_eq!(get(&a), Some((200, "v1".into())));
}

#[test]
fn an_edit_is_live_within_two_seconds_while_another_workspace_loads_a_big_file() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "heavy", "small.yml", "do: []\n");
    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v1\n",
    );
    // Debug logs of the library say when a load starts.
    let s = serve_with(
        dir.path(),
        &[("RUST_LOG", "info,sluice::workspace=debug")],
        &[],
    );
    let a = format!("{}/v2/workspaces/demo/webhooks/a", s.base);
    assert_eq!(get(&a), Some((200, "v1".into())));

    let loads = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("loading workspace") && l.contains("heavy"))
            .count()
    };
    let before = loads(&s.logs.lock().unwrap());
    let big = big_automation(MAX_FILE_BYTES - 1024);
    assert!(big.len() <= MAX_FILE_BYTES);
    put(dir.path(), "heavy", "big.yml", &big);
    // The edit below must land while the big file is being loaded.
    let started = within(Duration::from_secs(5), || {
        loads(&s.logs.lock().unwrap()) > before
    });
    assert!(
        started.is_some(),
        "the big file's load never started: {}",
        s.logs.lock().unwrap()
    );
    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v2\n",
    );
    let took = within(Duration::from_secs(2), || {
        get(&a) == Some((200, "v2".into()))
    });
    assert!(
        took.is_some(),
        "edit not live within 2 s: {}",
        s.logs.lock().unwrap()
    );
}

#[test]
fn yaml_bombs_do_not_stop_serve_and_keep_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yml",
        "slug: a\nwhen: {endpoint: true}\ndo: []\noutput: v1\n",
    );
    let s = serve(dir.path());
    let a = format!("{}/v2/workspaces/demo/webhooks/a", s.base);
    for (name, text, expected) in bombs() {
        write(dir.path(), name, &text);
        let logged = within(Duration::from_secs(3), || {
            s.logs
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.contains(&format!("{name}:")) && l.contains(expected))
        });
        assert!(
            logged.is_some(),
            "{name}: no located error in the logs: {}",
            s.logs.lock().unwrap()
        );
        assert_eq!(get(&a), Some((200, "v1".into())), "{name}");
        std::fs::remove_file(dir.path().join("automations/demo").join(name)).unwrap();
    }
}
