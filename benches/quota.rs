//! Cost of the credit quota on an execution's hot path: `decision` (every execution) and
//! `charge` (a cost, a `charge`, a priced token), alone and together, on a workspace with a
//! plan. The store is never touched here: writes are batched by the flusher.
//! Run with `cargo bench --bench quota`.

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use sluice::quota::{QuotaClass, QuotaSettings, Quotas, RedbStore};
use std::hint::black_box;
use std::sync::Arc;

fn quotas(dir: &std::path::Path) -> Quotas {
    let settings: QuotaSettings =
        serde_yaml::from_str("plans: {pro: {credits: 1000000000}}\ndefault_plan: pro\n").unwrap();
    settings.validate().unwrap();
    Quotas::new(settings, Arc::new(RedbStore::open(dir).unwrap()))
}

fn hot_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas(dir.path());
    let now = Utc::now();
    q.charge("bench", "warm", 1.0, now).unwrap();
    c.bench_function("quota decision", |b| {
        b.iter(|| black_box(q.decision(black_box("bench"), QuotaClass::Premium, now)))
    });
    c.bench_function("quota charge", |b| {
        b.iter(|| q.charge(black_box("bench"), black_box("summarize"), 0.001, now))
    });
    c.bench_function("quota decision + charge (one execution)", |b| {
        b.iter(|| {
            let d = q.decision(black_box("bench"), QuotaClass::Premium, now);
            black_box(d);
            q.charge(black_box("bench"), black_box("summarize"), 0.001, now)
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
