//! Cluster limits over a real nats-server (SPEC section 9): several instances in one
//! process, each with its own NATS connection, its own `ClusterLimits` and its own
//! `NamedLimits` registries running the real section-7 engine, share `scope: cluster`
//! limits through the owner elected in the key-value bucket.
//!
//! Each instance declares the limits in its shared registry and attaches its cluster handle
//! there only: its workspace registries reach it through the shared one, as the runtime's do.

mod common;

use common::NatsServer;
use serde_json::json;
use sluice::limits::cluster::{ClusterLimits, ClusterSettings, LimitRef};
use sluice::limits::named::spec::parse_limits;
use sluice::limits::named::{AcquireError, Acquired, Ask, ClusterEngine, NamedLimits};
use sluice::limits::TimeSource;
use sluice::value::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

const LEASE_SECS: u64 = 2;

/// One instance: its NATS connection, its registries and its cluster limits.
struct Instance {
    shared: NamedLimits,
    ws: NamedLimits,
    cluster: Arc<ClusterLimits>,
    engine: Arc<ClusterEngine>,
    _client: async_nats::Client,
}

fn specs(limits: serde_json::Value) -> Vec<sluice::limits::named::LimitSpec> {
    match parse_limits(&Value::from(limits), &["limits"]) {
        Ok(s) => s,
        Err(e) => panic!("test limits do not parse: {e:?}"),
    }
}

/// An instance declaring `shared` under `shared_limits:` and `own` in workspace `ws`.
async fn instance(url: &str, shared: serde_json::Value, own: serde_json::Value) -> Instance {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("connect to nats-server");
    let time = TimeSource::real();
    let engine = Arc::new(ClusterEngine::new(time.clone()));
    let settings = ClusterSettings {
        lease_secs: LEASE_SECS,
        ..ClusterSettings::default()
    };
    let cluster = Arc::new(
        ClusterLimits::connect(client.clone(), &settings, engine.clone())
            .await
            .expect("cluster limits"),
    );
    let shared_limits = NamedLimits::shared(time.clone());
    shared_limits.update(specs(shared));
    shared_limits.attach_cluster(cluster.clone());
    let ws = NamedLimits::workspace("ws", Some(&shared_limits), time);
    ws.update(specs(own));
    Instance {
        shared: shared_limits,
        ws,
        cluster,
        engine,
        _client: client,
    }
}

impl Instance {
    /// A workspace registry on this instance's shared limits (its id is its default lane).
    fn workspace(&self, id: &str) -> NamedLimits {
        NamedLimits::workspace(id, Some(&self.shared), TimeSource::real())
    }

    /// Waiters in this instance's line of `limit`, if it owns it.
    fn owned_waiters(&self, limit: &LimitRef) -> usize {
        self.engine
            .snapshot(limit)
            .map_or(0, |s| s.waiters.values().sum())
    }
}

fn ask(limit: &str, priority: i64, lane: Option<&str>, wait: Option<Duration>) -> Ask {
    let mut ask = Ask::new(limit, "");
    ask.priority = priority;
    ask.lane = lane.map(str::to_owned);
    ask.wait = wait;
    ask
}

async fn take(limits: &NamedLimits, ask: &Ask) -> Result<Acquired, AcquireError> {
    limits.acquire_one(ask).await
}

fn rate20() -> serde_json::Value {
    json!({"rate": {"rate": 20, "per": "second", "burst": 20, "scope": "cluster"}})
}

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

/// Runs `tasks` acquiring loops of `limit` on `limits` until `stop`, recording grant times
/// from `t0`.
fn load(
    set: &mut JoinSet<()>,
    limits: &NamedLimits,
    limit: &str,
    tasks: usize,
    t0: Instant,
    grants: &Arc<Mutex<Vec<Duration>>>,
    stop: &Arc<AtomicBool>,
) {
    for _ in 0..tasks {
        let (limits, grants, stop) = (limits.clone(), grants.clone(), stop.clone());
        let ask = ask(limit, 10, None, Some(Duration::from_millis(500)));
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if take(&limits, &ask).await.is_ok() {
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
async fn three_instances_take_200_units_of_20_a_second_in_9_seconds() {
    let nats = NatsServer::start();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, rate20(), json!({})).await);
    }
    let t0 = Instant::now();
    let grants: Vec<Arc<Mutex<Vec<Duration>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let mut set = JoinSet::new();
    for n in 0..200 {
        let i = n % 3;
        let (limits, grants) = (instances[i].ws.clone(), grants[i].clone());
        set.spawn(async move {
            let got = take(&limits, &ask("rate", 10, None, None)).await;
            assert!(got.is_ok(), "{got:?}");
            grants.lock().unwrap().push(t0.elapsed());
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("acquiring task");
    }
    let all: Vec<Duration> = grants
        .iter()
        .flat_map(|g| g.lock().unwrap().clone())
        .collect();
    let took = all.iter().max().copied().unwrap_or_default();
    eprintln!("200 units of 20/s burst 20 over three instances: {took:?}");
    assert_eq!(all.len(), 200);
    assert_within_rate(&all, 20.0, 20.0);
    // 20 at once, then 180 at 20/s: 9 s; three local limits would take about a third.
    assert!(
        (8.1..=9.9).contains(&took.as_secs_f64()),
        "took {took:?}, not 9 s ± 10 %"
    );
    for (i, g) in grants.iter().enumerate() {
        assert_eq!(g.lock().unwrap().len(), if i < 2 { 67 } else { 66 });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_across_instances_and_the_snapshot_shows_it() {
    let nats = NatsServer::start();
    // A workspace's own limit: its handle comes from the shared registry.
    let own = json!({"slots": {"concurrency": 3, "scope": "cluster"}});
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, json!({}), own.clone()).await);
    }
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for inst in &instances {
        for _ in 0..5 {
            let limits = inst.ws.clone();
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            set.spawn(async move {
                let got = take(&limits, &ask("slots", 10, None, None)).await.unwrap();
                assert_eq!(got.permits.len(), 1);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                drop(got);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    // Mid-run, every instance's view names the owner and counts the cluster's holders.
    let seen = eventually(Duration::from_secs(5), || {
        instances.iter().all(|i| {
            let view = i.ws.snapshot().into_iter().find(|v| &*v.name == "slots");
            view.and_then(|v| v.state.cluster)
                .is_some_and(|c| !c.owner.is_empty() && c.holders <= 3 && c.holders + c.waiters > 0)
        })
    })
    .await;
    assert!(seen, "the snapshot does not show the cluster's view");
    let all_done = tokio::time::timeout(Duration::from_secs(20), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    assert!(all_done.is_ok(), "work did not finish");
    assert_eq!(done.load(Ordering::SeqCst), 15);
    assert_eq!(most.load(Ordering::SeqCst), 3, "slots held at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_and_priority_order_the_waiters_of_the_whole_cluster() {
    let nats = NatsServer::start();
    let shared =
        json!({"one": {"concurrency": 1, "lanes": {"interactive": 3}, "scope": "cluster"}});
    let a = instance(&nats.url, shared.clone(), json!({})).await;
    let b = instance(&nats.url, shared, json!({})).await;
    let limit = LimitRef::shared("one");
    // A uses the limit first, so it owns it, and holds its one slot.
    let first = take(&a.ws, &ask("one", 10, None, None)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut set = JoinSet::new();
    let queue = [
        (&a, "a0", "batch", 10),
        (&a, "a1", "batch", 10),
        (&a, "a2", "batch", 10),
        (&a, "a3", "batch", 10),
        (&b, "b0", "interactive", 10),
        (&b, "b1", "interactive", 100),
        (&b, "b2", "interactive", 10),
    ];
    for (n, (inst, name, lane, priority)) in queue.into_iter().enumerate() {
        let (limits, order) = (inst.ws.clone(), order.clone());
        let ask = ask("one", priority, Some(lane), None);
        set.spawn(async move {
            let got = take(&limits, &ask).await.unwrap();
            // The wait in the owner's line is reported, as a local one is.
            assert!(
                got.waited
                    .iter()
                    .any(|(l, d)| &**l == "one" && !d.is_zero()),
                "{name}: {:?}",
                got.waited
            );
            order.lock().unwrap().push(name);
        });
        assert!(eventually(Duration::from_secs(5), || a.owned_waiters(&limit) == n + 1).await);
    }
    drop(first);
    while let Some(done) = set.join_next().await {
        done.expect("waiting task");
    }
    // Batch opened the line and goes first; then interactive (weight 3) takes its share,
    // B's priority-100 waiter first, before A's batch waiters queued earlier.
    assert_eq!(
        *order.lock().unwrap(),
        ["a0", "b1", "b0", "b2", "a1", "a2", "a3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workspaces_get_equal_shares_of_a_shared_limit_under_flood() {
    let nats = NatsServer::start();
    let shared = json!({"fair": {"rate": 100, "per": "second", "burst": 10, "scope": "cluster"}});
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, shared.clone(), json!({})).await);
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (flood, calm) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut set = JoinSet::new();
    for inst in &instances {
        // The default lane of a shared limit is the workspace id, across the cluster.
        load(
            &mut set,
            &inst.workspace("ws1"),
            "fair",
            8,
            t0,
            &flood,
            &stop,
        );
        load(
            &mut set,
            &inst.workspace("ws2"),
            "fair",
            2,
            t0,
            &calm,
            &stop,
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    // Counted once both lanes are queued, and before the loops stop.
    let count = |g: &Mutex<Vec<Duration>>| {
        let window = Duration::from_secs(1)..Duration::from_millis(3900);
        g.lock()
            .unwrap()
            .iter()
            .filter(|t| window.contains(*t))
            .count() as f64
    };
    let (f, c) = (count(&flood), count(&calm));
    eprintln!("lane ws1 (24 tasks): {f} grants, lane ws2 (6 tasks): {c} grants");
    let mean = (f + c) / 2.0;
    assert!(mean >= 100.0, "only {mean} grants per lane");
    assert!(
        (f - c).abs() <= 0.1 * mean,
        "ws1 {f} and ws2 {c} are not equal ± 10 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_is_replaced_without_over_granting() {
    let nats = NatsServer::start();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&nats.url, rate20(), json!({})).await);
    }
    let t0 = Instant::now();
    let grants: Vec<Arc<Mutex<Vec<Duration>>>> =
        (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sets: Vec<JoinSet<()>> = (0..3).map(|_| JoinSet::new()).collect();
    for (i, inst) in instances.iter().enumerate() {
        load(&mut sets[i], &inst.ws, "rate", 3, t0, &grants[i], &stop);
    }
    let limit = LimitRef::shared("rate");
    assert!(
        eventually(Duration::from_secs(5), || instances[0]
            .cluster
            .status(&limit)
            .is_some())
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let owner = instances[0].cluster.status(&limit).unwrap().owner;
    let dead = instances
        .iter()
        .position(|i| i.cluster.instance() == owner)
        .expect("the owner is one of the instances");
    sets[dead].abort_all();
    while sets[dead].join_next().await.is_some() {}
    let killed_at = t0.elapsed();
    // Its tasks stop at once, as in a killed process: no hand-over.
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
    // SPEC section 9: at most one burst beyond the limit while the owner changes.
    assert_within_rate(&all, 20.0, 40.0);
    eprintln!("{} grants in {:?}", all.len(), t0.elapsed());
    assert_ne!(
        instances[0].cluster.status(&limit).map(|s| s.owner),
        Some(owner)
    );
}

fn slots(n: u32) -> serde_json::Value {
    json!({"slots": {"concurrency": n, "scope": "cluster"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_slots_come_back_within_the_lease() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, json!({}), slots(3)).await;
    // A uses the limit first, so it owns it.
    drop(take(&a.ws, &ask("slots", 10, None, None)).await.unwrap());
    let c = instance(&nats.url, json!({}), slots(3)).await;
    let held = vec![
        take(&c.ws, &ask("slots", 10, None, None)).await.unwrap(),
        take(&c.ws, &ask("slots", 10, None, None)).await.unwrap(),
    ];
    // C stops renewing without releasing: its permits are never dropped.
    std::mem::forget(held);
    drop(c);
    let died = Instant::now();
    let mut mine = Vec::new();
    let wait = Some(Duration::from_secs(LEASE_SECS + 2));
    for _ in 0..3 {
        mine.push(
            take(&a.ws, &ask("slots", 10, None, wait))
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
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(instance(&nats.url, rate20(), json!({})).await);
    }
    for inst in &instances {
        take(&inst.ws, &ask("rate", 10, None, None)).await.unwrap();
    }
    nats.stop();
    nats.restart();
    let again = Instant::now();
    let one_second = ask("rate", 10, None, Some(Duration::from_secs(1)));
    let back = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let tries: Vec<_> = instances.iter().map(|i| take(&i.ws, &one_second)).collect();
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
        load(&mut set, &inst.ws, "rate", 3, t0, &grants, &stop);
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
    let a = instance(&nats.url, slots(2), json!({})).await;
    // A uses the limit first, so it owns it.
    drop(take(&a.ws, &ask("slots", 10, None, None)).await.unwrap());
    let b = instance(&nats.url, slots(2), json!({})).await;
    let c = instance(&nats.url, slots(2), json!({})).await;
    let held = take(&b.ws, &ask("slots", 10, None, None)).await.unwrap();
    let limit = LimitRef::shared("slots");
    assert!(
        eventually(Duration::from_secs(5), || b
            .cluster
            .status(&limit)
            .is_some())
        .await
    );
    drop(a);
    let granted = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..2 {
        let (limits, granted) = (c.ws.clone(), granted.clone());
        set.spawn(async move {
            let got = take(&limits, &ask("slots", 10, None, None)).await.unwrap();
            granted.fetch_add(1, Ordering::SeqCst);
            got
        });
    }
    // The new owner knows B's slot from B's heartbeat, so of C's two only one fits.
    let settled = eventually(Duration::from_secs(LEASE_SECS + 4), || {
        c.cluster
            .status(&limit)
            .is_some_and(|s| s.holders == 2 && s.waiters == 1)
            && granted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        settled,
        "status {:?}, {} granted",
        c.cluster.status(&limit),
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
    let a = instance(&nats.url, rate20(), json!({})).await;
    // A uses the limit first, so it owns it.
    take(&a.ws, &ask("rate", 10, None, None)).await.unwrap();
    let b = instance(&nats.url, rate20(), json!({})).await;
    take(&b.ws, &ask("rate", 10, None, None)).await.unwrap();
    let limit = LimitRef::shared("rate");
    assert!(
        eventually(Duration::from_secs(5), || b
            .cluster
            .status(&limit)
            .is_some_and(|s| s.owner == a.cluster.instance()))
        .await
    );
    let start = Instant::now();
    a.cluster.shutdown().await;
    take(&b.ws, &ask("rate", 10, None, None)).await.unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(LEASE_SECS),
        "B waited {took:?}, as long as for a dead owner"
    );
    assert!(
        eventually(Duration::from_secs(5), || b
            .cluster
            .status(&limit)
            .is_some_and(|s| s.owner == b.cluster.instance()))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_limit_retires_its_agents_and_its_owner_hands_it_back() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, rate20(), json!({})).await;
    let b = instance(&nats.url, rate20(), json!({})).await;
    // A uses the limit first, so it owns it; then only B uses it.
    take(&a.ws, &ask("rate", 10, None, None)).await.unwrap();
    let limit = LimitRef::shared("rate");
    let idle = Duration::from_secs(LEASE_SECS * 12);
    let until = Instant::now() + idle + Duration::from_secs(LEASE_SECS);
    while Instant::now() < until {
        take(&b.ws, &ask("rate", 10, None, None)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Idle on A itself for longer than the idle time, the owner stays: B uses it through A.
    assert!(a.engine.snapshot(&limit).is_some(), "the owner retired");
    assert!(b
        .cluster
        .status(&limit)
        .is_some_and(|s| s.owner == a.cluster.instance()));
    // Once nobody uses it, both agents retire and the owner hands its state back.
    let retired = eventually(idle + Duration::from_secs(3 * LEASE_SECS), || {
        a.cluster.status(&limit).is_none()
            && b.cluster.status(&limit).is_none()
            && a.engine.snapshot(&limit).is_none()
    })
    .await;
    assert!(retired, "an unused limit kept its agents or its owner");
    // Used again, it gets a new agent and owner at once. The owner handed the lease back
    // rather than letting it lapse, so the next one starts empty, as after a takeover: a
    // long-period limit is not refilled by a quiet minute.
    let mut whole_burst = ask("rate", 10, None, Some(Duration::from_secs(5)));
    whole_burst.units = 20.0;
    let got = take(&b.ws, &whole_burst).await.unwrap();
    assert!(
        !got.total_wait().is_zero(),
        "a full burst was granted at once after the hand-back"
    );
    assert!(
        eventually(Duration::from_secs(5), || b
            .cluster
            .status(&limit)
            .is_some_and(|s| !s.owner.is_empty()))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ownership_bucket_is_created_again() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, rate20(), json!({})).await;
    take(&a.ws, &ask("rate", 10, None, None)).await.unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = ClusterSettings::default().cluster_bucket;
    js.delete_key_value(&bucket).await.unwrap();
    // The owner's renewal fails, its agent takes the lease again, and that creates the bucket.
    let deadline = Instant::now() + Duration::from_secs(3 * LEASE_SECS);
    while js.get_key_value(&bucket).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the bucket was not created again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = js.get_key_value(&bucket).await.unwrap();
    let owned = tokio::time::timeout(Duration::from_secs(3 * LEASE_SECS), async {
        loop {
            let keys = match owner.keys().await {
                Ok(keys) => futures::StreamExt::count(keys).await,
                Err(_) => 0,
            };
            if keys > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(owned.is_ok(), "nobody owns the limit in the new bucket");
    take(&a.ws, &ask("rate", 10, None, Some(Duration::from_secs(2))))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_limit_and_when_capacity_returns() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, rate20(), json!({})).await;
    let b = instance(&nats.url, rate20(), json!({})).await;
    let mut burst = ask("rate", 10, None, None);
    burst.units = 20.0;
    take(&a.ws, &burst).await.unwrap();
    let now = ask("rate", 10, None, Some(Duration::ZERO));
    match take(&b.ws, &now).await {
        Err(AcquireError::Refused {
            limit,
            retry_after: Some(d),
            ..
        }) => {
            assert_eq!(&*limit, "rate");
            assert!(d <= Duration::from_millis(60), "retry after {d:?}");
        }
        other => panic!("expected a refusal with a retry delay, got {other:?}"),
    }
    // The asking instance's metrics count the refusal its owner decided.
    let view = b.shared.snapshot().into_iter().find(|v| &*v.name == "rate");
    assert_eq!(view.map(|v| v.state.refusals), Some(1));
}

#[tokio::test]
async fn without_a_cluster_handle_a_cluster_limit_is_local() {
    let limits = NamedLimits::shared(TimeSource::real());
    limits.update(specs(rate20()));
    let ws = NamedLimits::workspace("ws", Some(&limits), TimeSource::real());
    let now = ask("rate", 10, None, Some(Duration::ZERO));
    for _ in 0..20 {
        take(&ws, &now).await.expect("within the burst");
    }
    assert!(matches!(
        take(&ws, &now).await,
        Err(AcquireError::Refused { .. })
    ));
    let view = ws.snapshot();
    assert!(view.iter().all(|v| v.state.cluster.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_attached_after_a_limit_was_prepared_sends_it_to_the_owner() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, rate20(), json!({})).await;
    let shared = NamedLimits::shared(TimeSource::real());
    shared.update(specs(rate20()));
    let ws = NamedLimits::workspace("ws", Some(&shared), TimeSource::real());
    let prepared = ws.prepare(vec![ask("rate", 10, None, None)]);
    assert!(
        ws.try_prepared(&prepared).is_some(),
        "without a handle the limit is local, taken at once"
    );
    shared.attach_cluster(a.cluster.clone());
    assert!(
        ws.try_prepared(&prepared).is_none(),
        "now the owner decides"
    );
    // The owner's bucket is what counts: drained through `a`, it refuses here although
    // this registry's own bucket still holds 19 units.
    let mut burst = ask("rate", 10, None, None);
    burst.units = 20.0;
    take(&a.ws, &burst).await.unwrap();
    let now = ask("rate", 10, None, Some(Duration::ZERO));
    assert!(matches!(
        take(&ws, &now).await,
        Err(AcquireError::Refused { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_the_owners_line() {
    let nats = NatsServer::start();
    let a = instance(&nats.url, slots(1), json!({})).await;
    let b = instance(&nats.url, slots(1), json!({})).await;
    let limit = LimitRef::shared("slots");
    // A owns the limit and holds its one slot.
    let held = take(&a.ws, &ask("slots", 10, None, None)).await.unwrap();
    let forever = ask("slots", 10, None, None);
    let gave_up = tokio::time::timeout(Duration::from_millis(300), take(&b.ws, &forever)).await;
    assert!(gave_up.is_err(), "granted while the slot was held");
    assert_eq!(a.owned_waiters(&limit), 1);
    // B's next heartbeat no longer lists it: the owner drops it rather than granting it.
    assert!(
        eventually(Duration::from_secs(LEASE_SECS + 1), || a
            .owned_waiters(&limit)
            == 0)
        .await,
        "the abandoned waiter is still in line"
    );
    drop(held);
    let now = ask("slots", 10, None, Some(Duration::from_secs(1)));
    assert!(take(&b.ws, &now).await.is_ok());
}
