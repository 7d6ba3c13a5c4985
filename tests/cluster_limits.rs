//! Cluster limits over a real nats-server (SPEC section 9): several `ClusterLimits`
//! instances in one process, each with its own NATS connection, share limits through the
//! owner elected in the key-value bucket.
//!
//! The owner's local limiter here is a small real one (token bucket, slots, a waiting line
//! by priority then arrival) standing in for the section-7 engine behind `LocalGrantor`.

mod common;

use common::NatsServer;
use futures::future::BoxFuture;
use sluice::limits::cluster::{
    ClusterLimits, ClusterRequest, ClusterSettings, Grant, GrantRequest, HolderId, LimitRef,
    LocalGrantor, Refusal,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

const LEASE_SECS: u64 = 2;

/// One limit's configuration for the test limiter.
#[derive(Clone, Copy)]
struct Conf {
    rate: f64,
    burst: f64,
    concurrency: Option<usize>,
}

struct Waiter {
    units: f64,
    holder: HolderId,
    deadline: Option<Instant>,
    tx: oneshot::Sender<Result<Grant, Refusal>>,
}

struct KeyState {
    tokens: f64,
    at: Instant,
    holders: HashSet<HolderId>,
    line: BTreeMap<(Reverse<i64>, u64), Waiter>,
}

#[derive(Default)]
struct Book {
    keys: HashMap<(LimitRef, String), KeyState>,
    terms: HashMap<LimitRef, Instant>,
    arrivals: u64,
}

/// A token bucket with slots and a priority line per key; its waits are driven by a ticker.
struct TestLimiter {
    confs: HashMap<String, Conf>,
    book: Arc<Mutex<Book>>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for TestLimiter {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

fn pump(key: &mut KeyState, conf: Conf, now: Instant) {
    key.tokens = (key.tokens + conf.rate * (now - key.at).as_secs_f64()).min(conf.burst);
    key.at = now;
    let expired: Vec<_> = key
        .line
        .iter()
        .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
        .map(|(k, _)| *k)
        .collect();
    for k in expired {
        if let Some(w) = key.line.remove(&k) {
            let _ = w.tx.send(Err(Refusal::Busy {
                retry_after: Duration::from_secs_f64(1.0 / conf.rate),
            }));
        }
    }
    while let Some(entry) = key.line.first_entry() {
        let w = entry.get();
        let units = w.units.min(conf.burst);
        let slot_free = conf.concurrency.is_none_or(|c| key.holders.len() < c);
        if units > key.tokens || !slot_free {
            break;
        }
        let w = entry.remove();
        key.tokens -= units;
        let slot = conf.concurrency.is_some();
        if slot {
            key.holders.insert(w.holder);
        }
        let _ = w.tx.send(Ok(Grant { slot }));
    }
}

impl TestLimiter {
    fn new(confs: &[(&str, Conf)]) -> Arc<TestLimiter> {
        let confs: HashMap<String, Conf> = confs.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        let book = Arc::new(Mutex::new(Book::default()));
        let tick_book = book.clone();
        let tick_confs = confs.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            loop {
                every.tick().await;
                let now = Instant::now();
                let mut book = tick_book.lock().unwrap();
                for ((limit, _), key) in book.keys.iter_mut() {
                    pump(key, tick_confs[&limit.name], now);
                }
            }
        });
        Arc::new(TestLimiter {
            confs,
            book,
            ticker,
        })
    }

    /// Acquisitions waiting in this instance's limiter (when it owns the limit).
    fn waiters(&self) -> usize {
        let book = self.book.lock().unwrap();
        book.keys.values().map(|k| k.line.len()).sum()
    }
}

impl LocalGrantor for TestLimiter {
    fn take_over(&self, limit: &LimitRef) {
        let mut book = self.book.lock().unwrap();
        book.keys.retain(|(l, _), _| l != limit);
        book.terms.insert(limit.clone(), Instant::now());
    }

    fn hand_back(&self, limit: &LimitRef) {
        let mut book = self.book.lock().unwrap();
        // Dropping the waiters' senders ends them with `Closed`.
        book.keys.retain(|(l, _), _| l != limit);
        book.terms.remove(limit);
    }

    fn acquire(&self, req: GrantRequest) -> BoxFuture<'static, Result<Grant, Refusal>> {
        let conf = self.confs[&req.request.limit.name];
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = self.book.lock().unwrap();
            let book = &mut *guard;
            book.arrivals += 1;
            let arrival = book.arrivals;
            let term = book.terms.get(&req.request.limit).copied().unwrap_or(now);
            let key = book
                .keys
                .entry((req.request.limit.clone(), req.request.key.clone()))
                .or_insert_with(|| KeyState {
                    // Conservative at takeover: only what refilled since the term began.
                    tokens: (conf.rate * (now - term).as_secs_f64()).min(conf.burst),
                    at: now,
                    holders: HashSet::new(),
                    line: BTreeMap::new(),
                });
            key.line.insert(
                (Reverse(req.request.priority), arrival),
                Waiter {
                    units: req.request.units as f64,
                    holder: req.holder,
                    deadline: req.request.wait.map(|w| now + w),
                    tx,
                },
            );
            pump(key, conf, now);
        }
        Box::pin(async move { rx.await.unwrap_or(Err(Refusal::Closed)) })
    }

    fn release(&self, limit: &LimitRef, key: &str, holder: &HolderId) {
        let conf = self.confs[&limit.name];
        let mut book = self.book.lock().unwrap();
        if let Some(state) = book.keys.get_mut(&(limit.clone(), key.to_string())) {
            state.holders.remove(holder);
            pump(state, conf, Instant::now());
        }
    }

    fn adopt(&self, limit: &LimitRef, key: &str, holder: &HolderId) {
        let conf = self.confs[&limit.name];
        let now = Instant::now();
        let mut book = self.book.lock().unwrap();
        let state = book
            .keys
            .entry((limit.clone(), key.to_string()))
            .or_insert_with(|| KeyState {
                tokens: 0.0,
                at: now,
                holders: HashSet::new(),
                line: BTreeMap::new(),
            });
        state.holders.insert(holder.clone());
        pump(state, conf, now);
    }
}

/// One instance: its NATS connection, its limiter and its cluster limits.
struct Instance {
    limits: Arc<ClusterLimits>,
    limiter: Arc<TestLimiter>,
    _client: async_nats::Client,
}

async fn instance(url: &str, confs: &[(&str, Conf)]) -> Instance {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("connect to nats-server");
    let limiter = TestLimiter::new(confs);
    let settings = ClusterSettings {
        lease_secs: LEASE_SECS,
        ..ClusterSettings::default()
    };
    let limits = ClusterLimits::connect(client.clone(), &settings, limiter.clone())
        .await
        .expect("cluster limits");
    Instance {
        limits: Arc::new(limits),
        limiter,
        _client: client,
    }
}

fn ask(limit: &str, priority: i64, wait: Option<Duration>) -> ClusterRequest {
    ClusterRequest {
        limit: LimitRef::shared(limit),
        key: String::new(),
        units: 1,
        priority,
        lane: "default".into(),
        wait,
    }
}

const RATE20: Conf = Conf {
    rate: 20.0,
    burst: 20.0,
    concurrency: None,
};

/// Polls `f` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs `tasks` acquiring loops on `instance` until `stop`, recording grant times from `t0`.
fn load(
    set: &mut JoinSet<()>,
    instance: &Instance,
    tasks: usize,
    t0: Instant,
    grants: &Arc<Mutex<Vec<Duration>>>,
    stop: &Arc<AtomicBool>,
) {
    for _ in 0..tasks {
        let limits = instance.limits.clone();
        let grants = grants.clone();
        let stop = stop.clone();
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if limits
                    .acquire(ask("rate", 10, Some(Duration::from_millis(500))))
                    .await
                    .is_ok()
                {
                    grants.lock().unwrap().push(t0.elapsed());
                }
            }
        });
    }
}

/// Every prefix of the sorted grant times stays within `burst + rate × t`.
fn assert_within_rate(grants: &[Duration], rate: f64, burst: f64) {
    let mut times = grants.to_vec();
    times.sort();
    for (i, t) in times.iter().enumerate() {
        let allowed = burst + rate * t.as_secs_f64();
        assert!(
            (i + 1) as f64 <= allowed,
            "{} grants by {t:?}, more than {allowed}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_rate() {
    let nats = NatsServer::start();
    let confs = [("rate", RATE20)];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, &confs).await);
    }
    let t0 = Instant::now();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let per_instance: Vec<Arc<Mutex<Vec<Duration>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for (i, inst) in instances.iter().enumerate() {
        load(&mut set, inst, 3, t0, &per_instance[i], &stop);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    for p in &per_instance {
        grants
            .lock()
            .unwrap()
            .extend(p.lock().unwrap().iter().copied());
    }
    let all = grants.lock().unwrap().clone();
    eprintln!("{} grants in 3 s", all.len());
    assert_within_rate(&all, 20.0, 20.0);
    // A per-instance limit would grant about three times the rate.
    assert!(all.len() >= 40, "only {} grants in ~3 s at 20/s", all.len());
    for (i, p) in per_instance.iter().enumerate() {
        assert!(!p.lock().unwrap().is_empty(), "instance {i} got nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_across_instances() {
    let nats = NatsServer::start();
    let conf = Conf {
        rate: 1000.0,
        burst: 1000.0,
        concurrency: Some(3),
    };
    let confs = [("slots", conf)];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, &confs).await);
    }
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for inst in &instances {
        for _ in 0..5 {
            let limits = inst.limits.clone();
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            set.spawn(async move {
                let permit = limits.acquire(ask("slots", 10, None)).await.unwrap();
                assert!(permit.holds_slot());
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    let all_done = tokio::time::timeout(Duration::from_secs(20), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    assert!(all_done.is_ok(), "work did not finish");
    assert_eq!(done.load(Ordering::SeqCst), 15);
    let most = most.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most} held at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_orders_waiters_of_the_whole_cluster() {
    let nats = NatsServer::start();
    let conf = Conf {
        rate: 1000.0,
        burst: 1000.0,
        concurrency: Some(1),
    };
    let confs = [("one", conf)];
    let a = instance(&nats.url, &confs).await;
    let b = instance(&nats.url, &confs).await;
    let first = a.limits.acquire(ask("one", 10, None)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let queued = || a.limiter.waiters() + b.limiter.waiters();
    let mut set = JoinSet::new();
    for n in 0..3 {
        let (limits, order) = (a.limits.clone(), order.clone());
        set.spawn(async move {
            let _p = limits.acquire(ask("one", 1, None)).await.unwrap();
            order.lock().unwrap().push(format!("a{n}"));
        });
        assert!(eventually(Duration::from_secs(5), || queued() == n + 1).await);
    }
    let (limits, log) = (b.limits.clone(), order.clone());
    set.spawn(async move {
        let _p = limits.acquire(ask("one", 100, None)).await.unwrap();
        log.lock().unwrap().push("b".into());
    });
    assert!(eventually(Duration::from_secs(5), || queued() == 4).await);
    drop(first);
    while set.join_next().await.is_some() {}
    assert_eq!(*order.lock().unwrap(), ["b", "a0", "a1", "a2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_is_replaced_without_over_granting() {
    let nats = NatsServer::start();
    let confs = [("rate", RATE20)];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, &confs).await);
    }
    let t0 = Instant::now();
    let grants: Vec<Arc<Mutex<Vec<Duration>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sets: Vec<JoinSet<()>> = (0..3).map(|_| JoinSet::new()).collect();
    for (i, inst) in instances.iter().enumerate() {
        load(&mut sets[i], inst, 3, t0, &grants[i], &stop);
    }
    let limit = LimitRef::shared("rate");
    assert!(
        eventually(Duration::from_secs(5), || instances[0]
            .limits
            .status(&limit)
            .is_some())
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let owner = instances[0].limits.status(&limit).unwrap().owner;
    let dead = instances
        .iter()
        .position(|i| i.limits.instance() == owner)
        .expect("the owner is one of the instances");
    sets[dead].abort_all();
    while sets[dead].join_next().await.is_some() {}
    let killed_at = t0.elapsed();
    drop(instances.remove(dead));
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    let resumed = eventually(Duration::from_secs(LEASE_SECS + 3), || {
        survivors
            .iter()
            .any(|i| grants[*i].lock().unwrap().iter().any(|t| *t > killed_at))
    })
    .await;
    assert!(resumed, "no grant after the owner died");
    let first_after = survivors
        .iter()
        .flat_map(|i| grants[*i].lock().unwrap().clone())
        .filter(|t| *t > killed_at)
        .min()
        .unwrap();
    eprintln!(
        "grants resumed {:?} after the owner died",
        first_after - killed_at
    );
    assert!(
        first_after - killed_at <= Duration::from_secs(LEASE_SECS + 1),
        "grants resumed {:?} after the owner died",
        first_after - killed_at
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for set in &mut sets {
        while set.join_next().await.is_some() {}
    }
    let all: Vec<Duration> = grants
        .iter()
        .flat_map(|g| g.lock().unwrap().clone())
        .collect();
    assert_within_rate(&all, 20.0, 20.0);
    assert_ne!(
        instances[0].limits.status(&limit).map(|s| s.owner),
        Some(owner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_slots_come_back_within_the_lease() {
    let nats = NatsServer::start();
    let conf = Conf {
        rate: 1000.0,
        burst: 1000.0,
        concurrency: Some(3),
    };
    let confs = [("slots", conf)];
    let a = instance(&nats.url, &confs).await;
    // A uses the limit first, so it owns it.
    drop(a.limits.acquire(ask("slots", 10, None)).await.unwrap());
    let c = instance(&nats.url, &confs).await;
    let held = vec![
        c.limits.acquire(ask("slots", 10, None)).await.unwrap(),
        c.limits.acquire(ask("slots", 10, None)).await.unwrap(),
    ];
    // C stops renewing without releasing: its permits are never dropped.
    std::mem::forget(held);
    drop(c);
    let died = Instant::now();
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(
            a.limits
                .acquire(ask("slots", 10, Some(Duration::from_secs(LEASE_SECS + 2))))
                .await
                .expect("slot"),
        );
    }
    let back = died.elapsed();
    eprintln!("slots back {back:?} after the holder died");
    assert!(
        back <= Duration::from_millis(LEASE_SECS * 1000 + 300),
        "slots came back after {back:?}"
    );
    assert!(
        back >= Duration::from_millis(LEASE_SECS * 1000 / 3),
        "slots of a live-looking instance came back after only {back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_again_after_a_nats_restart() {
    let mut nats = NatsServer::restartable();
    let confs = [("rate", RATE20)];
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(instance(&nats.url, &confs).await);
    }
    for inst in &instances {
        inst.limits.acquire(ask("rate", 10, None)).await.unwrap();
    }
    nats.stop();
    nats.restart();
    let again = Instant::now();
    let back = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let tries: Vec<_> = instances
                .iter()
                .map(|i| {
                    i.limits
                        .acquire(ask("rate", 10, Some(Duration::from_secs(1))))
                })
                .collect();
            if futures::future::join_all(tries)
                .await
                .iter()
                .all(Result::is_ok)
            {
                break;
            }
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "the limit did not answer again after NATS came back"
    );
    eprintln!("answering again {:?} after restart", again.elapsed());
    let t0 = Instant::now();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for inst in &instances {
        load(&mut set, inst, 3, t0, &grants, &stop);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    let all = grants.lock().unwrap().clone();
    assert_within_rate(&all, 20.0, 20.0);
    assert!(all.len() >= 20, "only {} grants in 2 s at 20/s", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_adopts_the_slots_held_under_the_old_one() {
    let nats = NatsServer::start();
    let conf = Conf {
        rate: 1000.0,
        burst: 1000.0,
        concurrency: Some(2),
    };
    let confs = [("slots", conf)];
    let a = instance(&nats.url, &confs).await;
    // A uses the limit first, so it owns it.
    drop(a.limits.acquire(ask("slots", 10, None)).await.unwrap());
    let b = instance(&nats.url, &confs).await;
    let c = instance(&nats.url, &confs).await;
    let held = b.limits.acquire(ask("slots", 10, None)).await.unwrap();
    let limit = LimitRef::shared("slots");
    assert!(eventually(Duration::from_secs(5), || b.limits.status(&limit).is_some()).await);
    drop(a);
    let granted = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..2 {
        let (limits, granted) = (c.limits.clone(), granted.clone());
        set.spawn(async move {
            let permit = limits.acquire(ask("slots", 10, None)).await.unwrap();
            granted.fetch_add(1, Ordering::SeqCst);
            permit
        });
    }
    // The new owner knows B's slot from B's heartbeat, so of C's two only one fits.
    let settled = eventually(Duration::from_secs(LEASE_SECS + 4), || {
        c.limits
            .status(&limit)
            .is_some_and(|s| s.holders == 2 && s.waiters == 1)
            && granted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        settled,
        "status {:?}, {} granted",
        c.limits.status(&limit),
        granted.load(Ordering::SeqCst)
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || granted.load(Ordering::SeqCst)
            == 2)
        .await,
        "the second slot did not come once B released"
    );
    while set.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_owner_hands_over_at_once() {
    let nats = NatsServer::start();
    let confs = [("rate", RATE20)];
    let a = instance(&nats.url, &confs).await;
    // A uses the limit first, so it owns it.
    a.limits.acquire(ask("rate", 10, None)).await.unwrap();
    let b = instance(&nats.url, &confs).await;
    b.limits.acquire(ask("rate", 10, None)).await.unwrap();
    let limit = LimitRef::shared("rate");
    assert!(
        eventually(Duration::from_secs(5), || b
            .limits
            .status(&limit)
            .is_some_and(|s| s.owner == a.limits.instance()))
        .await
    );
    let start = Instant::now();
    a.limits.shutdown().await;
    b.limits.acquire(ask("rate", 10, None)).await.unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(LEASE_SECS),
        "B waited {took:?}, as long as for a dead owner"
    );
    assert!(
        eventually(Duration::from_secs(5), || b
            .limits
            .status(&limit)
            .is_some_and(|s| s.owner == b.limits.instance()))
        .await
    );
}
