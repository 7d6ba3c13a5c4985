//! A hostile tenant against a real `sluice serve`: every bomb it sends fails its
//! own request with a clear error naming the budget, while the process keeps
//! serving another workspace and its memory stays bounded.

use serde_json::{json, Value as J};
use std::time::Duration;

mod common;
use common::{put, serve, Serve};

/// Posts `body` to a webhook; the status and the answer's text.
fn call(s: &Serve, ws: &str, slug: &str, body: &J) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("{}/v2/workspaces/{ws}/webhooks/{slug}", s.base))
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// Resident memory of the server process, in MB.
fn rss_mb(s: &Serve) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// One bomb: an automation, the body that sets it off, and what its error must say.
struct Bomb {
    slug: &'static str,
    automation: &'static str,
    body: J,
    error: &'static str,
}

fn bombs() -> Vec<Bomb> {
    vec![
        Bomb {
            slug: "huge-repeat",
            automation: "do:\n  - repeat:\n      on: '{{body.n}}'\n      do: []\n",
            body: json!({"n": 400_000_000}),
            error: "budgets.max_instructions",
        },
        Bomb {
            slug: "far-index",
            automation: "do:\n  - set: {name: l, value: []}\n  - set: {name: 'l[{{body.i}}]', value: 1}\n",
            body: json!({"i": 400_000_000}),
            error: "writing list index 400000000 is over the budget of 1000000",
        },
        Bomb {
            slug: "nested",
            automation: "do:\n  - set: {name: x, value: 0}\n  - repeat:\n      on: 6000\n      do:\n        - set: {name: x, value: {a: '{{x}}'}}\n",
            body: json!({}),
            error: "budgets.max_depth",
        },
        Bomb {
            slug: "doubling",
            automation: "do:\n  - set: {name: s, value: ab}\n  - repeat:\n      on: 40\n      do:\n        - set: {name: s, value: '{{s}}{{s}}'}\n",
            body: json!({}),
            error: "budgets.max_string_bytes",
        },
        Bomb {
            slug: "growing",
            automation: "do:\n  - repeat:\n      on: 100000\n      do:\n        - set: {name: 'l[]', value: '{{body.s}}{{$index}}'}\n",
            body: json!({"s": "x".repeat(100_000)}),
            error: "budgets.max_value_bytes",
        },
        Bomb {
            slug: "self-call",
            automation: "do:\n  - self-call: {}\n",
            body: json!({}),
            error: "Reached maximum number of nested calls",
        },
        Bomb {
            slug: "wait-negative",
            automation: "do:\n  - wait: {timeout: '{{body.t}}'}\n",
            body: json!({"t": "-5"}),
            error: "`timeout` must be a number of seconds of at least 0, got -5",
        },
        Bomb {
            slug: "wait-nan",
            automation: "do:\n  - wait: {timeout: '{{body.t}}'}\n",
            body: json!({"t": "NaN"}),
            error: "got NaN",
        },
        Bomb {
            slug: "wait-huge",
            automation: "do:\n  - wait: {timeout: '{{body.t}}'}\n",
            body: json!({"t": "1e400"}),
            error: "a wait of Infinity seconds is over the budget of 86400",
        },
    ]
}

#[test]
fn every_bomb_fails_its_own_request_and_the_process_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "victim",
        "ping.yml",
        "slug: ping\nwhen: {endpoint: true}\ndo: []\noutput: pong\n",
    );
    let bombs = bombs();
    for b in &bombs {
        let text = format!(
            "slug: {}\nwhen: {{endpoint: true}}\n{}",
            b.slug, b.automation
        );
        put(dir.path(), "hostile", &format!("{}.yml", b.slug), &text);
    }
    // Rate limits off: only the budgets stand between the bombs and the process.
    common::secrets(dir.path(), "hostile", "prismeai_ratelimit_disabled: true\n");
    let s = serve(dir.path());
    let baseline = rss_mb(&s);
    for b in &bombs {
        let (status, text) = call(&s, "hostile", b.slug, &b.body);
        assert_eq!(status, 500, "{}: {text}", b.slug);
        let message = serde_json::from_str::<J>(&text).unwrap()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains(b.error),
            "{}: expected {:?} in {message:?}",
            b.slug,
            b.error
        );
        assert!(!message.contains('\n'), "{}: one line: {message:?}", b.slug);
        // Located by the file's name in its workspace, never by the server's paths.
        let root = dir.path().to_string_lossy();
        assert!(!message.contains(root.as_ref()), "{}: {message}", b.slug);
        assert!(
            message.contains(&format!("{}.yml:", b.slug)),
            "{}: {message}",
            b.slug
        );
        assert_eq!(
            call(&s, "victim", "ping", &json!({})),
            (200, "pong".to_string()),
            "after {}",
            b.slug
        );
    }
    let metrics = common::get(&format!("{}/metrics", s.base)).unwrap().1;
    for budget in [
        "max_instructions",
        "max_list_index",
        "max_depth",
        "max_string_bytes",
    ] {
        let line =
            format!("sluice_budget_exceeded_total{{workspace=\"hostile\",budget=\"{budget}\"}} 1");
        assert!(metrics.contains(&line), "no {line} in {metrics}");
    }
    let after = rss_mb(&s);
    assert!(
        after < baseline + 200,
        "RSS grew from {baseline} MB to {after} MB"
    );
}

#[test]
fn expression_bombs_are_answered_or_refused_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(
        root,
        "victim",
        "ping.yml",
        "slug: ping\nwhen: {endpoint: true}\ndo: []\noutput: pong\n",
    );
    let chain = vec!["1"; 30_000].join(" + ");
    let answered = [
        ("chain", format!("'{{% {chain} %}}'"), "30000"),
        ("unterminated", "'x {{ body'".to_string(), "x {{ body"),
        ("infinite", "'{% {{body.n}} * 2 %}'".to_string(), "null"),
        // Inside text, JSON.stringify writes Infinity and NaN as null (DSUL §4.2).
        (
            "divide",
            "'{% 1 / 0 %} {% 0 / 0 %}'".to_string(),
            "null null",
        ),
    ];
    for (slug, output, _) in &answered {
        let text = format!("slug: {slug}\nwhen: {{endpoint: true}}\ndo: []\noutput: {output}\n");
        put(root, "exprs", &format!("{slug}.yml"), &text);
    }
    let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    put(
        root,
        "broken",
        "deep.yml",
        &format!("slug: deep\nwhen: {{endpoint: true}}\ndo: []\noutput: '{{% {deep} %}}'\n"),
    );
    let s = serve(root);
    for (slug, _, expected) in &answered {
        let (status, text) = call(&s, "exprs", slug, &json!({"n": "1e400"}));
        assert_eq!((status, text.as_str()), (200, *expected), "{slug}");
    }
    // A bad expression fails the call that reaches it (and `validate` flags it).
    let (status, text) = call(&s, "broken", "deep", &json!({}));
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("nests deeper than 32 levels"), "{text}");
    assert_eq!(call(&s, "victim", "ping", &json!({})), (200, "pong".into()));

    // The command line gives the same answers.
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = std::process::Command::new(sluice)
        .arg("validate")
        .arg(root.join("automations/broken"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("deep.yml:4:"), "{stderr}");
    assert!(stderr.contains("nests deeper than"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = std::process::Command::new(sluice)
        .args(["run", "chain", "--workspace"])
        .arg(root.join("automations/exprs"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "30000");
    let out = std::process::Command::new(sluice)
        .arg("validate")
        .arg(root.join("automations/exprs"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
