//! Cluster limit acquisitions over a real nats-server on loopback, through `NamedLimits`
//! with the real engine at the owner: the round trip of one acquisition from an instance
//! that does not own the limit, and how many acquisitions one
//! owner grants per second to pipelined requests from several tasks.
//!
//! `cargo bench --bench cluster_limits` (needs nats-server >= 2.11:
//! `scripts/nats-test-server.sh install`). Prints the median and p99 of the measured round
//! trips and the acquisitions per second next to criterion's estimate.

mod common;
use criterion::{criterion_group, criterion_main, Criterion};
use sluice::limits::cluster::{ClusterLimits, ClusterSettings};
use sluice::limits::named::spec::parse_limits;
use sluice::limits::named::{Ask, ClusterEngine, NamedLimits};
use sluice::limits::TimeSource;
use sluice::value::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PIPELINE_TASKS: usize = 32;
const PER_TASK: usize = 2000;

fn ask() -> Ask {
    let mut ask = Ask::new("bench", "");
    ask.wait = Some(Duration::from_secs(1));
    ask
}

/// An instance whose owner runs the real engine, with a cluster limit so generous (far
/// above what is measured) that the owner always grants at once: the bench measures the
/// cluster layer and the engine, not waiting.
async fn instance(url: &str) -> (NamedLimits, ClusterLimits) {
    let client = async_nats::connect(url).await.expect("connect");
    let time = TimeSource::real();
    let engine = Arc::new(ClusterEngine::new(time.clone()));
    let cluster = ClusterLimits::connect(client, &ClusterSettings::default(), engine)
        .await
        .expect("cluster limits");
    let limits = NamedLimits::workspace("bench", None, time);
    let yaml = serde_json::json!({"bench": {"rate": 1e9, "per": "second", "scope": "cluster"}});
    match parse_limits(&Value::from(yaml), &["limits"]) {
        Ok(specs) => limits.update(specs),
        Err(e) => panic!("{e:?}"),
    }
    (limits, cluster)
}

/// Attaches `cluster` to `limits` and waits until the limit answers.
async fn ready(limits: &NamedLimits, cluster: ClusterLimits) -> Arc<ClusterLimits> {
    let cluster = Arc::new(cluster);
    limits.attach_cluster(cluster.clone());
    while limits.acquire_one(&ask()).await.is_err() {}
    cluster
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn bench(c: &mut Criterion) {
    let nats = common::Nats::start();
    let tokio = common::runtime();
    let (owner, asker, _handle) = tokio.block_on(async {
        // The first to use the limit takes its lease.
        let (owner, cluster) = instance(&nats.url).await;
        let owner_handle = ready(&owner, cluster).await;
        let (asker, cluster) = instance(&nats.url).await;
        ready(&asker, cluster).await;
        (owner, asker, owner_handle)
    });
    let samples = Mutex::new(Vec::new());
    c.bench_function("cluster_acquire_round_trip", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let asker = asker.clone();
            let samples = &samples;
            let ask = ask();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let permit = asker.acquire_one(&ask).await.expect("granted");
                    let took = start.elapsed();
                    drop(permit);
                    total += took;
                    samples.lock().unwrap().push(took);
                }
                total
            }
        });
    });
    let mut sorted = samples.into_inner().unwrap();
    sorted.sort();
    println!(
        "cluster acquire round trip over {} acquisitions: median {:?}, p99 {:?}",
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99)
    );
    let rate = tokio.block_on(async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..PIPELINE_TASKS {
            let asker = asker.clone();
            tasks.spawn(async move {
                let ask = ask();
                for _ in 0..PER_TASK {
                    asker.acquire_one(&ask).await.expect("granted");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        (PIPELINE_TASKS * PER_TASK) as f64 / start.elapsed().as_secs_f64()
    });
    println!("one owner granted {rate:.0} acquisitions/s to {PIPELINE_TASKS} pipelined tasks");
    drop(owner);
}

criterion_group!(benches, bench);
criterion_main!(benches);
