//! `sluice run` and `sluice validate` as a user calls them: the real binary,
//! its exit codes, its report and its error lines.

use serde_json::{json, Value as J};
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::sluice;

fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("ws").join(name), text).unwrap();
    }
    dir
}

fn ws_path(dir: &tempfile::TempDir) -> String {
    dir.path().join("ws").to_string_lossy().into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> J {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("automations/demo")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn run_prints_the_output_as_json() {
    let o = sluice(&[
        "run",
        "hello",
        "--workspace",
        &demo(),
        "--payload",
        r#"{"body": {"name": "Ada"}}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "\"Hello Ada\"");
}

#[test]
fn run_report_has_output_emitted_timings_and_no_error() {
    let o = sluice(&["run", "hello", "--workspace", &demo(), "--report"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["output"], "Hello world");
    assert_eq!(
        r["emitted"],
        json!([{"event": "greeted", "payload": {"text": "Hello world"}}])
    );
    assert!(r["throttled"].is_u64() && r["duration"].is_u64(), "{r}");
    assert_eq!(r["error"], J::Null);
}

#[test]
fn the_demo_tour_runs() {
    let o = sluice(&["run", "tour", "--workspace", &demo(), "--report"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["error"], J::Null, "{r}");
    assert_eq!(r["output"]["total"], 6);
    assert_eq!(r["output"]["verdict"], "big");
    assert_eq!(r["output"]["doubled"], 12);
    assert_eq!(r["output"]["pong"], json!({"from": "tour"}));
    assert_eq!(r["output"]["squares"], json!([0, 1, 4]));
}

#[test]
fn a_failing_automation_exits_1_with_the_report() {
    let dir = workspace(&[(
        "main.yml",
        "do:\n  - emit: {event: before}\n  - missingAutomation: {}\n",
    )]);
    let o = sluice(&["run", "main", "--workspace", &ws_path(&dir), "--report"]);
    assert_eq!(o.status.code(), Some(1));
    let r = report(&o);
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Automation not found: missingAutomation"),
        "{message}"
    );
    assert!(message.contains("main.yml:3"), "{message}");
    assert_eq!(r["emitted"], json!([{"event": "before", "payload": {}}]));
}

#[test]
fn bad_input_exits_2_with_one_clear_line() {
    let dir = workspace(&[("main.yml", "do:\n  - set: {name: a\n")]);
    let o = sluice(&["run", "main", "--workspace", &ws_path(&dir)]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("main.yml:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let o = sluice(&["run", "nope", "--workspace", &demo()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no automation `nope`"));

    let o = sluice(&["run", "hello", "--workspace", &demo(), "--payload", "[1]"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--payload must be a JSON object"));

    let o = sluice(&["run", "hello", "--workspace", "/definitely/not/here"]);
    assert_eq!(o.status.code(), Some(2));

    let o = sluice(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_env_var_exits_2_naming_it() {
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "hello", "--workspace", &demo()])
        .env("RATE_LIMIT_EMITS", "lots")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("RATE_LIMIT_EMITS"), "{}", stderr(&o));
}

#[test]
fn secrets_file_is_read() {
    let dir = workspace(&[("main.yml", "do: []\noutput: '{{secret.token}}'\n")]);
    let secrets = dir.path().join("secrets.yml");
    std::fs::write(&secrets, "token: abc\n").unwrap();
    let o = sluice(&[
        "run",
        "main",
        "--workspace",
        &ws_path(&dir),
        "--secrets",
        secrets.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "\"abc\"");
}

#[test]
fn validate_accepts_the_demo() {
    let o = sluice(&["validate", &demo()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn validate_reports_every_problem_with_its_location() {
    let dir = workspace(&[
        (
            "a.yml",
            "do:\n  - set:\n      name: x\n      value: '{% 1 + %}'\n  - nobody: {}\n",
        ),
        (
            "b.yml",
            "do:\n  - conditions:\n      '{{x}} == (':\n        - comment: never\n",
        ),
    ]);
    let o = sluice(&["validate", &ws_path(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("a.yml:4:"), "{err}");
    assert!(
        lines[1].contains("a.yml:5:") && lines[1].contains("nobody"),
        "{err}"
    );
    assert!(lines[2].contains("b.yml:3:"), "{err}");
}

#[test]
fn validate_names_misspelt_instructions_and_fields_at_their_own_column() {
    let dir = workspace(&[(
        "main.yml",
        "do:\n  - sett: {name: x, value: 1}\n  - emit: {evnt: e}\n  - wait: {timout: 1}\n",
    )]);
    let o = sluice(&["validate", &ws_path(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let found: Vec<&str> = err
        .lines()
        .map(|l| &l[l.find("main.yml:").unwrap_or(0)..])
        .collect();
    assert_eq!(
        found,
        vec![
            "main.yml:2:5: unknown instruction or automation `sett`; did you mean `set`? \
             expected one of set, delete, conditions, repeat, all, break, emit, wait, fetch, \
             charge, acquire, comment, main",
            "main.yml:3:12: unknown field `evnt` in emit; did you mean `event`? \
             expected one of event, payload, target, options, output",
            "main.yml:4:12: unknown field `timout` in wait; did you mean `timeout`? \
             expected one of oneOf, timeout, output",
        ],
        "{err}"
    );
}

#[test]
fn an_instruction_item_with_two_keys_is_refused_by_validate_and_fails_at_run_time() {
    let dir = workspace(&[(
        "main.yml",
        "do:\n  - emit: {event: before}\n  - set: {name: x, value: 1}\n    emit: {event: lost}\n",
    )]);
    let o = sluice(&["validate", &ws_path(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("main.yml:3:5")
            && err.contains("an instruction item has one key, found 2: set, emit"),
        "{err}"
    );
    let o = sluice(&["run", "main", "--workspace", &ws_path(&dir), "--report"]);
    assert_eq!(o.status.code(), Some(1));
    let r = report(&o);
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("InvalidInstructionError"), "{message}");
    assert!(message.contains("main.yml:3"), "{message}");
    // Neither key of the bad item ran.
    assert_eq!(r["emitted"], json!([{"event": "before", "payload": {}}]));
}

#[test]
fn validate_reports_yaml_errors() {
    let dir = workspace(&[("a.yml", "do: [\n")]);
    let o = sluice(&["validate", &ws_path(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a.yml:"), "{}", stderr(&o));
}
