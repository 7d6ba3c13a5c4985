//! Cost of the limiter paths every execution takes: an uncontended `acquire` and the
//! per-execution workspace lookup. Run with `cargo bench --bench limits`.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::config::{LimitSettings, RateSetting};
use sluice::limits::{LimitKind, Limiters};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Limits so generous that the bucket never runs dry: every call takes the fast path.
fn never_dry() -> LimitSettings {
    let setting = RateSetting {
        rate: 1e9,
        burst: 1_000_000_000,
    };
    LimitSettings {
        disabled: false,
        automations: setting,
        emits: setting,
        fetchs: setting,
        repeats: setting,
        ..LimitSettings::default()
    }
}

fn uncontended_acquire(c: &mut Criterion) {
    let limiters = Limiters::new(&never_dry());
    let ws = limiters.workspace("bench");
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function("acquire 1 token, uncontended", |b| {
        b.iter(|| {
            let fut = pin!(ws.acquire(black_box(LimitKind::Emits), black_box(1)));
            match fut.poll(&mut cx) {
                Poll::Ready(waited) => assert_eq!(waited, Duration::ZERO),
                Poll::Pending => unreachable!("the bucket never runs dry"),
            }
        })
    });
}

fn workspace_lookup(c: &mut Criterion) {
    let limiters = Limiters::new(&LimitSettings::default());
    let names: Vec<String> = (0..100_000).map(|i| format!("workspace-{i:06}")).collect();
    for name in &names {
        limiters.workspace(name);
    }
    let mut i = 0;
    c.bench_function("workspace lookup among 100k", |b| {
        b.iter(|| {
            i = (i + 7919) % names.len();
            black_box(limiters.workspace(&names[i]));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = uncontended_acquire, workspace_lookup
}
criterion_main!(benches);
