//! Behaviour of the limiters on simulated time: every wait is computed, none is slept.

use super::*;
use crate::config::RateSetting;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

const MS: Duration = Duration::from_millis(1);

fn setup() -> (Limiters, FakeClock) {
    setup_with(&LimitSettings::default())
}

fn setup_with(settings: &LimitSettings) -> (Limiters, FakeClock) {
    let clock = FakeClock::new();
    (Limiters::with_clock(settings, clock.clone()), clock)
}

fn secrets(pairs: &[(&str, Value)]) -> IndexMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn rate_and_burst(q: Option<Quota>) -> Option<(f64, u32)> {
    q.map(|q| {
        (
            (1.0 / q.replenish_interval().as_secs_f64() * 1000.0).round() / 1000.0,
            q.burst_size().get(),
        )
    })
}

fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn exactly_burst_plus_rate_times_seconds_start_in_ten_simulated_seconds() {
    let (limiters, clock) = setup();
    let ws = limiters.workspace("ws");
    let mut started = 0;
    loop {
        ws.acquire(LimitKind::Automations, 1).await;
        if clock.elapsed() > Duration::from_secs(10) {
            break;
        }
        started += 1;
    }
    assert!((1399..=1401).contains(&started), "{started}");
    assert_eq!(clock.slept(), clock.elapsed());
}

#[tokio::test]
async fn each_kind_throttles_only_itself() {
    let defaults = LimitSettings::default();
    for kind in LimitKind::ALL {
        let (limiters, clock) = setup();
        let ws = limiters.workspace("ws");
        let setting = defaults.get(kind);
        assert_eq!(ws.acquire(kind, setting.burst).await, Duration::ZERO);
        for other in LimitKind::ALL.into_iter().filter(|k| *k != kind) {
            assert_eq!(ws.acquire(other, 1).await, Duration::ZERO, "{other:?}");
        }
        let period = Duration::from_secs_f64(1.0 / setting.rate);
        let waited = ws.acquire(kind, 1).await;
        assert!(
            waited.abs_diff(period) <= Duration::from_nanos(1),
            "{kind:?}: {waited:?}"
        );
        assert_eq!(clock.slept(), waited);
    }
}

#[tokio::test]
async fn a_zero_rate_disables_that_limit_only() {
    let settings = LimitSettings {
        emits: RateSetting {
            rate: 0.0,
            burst: 0,
        },
        ..LimitSettings::default()
    };
    let (limiters, clock) = setup_with(&settings);
    let ws = limiters.workspace("ws");
    assert_eq!(ws.quota(LimitKind::Emits), None);
    assert_eq!(
        ws.acquire(LimitKind::Emits, 1_000_000).await,
        Duration::ZERO
    );
    assert_eq!(ws.acquire(LimitKind::Fetchs, 200).await, Duration::ZERO);
    assert!(ws.acquire(LimitKind::Fetchs, 1).await > Duration::ZERO);
    assert_eq!(clock.slept(), 20 * MS);
}

#[tokio::test]
async fn disabled_turns_every_limit_off_even_against_secrets() {
    let settings = LimitSettings {
        disabled: true,
        ..LimitSettings::default()
    };
    let (limiters, clock) = setup_with(&settings);
    let ws = limiters.workspace("ws");
    for kind in LimitKind::ALL {
        assert_eq!(ws.acquire(kind, u32::MAX).await, Duration::ZERO);
    }
    limiters
        .apply_secrets("ws", &secrets(&[("prismeai_ratelimit_emits", 1.0.into())]))
        .unwrap();
    let ws = limiters.workspace("ws");
    assert_eq!(ws.acquire(LimitKind::Emits, 1000).await, Duration::ZERO);
    assert_eq!(clock.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn a_saturated_workspace_does_not_delay_another() {
    let (limiters, clock) = setup();
    let a = limiters.workspace("a");
    let b = limiters.workspace("b");
    a.acquire(LimitKind::Automations, 400).await;
    let mut queued = pin!(a.acquire(LimitKind::Automations, 1));
    assert!(poll_once(queued.as_mut()).is_pending());
    let before = clock.elapsed();
    for _ in 0..400 {
        assert_eq!(b.acquire(LimitKind::Automations, 1).await, Duration::ZERO);
    }
    assert_eq!(clock.elapsed(), before);
    assert_eq!(queued.await, 10 * MS);
}

#[tokio::test]
async fn more_than_a_burst_is_taken_one_burst_at_a_time() {
    let (limiters, clock) = setup();
    let ws = limiters.workspace("ws");
    // 400 at once, 400 more after 4 s, the last 200 after 2 s more.
    let waited = ws.acquire(LimitKind::Automations, 1000).await;
    assert_eq!(waited, Duration::from_secs(6));
    assert_eq!(clock.slept(), waited);
    // The bucket is empty again: one more token takes one period.
    assert_eq!(ws.acquire(LimitKind::Automations, 1).await, 10 * MS);
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let settings = LimitSettings {
        emits: RateSetting {
            rate: 1.0,
            burst: 2,
        },
        ..LimitSettings::default()
    };
    let (limiters, clock) = setup_with(&settings);
    let ws = limiters.workspace("ws");
    ws.acquire(LimitKind::Emits, 2).await;
    let served = Arc::new(Mutex::new(Vec::new()));
    let waiter = |name: &'static str, n: u32| {
        let (ws, served, clock) = (ws.clone(), Arc::clone(&served), clock.clone());
        tokio::spawn(async move {
            ws.acquire(LimitKind::Emits, n).await;
            served
                .lock()
                .unwrap()
                .push((name, clock.elapsed().as_secs()));
        })
    };
    // The second needs fewer tokens and would get in first if the line were not fair.
    let first = waiter("first", 2);
    tokio::task::yield_now().await;
    let second = waiter("second", 1);
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(*served.lock().unwrap(), [("first", 2), ("second", 3)]);
}

#[tokio::test]
async fn a_cancelled_waiter_leaves_the_line() {
    let (limiters, _clock) = setup();
    let ws = limiters.workspace("ws");
    ws.acquire(LimitKind::Emits, 100).await;
    {
        let mut queued = pin!(ws.acquire(LimitKind::Emits, 1));
        assert!(poll_once(queued.as_mut()).is_pending());
    }
    // With nobody left in line, a refilled token is taken on the fast path again.
    let bucket = ws.0.buckets[LimitKind::Emits.index()].as_deref().unwrap();
    assert_eq!(bucket.queued(), 0);
    assert_eq!(ws.acquire(LimitKind::Emits, 1).await, Duration::ZERO);
}

#[tokio::test]
async fn secrets_override_limits_of_their_workspace_only() {
    let (limiters, _clock) = setup();
    let other = limiters.workspace("other");
    limiters
        .apply_secrets(
            "ws",
            &secrets(&[
                ("prismeai_ratelimit_emits", 5.0.into()),
                ("prismeai_ratelimit_emits_burst", "2".into()),
                ("prismeai_ratelimit_fetchs", " 0.5 ".into()),
                ("unrelated", "x".into()),
            ]),
        )
        .unwrap();
    let ws = limiters.workspace("ws");
    assert_eq!(rate_and_burst(ws.quota(LimitKind::Emits)), Some((5.0, 2)));
    assert_eq!(
        rate_and_burst(ws.quota(LimitKind::Fetchs)),
        Some((0.5, 200))
    );
    assert_eq!(
        rate_and_burst(ws.quota(LimitKind::Automations)),
        Some((100.0, 400))
    );
    assert_eq!(ws.acquire(LimitKind::Emits, 2).await, Duration::ZERO);
    assert_eq!(ws.acquire(LimitKind::Emits, 1).await, 200 * MS);
    for kind in LimitKind::ALL {
        assert_eq!(other.quota(kind), limiters.workspace("other").quota(kind));
        assert_eq!(other.quota(kind), limiters.workspace("fresh").quota(kind));
    }
}

#[tokio::test]
async fn secrets_can_disable_a_workspace_and_removing_them_restores_defaults() {
    let (limiters, _clock) = setup();
    let disable = |v: Value| secrets(&[("prismeai_ratelimit_disabled", v)]);
    limiters.apply_secrets("ws", &disable(true.into())).unwrap();
    let ws = limiters.workspace("ws");
    for kind in LimitKind::ALL {
        assert_eq!(ws.quota(kind), None);
        assert_eq!(ws.acquire(kind, 1_000_000).await, Duration::ZERO);
    }
    limiters
        .apply_secrets("ws", &disable("false".into()))
        .unwrap();
    assert!(limiters.workspace("ws").quota(LimitKind::Emits).is_some());
    limiters
        .apply_secrets("ws", &secrets(&[("prismeai_ratelimit_emits", 0.0.into())]))
        .unwrap();
    assert_eq!(limiters.workspace("ws").quota(LimitKind::Emits), None);
    limiters.apply_secrets("ws", &IndexMap::new()).unwrap();
    let ws = limiters.workspace("ws");
    for kind in LimitKind::ALL {
        assert_eq!(ws.quota(kind), limiters.workspace("fresh").quota(kind));
    }
}

#[test]
fn bad_secrets_are_refused_and_the_previous_limits_kept() {
    let (limiters, _clock) = setup();
    let good = secrets(&[("prismeai_ratelimit_emits", 5.0.into())]);
    limiters.apply_secrets("ws", &good).unwrap();
    let cases: [(&str, Value); 7] = [
        ("prismeai_ratelimit_emits", (-1.0).into()),
        ("prismeai_ratelimit_emits", "abc".into()),
        ("prismeai_ratelimit_emits_burst", 2.5.into()),
        ("prismeai_ratelimit_emits_burst", 0.0.into()),
        ("prismeai_ratelimit_disabled", "sometimes".into()),
        ("prismeai_ratelimit_emits", Value::Bool(true)),
        ("prismeai_ratelimit_emitz", 5.0.into()),
    ];
    for (key, value) in cases {
        let bad = secrets(&[
            ("api_key", "s3cr3t".into()),
            ("prismeai_ratelimit_fetchs", 1.0.into()),
            (key, value.clone()),
        ]);
        let errors = limiters.apply_secrets("ws", &bad).unwrap_err();
        assert_eq!(errors.len(), 1, "{key}: {errors:?}");
        let message = errors[0].to_string();
        assert!(
            message.starts_with(&format!("workspace ws: secret {key}: ")),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
        let ws = limiters.workspace("ws");
        assert_eq!(rate_and_burst(ws.quota(LimitKind::Emits)), Some((5.0, 100)));
        assert_eq!(
            rate_and_burst(ws.quota(LimitKind::Fetchs)),
            Some((50.0, 200))
        );
    }
    let both = secrets(&[
        ("prismeai_ratelimit_emits", "-2".into()),
        ("prismeai_ratelimit_repeats_burst", "x".into()),
    ]);
    assert_eq!(limiters.apply_secrets("ws", &both).unwrap_err().len(), 2);
    let (fresh, _) = setup();
    assert_eq!(
        limiters.workspace("other").quota(LimitKind::Emits),
        fresh.workspace("other").quota(LimitKind::Emits)
    );
}

#[tokio::test]
async fn a_changed_quota_gets_a_full_bucket_and_the_others_keep_their_state() {
    let (limiters, _clock) = setup();
    let ws = limiters.workspace("ws");
    ws.acquire(LimitKind::Automations, 400).await;
    ws.acquire(LimitKind::Emits, 100).await;
    limiters
        .apply_secrets(
            "ws",
            &secrets(&[("prismeai_ratelimit_emits_burst", 50.0.into())]),
        )
        .unwrap();
    let ws = limiters.workspace("ws");
    assert_eq!(ws.acquire(LimitKind::Emits, 50).await, Duration::ZERO);
    assert_eq!(ws.acquire(LimitKind::Automations, 1).await, 10 * MS);
}

#[tokio::test]
async fn idle_workspaces_are_forgotten_once_their_buckets_are_full() {
    let (limiters, clock) = setup();
    limiters.workspace("idle");
    limiters
        .workspace("busy")
        .acquire(LimitKind::Emits, 100)
        .await;
    let held = limiters.workspace("held");
    limiters
        .apply_secrets(
            "custom",
            &secrets(&[("prismeai_ratelimit_emits", 1.0.into())]),
        )
        .unwrap();
    assert_eq!(limiters.len(), 4);
    limiters.retain_recent();
    assert_eq!(limiters.len(), 3);
    // 100 emits refill in 100 / 30 s.
    clock.advance(Duration::from_millis(3333));
    limiters.retain_recent();
    assert_eq!(limiters.len(), 3);
    clock.advance(MS);
    limiters.retain_recent();
    assert_eq!(limiters.len(), 2);
    drop(held);
    limiters.retain_recent();
    assert_eq!(limiters.len(), 1);
    assert!(!limiters.is_empty());
    assert_eq!(
        rate_and_burst(limiters.workspace("custom").quota(LimitKind::Emits)),
        Some((1.0, 100))
    );
}

#[tokio::test]
async fn the_real_clock_waits_at_least_until_the_tokens_are_due() {
    let settings = LimitSettings {
        emits: RateSetting {
            rate: 100.0,
            burst: 1,
        },
        ..LimitSettings::default()
    };
    let ws = Limiters::new(&settings).workspace("ws");
    assert_eq!(ws.acquire(LimitKind::Emits, 1).await, Duration::ZERO);
    // GCRA cannot grant early, so this lower bound holds however slow the machine is.
    assert!(ws.acquire(LimitKind::Emits, 2).await >= 19 * MS);
}

#[tokio::test]
async fn throttled_so_far_counts_waits_over_and_in_progress_and_nothing_uncontended() {
    let (limiters, clock) = setup();
    let ws = limiters.workspace("ws");
    // The burst is free: nothing is recorded.
    ws.acquire(LimitKind::Emits, 100).await;
    assert_eq!(limiters.throttled_so_far(LimitKind::Emits), Duration::ZERO);
    // Two more at 30/s wait a period each.
    let waited = ws.acquire(LimitKind::Emits, 1).await + ws.acquire(LimitKind::Emits, 1).await;
    assert!(waited > Duration::ZERO);
    assert_eq!(limiters.throttled_so_far(LimitKind::Emits), waited);
    assert_eq!(
        limiters.throttled_so_far(LimitKind::Automations),
        Duration::ZERO
    );
    // A wait still in progress counts from when it began.
    ws.acquire(LimitKind::Automations, 400).await;
    let began = clock.elapsed();
    let mut pending = pin!(ws.acquire(LimitKind::Automations, 1));
    // The first poll sleeps on the fake clock (moving it) and then waits its turn.
    assert!(poll_once(pending.as_mut()).is_pending());
    clock.advance(5 * MS);
    let so_far = limiters.throttled_so_far(LimitKind::Automations);
    assert_eq!(so_far, clock.elapsed() - began);
    assert!(so_far > 5 * MS, "{so_far:?}");
}

#[test]
fn slow_scales_every_rate_and_one_restores_them() {
    let settings = LimitSettings::default();
    let limiters = Limiters::new(&settings);
    let rate = |l: &Limiters, kind| {
        let q = l.workspace("ws").quota(kind).unwrap();
        1.0 / q.replenish_interval().as_secs_f64()
    };
    limiters.set_slow("ws", 0.5);
    assert_eq!(limiters.workspace("ws").slow(), 0.5);
    assert!((rate(&limiters, LimitKind::Emits) - settings.emits.rate * 0.5).abs() < 1e-6);
    assert_eq!(
        limiters
            .workspace("ws")
            .quota(LimitKind::Emits)
            .unwrap()
            .burst_size()
            .get(),
        settings.emits.burst
    );
    // Secrets applied while slowed stay slowed.
    let mut secrets = IndexMap::new();
    secrets.insert("prismeai_ratelimit_fetchs".to_owned(), Value::Number(10.0));
    limiters.apply_secrets("ws", &secrets).unwrap();
    assert!((rate(&limiters, LimitKind::Fetchs) - 5.0).abs() < 1e-6);
    limiters.set_slow("ws", 1.0);
    assert!((rate(&limiters, LimitKind::Fetchs) - 10.0).abs() < 1e-6);
    assert!((rate(&limiters, LimitKind::Emits) - settings.emits.rate).abs() < 1e-6);
}

#[test]
fn recent_waits_are_kept_per_workspace_and_kind() {
    let (limiters, clock) = setup();
    limiters.record_wait("a", LimitKind::Emits, Duration::from_millis(1500));
    assert_eq!(
        limiters.recent_waits("a", LimitKind::Emits),
        Duration::from_millis(1500)
    );
    assert_eq!(limiters.recent_waits("b", LimitKind::Emits), Duration::ZERO);
    clock.advance(RECENT_WAITS + Duration::from_secs(30));
    assert_eq!(limiters.recent_waits("a", LimitKind::Emits), Duration::ZERO);
}
