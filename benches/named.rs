//! Cost of taking a named limit when it has capacity: an instance limit without key, and a
//! keyed limit (the key lookup among 100,000 live keys included). Run with
//! `cargo bench --bench named`.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::limits::named::spec::parse_limits;
use sluice::limits::named::{Ask, NamedLimits};
use sluice::limits::TimeSource;
use sluice::value::Value;
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
    let asks: Vec<Ask> = (0..100_000)
        .map(|i| Ask::new("per-user", &format!("user-{i:06}")))
        .collect();
    for ask in &asks {
        take(&limits, ask, &mut cx);
    }
    let mut i = 0;
    c.bench_function("named acquire, keyed limit among 100k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % asks.len();
            take(&limits, black_box(&asks[i]), &mut cx)
        })
    });
}

criterion_group!(benches, uncontended);
criterion_main!(benches);
