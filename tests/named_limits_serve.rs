//! Named limits (SPEC section 7) as users meet them: `sluice run --report`, `sluice
//! validate` and `sluice serve` (webhooks, live edits, the operator view). The engine's
//! exactness, lanes and deadlock tests live with it (src/limits/named/tests.rs).

use serde_json::Value as J;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{put, serve_with, sluice, within};

/// `sluice run SLUG --report` over workspace `demo` of `root`: exit code and report.
fn report(root: &Path, slug: &str, payload: &str) -> (i32, J) {
    let ws = root.join("automations/demo");
    let o = sluice(&[
        "run",
        slug,
        "--workspace",
        ws.to_str().unwrap(),
        "--payload",
        payload,
        "--report",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), report)
}

const LIMITS: &str = "limits:
  hourly: {rate: 1, per: hour}
  fast: {rate: 5, per: second, burst: 1}
  pilot: {rate: 1, per: hour, shadow: true}
  slot: {concurrency: 1}
  per-user: {key: '{{body.user}}', rate: 2, per: hour}
";

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "demo", "workspace.yml", LIMITS);
    dir
}

#[test]
fn wait_zero_with_else_runs_the_fallback() {
    let dir = workspace();
    put(
        dir.path(),
        "demo",
        "fallback.yml",
        "do:
  - acquire: {limit: hourly, do: [{set: {name: a, value: granted}}]}
  - acquire:
      limit: hourly
      wait: 0
      do: [{set: {name: b, value: granted}}]
      else: [{set: {name: b, value: busy}}]
output: '{{a}} {{b}}'
",
    );
    let (code, r) = report(dir.path(), "fallback", "{}");
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["output"], "granted busy");
    assert_eq!(r["error"], J::Null);
}

#[test]
fn without_else_a_refusal_fails_with_limit_exceeded_naming_the_limit() {
    let dir = workspace();
    put(
        dir.path(),
        "demo",
        "refused.yml",
        "limits: [hourly]
do:
  - acquire: {limit: hourly, wait: 0, do: []}
",
    );
    let (code, r) = report(dir.path(), "refused", "{}");
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["error"]["code"], "LimitExceeded", "{r}");
    assert_eq!(r["error"]["limit"], "hourly", "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`hourly`") && message.contains("capacity returns in"),
        "{message}"
    );
}

#[test]
fn throttled_by_shows_the_named_wait_and_shadow_the_would_be_one() {
    let dir = workspace();
    put(
        dir.path(),
        "demo",
        "waits.yml",
        "limits: [pilot, pilot]
do:
  - acquire: {limit: fast, do: []}
  - acquire: {limit: fast, do: []}
  - acquire: {limit: pilot, do: []}
",
    );
    let (code, r) = report(dir.path(), "waits", "{}");
    assert_eq!(code, 0, "{r}");
    // The second `fast` waits its 200 ms; the pilot would have waited an hour, but never does.
    let fast = r["throttledBy"]["fast"].as_f64().unwrap_or(0.0);
    assert!((150.0..1000.0).contains(&fast), "{r}");
    assert!(r["throttled"].as_f64().unwrap_or(0.0) >= fast, "{r}");
    let pilot = r["shadow"]["pilot"].as_f64().unwrap_or(0.0);
    assert!(pilot > 3_000_000.0, "{r}");
    assert!(r["duration"].as_f64().unwrap_or(f64::MAX) < 5_000.0, "{r}");
    assert!(r["throttledBy"].get("pilot").is_none(), "{r}");
}

#[test]
fn templates_that_render_bad_units_or_keys_fail_with_a_clear_message() {
    let dir = workspace();
    put(
        dir.path(),
        "demo",
        "units.yml",
        "do:
  - acquire: {limit: fast, units: '{{body.n}}', do: []}
",
    );
    for (payload, expected) in [
        (r#"{"body": {"n": "abc"}}"#, "units"),
        (r#"{"body": {"n": -1}}"#, "units"),
    ] {
        let (code, r) = report(dir.path(), "units", payload);
        assert_eq!(code, 1, "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("`fast`") && message.contains(expected),
            "{message}"
        );
    }
    put(
        dir.path(),
        "demo",
        "key.yml",
        "limits: [per-user]\ndo: []\n",
    );
    let (code, r) = report(dir.path(), "key", "{}");
    assert_eq!(code, 1, "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`per-user`") && message.contains("key"),
        "{message}"
    );
}

#[test]
fn validate_reports_limit_mistakes_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "demo",
        "workspace.yml",
        "name: demo
limits:
  crm:
    rate: 10
    per: fortnight
  bad: {rate: 0}
  odd: {rate: 1, colour: red}
",
    );
    let ws = dir.path().join("automations/demo");
    let o = sluice(&["validate", ws.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("workspace.yml:5:5:"), "{err}");
    assert!(err.contains("fortnight"), "{err}");
    assert!(
        err.contains("workspace.yml:6:9: `limits.bad.rate`"),
        "{err}"
    );
    assert!(
        err.contains("workspace.yml:7:18: `limits.odd.colour`"),
        "{err}"
    );

    put(
        dir.path(),
        "demo",
        "workspace.yml",
        "limits:\n  crm: {rate: 10, per: second}\n",
    );
    put(
        dir.path(),
        "demo",
        "a.yml",
        "slug: a
limits:
  - crm
  - nowhere
do:
  - acquire:
      limit: crm
  - acquire:
      limit: crm
      colour: red
      do: []
",
    );
    // A quota fallback is checked like the body.
    put(
        dir.path(),
        "demo",
        "b.yml",
        "slug: b
quota:
  cost: 1
  fallback:
    - acquire: {limit: elsewhere, do: []}
do: []
",
    );
    let o = sluice(&["validate", ws.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a.yml:4:5: unknown limit `nowhere`; expected one of: crm"),
        "{err}"
    );
    assert!(
        err.contains("a.yml:6:5:") && err.contains("`do` is missing"),
        "{err}"
    );
    assert!(
        err.contains("a.yml:8:5:") && err.contains("colour"),
        "{err}"
    );
    assert!(
        err.contains("b.yml:5:") && err.contains("unknown limit `elsewhere`"),
        "{err}"
    );
}

fn post(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new().post(url).send().unwrap()
}

#[test]
fn serve_refuses_with_429_and_releases_slots_however_runs_end() {
    let dir = workspace();
    let hook = |slug: &str, limits: &str, body: &str| {
        format!("slug: {slug}\nwhen: {{endpoint: true}}\nlimits: {limits}\ndo: {body}\n")
    };
    put(
        dir.path(),
        "demo",
        "once.yml",
        &hook("once", "[{limit: hourly, wait: 0}]", "[]"),
    );
    put(
        dir.path(),
        "demo",
        "fails.yml",
        &hook("fails", "[{limit: slot, wait: 0}]", "[{nobody: {}}]"),
    );
    put(
        dir.path(),
        "demo",
        "breaks.yml",
        &hook("breaks", "[{limit: slot, wait: 0}]", "[{break: {}}]"),
    );
    put(
        dir.path(),
        "demo",
        "inner.yml",
        &hook(
            "inner",
            "[]",
            "[{acquire: {limit: slot, wait: 0, do: [{nobody: {}}]}}]",
        ),
    );
    let s = serve_with(dir.path(), &[("RATE_LIMIT_DISABLED", "true")], &[]);
    let url = |slug: &str| format!("{}/v2/workspaces/demo/webhooks/{slug}", s.base);

    assert_eq!(post(&url("once")).status(), 200);
    let refused = post(&url("once"));
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
    let body: J = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "LimitExceeded");
    assert_eq!(body["error"]["limit"], "hourly");

    // A concurrency-1 slot taken with `wait: 0` grants again after each run, whatever
    // ended it: an error, a break, an error inside an `acquire`.
    for slug in [
        "fails", "fails", "breaks", "breaks", "inner", "inner", "fails",
    ] {
        let status = post(&url(slug)).status().as_u16();
        let expected = if slug == "breaks" { 200 } else { 500 };
        assert_eq!(status, expected, "{slug}");
    }
}

#[test]
fn a_cancelled_request_leaks_no_slot() {
    let dir = workspace();
    // Holds the slot for two seconds; a plain `wait` without events is a delay.
    put(
        dir.path(),
        "demo",
        "slow.yml",
        "slug: slow\nwhen: {endpoint: true}\nlimits: [slot]\ndo: [{wait: {timeout: 2}}]\n",
    );
    put(
        dir.path(),
        "demo",
        "probe.yml",
        "slug: probe\nwhen: {endpoint: true}\nlimits: [{limit: slot, wait: 0}]\ndo: []\n",
    );
    let s = serve_with(
        dir.path(),
        &[
            ("RATE_LIMIT_DISABLED", "true"),
            ("SLUICE_ADMIN_TOKEN", "t0ken"),
        ],
        &[],
    );
    let url = |slug: &str| format!("{}/v2/workspaces/demo/webhooks/{slug}", s.base);
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // One caller gives up while its run holds the slot, another while its run waits for it.
    for _ in 0..2 {
        assert!(impatient.post(url("slow")).send().is_err(), "gave up");
    }
    // The runs are the server's: the first still holds the slot.
    assert_eq!(post(&url("probe")).status(), 429);
    // Both runs end within about four seconds, and then the slot is free for good.
    let freed = within(Duration::from_secs(10), || {
        post(&url("probe")).status() == 200
    });
    assert!(freed.is_some(), "the slot never came back");
    for _ in 0..3 {
        assert_eq!(post(&url("probe")).status(), 200);
    }
    let view: J = reqwest::blocking::Client::new()
        .get(format!("{}/v2/workspaces/demo/limits", s.base))
        .bearer_auth("t0ken")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let slot = view["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "slot"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(slot["held"], 0, "{view}");
    assert_eq!(slot["waiters"], serde_json::json!({}), "{view}");
    // The second run waited in line for the first one's slot, after its caller left.
    assert_eq!(slot["waits"], 1, "{view}");
}

#[test]
fn a_live_edit_applies_within_two_seconds_and_keeps_a_drained_bucket_drained() {
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "demo",
        "workspace.yml",
        "limits:\n  bucket: {rate: 2, per: hour}\n",
    );
    put(
        dir.path(),
        "demo",
        "take.yml",
        "when: {endpoint: true}\nlimits: [{limit: bucket, wait: 0}]\ndo: []\n",
    );
    let s = serve_with(
        dir.path(),
        &[
            ("RATE_LIMIT_DISABLED", "true"),
            ("SLUICE_ADMIN_TOKEN", "t0ken"),
        ],
        &[],
    );
    let take = format!("{}/v2/workspaces/demo/webhooks/take", s.base);
    let view = format!("{}/v2/workspaces/demo/limits", s.base);
    assert_eq!(post(&take).status(), 200);
    assert_eq!(post(&take).status(), 200);
    assert_eq!(post(&take).status(), 429);

    let client = reqwest::blocking::Client::new();
    assert_eq!(client.get(&view).send().unwrap().status(), 401);
    assert_eq!(
        client
            .get(&view)
            .bearer_auth("wrong")
            .send()
            .unwrap()
            .status(),
        403
    );
    let limits = || -> J {
        client
            .get(&view)
            .bearer_auth("t0ken")
            .send()
            .and_then(|r| r.json())
            .unwrap_or(J::Null)
    };
    let v = limits();
    let bucket = &v["limits"][0];
    assert_eq!(bucket["name"], "bucket", "{v}");
    assert_eq!(bucket["rate"], 2.0, "{v}");
    assert_eq!(bucket["per"], "hour", "{v}");
    assert!(bucket["available"].as_f64().unwrap_or(9.0) < 0.1, "{v}");
    assert_eq!(v["limits"][1]["name"], "inline", "{v}");

    put(
        dir.path(),
        "demo",
        "workspace.yml",
        "limits:\n  bucket: {rate: 2, per: day}\n",
    );
    let applied = within(Duration::from_secs(2), || {
        limits()["limits"][0]["per"] == "day"
    });
    assert!(applied.is_some(), "edit not live within 2 s: {}", limits());
    // The edit keeps what was used: the bucket is still empty.
    assert_eq!(post(&take).status(), 429);
    let metrics = common::get(&format!("{}/metrics", s.base)).unwrap().1;
    assert!(
        metrics
            .contains("sluice_named_limit_refusals_total{workspace=\"demo\",limit=\"bucket\"} 2"),
        "{metrics}"
    );
}
