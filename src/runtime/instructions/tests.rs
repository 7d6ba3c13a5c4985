//! Compiling whole automation files with these instructions: the `dsl`
//! driver, the locations of diagnostics, and each instruction's checks.

use super::Instruction;
use crate::dsl::{parse_automation, Compiled};
use std::path::PathBuf;

fn compile(text: &str) -> Compiled<Instruction> {
    match parse_automation(&PathBuf::from("ws/a.yml"), text) {
        Ok(c) => c,
        Err(d) => panic!("{d}"),
    }
}

/// Each diagnostic of `c` as (line, column, message).
fn located(c: &Compiled<Instruction>) -> Vec<(usize, usize, &str)> {
    c.diagnostics
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect()
}

#[test]
fn slug_defaults_to_the_file_stem() {
    let c = compile("do: []\n");
    assert_eq!(c.automation.slug, "a");
    assert!(c.diagnostics.is_empty());
}

#[test]
fn yaml_errors_carry_file_line_and_column() {
    let err =
        parse_automation::<Instruction>(&PathBuf::from("ws/a.yml"), "do:\n  - set: {name: a\n")
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
    assert!(err.starts_with("ws/a.yml:"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
}

#[test]
fn bad_expression_is_a_diagnostic_at_its_line() {
    let c = compile("do:\n  - set:\n      name: a\n      value: '{% 1 + %}'\n");
    assert_eq!(c.diagnostics.len(), 1);
    assert_eq!(c.diagnostics[0].line, 4);
}

#[test]
fn null_instruction_compiles_to_a_failure() {
    let c = compile("do:\n  - set:\n");
    assert!(c.automation.body[0].is_invalid());
    assert_eq!(c.diagnostics[0].line, 2);
}

#[test]
fn an_item_with_several_keys_or_none_is_invalid_at_its_place() {
    let c = compile(
        "do:\n  - comment: ok\n  - set: {name: a, value: 1}\n    emit: {event: e}\n  - {}\n  - emit: {event: f}\n",
    );
    let found = located(&c);
    assert_eq!(
        found,
        vec![
            (3, 5, "an instruction item has one key, found 2: set, emit"),
            (5, 5, "an instruction item has one key, found 0"),
        ]
    );
    let kinds: Vec<(bool, usize)> = c
        .automation
        .body
        .iter()
        .map(|i| (i.is_invalid(), i.span.line))
        .collect();
    assert_eq!(kinds, vec![(false, 2), (true, 3), (true, 5), (false, 6)]);
}

#[test]
fn unknown_names_are_calls_with_lines() {
    let c = compile("do:\n  - comment: hi\n  - other: {x: 1}\n");
    let calls: Vec<(&str, usize, usize)> = c
        .automation
        .calls()
        .into_iter()
        .map(|(slug, span)| (slug, span.line, span.col))
        .collect();
    assert_eq!(calls, vec![("other", 3, 5)]);
}

#[test]
fn bad_cron_is_a_diagnostic() {
    let c = compile("when:\n  schedules: ['*/5 * * * *', 'every day']\ndo: []\n");
    let exprs: Vec<&str> = c
        .automation
        .when
        .schedules
        .iter()
        .map(|(e, _)| e.as_str())
        .collect();
    assert_eq!(exprs, vec!["*/5 * * * *"]);
    assert_eq!(c.diagnostics.len(), 1);
    assert!(c.diagnostics[0].message.contains("every day"));
}

#[test]
fn emitting_a_runtime_event_is_a_diagnostic_at_its_type() {
    let c = compile("do:\n  - emit:\n      event: runtime.automations.executed\n  - emit:\n      event: '{{t}}'\n");
    assert_eq!(c.diagnostics.len(), 1);
    let d = &c.diagnostics[0];
    assert_eq!((d.line, d.column), (3, 14));
    assert!(d.message.contains("reserved"), "{}", d.message);
}

#[test]
fn two_instructions_of_one_name_are_each_located_at_their_own_place() {
    for (text, at) in [
        (
            "do:\n  - set: {name: x, value: 1}\n  - set: {value: 1}\n",
            (3, 5),
        ),
        ("do: [set: {name: x, value: 1}, set: {value: 1}]\n", (1, 32)),
    ] {
        let c = compile(text);
        assert_eq!(c.diagnostics.len(), 1, "{text}");
        let d = &c.diagnostics[0];
        assert_eq!((d.line, d.column), at, "{text}: {}", d.message);
    }
}

#[test]
fn unknown_fields_and_a_literal_bad_set_type_are_located_at_their_key() {
    let c = compile(
        "do:\n  - set: {name: x, value: 1, type: merj}\n  - repeat:\n      until: 2\n      doo: []\n  - fetch: {url: 'http://x', methd: post}\n  - set: {name: y, type: '{{t}}'}\n",
    );
    let found = located(&c);
    assert_eq!(
        found,
        vec![
            (
                2,
                30,
                "Invalid set instruction: unknown type `merj` (expected replace, merge or push)"
            ),
            (
                5,
                7,
                "unknown field `doo` in repeat; did you mean `do`? expected one of on, until, do"
            ),
            (
                6,
                30,
                "unknown field `methd` in fetch; did you mean `method`? expected one of url, \
                 method, headers, query, body, multipart, emitErrors, outputMode, stream, \
                 prismeaiApiKey, output"
            ),
        ]
    );
    // The bad literal type still fails when the instruction runs; the rest runs.
    assert!(c.automation.body.iter().all(|i| !i.is_invalid()));
}

#[test]
fn endpoint_true_means_the_slug() {
    let c = compile("slug: s\nwhen:\n  endpoint: true\n  events: [a.b]\ndo: []\n");
    assert_eq!(c.automation.when.endpoint.as_deref(), Some(""));
    assert_eq!(c.automation.when.events, vec!["a.b".to_string()]);
}
