use super::*;
use crate::value::{Map, Value};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn settings() -> QuotaSettings {
    let yaml = "plans: {starter: {credits: 100}, pro: {credits: 50000}}\ndefault_plan: starter\n";
    let s: QuotaSettings = serde_yaml::from_str(yaml).unwrap();
    s.validate().unwrap();
    s
}

fn quotas_in(dir: &std::path::Path, settings: QuotaSettings) -> Quotas {
    Quotas::new(settings, Arc::new(RedbStore::open(dir).unwrap()))
}

fn secrets(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

const NOW: &str = "2026-11-10T12:00:00Z";

#[test]
fn the_defaults_are_valid_and_have_no_quota() {
    let s = QuotaSettings::default();
    s.validate().unwrap();
    assert_eq!(s.default_policy().credits, None);
    assert_eq!(s.bands.len(), 4);
    assert_eq!(s.data_dir, std::path::PathBuf::from("./data"));
}

#[test]
fn bad_settings_are_refused_naming_the_key_value_and_choices() {
    let cases = [
        ("default_plan: gold", "quotas.default_plan: unknown plan `gold`, expected null or one of: starter"),
        ("plans: {starter: {credits: -5}}", "quotas.plans.starter.credits: -5 is not valid"),
        ("cycle: {timezone: Mars/Olympus}", "quotas.cycle.timezone: `Mars/Olympus` is not a time zone, expected an IANA name"),
        ("cycle: {day: 0}", "quotas.cycle.day: 0 is out of range, expected a whole day of the month from 1 to 31"),
        ("cycle: {day: 32}", "quotas.cycle.day: 32 is out of range"),
        ("costs: {fetchs: -1}", "quotas.costs.fetchs: -1 is not valid"),
        ("bands: [{at: 100}, {at: 80}]", "quotas.bands[1].at: 80 is not valid, expected bands by strictly increasing `at` (above 100)"),
        ("bands: [{at: 0}]", "quotas.bands[0].at: 0 is not valid, expected a percent above 0"),
        ("bands: [{at: 100, restrict: [essential]}]", "quotas.bands[0].restrict: essential is never restricted, expected premium or standard"),
        ("bands: [{at: 100, slow: 0}]", "quotas.bands[0].slow: 0 is not valid, expected a factor above 0 and at most 1"),
        ("bands: [{at: 100, slow: 1.5}]", "quotas.bands[0].slow: 1.5 is not valid"),
    ];
    for (yaml, expected) in cases {
        let mut text = String::from("plans: {starter: {credits: 10}}\n");
        if !yaml.starts_with("plans") {
            text.push_str(yaml);
        } else {
            text = yaml.to_string();
        }
        let s: QuotaSettings = serde_yaml::from_str(&text).unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with(expected), "{yaml}: {e}");
        assert!(!e.contains('\n'));
    }
}

#[test]
fn unknown_keys_and_non_numeric_costs_do_not_parse() {
    let typo = serde_yaml::from_str::<QuotaSettings>("plan: {}")
        .unwrap_err()
        .to_string();
    assert!(typo.contains("unknown field `plan`"), "{typo}");
    let text = serde_yaml::from_str::<QuotaSettings>("costs: {emits: lots}")
        .unwrap_err()
        .to_string();
    assert!(text.contains("invalid type"), "{text}");
    let class = serde_yaml::from_str::<QuotaSettings>("bands: [{at: 1, restrict: [gold]}]")
        .unwrap_err()
        .to_string();
    assert!(
        class.contains("expected one of `premium`, `standard`, `essential`"),
        "{class}"
    );
}

#[test]
fn secrets_override_plan_credits_zone_and_day() {
    let s = settings();
    let p = s.policy("ws", &Map::new()).unwrap();
    assert_eq!(
        (p.plan.as_deref(), p.credits),
        (Some("starter"), Some(100_000_000))
    );
    let p = s
        .policy(
            "ws",
            &secrets(&[
                ("sluice_quota_plan", Value::str("pro")),
                ("sluice_quota_timezone", Value::str("Europe/Paris")),
                ("sluice_quota_cycle_day", Value::str("15")),
                ("other", Value::str("ignored")),
            ]),
        )
        .unwrap();
    assert_eq!(
        (p.plan.as_deref(), p.credits),
        (Some("pro"), Some(50_000_000_000))
    );
    assert_eq!(p.cycle, CycleRule::new(15, chrono_tz::Europe::Paris));
    let p = s
        .policy(
            "ws",
            &secrets(&[("sluice_quota_credits", Value::Number(2.5))]),
        )
        .unwrap();
    assert_eq!(p.credits, Some(2_500_000));
    let p = s
        .policy("ws", &secrets(&[("sluice_quota_credits", Value::str("0"))]))
        .unwrap();
    assert_eq!(p.credits, None, "0 credits is no quota");
    let p = s
        .policy("ws", &secrets(&[("sluice_quota_plan", Value::Null)]))
        .unwrap();
    assert_eq!(
        p.plan.as_deref(),
        Some("starter"),
        "a null secret is absent"
    );
}

#[test]
fn bad_secrets_name_the_secret_but_not_the_value() {
    let s = settings();
    let cases = [
        ("sluice_quota_plan", Value::str("gold"), "workspace ws: secret sluice_quota_plan: unknown plan, expected one of: starter, pro"),
        ("sluice_quota_credits", Value::Number(-3.0), "workspace ws: secret sluice_quota_credits: expected a number of credits from 0 (no quota) to 1000000000000"),
        ("sluice_quota_credits", Value::str("many"), "workspace ws: secret sluice_quota_credits: expected"),
        ("sluice_quota_timezone", Value::str("Nowhere/City"), "workspace ws: secret sluice_quota_timezone: the value is not a time zone"),
        ("sluice_quota_cycle_day", Value::Number(32.0), "workspace ws: secret sluice_quota_cycle_day: the value is out of range"),
        ("sluice_quota_cycle_day", Value::Bool(true), "workspace ws: secret sluice_quota_cycle_day: the value is not a number"),
        ("sluice_quota_plna", Value::str("pro"), "workspace ws: secret sluice_quota_plna: unknown quota secret, expected one of: sluice_quota_plan"),
    ];
    for (key, value, expected) in cases {
        let e = s
            .policy("ws", &secrets(&[(key, value.clone())]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(expected), "{key}: {e}");
        if let Some(v) = value.as_str() {
            assert!(!e.contains(v), "{e} echoes the secret");
        }
    }
}

#[tokio::test]
async fn usage_equals_the_sum_of_charges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc(NOW);
    for _ in 0..10 {
        q.charge("ws", "a", 0.1, now).unwrap();
    }
    q.charge("ws", "b", 0.2, now).unwrap();
    q.charge("ws", "b", 0.000_000_4, now).unwrap();
    q.charge("ws", "b", 0.0, now).unwrap();
    let u = q.usage("ws", None, now).await.unwrap();
    assert_eq!(u.used, 1.2);
    assert_eq!(u.by_automation["a"], 1.0);
    assert_eq!(u.by_automation["b"], 0.2);
    assert_eq!(u.remaining, Some(98.8));
    for bad in [-1.0, f64::NAN, f64::INFINITY, 2e12] {
        let e = q.charge("ws", "a", bad, now).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("charge: {bad} is not valid, expected")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn bands_restrict_classes_slow_down_and_credits_lift_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc(NOW);
    let allowed = |d: &Decision| d.restricted.is_none();
    q.charge("ws", "a", 79.0, now).unwrap();
    let d = q.decision("ws", QuotaClass::Premium, now);
    assert_eq!((d.band, allowed(&d), d.slow), (None, true, 1.0));
    q.charge("ws", "a", 21.0, now).unwrap();
    let d = q.decision("ws", QuotaClass::Premium, now);
    let r = d.restricted.clone().unwrap();
    assert_eq!((d.band, r.band, r.at), (Some(2), 2, 100.0));
    assert_eq!(r.resets_at, utc("2026-12-01T00:00:00Z"));
    assert_eq!(r.retry_after, 20 * 86400 + 12 * 3600);
    assert!(allowed(&q.decision("ws", QuotaClass::Standard, now)));
    q.charge("ws", "a", 20.0, now).unwrap();
    let d = q.decision("ws", QuotaClass::Standard, now);
    assert_eq!((d.band, allowed(&d), d.slow), (Some(3), false, 0.5));
    let d = q.decision("ws", QuotaClass::Essential, now);
    assert!(allowed(&d), "essential is never restricted");
    assert_eq!(d.slow, 0.5, "but the workspace is slowed");
    let u = q.add_credits("ws", 100.0, now).await.unwrap();
    assert_eq!((u.percent, u.band), (Some(60.0), None));
    assert_eq!(u.credits.total, Some(200.0));
    let d = q.decision("ws", QuotaClass::Premium, now);
    assert_eq!((d.band, allowed(&d), d.slow), (None, true, 1.0));
}

#[tokio::test]
async fn retry_after_rounds_up_to_a_whole_second() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc("2026-11-30T23:59:59.500Z");
    q.charge("ws", "a", 500.0, now).unwrap();
    let r = q
        .decision("ws", QuotaClass::Standard, now)
        .restricted
        .unwrap();
    assert_eq!(r.retry_after, 1);
}

#[tokio::test]
async fn each_band_is_announced_once_per_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let mut events = q.subscribe();
    let now = utc(NOW);
    q.charge("ws", "a", 85.0, now).unwrap();
    q.flush(now).await.unwrap();
    let e = events.try_recv().unwrap();
    assert_eq!(
        (e.workspace.as_str(), e.band, e.at, e.percent),
        ("ws", 1, 80.0, 85.0)
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"band": 1, "at": 80.0, "percent": 85.0, "used": 85.0, "credits": 100.0,
            "restrict": [], "slow": 1.0, "resetsAt": "2026-12-01T00:00:00Z"})
    );
    q.charge("ws", "a", 1.0, now).unwrap();
    q.flush(now).await.unwrap();
    assert!(
        events.try_recv().is_err(),
        "no second event for the same band"
    );
    q.charge("ws", "a", 40.0, now).unwrap();
    q.flush(now).await.unwrap();
    let ats: Vec<f64> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.at)
        .collect();
    assert_eq!(ats, vec![100.0, 120.0]);
    let restrict = serde_json::to_value(&q.usage("ws", None, now).await.unwrap().restrict).unwrap();
    assert_eq!(restrict, serde_json::json!(["premium", "standard"]));
    // The next cycle announces again.
    let next = utc("2026-12-02T00:00:00Z");
    q.charge("ws", "a", 81.0, next).unwrap();
    q.flush(next).await.unwrap();
    assert_eq!(events.try_recv().unwrap().at, 80.0);
}

#[tokio::test]
async fn bands_entered_just_before_credits_are_added_are_still_announced() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let mut events = q.subscribe();
    let now = utc(NOW);
    // No flush between the charge and the credits: the band was entered all the same.
    q.charge("ws", "a", 105.0, now).unwrap();
    let view = q.add_credits("ws", 100.0, now).await.unwrap();
    assert_eq!(view.band, None);
    let ats: Vec<f64> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.at)
        .collect();
    assert_eq!(ats, vec![80.0, 100.0]);
}

#[tokio::test]
async fn a_restart_does_not_announce_a_band_again() {
    let dir = tempfile::tempdir().unwrap();
    let now = utc(NOW);
    {
        let q = quotas_in(dir.path(), settings());
        q.charge("ws", "a", 85.0, now).unwrap();
        q.flush(now).await.unwrap();
    }
    let q = quotas_in(dir.path(), settings());
    let mut events = q.subscribe();
    q.charge("ws", "a", 1.0, now).unwrap();
    q.flush(now).await.unwrap();
    assert!(events.try_recv().is_err());
    assert_eq!(q.usage("ws", None, now).await.unwrap().used, 86.0);
}

#[tokio::test]
async fn a_new_cycle_starts_from_zero_and_the_past_one_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc(NOW);
    q.charge("ws", "a", 30.0, now).unwrap();
    q.charge("ws", "b", 12.5, now).unwrap();
    // Not flushed: the roll-over keeps the old cycle's charges for the next flush.
    let next = utc("2026-12-01T00:00:00Z");
    q.charge("ws", "a", 1.0, next).unwrap();
    let u = q.usage("ws", None, next).await.unwrap();
    assert_eq!(
        (u.used, u.cycle.start.as_str()),
        (1.0, "2026-12-01T00:00:00Z")
    );
    let past = q.usage("ws", Some("2026-11-01"), next).await.unwrap();
    assert_eq!(past.used, 42.5);
    assert_eq!(past.by_automation["b"], 12.5);
    assert_eq!(
        (past.cycle.start.as_str(), past.cycle.end.as_str()),
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    );
    assert_eq!(past.percent, Some(42.5));
    let never = q.usage("ws", Some("2026-05-01"), next).await.unwrap();
    assert_eq!(
        (never.used, never.cycle.end.as_str()),
        (0.0, "2026-06-01T00:00:00Z")
    );
    let e = q
        .usage("ws", Some("2026-05-02"), next)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "cycle 2026-05-02: not a cycle of workspace ws, expected the date a cycle starts on (YYYY-MM-DD), such as 2026-12-01");
}

#[tokio::test]
async fn usage_survives_a_restart_through_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let now = utc(NOW);
    {
        let q = quotas_in(dir.path(), settings());
        q.charge("ws", "a", 7.25, now).unwrap();
        q.add_credits("ws", 10.0, now).await.unwrap();
        q.charge("ws", "b", 2.0, now).unwrap();
        // Shutdown: the flusher's last flush writes what is pending.
        q.run_flusher(Duration::from_secs(3600), async {}).await;
    }
    let q = quotas_in(dir.path(), settings());
    let u = q.usage("ws", None, now).await.unwrap();
    assert_eq!(
        (u.used, u.credits.added, u.credits.total),
        (9.25, 10.0, Some(110.0))
    );
    assert_eq!(u.by_automation["a"], 7.25);
    q.charge("ws", "a", 0.75, now).unwrap();
    q.flush(now).await.unwrap();
    assert_eq!(q.usage("ws", None, now).await.unwrap().used, 10.0);
}

#[tokio::test]
async fn a_workspace_without_quota_counts_but_is_never_restricted() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), QuotaSettings::default());
    let now = utc(NOW);
    q.charge("free", "a", 1e9, now).unwrap();
    let d = q.decision("free", QuotaClass::Premium, now);
    assert_eq!((d.band, d.restricted, d.slow), (None, None, 1.0));
    let u = q.usage("free", None, now).await.unwrap();
    assert_eq!(
        (u.used, u.percent, u.remaining, u.plan),
        (1e9, None, None, None)
    );
    let e = q
        .add_credits("free", 5.0, now)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("workspace free has no quota"), "{e}");
}

#[tokio::test]
async fn secrets_set_the_policy_and_a_bad_one_keeps_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc(NOW);
    let paris = secrets(&[
        ("sluice_quota_credits", Value::Number(10.0)),
        ("sluice_quota_timezone", Value::str("Europe/Paris")),
    ]);
    q.apply_secrets("ws", &paris, now).unwrap();
    q.charge("ws", "a", 5.0, now).unwrap();
    let bad = secrets(&[("sluice_quota_cycle_day", Value::Number(0.0))]);
    assert!(q.apply_secrets("ws", &bad, now).is_err());
    let u = q.usage("ws", None, now).await.unwrap();
    assert_eq!(
        (u.percent, u.cycle.start.as_str()),
        (Some(50.0), "2026-10-31T23:00:00Z")
    );
    // Another cycle day moves the workspace into another cycle, from zero.
    let day10 = secrets(&[("sluice_quota_cycle_day", Value::Number(10.0))]);
    q.apply_secrets("ws", &day10, now).unwrap();
    let u = q.usage("ws", None, now).await.unwrap();
    assert_eq!(
        (u.used, u.cycle.start.as_str()),
        (0.0, "2026-11-10T00:00:00Z")
    );
    assert_eq!(u.plan.as_deref(), Some("starter"));
}

#[tokio::test]
async fn list_shows_every_known_workspace_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let now = utc(NOW);
    q.charge("zeta", "a", 1.0, now).unwrap();
    q.set_policy("alpha", q.settings().default_policy(), now);
    q.remove("gone");
    let names: Vec<String> = q
        .list(now)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);
    q.remove("zeta");
    q.flush(now).await.unwrap();
    let names: Vec<String> = q
        .list(now)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["alpha"]);
    // What `zeta` had pending when removed was still written.
    assert_eq!(q.usage("zeta", None, now).await.unwrap().used, 1.0);
}

#[test]
fn costs_are_read_per_built_in_limit() {
    let s: QuotaSettings =
        serde_yaml::from_str("costs: {automations: 1, emits: 0.5, fetchs: 2, repeats: 0.01}")
            .unwrap();
    s.validate().unwrap();
    let costs = crate::limits::LimitKind::ALL.map(|k| s.costs.of(k));
    assert_eq!(costs, [1.0, 0.5, 2.0, 0.01]);
}

/// The embedded store, failing while `down` is set, counting the ledgers it is handed, and
/// standing for a store shared by instances when `shared` (two of them over one `inner`).
struct Flaky {
    inner: Arc<RedbStore>,
    down: std::sync::atomic::AtomicBool,
    shared: bool,
    applied: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    fn over(inner: Arc<RedbStore>, shared: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            down: false.into(),
            shared,
            applied: 0.into(),
        })
    }

    fn applied(&self) -> usize {
        self.applied.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn err(&self) -> Option<StoreError> {
        self.down
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| StoreError("down for the test".into()))
    }
}

impl Store for Flaky {
    fn apply<'a>(
        &'a self,
        batch: &'a [(LedgerKey, Ledger)],
    ) -> futures::future::BoxFuture<'a, Vec<Result<Ledger, StoreError>>> {
        self.applied
            .fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
        match self.err() {
            Some(e) => Box::pin(async move { vec![Err(e); batch.len()] }),
            None => self.inner.apply(batch),
        }
    }

    fn read<'a>(
        &'a self,
        key: &'a LedgerKey,
    ) -> futures::future::BoxFuture<'a, Result<Option<Ledger>, StoreError>> {
        self.inner.read(key)
    }

    fn claim_band<'a>(
        &'a self,
        key: &'a LedgerKey,
        at: f64,
    ) -> futures::future::BoxFuture<'a, Result<bool, StoreError>> {
        match self.err() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.claim_band(key, at),
        }
    }

    fn shared(&self) -> bool {
        self.shared
    }
}

#[tokio::test]
async fn a_failed_flush_keeps_every_charge_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::over(Arc::new(RedbStore::open(dir.path()).unwrap()), false);
    flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let q = Quotas::new(settings(), flaky.clone());
    let mut events = q.subscribe();
    let now = utc(NOW);
    q.charge("ws", "a", 50.0, now).unwrap();
    // The cycle ends while the store is down: the old cycle's charges wait too.
    let next = utc("2026-12-01T00:00:01Z");
    q.charge("ws", "a", 85.0, next).unwrap();
    let e = q.flush(next).await.unwrap_err();
    assert_eq!(e.to_string(), "usage store: down for the test");
    q.charge("ws", "b", 1.0, next).unwrap();
    assert_eq!(q.decision("ws", QuotaClass::Premium, next).band, Some(1));
    assert!(q.flush(next).await.is_err());
    assert!(events.try_recv().is_err(), "no claim, no event");
    // Credits added meanwhile count at once and are written later, not refused.
    let u = q.add_credits("ws", 5.0, next).await.unwrap();
    assert_eq!((u.credits.added, u.credits.total), (5.0, Some(105.0)));
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    q.flush(next).await.unwrap();
    assert_eq!(events.try_recv().unwrap().at, 80.0);
    drop((q, flaky));
    let q = quotas_in(dir.path(), settings());
    let u = q.usage("ws", None, next).await.unwrap();
    assert_eq!(
        (u.used, u.by_automation["b"], u.credits.added),
        (86.0, 1.0, 5.0)
    );
    let past = q.usage("ws", Some("2026-11-01"), next).await.unwrap();
    assert_eq!(past.used, 50.0);
}

#[test]
fn a_data_dir_in_use_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RedbStore::open(dir.path()).unwrap();
    let e = RedbStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        e.ends_with(
            "give each instance its own data_dir (SLUICE_DATA), or share usage through NATS"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn restrictions_end_when_the_cycle_resets_in_the_workspace_zone() {
    let dir = tempfile::tempdir().unwrap();
    let q = quotas_in(dir.path(), settings());
    let ny = secrets(&[("sluice_quota_timezone", Value::str("America/New_York"))]);
    let now = utc(NOW);
    q.apply_secrets("ws", &ny, now).unwrap();
    q.charge("ws", "a", 130.0, now).unwrap();
    // New York's December starts at 05:00 UTC (EST): one second before, still restricted.
    let before = utc("2026-12-01T04:59:59Z");
    let r = q
        .decision("ws", QuotaClass::Standard, before)
        .restricted
        .unwrap();
    assert_eq!(
        (r.retry_after, r.resets_at),
        (1, utc("2026-12-01T05:00:00Z"))
    );
    let reset = utc("2026-12-01T05:00:00Z");
    let d = q.decision("ws", QuotaClass::Premium, reset);
    assert_eq!((d.band, d.restricted, d.slow), (None, None, 1.0));
}

#[tokio::test]
async fn a_shared_store_is_read_back_only_for_workspaces_in_use_here() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let (a, b) = (Flaky::over(store.clone(), true), Flaky::over(store, true));
    let (qa, qb) = (
        Quotas::new(settings(), a.clone()),
        Quotas::new(settings(), b.clone()),
    );
    let now = utc(NOW);
    qb.charge("ws", "x", 10.0, now).unwrap();
    qb.flush(now).await.unwrap();
    assert_eq!(qa.usage("ws", None, now).await.unwrap().used, 10.0);
    // In use on A: each of A's flushes reads B's charges back.
    qa.decision("ws", QuotaClass::Standard, now);
    qb.charge("ws", "x", 5.0, now).unwrap();
    qb.flush(now).await.unwrap();
    let before = a.applied();
    qa.flush(now).await.unwrap();
    assert_eq!(a.applied() - before, 1);
    assert_eq!(qa.usage("ws", None, now).await.unwrap().used, 15.0);
    // A minute later, unused on A: its flushes leave it alone.
    let later = now + chrono::TimeDelta::seconds(61);
    let before = a.applied();
    qa.flush(later).await.unwrap();
    assert_eq!(a.applied(), before, "an unused workspace was read back");
    // A view reads it once, without putting it back in use.
    qb.charge("ws", "x", 5.0, later).unwrap();
    qb.flush(later).await.unwrap();
    assert_eq!(qa.usage("ws", None, later).await.unwrap().used, 20.0);
    let listed = qa.list(later).await.unwrap();
    assert_eq!(listed[0].1.used, 20.0);
    // Neither that view nor the band's `slow` (which the sync reads every second) puts it
    // back in use.
    assert_eq!(qa.slow("ws", later), 1.0);
    let before = a.applied();
    qa.flush(later).await.unwrap();
    assert_eq!(a.applied(), before);
    // Listing every workspace reads an idle one again only every LIST_REFRESH.
    let soon = later + chrono::TimeDelta::seconds(10);
    qa.list(soon).await.unwrap();
    assert_eq!(a.applied(), before, "read again 10 s after the last read");
    let after = later + chrono::TimeDelta::seconds(15);
    qa.list(after).await.unwrap();
    assert_eq!(a.applied(), before + 1);
    // Used again, it is read back at every flush.
    qa.charge("ws", "y", 1.0, later).unwrap();
    qb.charge("ws", "x", 4.0, later).unwrap();
    qb.flush(later).await.unwrap();
    qa.flush(later).await.unwrap();
    assert_eq!(qa.usage("ws", None, later).await.unwrap().used, 25.0);
    // Alone, nothing is ever read back: the store holds only this instance's charges.
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = Flaky::over(Arc::new(RedbStore::open(alone_dir.path()).unwrap()), false);
    let q = Quotas::new(settings(), alone.clone());
    q.charge("ws", "x", 1.0, now).unwrap();
    q.flush(now).await.unwrap();
    let before = alone.applied();
    q.decision("ws", QuotaClass::Standard, now);
    q.flush(now).await.unwrap();
    assert_eq!(alone.applied(), before);
}
