//! Behaviour of named limits on simulated time: every wait is computed, none is slept.
//!
//! Async tests drive the engine on a `FakeClock` (only a line's driver sleeps, so simulated
//! time moves exactly by the waits); the line's order is tested on the state machine
//! itself, where time is a plain number.

use super::machine::{Event, KeyState};
use super::*;
use crate::limits::clock::FakeClock;
use crate::value::Value;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

const SEC: Duration = Duration::from_secs(1);

fn yaml(text: &str) -> Value {
    match crate::dsl::parse_yaml(Path::new("workspace.yml"), text, true) {
        Ok(v) => v,
        Err(d) => panic!("test YAML does not parse: {}", d.message),
    }
}

pub(super) fn specs(text: &str) -> Vec<LimitSpec> {
    match spec::parse_limits(&yaml(text), &["limits"]) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    }
}

pub(super) fn setup(text: &str) -> (NamedLimits, FakeClock) {
    let clock = FakeClock::new();
    let limits = NamedLimits::workspace("ws", None, TimeSource::fake(clock.clone()));
    limits.update(specs(text));
    (limits, clock)
}

fn parse_use(text: &str) -> Use {
    match Use::parse_entry(&yaml(text), &["limits".into(), "0".into()]) {
        Ok(u) => u,
        Err(e) => panic!("{e:?}"),
    }
}

pub(super) fn ask(limit: &str) -> Ask {
    Ask::new(limit, "")
}

fn units(limit: &str, n: f64) -> Ask {
    Ask {
        units: n,
        ..ask(limit)
    }
}

pub(super) fn waiting(limit: &str, ms: u64) -> Ask {
    Ask {
        wait: Some(Duration::from_millis(ms)),
        ..ask(limit)
    }
}

async fn wait_of(limits: &NamedLimits, a: &Ask) -> Duration {
    match limits.acquire_one(a).await {
        Ok(got) => got.total_wait(),
        Err(e) => panic!("{e}"),
    }
}

fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn near(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_micros(1)
}

#[tokio::test]
async fn ten_a_minute_admits_ten_at_once_then_one_every_six_seconds_exactly() {
    let (limits, clock) = setup("api: {rate: 10, per: minute}");
    for _ in 0..10 {
        assert_eq!(wait_of(&limits, &ask("api")).await, Duration::ZERO);
    }
    for i in 1..=5u32 {
        assert_eq!(wait_of(&limits, &ask("api")).await, 6 * SEC);
        assert_eq!(clock.elapsed(), 6 * SEC * i);
    }
    assert_eq!(clock.slept(), clock.elapsed());
}

#[tokio::test]
async fn periods_scale_from_second_to_year() {
    for (per, secs) in [
        ("second", 1),
        ("hour", 3600),
        ("day", 86_400),
        ("week", 604_800),
        ("month", 2_592_000),
        ("year", 31_536_000),
    ] {
        let (limits, _) = setup(&format!("l: {{rate: 2, per: {per}}}"));
        wait_of(&limits, &units("l", 2.0)).await;
        let waited = wait_of(&limits, &ask("l")).await;
        assert_eq!(waited, Duration::from_secs(secs) / 2, "{per}");
    }
    let (limits, _) = setup("l: {rate: 2}");
    wait_of(&limits, &units("l", 2.0)).await;
    assert_eq!(
        wait_of(&limits, &ask("l")).await,
        30 * SEC,
        "default minute"
    );
}

#[tokio::test]
async fn units_count_against_the_rate() {
    let (limits, _) = setup("l: {rate: 6, per: second}");
    assert_eq!(wait_of(&limits, &units("l", 3.0)).await, Duration::ZERO);
    assert_eq!(wait_of(&limits, &units("l", 3.0)).await, Duration::ZERO);
    assert_eq!(wait_of(&limits, &units("l", 3.0)).await, SEC / 2);
}

#[tokio::test]
async fn units_above_the_burst_are_granted_in_pieces_and_leave_it_empty() {
    let (limits, clock) = setup("l: {rate: 10, per: second, burst: 10}");
    assert_eq!(wait_of(&limits, &units("l", 25.0)).await, SEC * 3 / 2);
    assert!(near(wait_of(&limits, &ask("l")).await, SEC / 10));
    assert!(near(clock.elapsed(), SEC * 16 / 10));
}

#[tokio::test]
async fn dynamic_keys_are_independent() {
    let (limits, _) = setup("per-user: {key: '{{user}}', rate: 1, per: minute}");
    let u = parse_use("{limit: per-user, wait: 0}");
    let alice = Value::from(serde_json::json!({"user": "alice"}));
    let bob = Value::from(serde_json::json!({"user": "bob"}));
    let a = limits.render(&u, &alice).unwrap();
    assert_eq!(a.key, "alice");
    assert!(limits.acquire_one(&a).await.is_ok());
    let again = limits.acquire_one(&a).await.unwrap_err();
    assert!(again.to_string().contains("key `alice`"), "{again}");
    let b = limits.render(&u, &bob).unwrap();
    assert!(limits.acquire_one(&b).await.is_ok());
    assert_eq!(limits.snapshot()[0].state.keys, 2);
}

#[tokio::test]
async fn the_same_rendered_inline_key_is_one_limit_across_automations() {
    let (limits, _) = setup("");
    let sync = parse_use("{key: 'tenant:{{t}}', rate: 1, per: hour, wait: 0}");
    let report = parse_use("{key: 'tenant:{{t}}', rate: 1, per: hour, units: 1, wait: 0}");
    let vars = Value::from(serde_json::json!({"t": "acme"}));
    let first = limits.render(&sync, &vars).unwrap();
    assert_eq!(&*first.limit, "tenant:acme");
    assert!(limits.acquire_one(&first).await.is_ok());
    let second = limits.render(&report, &vars).unwrap();
    let refused = limits.acquire_one(&second).await.unwrap_err();
    assert_eq!(refused.limit(), "tenant:acme");
    let other = Value::from(serde_json::json!({"t": "initech"}));
    assert!(limits
        .acquire_one(&limits.render(&report, &other).unwrap())
        .await
        .is_ok());
}

#[tokio::test]
async fn stacked_limits_wait_for_the_slowest_not_the_sum() {
    let (limits, clock) = setup("fast: {rate: 1, per: second}\nslow: {rate: 1, per: minute}");
    limits.acquire(&[ask("fast"), ask("slow")]).await.unwrap();
    let got = limits.acquire(&[ask("slow"), ask("fast")]).await.unwrap();
    assert_eq!(got.total_wait(), 60 * SEC);
    assert_eq!(clock.elapsed(), 60 * SEC);
    let names: Vec<&str> = got.waited.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["fast", "slow"], "taken in canonical order");
}

#[tokio::test(start_paused = true)]
async fn overlapping_limits_in_opposite_orders_do_not_deadlock() {
    let (limits, _) = setup("x: {concurrency: 1}\ny: {concurrency: 1}");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let limits = limits.clone();
        let order = if i % 2 == 0 { ["x", "y"] } else { ["y", "x"] };
        tasks.push(tokio::spawn(async move {
            let got = limits.acquire(&[ask(order[0]), ask(order[1])]).await;
            // Hold both across a few scheduling points.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            drop(got);
        }));
    }
    let all = futures::future::join_all(tasks);
    // A deadlock would leave the runtime idle: paused time then jumps to the timeout.
    let done = tokio::time::timeout(Duration::from_secs(60), all).await;
    assert!(done.is_ok(), "deadlocked");
}

#[tokio::test]
async fn a_use_listed_twice_is_taken_once_with_its_units_added() {
    let (limits, _) = setup("one: {concurrency: 1, rate: 10, per: second}");
    let got = limits
        .acquire(&[units("one", 4.0), units("one", 6.0)])
        .await
        .unwrap();
    assert_eq!(got.permits.len(), 1);
    let refused = limits.acquire_one(&waiting("one", 0)).await.unwrap_err();
    assert_eq!(refused.code(), "LimitExceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_its_slots() {
    let (limits, _) = setup("reports: {concurrency: 2}");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (limits, inside, most) = (limits.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let got = limits.acquire_one(&ask("reports")).await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(got);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
    let view = &limits.snapshot()[0];
    assert_eq!(view.state.held, 0);
    assert_eq!(
        view.state.keys, 0,
        "an unheld concurrency key is forgotten at once"
    );
}

#[tokio::test]
async fn a_slot_is_released_when_its_holder_panics() {
    let (limits, _) = setup("one: {concurrency: 1}");
    let got = limits.acquire_one(&ask("one")).await.unwrap();
    let task = tokio::spawn(async move {
        let _held = got;
        panic!("the work failed");
    });
    assert!(task.await.is_err());
    assert!(limits.acquire_one(&waiting("one", 0)).await.is_ok());
}

#[tokio::test]
async fn a_dropped_waiter_leaves_the_line_and_the_next_is_served() {
    let (limits, _) = setup("one: {concurrency: 1}");
    let held = limits.acquire_one(&ask("one")).await.unwrap();
    let (first, second) = (ask("one"), ask("one"));
    let mut a = Box::pin(limits.acquire_one(&first));
    let mut b = Box::pin(limits.acquire_one(&second));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    assert_eq!(limits.snapshot()[0].state.waiters.get("default"), Some(&2));
    drop(a);
    drop(held);
    match poll_once(b.as_mut()) {
        Poll::Ready(Ok(got)) => assert_eq!(got.permits.len(), 1),
        other => panic!("the next waiter was not served: {other:?}"),
    }
}

#[tokio::test]
async fn a_waiter_granted_but_dropped_unseen_gives_its_slot_back() {
    let (limits, _) = setup("one: {concurrency: 1}");
    let held = limits.acquire_one(&ask("one")).await.unwrap();
    let next = ask("one");
    let mut w = Box::pin(limits.acquire_one(&next));
    assert!(poll_once(w.as_mut()).is_pending());
    drop(held);
    drop(w);
    assert!(limits.acquire_one(&waiting("one", 0)).await.is_ok());
}

#[tokio::test]
async fn wait_zero_refuses_at_once_with_when_capacity_returns() {
    let (limits, clock) = setup("crm: {rate: 10, per: minute}");
    for _ in 0..10 {
        wait_of(&limits, &ask("crm")).await;
    }
    let e = limits.acquire_one(&waiting("crm", 0)).await.unwrap_err();
    assert_eq!(
        e,
        AcquireError::Refused {
            limit: Arc::from("crm"),
            key: String::new(),
            wait: Duration::ZERO,
            retry_after: Some(6 * SEC),
        }
    );
    assert!(e.to_string().contains("capacity returns in 6.000 s"), "{e}");
    // A wait that cannot be met is refused now, not when it runs out.
    let e = limits.acquire_one(&waiting("crm", 2000)).await.unwrap_err();
    assert!(matches!(e, AcquireError::Refused { retry_after: Some(d), .. } if d == 6 * SEC));
    assert_eq!(clock.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn a_bounded_wait_on_busy_slots_is_refused_when_it_runs_out() {
    let (limits, clock) = setup("one: {concurrency: 1}");
    let _held = limits.acquire_one(&ask("one")).await.unwrap();
    let e = limits.acquire_one(&waiting("one", 2000)).await.unwrap_err();
    assert!(
        matches!(
            e,
            AcquireError::Refused {
                retry_after: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(clock.elapsed(), 2 * SEC);
    assert_eq!(limits.snapshot()[0].state.refusals, 1);
}

#[tokio::test]
async fn shadow_never_waits_and_reports_the_would_be_wait() {
    let (limits, clock) = setup("pilot: {rate: 1, per: second, shadow: true}");
    let mut would = Vec::new();
    for _ in 0..3 {
        let got = limits.acquire_one(&waiting("pilot", 0)).await.unwrap();
        assert!(got.waited.is_empty());
        would.push(got.shadow.first().map(|(_, d)| *d).unwrap_or_default());
    }
    assert_eq!(would, [Duration::ZERO, SEC, 2 * SEC]);
    assert_eq!(clock.elapsed(), Duration::ZERO);
    assert_eq!(limits.snapshot()[0].state.shadow_waits, 2);
}

#[tokio::test]
async fn a_live_change_keeps_a_drained_bucket_drained_and_held_slots_held() {
    let (limits, _) = setup("crm: {rate: 10, per: minute, burst: 10, concurrency: 2}");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(limits.acquire_one(&units("crm", 5.0)).await.unwrap());
    }
    limits.update(specs(
        "crm: {rate: 20, per: minute, burst: 10, concurrency: 3}",
    ));
    let view = &limits.snapshot()[0];
    assert_eq!(view.state.held, 2);
    assert_eq!(view.state.available, Some(0.0));
    assert!(limits.acquire_one(&waiting("crm", 0)).await.is_err());
    // The new rate refills one unit every 3 s.
    assert_eq!(wait_of(&limits, &ask("crm")).await, 3 * SEC);
    drop(held);
    limits.update(specs("other: {concurrency: 1}"));
    let gone = limits.acquire_one(&ask("crm")).await.unwrap_err();
    assert_eq!(gone, AcquireError::Unknown(Arc::from("crm")));
}

#[tokio::test]
async fn idle_keys_are_evicted_and_busy_ones_kept() {
    let (limits, clock) = setup("per-user: {key: '{{u}}', rate: 1, per: second, concurrency: 5}");
    let u = parse_use("per-user");
    let mut held = None;
    for i in 0..100 {
        let a = limits
            .render(&u, &Value::from(serde_json::json!({ "u": i })))
            .unwrap();
        let got = limits.acquire_one(&a).await.unwrap();
        if i == 0 {
            held = Some(got);
        }
    }
    assert_eq!(limits.sweep(), 0, "none has refilled yet");
    clock.advance(SEC);
    assert_eq!(limits.sweep(), 99, "all but the held key");
    assert_eq!(limits.snapshot()[0].state.keys, 1);
    drop(held);
    assert_eq!(limits.snapshot()[0].state.keys, 0);
}

#[test]
fn a_flooded_lane_delays_another_only_by_its_weight_share() {
    for (weights, b_within) in [(vec![], 201), (vec![("b", 3)], 140)] {
        let p = Params {
            rate: None,
            concurrency: Some(1),
            lanes: weights.iter().map(|(n, w)| (Arc::from(*n), *w)).collect(),
            shadow: false,
        };
        let mut k: KeyState<char> = KeyState::new();
        assert_eq!(k.try_take(&p, 0, 1.0), Some(true));
        let mut id = 0;
        for (lane, n) in [("a", 10_000), ("b", 100)] {
            for _ in 0..n {
                id += 1;
                let tag = lane.chars().next().unwrap_or('?');
                k.enqueue(&p, RequestId(id), lane, 1.0, 10, None, 0, tag);
            }
        }
        let mut order = Vec::new();
        while order.len() < 10_100 {
            k.release();
            k.poll(&p, 0, &mut |e| {
                if let Event::Granted { payload, .. } = e {
                    order.push(payload)
                }
            });
        }
        let last_b = order.iter().rposition(|c| *c == 'b').unwrap();
        assert!(last_b < b_within, "{weights:?}: last b at {last_b}");
    }
}

#[test]
fn priority_orders_waiters_within_a_lane_then_arrival() {
    let p = Params {
        rate: None,
        concurrency: Some(1),
        lanes: Arc::new([]),
        shadow: false,
    };
    let mut k: KeyState<&str> = KeyState::new();
    k.try_take(&p, 0, 1.0);
    for (i, (prio, tag)) in [(1, "low"), (50, "high-1"), (10, "mid"), (50, "high-2")]
        .into_iter()
        .enumerate()
    {
        k.enqueue(&p, RequestId(i as u64), "default", 1.0, prio, None, 0, tag);
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        k.release();
        k.poll(&p, 0, &mut |e| {
            if let Event::Granted { payload, .. } = e {
                order.push(payload)
            }
        });
    }
    assert_eq!(order, ["high-1", "high-2", "mid", "low"]);
}

#[test]
fn only_the_head_drives_the_line_and_wakes_when_the_bucket_serves_it() {
    let p = Params {
        rate: Some(machine::RateParams::new(1.0, SEC, 1.0)),
        concurrency: None,
        lanes: Arc::new([]),
        shadow: false,
    };
    let mut k: KeyState<u8> = KeyState::new();
    assert_eq!(k.try_take(&p, 0, 1.0), Some(false));
    let mut events = Vec::new();
    for i in 0..3u8 {
        k.enqueue(&p, RequestId(u64::from(i)), "default", 1.0, 10, None, 0, i);
        k.poll(&p, 0, &mut |e| events.push(format!("{e:?}")));
    }
    assert_eq!(
        events,
        ["Drive { id: RequestId(0), payload: 0, at: Some(1000000000) }"]
    );
    events.clear();
    k.poll(&p, 1_000_000_000, &mut |e| events.push(format!("{e:?}")));
    assert_eq!(
        events,
        [
            "Granted { id: RequestId(0), payload: 0, slot: false, waited: 1000000000 }",
            "Drive { id: RequestId(1), payload: 1, at: Some(2000000000) }"
        ]
    );
}

#[tokio::test]
async fn a_shared_limit_puts_each_workspace_in_its_own_lane() {
    let clock = FakeClock::new();
    let time = TimeSource::fake(clock);
    let shared = NamedLimits::shared(time.clone());
    shared.update(specs("openai: {concurrency: 1}"));
    let acme = NamedLimits::workspace("acme", Some(&shared), time.clone());
    let initech = NamedLimits::workspace("initech", Some(&shared), time);
    let held = acme.acquire_one(&ask("openai")).await.unwrap();
    let (a, b) = (ask("openai"), ask("openai"));
    let mut wa = Box::pin(acme.acquire_one(&a));
    let mut wb = Box::pin(initech.acquire_one(&b));
    assert!(poll_once(wa.as_mut()).is_pending());
    assert!(poll_once(wb.as_mut()).is_pending());
    let waiters = &shared.snapshot()[0].state.waiters;
    assert_eq!(waiters.get("acme"), Some(&1));
    assert_eq!(waiters.get("initech"), Some(&1));
    drop(held);
    assert!(poll_once(wa.as_mut()).is_ready());
}

#[tokio::test]
async fn a_templated_rate_is_rendered_at_each_acquisition() {
    let (limits, _) = setup("tiered: {key: '{{user}}', rate: '{{limit}}', per: second}");
    let u = parse_use("{limit: tiered, wait: 0}");
    let gold = Value::from(serde_json::json!({"user": "g", "limit": 3}));
    let a = limits.render(&u, &gold).unwrap();
    assert_eq!(a.rate, Some(3.0));
    for _ in 0..3 {
        assert!(limits.acquire_one(&a).await.is_ok());
    }
    assert!(limits.acquire_one(&a).await.is_err());
}

#[test]
fn snapshot_shows_settings_and_live_state() {
    let (limits, _) = setup("llm: {rate: 100, per: minute, lanes: {interactive: 3, batch: 1}}");
    let view = &limits.snapshot()[0];
    let spec = view.spec.as_ref().unwrap();
    assert_eq!(
        (spec.per, spec.burst, spec.concurrency),
        (Per::Minute, None, None)
    );
    assert_eq!(
        &*spec.lanes,
        [(Arc::from("interactive"), 3), (Arc::from("batch"), 1)]
    );
    assert_eq!(view.state.available, Some(100.0));
    assert_eq!(limits.snapshot()[1].name.as_ref(), "inline");
}

fn errors(text: &str) -> Vec<String> {
    match spec::parse_limits(&yaml(text), &["limits"]) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn bad_declarations_name_the_field_the_value_and_the_choices() {
    let cases = [
        (
            "crm-api: {rate: 10, per: fortnight}",
            "`limits.crm-api.per`: `fortnight` is not a period; expected one of: second, minute, hour, day, week, month, year",
        ),
        ("l: {rate: -1}", "`limits.l.rate`: `-1` is not a positive number of units"),
        ("l: {rate: abc}", "`limits.l.rate`: `abc` is not a positive number of units"),
        ("l: {rate: 1e400}", "`limits.l.rate`: `1e400` is not a positive number of units"),
        ("l: {rate: 0}", "`limits.l.rate`: `0` is not a positive number of units"),
        ("l: {rate: 1, colour: red}", "`limits.l.colour`: unknown field `colour`; expected one of: rate, per, burst, concurrency, key, lanes, shadow, scope"),
        ("emits: {rate: 1}", "`limits.emits`: `emits` is a built-in limit; choose a name other than automations, emits, fetchs, repeats"),
        ("l: {per: second}", "`limits.l`: a limit needs `rate`, `concurrency` or both"),
        ("l: {concurrency: 1.5}", "`limits.l.concurrency`: `1.5` is not a whole number from 1 to 1000000"),
        ("l: {rate: 1, lanes: {a: 0}}", "`limits.l.lanes.a`: `0` is not a whole number from 1 to 1000"),
        ("l: {rate: 1, scope: galaxy}", "`limits.l.scope`: `galaxy` is not a scope; expected one of: instance, cluster"),
        ("l: {rate: 1, shadow: maybe}", "`limits.l.shadow`: expected true or false, found `maybe`"),
        ("'a b': {rate: 1}", "`limits.a b`: `a b` is not a valid limit name; expected 1 to 64 of A-Z, a-z, 0-9, `_` and `-`"),
        ("l: {rate: 2000000000, per: second}", "`limits.l.rate`: 2000000000 per second is faster than 1000000000 per second"),
        ("l: {concurrency: 1, burst: 3}", "`limits.l.burst`: `burst` needs a `rate`"),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(text), [expected], "{text}");
    }
    let e =
        spec::parse_limits(&yaml("crm-api: {rate: 10, per: fortnight}"), &["limits"]).unwrap_err();
    assert_eq!(e[0].path, ["limits", "crm-api", "per"]);
}

#[test]
fn every_bad_field_is_reported_at_once() {
    assert_eq!(errors("a: {rate: -1}\nb: {per: day, rate: x}").len(), 2);
}

#[test]
fn a_workspace_cannot_redeclare_a_shared_limit() {
    let shared = specs("openai: {rate: 1}");
    let ws = specs("openai: {rate: 2}\nmine: {rate: 3}");
    let e = spec::check_not_shared(&ws, &shared, &["limits"]);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, ["limits", "openai"]);
}

#[test]
fn bad_uses_are_refused_with_their_path() {
    let at = |text: &str| match Use::parse_entry(&yaml(text), &["limits".into(), "1".into()]) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(
        at("{limit: crm, colour: red}"),
        ["`limits.1.colour`: unknown field `colour`; expected one of: limit, units, priority, lane, wait"]
    );
    assert_eq!(
        at("{limit: crm, rate: 3}"),
        ["`limits.1.rate`: `rate` cannot be given with `limit`: it belongs to the declaration of `crm`"]
    );
    assert_eq!(
        at("{rate: 3}"),
        ["`limits.1`: expected `limit` (a declared limit's name) or an inline limit with a `key`"]
    );
    assert_eq!(
        at("{limit: crm, units: -1}"),
        ["`limits.1.units`: `-1` is not a positive number of units"]
    );
    assert_eq!(
        at("{limit: crm, wait: -5}"),
        ["`limits.1.wait`: `-5` is not a whole number from 0 to 1000000000000"]
    );
    let acquire = yaml("{limit: llm, units: 3, do: [], else: []}");
    assert!(Use::parse_acquire(acquire.as_object().unwrap(), &[]).is_ok());
    let u = parse_use("nope");
    let e = u.check_known(&|n| n == "crm", &["crm"]).unwrap();
    assert_eq!(
        e.to_string(),
        "`limits.0`: unknown limit `nope`; expected one of: crm"
    );
}

#[test]
fn templates_that_render_badly_fail_with_a_clear_message() {
    let (limits, _) = setup("per-user: {key: '{{user}}', rate: 5}");
    let vars = Value::from(serde_json::json!({"n": -1, "s": "abc", "big": "1e400", "user": "u"}));
    let render = |text: &str| {
        limits
            .render(&parse_use(text), &vars)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        render("{limit: per-user, units: '{{n}}'}"),
        "limit `per-user`: `units` rendered `-1`; expected a positive number"
    );
    assert_eq!(
        render("{limit: per-user, units: '{{s}}'}"),
        "limit `per-user`: `units` rendered `abc`; expected a positive number"
    );
    assert_eq!(
        render("{limit: per-user, units: '{{big}}'}"),
        "limit `per-user`: `units` rendered `1e400`; expected a positive number"
    );
    let no_user = Value::from(serde_json::json!({}));
    assert_eq!(
        limits
            .render(&parse_use("per-user"), &no_user)
            .unwrap_err()
            .to_string(),
        "limit `per-user`: `key` rendered undefined; expected a non-empty string or a number"
    );
}

#[tokio::test]
async fn the_driver_refuses_waiters_behind_it_when_their_wait_runs_out() {
    let (limits, clock) = setup("one: {concurrency: 1}");
    let _held = limits.acquire_one(&ask("one")).await.unwrap();
    let (patient, hurried) = (ask("one"), waiting("one", 2000));
    let mut head = Box::pin(limits.acquire_one(&patient));
    let mut behind = Box::pin(limits.acquire_one(&hurried));
    assert!(poll_once(head.as_mut()).is_pending());
    assert!(poll_once(behind.as_mut()).is_pending());
    assert_eq!(clock.elapsed(), Duration::ZERO);
    // The head sleeps until the earliest deadline of its line, then serves the line.
    assert!(poll_once(head.as_mut()).is_pending());
    assert!(poll_once(head.as_mut()).is_pending());
    assert_eq!(clock.elapsed(), 2 * SEC);
    match poll_once(behind.as_mut()) {
        Poll::Ready(Err(AcquireError::Refused { retry_after, .. })) => {
            assert_eq!(retry_after, None)
        }
        other => panic!("not refused at its deadline: {other:?}"),
    }
    assert_eq!(limits.snapshot()[0].state.waiters.get("default"), Some(&1));
}

proptest::proptest! {
    /// Whatever the requests and their timing, the units granted by time t never exceed
    /// burst + rate·t (the GCRA bound), and a request that fits the burst of a full bucket
    /// is never refused.
    #[test]
    fn granted_units_never_exceed_burst_plus_rate_times_elapsed(
        rate in 1u32..1000,
        burst in 1u32..100,
        steps in proptest::collection::vec((0u64..50_000_000, 1u32..10), 1..200),
    ) {
        let r = machine::RateParams::new(f64::from(rate), SEC, f64::from(burst));
        let p = Params { rate: Some(r), concurrency: None, lanes: Arc::new([]), shadow: false };
        let mut k: KeyState<()> = KeyState::new();
        let (mut now, mut granted) = (0u64, 0u64);
        for (gap, units) in steps {
            now += gap;
            let full = k.is_idle(now);
            match k.try_take(&p, now, f64::from(units)) {
                Some(_) => granted += u64::from(units),
                None => proptest::prop_assert!(!(full && units <= burst)),
            }
            let bound = f64::from(burst) + f64::from(rate) * now as f64 / 1e9;
            proptest::prop_assert!(granted as f64 <= bound + 1e-6, "{granted} > {bound}");
        }
    }
}
