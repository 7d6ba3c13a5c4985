//! Instruction-level tests of the interpreter, in process with the embedded bus.

use super::*;
use crate::bus::EmbeddedBus;
use serde_json::{json, Value as J};

struct Fixture {
    rt: Runtime,
    _dir: tempfile::TempDir,
}

fn fixture(files: &[(&str, &str)]) -> Fixture {
    fixture_with(files, |_| {})
}

/// A fixture whose settings `tune` adjusts first (budgets, mostly).
fn fixture_with(files: &[(&str, &str)], tune: impl FnOnce(&mut Settings)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    for (slug, text) in files {
        std::fs::write(ws.join(format!("{slug}.yml")), text).unwrap();
    }
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.limits.disabled = true;
    tune(&mut settings);
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).unwrap();
    rt.install(crate::workspace::load(&ws, None).unwrap());
    rt.record_emits();
    Fixture { rt, _dir: dir }
}

fn start(slug: &str, payload: J) -> Start {
    let payload = match Value::from(payload) {
        Value::Object(m) => (*m).clone(),
        _ => Map::new(),
    };
    Start::endpoint("ws", slug).with_payload(payload)
}

impl Fixture {
    async fn run(&self, slug: &str, payload: J) -> Result<J, ExecError> {
        let r = self.rt.run(start(slug, payload)).await;
        self.rt.bus().settled().await;
        r.map(|o| o.output.to_json())
    }

    fn emitted(&self) -> Vec<(String, J)> {
        self.rt
            .take_recorded()
            .into_iter()
            .map(|e| (e.kind, e.payload.to_json()))
            .collect()
    }
}

#[tokio::test]
async fn set_delete_and_types() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: a, value: 5}\n  - set: {name: b, value: '{{a}}'}\n  - set: {name: o.x.y, value: 1}\n  - set: {name: 'l[]', value: 1}\n  - set: {name: l, type: push, value: 2}\n  - set: {name: gone, value: 1}\n  - delete: {name: gone}\noutput: {b: '{{b}}', o: '{{o}}', l: '{{l}}', gone: '{{gone}}'}\n",
    )]);
    assert_eq!(
        f.run("main", json!({})).await.unwrap(),
        json!({"b": 5, "o": {"x": {"y": 1}}, "l": [1, 2]})
    );
}

#[tokio::test]
async fn set_with_bad_name_fails() {
    let f = fixture(&[("main", "do:\n  - set: {name: 'a..b', value: 1}\n")]);
    let e = f.run("main", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInstruction);
    assert!(e.to_string().contains("main.yml:2"), "{e}");
}

#[tokio::test]
async fn repeat_forms_and_item_cleanup() {
    let f = fixture(&[(
        "main",
        "do:\n  - repeat: {on: {a: 1, b: 2}, do: [{set: {name: 'k[]', value: '{{item.key}}'}}]}\n  - repeat: {on: ab, do: [{set: {name: 'c[]', value: '{{item}}'}}]}\n  - repeat: {until: 2, do: [{set: {name: 'u[]', value: '{{item}}'}}]}\n  - repeat: {on: [], until: 5, do: [{set: {name: never, value: 1}}]}\noutput: {k: '{{k}}', c: '{{c}}', u: '{{u}}', item: '{{item}}', index: '{{$index}}', never: '{{never}}'}\n",
    )]);
    assert_eq!(
        f.run("main", json!({})).await.unwrap(),
        json!({"k": ["a", "b"], "c": ["a", "b"], "u": [0, 1], "index": 1})
    );
}

#[tokio::test]
async fn conditions_default_and_order() {
    let f = fixture(&[(
        "main",
        "do:\n  - conditions:\n      '{{n}} > 10': [{set: {name: r, value: big}}]\n      '{{n}} > 1': [{set: {name: r, value: medium}}]\n      default: [{set: {name: r, value: small}}]\noutput: '{{r}}'\n",
    )]);
    assert_eq!(
        f.run("main", json!({"n": 5})).await.unwrap(),
        json!("medium")
    );
    assert_eq!(
        f.run("main", json!({"n": 0})).await.unwrap(),
        json!("small")
    );
}

#[tokio::test]
async fn calls_share_contexts_but_not_locals() {
    let f = fixture(&[
        (
            "main",
            "do:\n  - set: {name: mine, value: 1}\n  - child: {arg: 2, output: c}\noutput: {c: '{{c}}', run: '{{run.fromChild}}', user: '{{user.fromChild}}', socket: '{{socket.fromChild}}'}\n",
        ),
        (
            "child",
            "do:\n  - set: {name: run.fromChild, value: '{{arg}}'}\n  - set: {name: user.fromChild, value: true}\n  - set: {name: socket.fromChild, value: 3}\noutput: {mine: '{{mine}}', arg: '{{arg}}', out: '{{output}}', trigger: '{{run.trigger}}'}\n",
        ),
    ]);
    assert_eq!(
        f.run("main", json!({})).await.unwrap(),
        json!({"c": {"arg": 2, "out": "c", "trigger": {"type": "automation", "value": "main"}}, "run": 2, "user": true, "socket": 3})
    );
}

#[tokio::test]
async fn break_scope_all_stops_the_callers() {
    let f = fixture(&[
        (
            "main",
            "do:\n  - set: {name: s, value: before}\n  - child: {output: c}\n  - set: {name: s, value: after}\noutput: {s: '{{s}}', c: '{{c}}'}\n",
        ),
        ("child", "do:\n  - break: {scope: all}\noutput: child\n"),
        (
            "soft",
            "do:\n  - child2: {}\n  - set: {name: s, value: after}\noutput: '{{s}}'\n",
        ),
        ("child2", "do:\n  - break: {}\n"),
    ]);
    assert_eq!(
        f.run("main", json!({})).await.unwrap(),
        json!({"s": "before", "c": "child"})
    );
    assert_eq!(f.run("soft", json!({})).await.unwrap(), json!("after"));
}

#[tokio::test]
async fn recursion_stops_at_the_depth_limit() {
    let f = fixture(&[("rec", "do:\n  - rec: {}\n")]);
    let e = f.run("rec", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooManyCalls);
}

#[tokio::test]
async fn emit_runs_listeners_that_share_run() {
    let f = fixture(&[
        (
            "main",
            "do:\n  - set: {name: run.shared, value: yes}\n  - emit: {event: go, payload: {n: 1}, output: e}\noutput: '{{e.type}}'\n",
        ),
        (
            "listener",
            "when: {events: [go]}\ndo:\n  - emit: {event: seen, payload: {n: '{{payload.n}}', shared: '{{run.shared}}', depth: '{{run.depth}}', trigger: '{{run.trigger.type}}'}}\n",
        ),
    ]);
    assert_eq!(f.run("main", json!({})).await.unwrap(), json!("go"));
    assert_eq!(
        f.emitted(),
        vec![
            ("go".to_string(), json!({"n": 1})),
            (
                "seen".to_string(),
                json!({"n": 1, "shared": "yes", "depth": 2, "trigger": "event"})
            ),
        ]
    );
}

#[tokio::test]
async fn an_emit_loop_ends_after_21_events() {
    let f = fixture(&[
        ("main", "do:\n  - emit: {event: loop}\n"),
        (
            "again",
            "when: {events: [loop]}\ndo:\n  - emit: {event: loop}\n",
        ),
    ]);
    f.run("main", json!({})).await.unwrap();
    assert_eq!(f.emitted().len(), 21);
}

#[tokio::test]
async fn non_object_payload_emits_an_error_event() {
    let f = fixture(&[("main", "do:\n  - emit: {event: x, payload: [1]}\n")]);
    f.run("main", json!({})).await.unwrap();
    let events = f.emitted();
    assert_eq!(events[0].0, "error");
    assert_eq!(
        events[0].1["message"],
        "Event payload must be an object, received Array"
    );
}

#[tokio::test]
async fn bad_event_names_fail() {
    let f = fixture(&[("main", "do:\n  - emit: {event: 'a/b'}\n")]);
    let e = f.run("main", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidEvent);
}

#[tokio::test]
async fn all_interpolates_before_running_and_waits_see_emits() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: v, value: old}\n  - all:\n      - wait: {oneOf: [{event: ping, filters: {payload.k: 1}}], timeout: 2, output: w}\n      - set: {name: v, value: new}\n      - set: {name: seen, value: '{{v}}'}\n      - emit: {event: ping, payload: {k: 1}}\noutput: {seen: '{{seen}}', w: '{{w.payload}}'}\n",
    )]);
    assert_eq!(
        f.run("main", json!({})).await.unwrap(),
        json!({"seen": "old", "w": {"k": 1}})
    );
}

#[tokio::test]
async fn wait_for_the_executed_event_of_a_listener() {
    let f = fixture(&[
        (
            "main",
            "do:\n  - all:\n      - wait: {oneOf: [{event: runtime.automations.executed, filters: {payload.slug: worker}}], timeout: 2, output: done}\n      - emit: {event: work}\noutput: '{{done.payload.output}}'\n",
        ),
        ("worker", "when: {events: [work]}\ndo: []\noutput: finished\n"),
    ]);
    assert_eq!(f.run("main", json!({})).await.unwrap(), json!("finished"));
}

#[tokio::test]
async fn validate_arguments_refuses_bad_types() {
    let f = fixture(&[(
        "main",
        "validateArguments: true\narguments: {n: {type: number}}\ndo: []\noutput: ok\n",
    )]);
    assert_eq!(f.run("main", json!({"n": 1})).await.unwrap(), json!("ok"));
    let e = f.run("main", json!({"n": "x"})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArguments);
}

#[tokio::test]
async fn executed_event_has_the_spec_shape() {
    let f = fixture(&[("main", "do: []\noutput: {a: 1}\n")]);
    let mut feed = f.rt.bus().watch("ws");
    f.run("main", json!({"body": {"x": 1}})).await.unwrap();
    let e = feed.recv().await.unwrap();
    assert_eq!(e.kind, crate::bus::EXECUTED);
    let p = e.payload.to_json();
    assert_eq!(p["slug"], "main");
    assert_eq!(p["payload"], json!({"body": {"x": 1}}));
    assert_eq!(p["output"], json!({"a": 1}));
    assert_eq!(p["trigger"], json!({"type": "endpoint", "value": "main"}));
    assert_eq!(p["break"], false);
    assert!(p["duration"].is_u64());
    assert!(p.get("throttled").is_none());
    let s = e.source.to_value().to_json();
    assert_eq!(s["workspaceId"], "ws");
    assert_eq!(s["automationSlug"], "main");
    assert_eq!(s["host"]["service"], "sluice");
}

#[tokio::test]
async fn a_template_that_expands_forever_fails_clearly() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: x, value: '{% \"a{{x}}\" %}'}\n  - set: {name: y, value: 'b {{x}}'}\n",
    )]);
    // `x` holds its own template text; rendering it inside a longer string re-scans forever.
    let r = f.run("main", json!({})).await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn wait_with_cancel_triggers_keeps_listeners_from_running() {
    let f = fixture(&[
        (
            "main",
            "do:\n  - all:\n      - wait: {oneOf: [{event: go, cancelTriggers: true}], timeout: 2, output: w}\n      - emit: {event: go}\n  - emit: {event: go}\noutput: '{{w.type}}'\n",
        ),
        ("listener", "when: {events: [go]}\ndo:\n  - emit: {event: ran}\n"),
    ]);
    assert_eq!(f.run("main", json!({})).await.unwrap(), json!("go"));
    // The first `go` was taken by the wait; only the second one ran the listener.
    let kinds: Vec<String> = f.emitted().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, vec!["go", "go", "ran"]);
}

/// The budget an execution went over, from its error.
fn budget_of(e: &ExecError) -> &str {
    assert_eq!(e.kind, ErrorKind::BudgetExceeded, "{e}");
    let start = e.message.find("budgets.").expect("names the setting") + 8;
    let len = e.message[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(0);
    &e.message[start..start + len]
}

#[tokio::test]
async fn repeat_on_a_huge_number_iterates_lazily_until_the_instruction_budget() {
    let f = fixture_with(
        &[(
            "main",
            "do:\n  - repeat:\n      on: '{{body.n}}'\n      do: []\n",
        )],
        |s| s.budgets.max_instructions = 10_000,
    );
    let e = f
        .run("main", json!({"body": {"n": 400_000_000}}))
        .await
        .unwrap_err();
    assert_eq!(budget_of(&e), "max_instructions");
    assert!(e.message.contains("more than 10000 instructions"), "{e}");
    assert_eq!(e.automation.as_deref(), Some("main"), "{e:?}");
    let at = e.span.as_ref().map(|s| (s.line, s.col));
    assert_eq!(at, Some((2, 5)), "{e:?}");
}

#[tokio::test]
async fn a_run_time_error_points_at_the_instruction_that_failed() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: a, value: 1}\n  - conditions:\n      'true':\n        - set: {name: b, value: 2}\n        - set: {name: '{{missing}}', value: 1}\n",
    )]);
    let e = f.run("main", json!({})).await.unwrap_err();
    let at = e.span.as_ref().map(|s| (s.line, s.col));
    assert_eq!(at, Some((6, 11)), "{e}");
    assert!(
        e.to_string()
            .starts_with("automation `main` (main.yml:6:11): Invalid set instruction"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_loop_counts_and_wait_timeouts_fail_clearly() {
    let f = fixture(&[
        ("on", "do:\n  - repeat: {on: '{{body.n}}', do: []}\n"),
        ("until", "do:\n  - repeat: {until: '{{body.n}}', do: []}\n"),
        ("wait", "do:\n  - wait: {timeout: '{{body.n}}'}\n"),
    ]);
    for (slug, n, expected) in [
        ("on", json!(-5), "`on` must be a number of iterations"),
        ("on", json!(1e300), "got 1e+300"),
        (
            "until",
            json!("-1"),
            "`until` must be a number of iterations",
        ),
        ("until", json!("NaN"), "got NaN"),
        (
            "wait",
            json!("-5"),
            "`timeout` must be a number of seconds of at least 0, got -5",
        ),
        ("wait", json!("NaN"), "got NaN"),
        (
            "wait",
            json!("1e400"),
            "a wait of Infinity seconds is over the budget of 86400",
        ),
        ("wait", json!(86_401), "budgets.max_wait_secs"),
    ] {
        let e = f.run(slug, json!({"body": {"n": n}})).await.unwrap_err();
        assert!(e.message.contains(expected), "{slug} {n}: {e}");
    }
}

#[tokio::test]
async fn writing_a_far_list_index_is_refused_before_allocating() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: l, value: []}\n  - set: {name: 'l[{{body.i}}]', value: 1}\noutput: '{{l.length}}'\n",
    )]);
    let e = f
        .run("main", json!({"body": {"i": 400_000_000}}))
        .await
        .unwrap_err();
    assert_eq!(budget_of(&e), "max_list_index");
    assert!(e.message.contains("writing list index 400000000"), "{e}");
    assert_eq!(
        f.run("main", json!({"body": {"i": 3}})).await.unwrap(),
        json!(4)
    );
}

#[tokio::test]
async fn a_value_nested_in_a_loop_stops_at_the_depth_budget() {
    let f = fixture(&[(
        "main",
        "do:\n  - set: {name: x, value: 0}\n  - repeat:\n      on: 6000\n      do:\n        - set: {name: x, value: {a: '{{x}}'}}\n",
    )]);
    let e = f.run("main", json!({})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_depth");
}

#[tokio::test]
async fn a_string_doubled_forty_times_stops_at_the_string_budget() {
    let f = fixture_with(
        &[(
            "main",
            "do:\n  - set: {name: s, value: ab}\n  - repeat:\n      on: 40\n      do:\n        - set: {name: s, value: '{{s}}{{s}}'}\n",
        )],
        |s| s.budgets.max_string_bytes = 1 << 20,
    );
    let e = f.run("main", json!({})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_string_bytes");
}

#[tokio::test]
async fn pushing_into_one_variable_stops_at_the_value_budget_and_entries() {
    let f = fixture_with(
        &[
            (
                "push",
                "do:\n  - repeat:\n      on: 100000\n      do:\n        - set: {name: 'big.l[]', value: '{{body.s}}{{$index}}'}\n",
            ),
            (
                "entries",
                "do:\n  - repeat:\n      on: 100000\n      do:\n        - set: {name: 'l[]', value: 1}\n",
            ),
            (
                "keys",
                "do:\n  - repeat:\n      on: 100000\n      do:\n        - set: {name: 'o.k{{$index}}', value: 1}\n",
            ),
        ],
        |s| {
            s.budgets.max_value_bytes = 1 << 20;
            s.budgets.max_entries = 5_000;
        },
    );
    let s = "x".repeat(1000);
    let e = f.run("push", json!({"body": {"s": s}})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_value_bytes");
    let e = f.run("entries", json!({})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_entries");
    let e = f.run("keys", json!({})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_entries");
}

#[tokio::test]
async fn replacing_part_of_a_big_variable_counts_what_it_frees() {
    // 600 KB in two halves, under a 1 MB budget: replacing one half again and
    // again never adds up, since the old half is freed.
    let f = fixture_with(
        &[(
            "main",
            "do:\n  - set: {name: v.a, value: '{{body.s}}'}\n  - set: {name: v.b, value: '{{body.s}}'}\n  - repeat:\n      on: 50\n      do:\n        - set: {name: v.a, value: '{{body.s}}{{$index}}'}\noutput: '{{v.a.length}}'\n",
        )],
        |s| s.budgets.max_value_bytes = 1 << 20,
    );
    let s = "x".repeat(300_000);
    assert_eq!(
        f.run("main", json!({"body": {"s": s}})).await.unwrap(),
        json!(300_002)
    );
}

#[tokio::test]
async fn calls_share_the_callers_instruction_budget() {
    let f = fixture_with(
        &[
            (
                "main",
                "do:\n  - repeat:\n      on: 1000\n      do:\n        - callee: {}\n",
            ),
            ("callee", "do:\n  - repeat: {on: 100, do: []}\n"),
        ],
        |s| s.budgets.max_instructions = 20_000,
    );
    let e = f.run("main", json!({})).await.unwrap_err();
    assert_eq!(budget_of(&e), "max_instructions");
}

#[tokio::test]
async fn a_workspace_secret_overrides_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("main.yml"), "do:\n  - repeat: {on: 5000, do: []}\n").unwrap();
    let secrets = dir.path().join("ws.secrets.yml");
    std::fs::write(&secrets, "sluice_max_instructions: 100\n").unwrap();
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.limits.disabled = true;
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).unwrap();
    assert!(rt
        .install(crate::workspace::load(&ws, Some(&secrets)).unwrap())
        .is_empty());
    let e = rt.run(start("main", json!({}))).await.unwrap_err();
    assert!(e.message.contains("budget of 100 "), "{e}");
    std::fs::write(&secrets, "sluice_max_instructions: -3\n").unwrap();
    let problems = rt.install(crate::workspace::load(&ws, Some(&secrets)).unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("sluice_max_instructions"),
        "{problems:?}"
    );
    // A bad secret keeps the budgets the workspace had.
    let e = rt.run(start("main", json!({}))).await.unwrap_err();
    assert!(e.message.contains("budget of 100 "), "{e}");
}

#[tokio::test]
async fn merges_and_deletes_in_a_loop_are_not_mistaken_for_growth() {
    // Each merge overwrites the same key and each delete frees what the push
    // added: the variable stays small however long the loop runs.
    let f = fixture_with(
        &[(
            "main",
            "do:\n  - repeat:\n      on: 3000\n      do:\n        - set: {name: o, type: merge, value: {k: '{{body.s}}{{$index}}'}}\n        - set: {name: 'o.l[]', value: '{{body.s}}'}\n        - delete: {name: o.l}\noutput: '{{o.k.length}}'\n",
        )],
        |s| s.budgets.max_value_bytes = 20_000,
    );
    let s = "x".repeat(5_000);
    assert_eq!(
        f.run("main", json!({"body": {"s": s}})).await.unwrap(),
        json!(5_004)
    );
}

#[tokio::test]
async fn executed_events_carry_shadow_waits_and_a_refusal_s_code_and_limit() {
    let f = fixture(&[
        (
            "workspace",
            "limits:\n  pilot: {rate: 1, per: hour, shadow: true}\n  once: {rate: 1, per: hour}\n",
        ),
        ("callee", "limits: [pilot, pilot]\ndo: []\n"),
        ("main", "do:\n  - callee: {}\n"),
        ("refused", "limits: [{limit: once, wait: 0}]\ndo: []\n"),
    ]);
    let mut feed = f.rt.bus().watch("ws");
    f.run("main", json!({})).await.unwrap();
    let mut shadows = Vec::new();
    for _ in 0..2 {
        let p = feed.recv().await.unwrap().payload.to_json();
        shadows.push((
            p["slug"].clone(),
            p["shadow"]["pilot"].as_f64().unwrap_or(0.0),
        ));
        assert!(p.get("throttledBy").is_none(), "{p}");
    }
    // The callee's would-be wait of an hour is its caller's too.
    for (slug, ms) in &shadows {
        assert!(*ms > 3_000_000.0, "{slug}: {ms}");
    }
    f.run("refused", json!({})).await.unwrap();
    assert!(feed
        .recv()
        .await
        .unwrap()
        .payload
        .to_json()
        .get("error")
        .is_none());
    let e = f.run("refused", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
    assert_eq!(e.limit.as_deref(), Some("once"));
    assert!(
        e.retry_after.is_some_and(|d| d > Duration::from_secs(3000)),
        "{e:?}"
    );
    let p = feed.recv().await.unwrap().payload.to_json();
    assert_eq!(p["slug"], "refused");
    assert_eq!(p["error"]["code"], "LimitExceeded", "{p}");
    assert_eq!(p["error"]["limit"], "once", "{p}");
}

#[tokio::test]
async fn a_version_refused_for_taking_a_shared_name_applies_none_of_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("hello.yml"), "slug: hello\ndo: []\n").unwrap();
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.shared_limits = json!({"openai": {"rate": 10, "per": "second"}});
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).unwrap();
    assert!(rt
        .install(crate::workspace::load(&ws, None).unwrap())
        .is_empty());
    let quota = || rt.limiters().workspace("ws").quota(LimitKind::Automations);
    let before = quota();
    std::fs::write(
        ws.join("workspace.yml"),
        "limits:\n  openai: {rate: 1, per: second}\n",
    )
    .unwrap();
    let mut next = crate::workspace::load(&ws, None).unwrap();
    next.secrets
        .insert("prismeai_ratelimit_automations".into(), Value::Number(7.0));
    let problems = rt.install(next);
    assert!(
        problems.iter().any(|p| p.contains("openai")),
        "{problems:?}"
    );
    assert_eq!(quota(), before, "a refused version changed the limits");
    assert!(
        rt.workspace("ws").unwrap().limits.is_empty(),
        "not replaced"
    );
}
