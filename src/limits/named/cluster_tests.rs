//! The engine as a cluster owner's limiter, on simulated time: a takeover starts empty,
//! lanes and priority order the asks of every instance, adopted slots count, a hand-back
//! closes the line, and settings survive the trip to the owner.

use super::*;
use crate::limits::clock::FakeClock;
use crate::limits::cluster::ClusterRequest;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn engine() -> (ClusterEngine, FakeClock, LimitRef) {
    let clock = FakeClock::new();
    let engine = ClusterEngine::new(TimeSource::fake(clock.clone()));
    let limit = LimitRef::shared("llm");
    engine.take_over(&limit, false);
    (engine, clock, limit)
}

fn rate(rate: f64, burst: f64) -> ClusterParams {
    ClusterParams {
        rate: Some(ClusterRate {
            rate,
            per: SEC,
            burst,
        }),
        ..ClusterParams::default()
    }
}

fn ask(
    instance: &str,
    request: u64,
    params: &ClusterParams,
    lane: &str,
    priority: i64,
) -> GrantRequest {
    GrantRequest {
        request: ClusterRequest {
            limit: LimitRef::shared("llm"),
            key: String::new(),
            units: 1.0,
            priority,
            lane: lane.into(),
            wait: None,
            params: params.clone(),
        },
        holder: HolderId {
            instance: instance.into(),
            request,
        },
    }
}

#[tokio::test]
async fn a_takeover_starts_empty_and_refills_at_the_rate() {
    let (engine, clock, _) = engine();
    let p = rate(10.0, 10.0);
    let mut first = engine.acquire(ask("a", 1, &p, "default", 10));
    assert!(
        (&mut first).now_or_never().is_none(),
        "an owner that just took over must not grant a burst"
    );
    clock.advance(SEC);
    let mut waiting = Vec::new();
    for i in 0..10 {
        let f = engine.acquire(ask("a", 10 + i, &p, "default", 10));
        match f.now_or_never() {
            Some(r) => assert_eq!(r, Ok(Grant { slot: false })),
            None => waiting.push(i),
        }
    }
    // One second refilled ten units: the first waiter's and nine of the ten new asks'.
    assert_eq!(first.now_or_never(), Some(Ok(Grant { slot: false })));
    assert_eq!(waiting, [9]);
}

#[tokio::test]
async fn lanes_then_priority_order_the_asks_of_every_instance() {
    let (engine, clock, _) = engine();
    let mut p = rate(1.0, 1.0);
    p.lanes = vec![("interactive".into(), 3)];
    clock.advance(SEC);
    // The bucket is full (one unit): the first ask takes it.
    assert_eq!(
        engine.acquire(ask("a", 1, &p, "batch", 10)).now_or_never(),
        Some(Ok(Grant { slot: false }))
    );
    let mut order = Vec::new();
    let mut pending = Vec::new();
    for (i, (inst, lane, prio)) in [
        ("a", "batch", 10),
        ("a", "batch", 10),
        ("b", "interactive", 10),
        ("b", "interactive", 100),
        ("c", "interactive", 10),
        ("c", "interactive", 10),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 100 + i as u64;
        pending.push((
            id,
            inst,
            lane,
            prio,
            engine.acquire(ask(inst, id, &p, lane, prio)),
        ));
    }
    let mut futures: Vec<_> = pending
        .into_iter()
        .map(|(id, _, lane, prio, f)| (id, lane, prio, f))
        .collect();
    for _ in 0..6 {
        clock.advance(SEC);
        tokio::task::yield_now().await;
        let mut i = 0;
        while i < futures.len() {
            if let Some(result) = (&mut futures[i].3).now_or_never() {
                assert_eq!(result, Ok(Grant { slot: false }));
                let (id, lane, prio, _) = futures.remove(i);
                order.push((id, lane, prio));
            } else {
                i += 1;
            }
        }
    }
    assert_eq!(order.len(), 6, "{order:?}");
    // Batch opened the line and goes first; then interactive takes its weight share (3 to
    // 1), its priority-100 ask ahead of older ones, then arrival order, whatever the instance.
    let ids: Vec<u64> = order.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [100, 103, 102, 104, 105, 101], "{order:?}");
}

#[tokio::test]
async fn adopted_slots_count_and_released_ones_serve_the_line() {
    let (engine, _clock, limit) = engine();
    let p = ClusterParams {
        concurrency: Some(1),
        ..ClusterParams::default()
    };
    let old = HolderId {
        instance: "a".into(),
        request: 1,
    };
    engine.adopt(&limit, "", &old);
    engine.adopt(&limit, "", &old);
    let mut next = engine.acquire(ask("b", 2, &p, "default", 10));
    assert!(
        (&mut next).now_or_never().is_none(),
        "an adopted slot is held"
    );
    engine.release(&limit, "", &old);
    assert_eq!(next.await, Ok(Grant { slot: true }));
    let mut third = engine.acquire(ask("c", 3, &p, "default", 10));
    assert!((&mut third).now_or_never().is_none());
    engine.release(
        &limit,
        "",
        &HolderId {
            instance: "b".into(),
            request: 2,
        },
    );
    assert_eq!(third.await, Ok(Grant { slot: true }));
}

#[tokio::test]
async fn a_hand_back_closes_the_line_and_unknown_limits_are_closed() {
    let (engine, _clock, limit) = engine();
    let p = rate(1.0, 1.0);
    let waiting = engine.acquire(ask("a", 1, &p, "default", 10));
    engine.hand_back(&limit);
    assert_eq!(waiting.await, Err(Refusal::Closed));
    assert_eq!(
        engine.acquire(ask("a", 2, &p, "default", 10)).await,
        Err(Refusal::Closed)
    );
}

#[tokio::test]
async fn a_wait_too_short_is_refused_with_when_capacity_returns() {
    let (engine, _clock, _) = engine();
    let mut a = ask("a", 1, &rate(2.0, 2.0), "default", 10);
    a.request.wait = Some(Duration::ZERO);
    match engine.acquire(a).await {
        Err(Refusal::Busy {
            retry_after: Some(d),
        }) => assert_eq!(d, Duration::from_millis(500)),
        other => panic!("expected a refusal with a retry delay, got {other:?}"),
    }
}

#[test]
fn settings_survive_the_trip_and_bad_ones_are_no_rate() {
    let spec = Params {
        rate: Some(RateParams::new(20.0, SEC, 5.0)),
        concurrency: Some(3),
        lanes: Arc::new([(Arc::from("interactive"), 3)]),
        shadow: false,
    };
    let wire = wire_params(&spec);
    let back: ClusterParams = serde_json::from_slice(&serde_json::to_vec(&wire).unwrap()).unwrap();
    assert_eq!(params(&back), spec);
    assert_eq!(params(&rate(-1.0, 5.0)).rate, None);
    assert_eq!(params(&rate(f64::NAN, 5.0)).rate, None);
}

#[tokio::test]
async fn a_first_owner_starts_full() {
    let (engine, _clock, limit) = engine();
    engine.take_over(&limit, true);
    let p = rate(10.0, 10.0);
    for i in 0..10 {
        assert_eq!(
            engine
                .acquire(ask("a", i, &p, "default", 10))
                .now_or_never(),
            Some(Ok(Grant { slot: false }))
        );
    }
    let snapshot = engine.snapshot(&limit).expect("owned");
    assert_eq!(snapshot.keys, 1);
    assert!(engine.snapshot(&LimitRef::shared("other")).is_none());
}
