//! Quotas in executions: costs, `charge`, token costs, restrictions, fallbacks.

use super::super::*;
use crate::bus::EmbeddedBus;
use crate::dsl::parse_automation;
use crate::quota::{QuotaSettings, Quotas, RedbStore};
use chrono::Utc;
use std::path::PathBuf;

struct Fixture {
    rt: Runtime,
    quotas: Quotas,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

const FILES: &[(&str, &str)] = &[
    (
        "premium",
        "slug: premium\nquota:\n  cost: '{% {{body.words}} / 100 %}'\n  class: premium\n  fallback:\n    - set: {name: path, value: cheap}\n    - charge: {credits: 0.5}\ndo:\n  - set: {name: path, value: full}\n  - charge: {credits: '{{body.tokens}}'}\noutput: '{{path}}'\n",
    ),
    (
        "standard",
        "slug: standard\nquota: {cost: 2}\ndo:\n  - repeat: {on: [1, 2, 3], do: []}\noutput: ran\n",
    ),
    ("essential", "slug: essential\nquota: {class: essential, cost: 1}\noutput: ran\n"),
    ("bad", "slug: bad\ndo:\n  - charge: {credits: '{{body.n}}'}\n"),
];

fn fixture(costs: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    for (slug, text) in FILES {
        std::fs::write(ws.join(format!("{slug}.yml")), text).unwrap();
    }
    let mut settings = Settings::load_from(None, &|_| None).unwrap();
    settings.limits.disabled = true;
    let mut q = QuotaSettings::default();
    q.plans.insert(
        "small".into(),
        crate::quota::settings::Plan { credits: 100.0 },
    );
    q.default_plan = Some("small".into());
    if costs {
        q.costs.automations = 0.25;
        q.costs.repeats = 0.125;
    }
    q.validate().unwrap();
    let data = tempfile::tempdir().unwrap();
    let quotas = Quotas::new(q, Arc::new(RedbStore::open(data.path()).unwrap()));
    let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new())).unwrap();
    rt.set_quotas(quotas.clone());
    rt.install(crate::workspace::load(&ws, None).unwrap());
    Fixture {
        rt,
        quotas,
        _dirs: (dir, data),
    }
}

impl Fixture {
    async fn run(&self, slug: &str, body: serde_json::Value) -> Result<Value, ExecError> {
        let mut payload = Map::new();
        payload.insert("body".into(), Value::from(body));
        let start = Start::endpoint("ws", slug).with_payload(payload);
        self.rt.run(start).await.map(|o| o.output)
    }

    async fn used(&self) -> (f64, Vec<(String, f64)>) {
        let view = self.quotas.usage("ws", None, Utc::now()).await.unwrap();
        (view.used, view.by_automation.into_iter().collect())
    }
}

#[tokio::test]
async fn costs_charges_and_token_costs_add_up_exactly() {
    let f = fixture(true);
    let out = f
        .run(
            "premium",
            serde_json::json!({"words": 250, "tokens": "1.5"}),
        )
        .await
        .unwrap();
    assert_eq!(out, Value::str("full"));
    f.run("standard", serde_json::json!({})).await.unwrap();
    f.run("essential", serde_json::json!({})).await.unwrap();
    let (used, mut by) = f.used().await;
    by.sort_by(|a, b| a.0.cmp(&b.0));
    // premium: 2.5 + 1.5 + 0.25 token; standard: 2 + 0.25 + 3 × 0.125; essential: 1 + 0.25.
    assert_eq!(used, 2.5 + 1.5 + 0.25 + 2.0 + 0.25 + 0.375 + 1.0 + 0.25);
    assert_eq!(
        by,
        vec![
            ("essential".to_owned(), 1.25),
            ("premium".to_owned(), 4.25),
            ("standard".to_owned(), 2.625)
        ]
    );
}

#[tokio::test]
async fn restricted_classes_fall_back_or_fail_and_essential_runs() {
    let f = fixture(false);
    // 100 credits: 100 % restricts premium.
    f.quotas.charge("ws", "seed", 100.0, Utc::now()).unwrap();
    let out = f
        .run("premium", serde_json::json!({"words": 100, "tokens": 1}))
        .await;
    assert_eq!(out.unwrap(), Value::str("cheap"));
    // The fallback charged its 0.5, not the cost nor the body's charge.
    assert_eq!(f.used().await.0, 100.5);
    f.run("standard", serde_json::json!({})).await.unwrap();
    // 120 %: standard is restricted and has no fallback.
    f.quotas.charge("ws", "seed", 20.0, Utc::now()).unwrap();
    let e = f.run("standard", serde_json::json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::QuotaExceeded);
    assert!(e.message.contains("band 3"), "{}", e.message);
    assert!(e.retry_after.is_some_and(|d| d.as_secs() >= 1));
    f.run("essential", serde_json::json!({})).await.unwrap();
    // The band's slow applied to the workspace's rates.
    assert_eq!(f.rt.limiters().workspace("ws").slow(), 0.5);
    f.quotas.add_credits("ws", 100.0, Utc::now()).await.unwrap();
    f.run("standard", serde_json::json!({})).await.unwrap();
    assert_eq!(f.rt.limiters().workspace("ws").slow(), 1.0);
    let metrics = f.rt.metrics().render();
    assert!(metrics.contains("sluice_quota_fallbacks_total{workspace=\"ws\",slug=\"premium\"} 1"));
    assert!(metrics.contains("sluice_quota_restricted_total{workspace=\"ws\",slug=\"standard\"} 1"));
}

#[tokio::test]
async fn a_charge_that_is_no_amount_fails_naming_the_value() {
    let f = fixture(false);
    for bad in [
        serde_json::json!("lots"),
        serde_json::json!(-1),
        serde_json::json!(null),
    ] {
        let e = f
            .run("bad", serde_json::json!({ "n": bad }))
            .await
            .unwrap_err();
        assert!(e.message.contains("charge.credits"), "{}", e.message);
        assert!(
            e.message.contains("expected a finite number from 0"),
            "{}",
            e.message
        );
    }
    assert_eq!(f.used().await.0, 0.0);
}

#[test]
fn bad_quota_sections_are_refused_at_their_place() {
    for (text, place, expected) in [
        (
            "slug: a\nquota:\n  class: vip\ndo: []\n",
            "a.yml:3:3",
            "quota.class: `vip` is not a class, expected premium, standard or essential",
        ),
        (
            "slug: a\nquota: {cost: many}\n",
            "a.yml:2:9",
            "quota.cost: `many` is not valid",
        ),
        (
            "slug: a\nquota: {cost: -2}\n",
            "a.yml:2:9",
            "quota.cost: -2 is not valid",
        ),
        (
            "slug: a\nquota: {price: 2}\n",
            "a.yml:2:9",
            "unknown field `price` in quota",
        ),
        (
            "slug: a\nquota: {fallback: x}\n",
            "a.yml:2:9",
            "quota.fallback must be a list",
        ),
        (
            "slug: a\nquota: premium\n",
            "a.yml:2:1",
            "`quota` must be a mapping",
        ),
    ] {
        let e = match parse_automation::<Instruction>(&PathBuf::from("ws/a.yml"), text) {
            Ok(_) => panic!("{text}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(place) && e.contains(expected), "{text}: {e}");
    }
}

#[test]
fn a_literal_charge_that_is_no_amount_is_reported_at_load() {
    let c = parse_automation::<Instruction>(
        &PathBuf::from("ws/a.yml"),
        "do:\n  - charge: {credits: -3}\n",
    )
    .unwrap();
    assert_eq!(c.diagnostics.len(), 1);
    assert!(c.diagnostics[0]
        .to_string()
        .contains("a.yml:2:5: charge.credits: -3"));
}
