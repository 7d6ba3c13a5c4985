//! Emit → listener start latency over a real nats-server with JetStream: the time from
//! `Bus::publish` (which returns once the event is stored) until the shared consumer
//! hands the event to this instance's handler, where the runtime starts the listeners.
//!
//! `cargo bench --bench nats` (needs nats-server >= 2.11: `scripts/nats-test-server.sh install`).
//! Prints the median and p99 of every measured emit next to criterion's estimate.

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::future::BoxFuture;
use sluice::bus::{Bus, Event, EventHandler, NatsBus, Source};
use sluice::config::NatsSettings;
use sluice::metrics::Metrics;
use sluice::value::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Reports when the bus hands over an event: that is where listeners start.
struct Started(mpsc::UnboundedSender<Instant>);

impl EventHandler for Started {
    fn handle(&self, _event: Arc<Event>) -> BoxFuture<'static, ()> {
        let _ = self.0.send(Instant::now());
        Box::pin(async {})
    }
}

fn event(n: u64) -> Event {
    let source = Source {
        workspace_id: Some("bench".into()),
        ..Source::default()
    };
    Event {
        id: format!("bench-{n}"),
        workspace: "bench".into(),
        kind: "bench.tick".into(),
        payload: Value::empty_object(),
        source,
        created_at: "2026-11-22T15:03:42.056Z".into(),
    }
}

fn bench(c: &mut Criterion) {
    let nats = common::Nats::start();
    let tokio = common::runtime();
    let (tx, rx) = mpsc::unbounded_channel();
    let bus = tokio.block_on(async {
        let bus = NatsBus::connect(
            &nats.url,
            &NatsSettings::default(),
            Arc::new(Metrics::default()),
        )
        .await
        .expect("connect");
        bus.start(Arc::new(Started(tx)));
        bus
    });
    let rx = tokio::sync::Mutex::new(rx);
    let samples = Mutex::new(Vec::new());
    let mut n = 0;
    c.bench_function("nats_emit_to_listener_start", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let (bus, rx, samples) = (&bus, &rx, &samples);
            let first = n;
            n += iters;
            async move {
                let mut rx = rx.lock().await;
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let sent = Instant::now();
                    bus.publish(event(first + i)).await.expect("publish");
                    let started = rx.recv().await.expect("handler");
                    let latency = started.duration_since(sent);
                    samples.lock().expect("samples").push(latency);
                    total += latency;
                }
                total
            }
        })
    });
    let mut all = samples.into_inner().expect("samples");
    all.sort();
    if !all.is_empty() {
        println!(
            "emit -> listener start over NATS: median {:?}, p99 {:?} ({} emits)",
            all[all.len() / 2],
            all[all.len() * 99 / 100],
            all.len()
        );
    }
    tokio.block_on(bus.shutdown());
    drop(tokio);
}

criterion_group!(benches, bench);
criterion_main!(benches);
