//! Unit tests of the pure parts: names on NATS, messages, settings and the holder table.

use super::holders::Holders;
use super::wire::{self, Reply, ToOwner};
use super::*;

fn holder(instance: &str, request: u64) -> HolderId {
    HolderId {
        instance: instance.into(),
        request,
    }
}

#[test]
fn limit_tokens_are_subject_safe_and_distinct() {
    let plain = LimitRef::workspace("acme", "crm-api");
    assert_eq!(plain.token(), "ws-acme.crm-api");
    assert_eq!(wire::subject(&plain), "sluice.limits.ws-acme.crm-api");
    let odd = LimitRef::workspace("a.b c", "x");
    assert_eq!(odd.token(), "ws-=612e622063.x");
    assert_ne!(
        LimitRef::workspace("shared", "x").token(),
        LimitRef::shared("x").token()
    );
    assert_eq!(LimitRef::shared("openai").to_string(), "shared/openai");
}

#[test]
fn messages_round_trip() {
    let message = ToOwner::Acquire {
        instance: "i1".into(),
        request: 7,
        ask: ClusterRequest {
            limit: LimitRef::shared("llm"),
            key: "k".into(),
            units: 3.0,
            priority: 100,
            lane: "interactive".into(),
            wait: Some(Duration::from_millis(250)),
            params: ClusterParams {
                rate: Some(ClusterRate {
                    rate: 20.0,
                    per: Duration::from_secs(1),
                    burst: 5.0,
                }),
                concurrency: Some(3),
                lanes: vec![("interactive".into(), 3)],
            },
        },
        wait_ms: Some(120),
    };
    let bytes = wire::encode(&message);
    assert_eq!(wire::decode::<ToOwner>(&bytes, "test").unwrap(), message);
    let err = wire::decode::<Reply>(b"{\"t\":\"nope\"}", "cluster limit answer").unwrap_err();
    assert!(err.to_string().contains("cluster limit answer"), "{err}");
}

#[test]
fn settings_are_checked() {
    assert!(ClusterSettings::default().validate().is_ok());
    let short = ClusterSettings {
        lease_secs: 1,
        ..ClusterSettings::default()
    };
    let err = short.validate().unwrap_err().to_string();
    assert!(
        err.contains("limits.lease_secs is 1") && err.contains("2 to 3600"),
        "{err}"
    );
    let bucket = ClusterSettings {
        cluster_bucket: "a.b".into(),
        ..ClusterSettings::default()
    };
    assert!(bucket
        .validate()
        .unwrap_err()
        .to_string()
        .contains("\"a.b\""));
    // SPEC section 9: the default lease.
    assert_eq!(ClusterSettings::default().lease_secs, 5);
}

#[test]
fn silent_instances_lose_their_slots_after_a_lease() {
    let lease = Duration::from_secs(5);
    let mut holders = Holders::default();
    holders.granted(&holder("a", 1), "k", Duration::from_secs(0));
    holders.granted(&holder("b", 2), "k", Duration::from_secs(0));
    let listed = [(holder("a", 1), "k".to_string())];
    holders.heartbeat("a", &listed, Duration::from_secs(4), Duration::from_secs(1));
    assert!(holders.expire(Duration::from_secs(4), lease).is_empty());
    assert_eq!(
        holders.expire(Duration::from_secs(5), lease),
        vec![(holder("b", 2), "k".to_string())]
    );
    assert_eq!(holders.held(), 1);
    assert_eq!(
        holders.expire(Duration::from_secs(9), lease),
        vec![(holder("a", 1), "k".to_string())]
    );
}

#[test]
fn a_grant_does_not_keep_a_dead_instance_alive() {
    let lease = Duration::from_secs(5);
    let mut holders = Holders::default();
    holders.heartbeat("a", &[], Duration::from_secs(0), Duration::from_secs(1));
    holders.granted(&holder("a", 1), "k", Duration::from_secs(4));
    assert_eq!(holders.expire(Duration::from_secs(5), lease).len(), 1);
}

#[test]
fn heartbeats_adopt_unknown_slots_and_free_unlisted_old_ones() {
    let grace = Duration::from_secs(1);
    let mut holders = Holders::default();
    holders.granted(&holder("a", 1), "k", Duration::from_secs(0));
    holders.granted(&holder("a", 2), "k", Duration::from_millis(2500));
    // Slot 3 came from a previous owner; slot 1 was released but the release was lost;
    // slot 2 is younger than the heartbeat's grace; another instance's id is ignored.
    let listed = [
        (holder("a", 3), "j".to_string()),
        (holder("b", 9), "k".to_string()),
    ];
    let changes = holders.heartbeat("a", &listed, Duration::from_secs(3), grace);
    assert_eq!(changes.adopt, vec![(holder("a", 3), "j".to_string())]);
    assert_eq!(changes.free, vec![(holder("a", 1), "k".to_string())]);
    assert_eq!(holders.held(), 2);
    assert_eq!(holders.released(&holder("a", 3)), Some("j".to_string()));
    assert_eq!(holders.released(&holder("a", 3)), None);
}
