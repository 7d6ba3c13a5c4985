//! Cost of taking a named limit when it has capacity: an instance limit without key, and a
//! keyed limit (the key lookup among 100,000 live keys included). Run with
//! `cargo bench --bench named`.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::limits::named::spec::parse_limits;
use sluice::limits::named::{Ask, NamedLimits};
use sluice::limits::TimeSource;
use sluice::value::Value;
use std::fmt::Write;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Limits so generous that they never run dry: every call takes the uncontended path.
fn limits() -> NamedLimits {
    let limits = NamedLimits::workspace("bench", None, TimeSource::real());
    let yaml = serde_json::json!({
        "crm": {"rate": 1e9, "per": "second"},
        "per-user": {"key": "{{user}}", "rate": 1e9, "per": "second"},
    });
    match parse_limits(&Value::from(yaml), &["limits"]) {
        Ok(specs) => limits.update(specs),
        Err(e) => panic!("{e:?}"),
    }
    limits
}

fn take(limits: &NamedLimits, ask: &Ask, cx: &mut Context<'_>) {
    let fut = pin!(limits.acquire_one(ask));
    match fut.poll(cx) {
        Poll::Ready(Ok(got)) => drop(black_box(got)),
        _ => unreachable!("the limit never runs dry"),
    }
}

fn uncontended(c: &mut Criterion) {
    let limits = limits();
    let mut cx = Context::from_waker(Waker::noop());
    let ask = Ask::new("crm", "");
    c.bench_function("named acquire, instance limit", |b| {
        b.iter(|| take(&limits, black_box(&ask), &mut cx))
    });
    for i in 0..KEYS {
        take(&limits, &Ask::new("per-user", &user(i)), &mut cx);
    }
    // As at run time, the key is rendered into the request just before it is taken.
    let mut ask = Ask::new("per-user", "");
    let mut i = 0;
    c.bench_function("named acquire, keyed limit among 100k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            ask.key.clear();
            let _ = write!(ask.key, "user-{i:06}");
            take(&limits, black_box(&ask), &mut cx)
        })
    });
}

/// Live keys of the keyed limit.
const KEYS: usize = 100_000;

fn user(i: usize) -> String {
    format!("user-{i:06}")
}

criterion_group!(benches, uncontended);
criterion_main!(benches);
