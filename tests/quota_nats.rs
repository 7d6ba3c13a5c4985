//! Two instances' quotas sharing one JetStream key-value bucket on a real nats-server:
//! their charges add up, both see a workspace go over its credits within a second, and
//! each band is announced by one instance only.

mod common;

use chrono::Utc;
use common::NatsServer;
use sluice::quota::{BandEvent, NatsKvStore, QuotaClass, QuotaSettings, Quotas};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// The flush period of the instances: four times within the promised second.
const EVERY: Duration = Duration::from_millis(250);

fn settings() -> QuotaSettings {
    let s: QuotaSettings =
        serde_yaml::from_str("plans: {starter: {credits: 100}}\ndefault_plan: starter\n").unwrap();
    s.validate().unwrap();
    s
}

/// One instance: its own connection, the shared bucket, a flusher until dropped.
struct Instance {
    quotas: Quotas,
    stop: Option<oneshot::Sender<()>>,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(url: &str, bucket: &str) -> Instance {
        let client = async_nats::connect(url).await.unwrap();
        let store = NatsKvStore::open(client, bucket).await.unwrap();
        let quotas = Quotas::new(settings(), Arc::new(store));
        let (stop, stopped) = oneshot::channel::<()>();
        let q = quotas.clone();
        let flusher = tokio::spawn(async move {
            q.run_flusher(EVERY, async {
                let _ = stopped.await;
            })
            .await;
        });
        Instance {
            quotas,
            stop: Some(stop),
            flusher: Some(flusher),
        }
    }

    /// Stops the flusher after its last flush.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(f) = self.flusher.take() {
            f.await.unwrap();
        }
    }
}

/// Waits up to `limit` for `f`, polling every 20 ms; returns how long it took.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn drain(rx: &mut broadcast::Receiver<BandEvent>) -> Vec<f64> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| e.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_usage_see_over_quota_and_announce_once() {
    let server = NatsServer::start();
    let a = Instance::start(&server.url, "quota_test").await;
    let b = Instance::start(&server.url, "quota_test").await;
    let (mut ea, mut eb) = (a.quotas.subscribe(), b.quotas.subscribe());

    // Concurrent charges on both while both flushers write: every one counts.
    let charge = |q: Quotas, slug: &'static str| {
        tokio::spawn(async move {
            for _ in 0..200 {
                q.charge("ws", slug, 0.2, Utc::now()).unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let (ca, cb) = (
        charge(a.quotas.clone(), "alpha"),
        charge(b.quotas.clone(), "beta"),
    );
    ca.await.unwrap();
    cb.await.unwrap();
    // Written by both, then read back by both.
    for q in [&a.quotas, &b.quotas, &a.quotas] {
        q.flush(Utc::now()).await.unwrap();
    }
    for q in [&a.quotas, &b.quotas] {
        let u = q.usage("ws", None, Utc::now()).await.unwrap();
        assert_eq!(u.used, 80.0, "{u:?}");
        assert_eq!(
            (u.by_automation["alpha"], u.by_automation["beta"]),
            (40.0, 40.0)
        );
    }
    // 80 % entered: announced by one instance only.
    let announced = within(Duration::from_secs(5), || {
        let mut got = drain(&mut ea);
        got.extend(drain(&mut eb));
        !got.is_empty() && {
            assert_eq!(got, vec![80.0]);
            true
        }
    })
    .await;
    assert!(announced.is_some(), "no band event");

    // Over quota on A only: B refuses premium work within a second, with no call between.
    let now = Utc::now();
    assert!(b
        .quotas
        .decision("ws", QuotaClass::Premium, now)
        .restricted
        .is_none());
    a.quotas.charge("ws", "alpha", 25.0, now).unwrap();
    assert!(a
        .quotas
        .decision("ws", QuotaClass::Premium, now)
        .restricted
        .is_some());
    let seen = within(Duration::from_secs(3), || {
        b.quotas
            .decision("ws", QuotaClass::Premium, Utc::now())
            .restricted
            .is_some()
    })
    .await;
    let seen = seen.expect("B never saw the workspace over quota");
    assert!(seen < Duration::from_secs(1), "B saw it after {seen:?}");

    // 100 % is announced once too, and more flushes on both announce nothing again.
    let mut events = Vec::new();
    let announced = within(Duration::from_secs(5), || {
        events.extend(drain(&mut ea));
        events.extend(drain(&mut eb));
        !events.is_empty()
    })
    .await;
    assert!(announced.is_some(), "no event for 100 %");
    for q in [&a.quotas, &b.quotas, &a.quotas, &b.quotas] {
        q.flush(Utc::now()).await.unwrap();
    }
    events.extend(drain(&mut ea));
    events.extend(drain(&mut eb));
    assert_eq!(events, vec![100.0]);

    // Shut both down; a third instance reads the same totals from the bucket.
    a.shutdown().await;
    b.shutdown().await;
    let c = Instance::start(&server.url, "quota_test").await;
    let u = c.quotas.usage("ws", None, Utc::now()).await.unwrap();
    assert_eq!((u.used, u.percent), (105.0, Some(105.0)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_to_one_ledger_all_count() {
    use sluice::quota::{Ledger, LedgerKey, Store, Totals};
    let server = NatsServer::start();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let client = async_nats::connect(&server.url).await.unwrap();
        stores.push(Arc::new(
            NatsKvStore::open(client, "quota_cas").await.unwrap(),
        ));
    }
    let key = LedgerKey {
        workspace: "ws.with dots".into(),
        cycle: "2026-11-01".into(),
    };
    let delta = Ledger {
        totals: Totals {
            used: 1_000_000,
            ..Totals::default()
        },
        ..Ledger::default()
    };
    // 2 × 25 writers at once on the same key: most of them lose a compare-and-set first.
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..25 {
            let (store, key, delta) = (Arc::clone(store), key.clone(), delta.clone());
            tasks.push(tokio::spawn(async move {
                store.apply(&[(key, delta)]).await.remove(0).unwrap()
            }));
        }
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap().totals.used);
    }
    seen.sort_unstable();
    // Each writer saw a distinct total: its write applied exactly once.
    assert_eq!(seen, (1..=50).map(|n| n * 1_000_000).collect::<Vec<i64>>());
    let stored = stores[1].read(&key).await.unwrap().unwrap();
    assert_eq!(stored.totals.used, 50_000_000);
    assert!(stores[0].claim_band(&key, 80.5).await.unwrap());
    assert!(!stores[1].claim_band(&key, 80.5).await.unwrap());
}
