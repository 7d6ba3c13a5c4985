//! Cluster limit acquisitions over a real nats-server on loopback: the round trip of one
//! acquisition from an instance that does not own the limit, and how many acquisitions one
//! owner grants per second to pipelined requests from several tasks.
//!
//! `cargo bench --bench cluster_limits` (needs nats-server >= 2.11:
//! `scripts/nats-test-server.sh install`). Prints the median and p99 of the measured round
//! trips and the acquisitions per second next to criterion's estimate.

use criterion::{criterion_group, criterion_main, Criterion};
use futures::future::BoxFuture;
use sluice::limits::cluster::{
    ClusterLimits, ClusterRequest, ClusterSettings, Grant, GrantRequest, HolderId, LimitRef,
    LocalGrantor, Refusal,
};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats-test-server.sh");
/// Far above what is measured, so the owner's limiter always grants at once and the bench
/// measures the cluster layer.
const RATE: f64 = 1e9;
const PIPELINE_TASKS: usize = 32;
const PER_TASK: usize = 2000;

/// A token bucket that never makes anyone wait at the rates measured here.
struct Bucket(Mutex<(f64, Instant)>);

impl LocalGrantor for Bucket {
    fn take_over(&self, _limit: &LimitRef) {
        *self.0.lock().unwrap() = (0.0, Instant::now());
    }

    fn hand_back(&self, _limit: &LimitRef) {}

    fn acquire(&self, req: GrantRequest) -> BoxFuture<'static, Result<Grant, Refusal>> {
        let mut state = self.0.lock().unwrap();
        let now = Instant::now();
        let tokens = (state.0 + RATE * (now - state.1).as_secs_f64()).min(RATE);
        let units = req.request.units as f64;
        let result = if units <= tokens {
            *state = (tokens - units, now);
            Ok(Grant { slot: false })
        } else {
            *state = (tokens, now);
            Err(Refusal::Busy {
                retry_after: Duration::from_secs_f64((units - tokens) / RATE),
            })
        };
        Box::pin(async move { result })
    }

    fn release(&self, _limit: &LimitRef, _key: &str, _holder: &HolderId) {}

    fn adopt(&self, _limit: &LimitRef, _key: &str, _holder: &HolderId) {}
}

fn ask() -> ClusterRequest {
    ClusterRequest {
        limit: LimitRef::shared("bench"),
        key: String::new(),
        units: 1,
        priority: 10,
        lane: "default".into(),
        wait: Some(Duration::from_secs(1)),
    }
}

fn start_server(pidfile: &Path) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(["start", "--jetstream", "--max-lifetime", "600", "--pidfile"])
        .arg(pidfile)
        .output()
        .expect("run nats-test-server.sh");
    assert!(
        out.status.success(),
        "nats-server did not start (run scripts/nats-test-server.sh install):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn instance(url: &str) -> ClusterLimits {
    let client = async_nats::connect(url).await.expect("connect");
    let grantor = Arc::new(Bucket(Mutex::new((0.0, Instant::now()))));
    ClusterLimits::connect(client, &ClusterSettings::default(), grantor)
        .await
        .expect("cluster limits")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("nats.pid");
    let url = start_server(&pidfile);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let (owner, asker) = tokio.block_on(async {
        let owner = instance(&url).await;
        // The first to use the limit takes its lease; wait until it answers.
        while owner.acquire(ask()).await.is_err() {}
        let asker = Arc::new(instance(&url).await);
        while asker.acquire(ask()).await.is_err() {}
        (owner, asker)
    });
    let samples = Mutex::new(Vec::new());
    c.bench_function("cluster_acquire_round_trip", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let asker = asker.clone();
            let samples = &samples;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let permit = asker.acquire(ask()).await.expect("granted");
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
                for _ in 0..PER_TASK {
                    asker.acquire(ask()).await.expect("granted");
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
    let _ = Command::new("bash")
        .arg(SCRIPT)
        .arg("stop")
        .arg(&pidfile)
        .output();
}

criterion_group!(benches, bench);
criterion_main!(benches);
