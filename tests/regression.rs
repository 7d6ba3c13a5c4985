//! Regression tests for the crashes, hangs and unlocated errors the property tests
//! (tests/properties.rs) found, each with its minimal input and the behaviour it must have:
//! a clear error or the JavaScript result, never an abort, a panic or a hang.
//!
//! Inputs that overflowed the stack run in a child process (this test binary, re-run on
//! that one test), so an abort fails that test alone instead of killing the whole suite.

use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::dsl::parse_automation;
use sluice::expr::{Expr, ExprError, Template};
use sluice::runtime::Instruction;
use sluice::runtime::{ErrorKind, Runtime, Start};
use sluice::value::{Map, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD: &str = "SLUICE_REGRESSION_CHILD";

/// Runs `body` in a child process re-running only the test `name`, on a thread with the
/// 8 MiB stack `sluice run` and `validate` have and 2 GB of address space; the child must
/// succeed within a minute.
fn in_child_process(name: &str, body: impl FnOnce() + Send + 'static) {
    if std::env::var_os(CHILD).is_some() {
        let t = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(body)
            .expect("spawn");
        if let Err(p) = t.join() {
            std::panic::resume_unwind(p);
        }
        return;
    }
    // The shell caps the child's memory, so a runaway allocation aborts it, not the machine.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -v 2000000 && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{name}` did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let tail: String = stderr
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.success(), "`{name}` crashed ({status}):\n{tail}");
}

/// Runs `f` on a thread and fails if it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// A clear failure of an expression: a located syntax error or a budget, not a crash.
fn clear_error(e: &ExprError) -> bool {
    match e {
        ExprError::Syntax { column, text, .. } => *column >= 1 && *column <= text.len() + 1,
        ExprError::Budget(_) | ExprError::Eval { .. } | ExprError::Runaway(_) => true,
        ExprError::InvalidPath(_) => false,
    }
}

#[test]
fn a_30000_term_operator_chain_does_not_overflow() {
    in_child_process("a_30000_term_operator_chain_does_not_overflow", || {
        let text = vec!["1"; 30_000].join("+");
        match Expr::parse(&text).and_then(|e| e.eval(&Value::Null)) {
            Ok(v) => assert_eq!(v.as_f64(), Some(30_000.0)),
            Err(e) => assert!(clear_error(&e), "{e}"),
        }
    });
}

#[test]
fn a_30000_term_operator_chain_in_a_condition_compiles_and_runs() {
    in_child_process(
        "a_30000_term_operator_chain_in_a_condition_compiles_and_runs",
        || {
            // A condition key would hit YAML's 1024-character limit on plain keys.
            let chain = vec!["1"; 30_000].join(" + ");
            let file = format!(
                "do:\n  - set: {{name: a, value: '{{% {chain} %}}'}}\noutput: '{{{{a}}}}'\n"
            );
            let compiled = parse_automation::<Instruction>(Path::new("ws/main.yml"), &file)
                .expect("a mapping");
            for d in &compiled.diagnostics {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
            }
            let outcome = run(&[("main", file.as_str())]);
            assert!(
                outcome.is_ok() || outcome.as_ref().is_err_and(|k| *k != ErrorKind::Internal),
                "{outcome:?}"
            );
        },
    );
}

#[test]
fn parentheses_100000_deep_do_not_overflow() {
    in_child_process("parentheses_100000_deep_do_not_overflow", || {
        let text = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        match Expr::parse(&text).and_then(|e| e.eval(&Value::Null)) {
            Ok(v) => assert_eq!(v.as_f64(), Some(1.0)),
            Err(e) => assert!(clear_error(&e), "{e}"),
        }
    });
}

#[test]
fn negations_100000_deep_do_not_overflow() {
    in_child_process("negations_100000_deep_do_not_overflow", || {
        let text = format!("{}true", "!".repeat(100_000));
        match Expr::parse(&text).and_then(|e| e.eval(&Value::Null)) {
            Ok(v) => assert_eq!(v, Value::Bool(true)),
            Err(e) => assert!(clear_error(&e), "{e}"),
        }
    });
}

/// Found by `grammar_templates_render_without_crashing`: a value holding its own template
/// twice doubles the text on every re-scan pass, 64 passes deep, instead of failing.
#[test]
fn a_self_doubling_template_fails_instead_of_hanging() {
    in_child_process("a_self_doubling_template_fails_instead_of_hanging", || {
        let result = within(Duration::from_secs(10), || {
            let mut scope = Map::new();
            scope.insert(
                "a".into(),
                Value::list(vec![Value::str("{{a}}"), Value::str("{{a}}")]),
            );
            Template::parse("x{{a}}")
                .expect("parses")
                .render(&Value::object(scope))
                .map(|v| v.to_json_string().len())
        });
        match result {
            Err(ExprError::Budget(_)) | Err(ExprError::Runaway(_)) => {}
            other => panic!("expected a budget or runaway error, got {other:?}"),
        }
    });
}

/// Found by `arbitrary_files_compile_with_located_diagnostics`: the YAML parser's
/// "more than one document" error has no position, and the diagnostic said line 0.
#[test]
fn a_yaml_error_without_a_position_is_still_located() {
    for text in ["A\n:", "a: 1\n---\nb: 2\n"] {
        let d = match parse_automation::<Instruction>(Path::new("ws/main.yml"), text) {
            Err(d) => d,
            Ok(_) => panic!("`{text}` is not one automation"),
        };
        assert!(d.line >= 1 && d.column >= 1, "`{text}`: {d:?}");
    }
}

/// Found by `damaged_automation_files_compile_with_located_diagnostics`: an instruction that
/// is a list or a number was reported at line 0, column 0.
#[test]
fn an_instruction_that_is_not_a_mapping_is_located() {
    for (text, line) in [("do:\n  - []\n", 2), ("slug: main\ndo:\n  - 5\n", 3)] {
        let compiled =
            parse_automation::<Instruction>(Path::new("ws/main.yml"), text).expect("a mapping");
        let d = compiled.diagnostics.first().expect("a diagnostic");
        assert_eq!((d.line, d.column >= 1), (line, true), "`{text}`: {d:?}");
    }
}

/// Runs `main` of a workspace made of `files` with the default budgets, limits off.
fn run(files: &[(&str, &str)]) -> Result<Value, ErrorKind> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).expect("mkdir");
    for (slug, text) in files {
        std::fs::write(ws.join(format!("{slug}.yml")), text).expect("write");
    }
    let mut settings = Settings::load_from(None, &|_| None).expect("settings");
    settings.limits.disabled = true;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async {
        let rt = Runtime::new(settings, std::sync::Arc::new(EmbeddedBus::new())).expect("runtime");
        rt.install(sluice::workspace::load(&ws, None).expect("workspace"));
        let r = rt.run(Start::endpoint("ws", "main")).await;
        r.map(|o| o.output).map_err(|e| e.kind)
    })
}

#[test]
fn wait_timeouts_that_are_not_durations_fail_clearly() {
    // Non-numeric text such as 'abc' means the default timeout, as in the reference.
    for timeout in ["'-5'", "'NaN'", "1e400", "-1", "'-1e400'"] {
        let file = format!("do:\n  - wait: {{oneOf: [{{event: e1}}], timeout: {timeout}}}\n");
        let outcome = within(Duration::from_secs(10), move || {
            std::panic::catch_unwind(|| run(&[("main", file.as_str())])).map_err(|_| "panicked")
        });
        match outcome {
            Ok(Err(kind)) => assert_ne!(kind, ErrorKind::Internal, "timeout {timeout}"),
            other => panic!("timeout {timeout}: expected a clear error, got {other:?}"),
        }
    }
}
