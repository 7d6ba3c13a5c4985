//! Interpreter speed: the targets of issue 3, measured in process.
//!
//! `cargo bench --bench runtime` (numbers recorded in docs/benchmarks.md).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::runtime::{Runtime, Start, Trigger};
use std::sync::Arc;

fn runtime(files: &[(&str, &str)], limits: bool) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("bench");
    std::fs::create_dir(&ws).expect("mkdir");
    for (name, text) in files {
        std::fs::write(ws.join(name), text).expect("write");
    }
    let mut settings = Settings::load_from(None, &|_| None).expect("settings");
    if !limits {
        settings.limits.disabled = true;
    }
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).expect("runtime");
    rt.install(sluice::workspace::load(&ws, None).expect("workspace"));
    (rt, dir)
}

fn start(slug: &str) -> Start {
    Start {
        workspace: "bench".into(),
        slug: slug.into(),
        payload: Default::default(),
        trigger: Trigger::new("endpoint", slug),
        correlation_id: Some("bench".into()),
        depth: 0,
        http: None,
    }
}

const REPEAT: &str = "slug: loop\ndo:\n  - repeat:\n      on: 2000\n      do:\n        - set: {name: last, value: 'item {{item}} of {{$index}}'}\noutput: '{{last}}'\n";
const TRIVIAL: &str = "slug: hello\nwhen: {endpoint: true}\ndo: []\noutput: {message: hello}\n";

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (rt, _dir) = runtime(&[("loop.yml", REPEAT), ("hello.yml", TRIVIAL)], false);
    c.bench_function("repeat_2000_set_interpolation", |b| {
        b.to_async(&tokio).iter(|| rt.run(start("loop")))
    });
    c.bench_function("trivial_automation", |b| {
        b.to_async(&tokio).iter(|| rt.run(start("hello")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
