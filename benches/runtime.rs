//! Interpreter speed: the targets of issue 3, measured in process.
//!
//! `cargo bench --bench runtime` (numbers recorded in docs/benchmarks.md).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::runtime::{Runtime, Start};
use std::sync::Arc;

/// A runtime over one workspace; with `limits`, every limiter is on but so
/// generous that it never waits, which isolates the cost of the checks.
fn runtime(files: &[(&str, &str)], limits: bool) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("bench");
    std::fs::create_dir(&ws).expect("mkdir");
    for (name, text) in files {
        std::fs::write(ws.join(name), text).expect("write");
    }
    let env = |name: &str| match name {
        "RATE_LIMIT_DISABLED" => Some((!limits).to_string()),
        n if n.ends_with("_BURST") => Some("1000000000".to_string()),
        n if n.starts_with("RATE_LIMIT_") => Some("1000000000".to_string()),
        _ => None,
    };
    let settings = Settings::load_from(None, &env).expect("settings");
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).expect("runtime");
    rt.install(sluice::workspace::load(&ws, None).expect("workspace"));
    (rt, dir)
}

fn start(slug: &str) -> Start {
    Start {
        correlation_id: Some("bench".into()),
        ..Start::endpoint("bench", slug)
    }
}

const REPEAT: &str = "slug: loop\ndo:\n  - repeat:\n      on: 2000\n      do:\n        - set: {name: last, value: 'item {{item}} of {{$index}}'}\noutput: '{{last}}'\n";
const TRIVIAL: &str = "slug: hello\nwhen: {endpoint: true}\ndo: []\noutput: {message: hello}\n";
/// The trivial automation taking one named limit (SPEC section 7) that never makes it wait.
const TRIVIAL_NAMED: &str =
    "slug: named\nwhen: {endpoint: true}\nlimits: [api]\ndo: []\noutput: {message: hello}\n";
const NAMED_LIMITS: &str = "limits:\n  api: {rate: 1000000000, per: second}\n";

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (rt, _dir) = runtime(
        &[
            ("loop.yml", REPEAT),
            ("hello.yml", TRIVIAL),
            ("named.yml", TRIVIAL_NAMED),
            ("workspace.yml", NAMED_LIMITS),
        ],
        false,
    );
    c.bench_function("repeat_2000_set_interpolation", |b| {
        b.to_async(&tokio).iter(|| rt.run(start("loop")))
    });
    c.bench_function("trivial_automation", |b| {
        b.to_async(&tokio).iter(|| rt.run(start("hello")))
    });
    c.bench_function("trivial_automation_one_named_limit", |b| {
        b.to_async(&tokio).iter(|| rt.run(start("named")))
    });
    let (limited, _dir2) = runtime(&[("loop.yml", REPEAT), ("hello.yml", TRIVIAL)], true);
    c.bench_function("trivial_automation_with_limits", |b| {
        b.to_async(&tokio).iter(|| limited.run(start("hello")))
    });
    c.bench_function("repeat_2000_with_limits", |b| {
        b.to_async(&tokio).iter(|| limited.run(start("loop")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
