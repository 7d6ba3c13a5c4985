//! Several instances on one real nats-server with JetStream, all in this process:
//! exactly-once spread of events, redelivery after a lost instance, throughput that
//! grows with instances under per-instance limits, claims and cross-instance `wait`.
//!
//! Each test starts its own server through `scripts/nats-test-server.sh` (loopback,
//! free port, temp store) and stops it when done. A missing nats-server fails the
//! test with a message saying how to install one; nothing is skipped.

use serde_json::json;
use sluice::bus::{Bus, Event, NatsBus};
use sluice::config::{RateSetting, Settings};
use sluice::metrics::Metrics;
use sluice::runtime::{Runtime, Start};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

mod common;
use common::NatsServer as Server;

/// One sluice instance: its runtime, bus and bus metrics.
struct Instance {
    rt: Runtime,
    bus: Arc<NatsBus>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn settings() -> Settings {
    let mut s = Settings::load_from(None, &|_| None).unwrap();
    s.limits.disabled = true;
    s.nats.ack_wait_secs = 1;
    s.nats.shutdown_grace_secs = 2;
    s
}

async fn instance(url: &str, settings: &Settings, files: &[(&str, &str)]) -> Instance {
    let metrics = Arc::new(Metrics::default());
    let bus = Arc::new(
        NatsBus::connect(url, &settings.nats, metrics.clone())
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    for (slug, text) in files {
        std::fs::write(ws.join(format!("{slug}.yml")), text).unwrap();
    }
    let rt = Runtime::new(settings.clone(), bus.clone()).unwrap();
    let problems = rt.install(sluice::workspace::load(&ws, None).unwrap());
    assert!(problems.is_empty(), "{problems:?}");
    Instance {
        rt,
        bus,
        metrics,
        _dir: dir,
    }
}

impl Instance {
    /// How many times `slug` ran on this instance.
    fn runs(&self, slug: &str) -> u64 {
        let line = format!("sluice_executions_total{{workspace=\"ws\",slug=\"{slug}\"}} ");
        self.rt
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()).map(|n| n.parse().unwrap()))
            .unwrap_or(0)
    }

    async fn run(&self, slug: &str) -> serde_json::Value {
        self.rt
            .run(Start::endpoint("ws", slug))
            .await
            .unwrap()
            .output
            .to_json()
    }

    async fn emit(&self, kind: &str, payload: serde_json::Value) {
        self.rt
            .emit_external("ws", kind, payload.into())
            .await
            .unwrap();
    }
}

fn total_runs(instances: &[Instance], slug: &str) -> u64 {
    instances.iter().map(|i| i.runs(slug)).sum()
}

/// Polls `done` every 10 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bounded<T>(limit: Duration, what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

const FANOUT: &str = "do:\n  - repeat:\n      on: 1000\n      do:\n        - emit: {event: job}\n";
const ON_JOB: &str = "when: {events: [job]}\ndo: []\n";

async fn spread(n: usize) {
    let server = Server::start();
    let s = settings();
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(instance(&server.url, &s, &[("fanout", FANOUT), ("onjob", ON_JOB)]).await);
    }
    bounded(
        Duration::from_secs(30),
        "1000 emits",
        instances[0].run("fanout"),
    )
    .await;
    until(Duration::from_secs(30), "1000 listener runs", || {
        total_runs(&instances, "onjob") >= 1000
    })
    .await;
    bounded(
        Duration::from_secs(10),
        "settled",
        instances[0].bus.settled(),
    )
    .await;
    let per: Vec<u64> = instances.iter().map(|i| i.runs("onjob")).collect();
    eprintln!("{n} instances: listener runs per instance {per:?}");
    assert_eq!(per.iter().sum::<u64>(), 1000, "{per:?}");
    assert!(
        per.iter().all(|&r| r > 0),
        "an instance ran nothing: {per:?}"
    );
    for i in &instances {
        bounded(Duration::from_secs(5), "shutdown", i.bus.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_1000_events_exactly_once_between_them() {
    spread(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_run_1000_events_exactly_once_between_them() {
    spread(3).await;
}

/// A TCP relay to the server that can be cut, to lose an instance without acks.
struct Relay {
    url: String,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start(server: &str) -> Relay {
        let target = server.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { url, tasks }
    }

    /// Closes the listener and every link: the instance behind it is gone.
    fn cut(&mut self) {
        self.tasks.abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_lost_instance_run_on_another_after_ack_wait() {
    const N: usize = 20;
    let server = Server::start();
    let s = settings();
    let mut relay = Relay::start(&server.url).await;
    // The doomed instance blocks in every listener, holding the events unacknowledged.
    let stuck = "when: {events: [job]}\ndo:\n  - wait: {oneOf: [{event: never}], timeout: 60}\n";
    let doomed = instance(&relay.url, &s, &[("onjob", stuck)]).await;
    for n in 0..N {
        doomed.emit("job", json!({"n": n})).await;
    }
    until(
        Duration::from_secs(10),
        "the doomed instance to take every event",
        || {
            doomed
                .metrics
                .render()
                .contains(&format!("sluice_bus_pending_events {N}\n"))
        },
    )
    .await;
    // Progress reports keep held events from going back while the instance lives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(doomed
        .metrics
        .render()
        .contains("sluice_bus_redeliveries_total 0\n"));
    relay.cut();

    let done = "when: {events: [job]}\ndo:\n  - emit: {event: done, payload: {n: '{{payload.n}}', r: '{{source.redelivered}}'}}\n";
    let survivor = instance(&server.url, &s, &[("onjob", done)]).await;
    let mut feed = survivor.bus.watch("ws");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    bounded(Duration::from_secs(15), "redelivered events", async {
        while seen.len() < N {
            let e = feed.recv().await.unwrap();
            if e.kind == "done" {
                let payload = e.payload.to_json();
                let n = payload["n"].as_u64().unwrap();
                // Delivered once to the lost instance: at least one earlier delivery.
                assert!(payload["r"].as_u64() >= Some(1), "{payload}");
                *seen.entry(n).or_default() += 1;
            }
        }
    })
    .await;
    bounded(Duration::from_secs(10), "settled", survivor.bus.settled()).await;
    let runs = survivor.runs("onjob");
    eprintln!(
        "lost instance: {N} events rerun on the survivor, {} runs there ({} duplicates)",
        runs,
        runs - N as u64
    );
    assert_eq!(seen.len(), N);
    assert!((0..N as u64).all(|n| seen.contains_key(&n)), "{seen:?}");
    assert!(survivor
        .metrics
        .render()
        .contains(&format!("sluice_bus_redeliveries_total {runs}\n")));
    bounded(Duration::from_secs(5), "shutdown", survivor.bus.shutdown()).await;
}

/// Emits `n` jobs from the first instance and returns how long until every listener ran.
async fn time_jobs(instances: &[Instance], n: u64) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        instances[0].emit("job", json!({"i": i})).await;
    }
    until(Duration::from_secs(10), "throttled listener runs", || {
        total_runs(instances, "onjob") >= n
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_throttled_instances_finish_about_twice_as_fast_as_one() {
    const N: u64 = 50;
    let server = Server::start();
    let mut s = settings();
    s.limits.disabled = false;
    s.limits.automations = RateSetting {
        rate: 20.0,
        burst: 1,
    };
    let one = [instance(&server.url, &s, &[("onjob", ON_JOB)]).await];
    let alone = time_jobs(&one, N).await;
    bounded(Duration::from_secs(5), "shutdown", one[0].bus.shutdown()).await;

    let two = [
        instance(&server.url, &s, &[("onjob", ON_JOB)]).await,
        instance(&server.url, &s, &[("onjob", ON_JOB)]).await,
    ];
    let together = time_jobs(&two, N).await;
    let per: Vec<u64> = two.iter().map(|i| i.runs("onjob")).collect();
    let ratio = alone.as_secs_f64() / together.as_secs_f64();
    eprintln!(
        "{N} listener runs at 20/s per instance: one instance {alone:?}, two {together:?} \
         (ratio {ratio:.2}, split {per:?})"
    );
    assert!(
        ratio >= 1.5,
        "ratio {ratio:.2}: {alone:?} vs {together:?}, split {per:?}"
    );
    for i in &two {
        bounded(Duration::from_secs(5), "shutdown", i.bus.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_won_by_exactly_one_instance() {
    let server = Server::start();
    let s = settings();
    let a = instance(&server.url, &s, &[]).await;
    let b = instance(&server.url, &s, &[]).await;
    let (x, y) = tokio::join!(
        a.bus.claim("ws/tick@2026-11-22T15:04:00Z".into()),
        b.bus.claim("ws/tick@2026-11-22T15:04:00Z".into())
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x ^ y, "claims: {x} {y}");
    assert!(!a
        .bus
        .claim("ws/tick@2026-11-22T15:04:00Z".into())
        .await
        .unwrap());
    assert!(b
        .bus
        .claim("ws/tick@2026-11-22T15:05:00Z".into())
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_one_instance_sees_an_event_emitted_by_another() {
    let server = Server::start();
    let s = settings();
    let waiter = "do:\n  - wait: {oneOf: [{event: ping}], timeout: 10, output: got}\noutput: '{{got.payload}}'\n";
    let a = instance(&server.url, &s, &[("waiter", waiter)]).await;
    let b = instance(&server.url, &s, &[]).await;
    let mut seen_by_a = a.bus.watch("ws");
    let mut waiting = tokio::spawn(async move {
        let out = a.run("waiter").await;
        (out, a)
    });
    // The wait registers as its run starts, which nothing shows: ping until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (out, a) = loop {
        b.emit("ping", json!({"from": "b"})).await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(100), &mut waiting).await {
            break done.unwrap();
        }
        assert!(Instant::now() < deadline, "timed out waiting for the wait");
    };
    assert_eq!(out, json!({"from": "b"}));
    // Executed events reach watchers through NATS as well, not only locally.
    let executed: Arc<Event> = bounded(Duration::from_secs(5), "executed event", async {
        loop {
            let e = seen_by_a.recv().await.unwrap();
            if e.kind == sluice::bus::EXECUTED {
                return e;
            }
        }
    })
    .await;
    assert_eq!(executed.workspace, "ws");
    bounded(Duration::from_secs(5), "settled", a.bus.settled()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_quick_events_and_hands_slow_ones_back() {
    let server = Server::start();
    let mut s = settings();
    // Far longer than the test: a handed-back event must come back by its nak.
    s.nats.ack_wait_secs = 60;
    s.nats.shutdown_grace_secs = 2;
    let sleepy = "when: {events: [job]}\ndo:\n  - wait: {oneOf: [{event: never}], timeout: '{{payload.t}}'}\n";
    let leaving = instance(&server.url, &s, &[("onjob", sleepy)]).await;
    for n in 0..10 {
        let t = if n < 5 { 0.3 } else { 60.0 };
        leaving.emit("job", json!({"n": n, "t": t})).await;
    }
    until(
        Duration::from_secs(10),
        "the instance to take every event",
        || {
            leaving
                .metrics
                .render()
                .contains("sluice_bus_pending_events 10\n")
        },
    )
    .await;
    // The other instance is ready (workspace installed, watched) before anything is
    // handed back: one that starts pulling before its workspace is installed would
    // run the events with no listener.
    let done =
        "when: {events: [job]}\ndo:\n  - emit: {event: done, payload: {n: '{{payload.n}}'}}\n";
    let other = instance(&server.url, &s, &[("onjob", done)]).await;
    let mut feed = other.bus.watch("ws");
    let started = Instant::now();
    bounded(Duration::from_secs(10), "shutdown", leaving.bus.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(leaving.runs("onjob"), 5, "the quick events finished");
    let mut seen = Vec::new();
    bounded(Duration::from_secs(10), "handed-back events", async {
        while seen.len() < 5 {
            let e = feed.recv().await.unwrap();
            if e.kind == "done" {
                seen.push(e.payload.to_json()["n"].as_u64().unwrap());
            }
        }
    })
    .await;
    bounded(Duration::from_secs(10), "settled", other.bus.settled()).await;
    seen.sort();
    assert_eq!(
        seen,
        [5, 6, 7, 8, 9],
        "only the unfinished events come back"
    );
    assert_eq!(other.runs("onjob"), 5);
}
