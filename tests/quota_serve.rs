//! Credit quotas through real `sluice serve` processes (SPEC section 8): charges add up
//! exactly, bands are announced once each as `runtime.quota.band`, restricted classes run
//! their fallback or get 429 + `Retry-After`, `slow` scales the built-in rates, added credits
//! lift restrictions at once, usage survives `kill -9`, and two instances on one NATS share it.

mod common;

use common::{put, secrets, serve_configured, serve_with, within, NatsServer, Serve};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "quota-admin";
const WS: &str = "shop";

/// An HTTP endpoint on 127.0.0.1 that keeps the body of every request: where the alert
/// automation posts the band events it receives.
fn recorder() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                sink.lock().unwrap().push(v);
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

/// The workspace: a premium automation with a fallback, a standard one without, an
/// essential one, and an alert listener posting each band event to `alerts`.
fn workspace(root: &Path, alerts: &str, credits: u32) {
    put(
        root,
        WS,
        "premium.yml",
        "slug: premium\nwhen: {endpoint: true}\nquota:\n  cost: '{{body.cost}}'\n  class: premium\n  fallback:\n    - set: {name: path, value: cheap}\ndo:\n  - set: {name: path, value: full}\n  - charge: {credits: '{{body.extra}}'}\noutput: '{{path}}'\n",
    );
    put(
        root,
        WS,
        "plain.yml",
        "slug: plain\nwhen: {endpoint: true}\nquota: {cost: '{{body.cost}}'}\noutput: ran\n",
    );
    put(
        root,
        WS,
        "vital.yml",
        "slug: vital\nwhen: {endpoint: true}\nquota: {class: essential}\ndo:\n  - emit: {event: vital}\noutput: ran\n",
    );
    put(
        root,
        WS,
        "alert.yml",
        &format!("slug: alert\nwhen: {{events: [runtime.quota.band]}}\nquota: {{class: essential}}\ndo:\n  - fetch: {{url: '{alerts}', method: post, body: '{{{{payload}}}}'}}\n"),
    );
    secrets(root, WS, &format!("sluice_quota_credits: {credits}\n"));
}

/// `POST` a webhook of the workspace: status, `Retry-After`, body.
fn call(base: &str, slug: &str, body: Value) -> (u16, Option<u64>, String) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{base}/v2/workspaces/{WS}/webhooks/{slug}"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, retry, r.text().unwrap())
}

fn usage(base: &str) -> Value {
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/v2/workspaces/{WS}/usage"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn overview(base: &str) -> Value {
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/v2/usage"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let all: Value = r.json().unwrap();
    all["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workspace"] == WS)
        .cloned()
        .unwrap()
}

fn add_credits(base: &str, credits: f64) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{base}/v2/workspaces/{WS}/usage/credits"))
        .bearer_auth(TOKEN)
        .json(&json!({ "credits": credits }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
}

fn serve(root: &Path, settings: &str) -> Serve {
    serve_configured(root, settings, &[("SLUICE_ADMIN_TOKEN", TOKEN)])
}

/// The `at` of every band event the alert automation posted.
fn announced(alerts: &Mutex<Vec<Value>>) -> Vec<f64> {
    let mut at: Vec<f64> = alerts
        .lock()
        .unwrap()
        .iter()
        .map(|a| a["at"].as_f64().unwrap())
        .collect();
    at.sort_by(f64::total_cmp);
    at
}

#[test]
fn charges_add_up_bands_restrict_and_credits_lift_them() {
    let root = tempfile::tempdir().unwrap();
    let (url, alerts) = recorder();
    workspace(root.path(), &url, 100);
    let s = serve(root.path(), "quotas: {costs: {automations: 0.5}}\n");

    // Cost template + `charge` + the automation token's cost, exactly.
    assert_eq!(
        call(&s.base, "premium", json!({"cost": 10, "extra": "5.25"})).2,
        "full"
    );
    assert_eq!(call(&s.base, "plain", json!({"cost": 60})).0, 200);
    let u = usage(&s.base);
    assert_eq!(u["used"], json!(10.0 + 5.25 + 0.5 + 60.0 + 0.5));
    assert_eq!(u["byAutomation"]["premium"], json!(15.75));
    assert_eq!(u["byAutomation"]["plain"], json!(60.5));
    assert_eq!(u["band"], Value::Null);

    // 80 %: a notice only.
    call(&s.base, "plain", json!({"cost": 5}));
    assert!(within(Duration::from_secs(5), || announced(&alerts) == [80.0]).is_some());
    assert_eq!(
        call(&s.base, "premium", json!({"cost": 0, "extra": 0})).2,
        "full"
    );

    // 100 %: premium runs its fallback at once (no cost charged), standard still runs.
    call(&s.base, "plain", json!({"cost": 20}));
    let (status, _, body) = call(&s.base, "premium", json!({"cost": 50, "extra": 50}));
    assert_eq!((status, body.as_str()), (200, "cheap"));
    assert_eq!(call(&s.base, "plain", json!({"cost": 0})).0, 200);
    assert!(within(Duration::from_secs(5), || announced(&alerts)
        == [80.0, 100.0])
    .is_some());

    // 120 %: standard fails with 429 + Retry-After, essential still runs.
    call(&s.base, "plain", json!({"cost": 20}));
    let (status, retry, body) = call(&s.base, "plain", json!({"cost": 1}));
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some_and(|r| r >= 1), "{retry:?}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "QuotaExceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("band 3"));
    assert_eq!(call(&s.base, "vital", json!({})).0, 200);
    assert!(within(Duration::from_secs(5), || announced(&alerts)
        == [80.0, 100.0, 120.0])
    .is_some());
    // More work in the same band announces nothing more (the usage read flushes first).
    for _ in 0..5 {
        call(&s.base, "vital", json!({}));
    }
    usage(&s.base);
    assert!(
        within(Duration::from_millis(700), || announced(&alerts).len() > 3).is_none(),
        "{:?}",
        announced(&alerts)
    );
    let event = alerts.lock().unwrap()[2].clone();
    for key in [
        "band", "at", "percent", "used", "credits", "restrict", "slow", "resetsAt",
    ] {
        assert!(event.get(key).is_some(), "{key} missing from {event}");
    }

    // Credits lift the restrictions at once.
    add_credits(&s.base, 100.0);
    assert_eq!(call(&s.base, "plain", json!({"cost": 0})).0, 200);
    assert_eq!(
        call(&s.base, "premium", json!({"cost": 0, "extra": 0})).2,
        "full"
    );

    let metrics = common::get(&format!("{}/metrics", s.base)).unwrap().1;
    assert!(metrics.contains("sluice_quota_fallbacks_total{workspace=\"shop\",slug=\"premium\"} 1"));
    assert!(metrics.contains("sluice_quota_restricted_total{workspace=\"shop\",slug=\"plain\"} 1"));
}

#[test]
fn a_band_with_slow_scales_the_built_in_rates_until_it_lifts() {
    let root = tempfile::tempdir().unwrap();
    let (url, _alerts) = recorder();
    workspace(root.path(), &url, 100);
    let s = serve(root.path(), "limits: {emits: {rate: 40, burst: 10}}\n");
    let rate = |base: &str| overview(base)["limits"]["emits"]["rate"].as_f64().unwrap();
    assert!((rate(&s.base) - 40.0).abs() < 1e-6);
    call(&s.base, "plain", json!({"cost": 121}));
    let o = overview(&s.base);
    assert_eq!(
        (o["near"].clone(), o["over"].clone()),
        (json!(true), json!(true))
    );
    assert!((rate(&s.base) - 20.0).abs() < 1e-6, "{o}");
    // The slowed rate holds the workspace back: 60 emits from 6 callers at once, past a
    // burst of 10, take at least 50 / 20 = 2.5 s, and the waits show as throttled time.
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..10 {
                    assert_eq!(call(&s.base, "vital", json!({})).0, 200);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2400), "{elapsed:?}");
    let throttled = overview(&s.base)["limits"]["emits"]["throttled"]
        .as_f64()
        .unwrap();
    assert!(throttled > 0.5, "throttled {throttled}");
    add_credits(&s.base, 100.0);
    assert!((rate(&s.base) - 40.0).abs() < 1e-6);
}

#[test]
fn usage_survives_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let (url, _alerts) = recorder();
    workspace(root.path(), &url, 1000);
    let mut s = serve(root.path(), "");
    for cost in [7, 8, 9] {
        assert_eq!(call(&s.base, "plain", json!({ "cost": cost })).0, 200);
    }
    // The flusher writes every 250 ms; a crash loses at most the last second (2 s here:
    // margin for a loaded machine's slow disk).
    std::thread::sleep(Duration::from_secs(2));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = serve(root.path(), "");
    let u = usage(&s.base);
    assert_eq!(u["used"], json!(24.0));
    assert_eq!(u["byAutomation"]["plain"], json!(24.0));
}

#[test]
fn two_instances_on_nats_share_usage_and_announce_a_band_once() {
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let (url, alerts) = recorder();
    workspace(root.path(), &url, 100);
    let env = [
        ("NATS_URL", nats.url.as_str()),
        ("SLUICE_ADMIN_TOKEN", TOKEN),
    ];
    let a = serve_with(root.path(), &env, &[]);
    let b = serve_with(root.path(), &env, &[]);

    call(&a.base, "plain", json!({"cost": 30}));
    call(&b.base, "plain", json!({"cost": 40}));
    let total = |base: &str| usage(base)["used"].as_f64().unwrap();
    assert!(within(Duration::from_secs(5), || total(&a.base) == 70.0
        && total(&b.base) == 70.0)
    .is_some());

    // Over the credits through A: B restricts premium within a second.
    call(&a.base, "plain", json!({"cost": 35}));
    let seen = within(Duration::from_secs(1), || {
        call(&b.base, "premium", json!({"cost": 0, "extra": 0})).2 == "cheap"
    });
    assert!(
        seen.is_some(),
        "B did not see the workspace over its credits"
    );
    assert_eq!(
        call(&a.base, "premium", json!({"cost": 0, "extra": 0})).2,
        "cheap"
    );

    // 80 and 100 are each announced by one instance only.
    assert!(within(Duration::from_secs(5), || announced(&alerts)
        == [80.0, 100.0])
    .is_some());
    assert!(
        within(Duration::from_millis(1500), || announced(&alerts).len() > 2).is_none(),
        "{:?}",
        announced(&alerts)
    );
}

/// `sluice run … --data DIR --report` on the workspace of `root`: its report.
fn run(root: &Path, slug: &str, body: Value) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", slug, "--report", "--workspace"])
        .arg(root.join("automations").join(WS))
        .arg("--secrets")
        .arg(root.join("secrets").join(format!("{WS}.yml")))
        .arg("--data")
        .arg(root.join("data"))
        .arg("--payload")
        .arg(json!({ "body": body }).to_string())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn sluice_run_with_a_data_dir_keeps_usage_between_runs() {
    let root = tempfile::tempdir().unwrap();
    workspace(root.path(), "http://127.0.0.1:9/unused", 10);
    assert_eq!(
        run(root.path(), "plain", json!({"cost": 4}))["output"],
        "ran"
    );
    assert_eq!(
        run(root.path(), "plain", json!({"cost": 5}))["output"],
        "ran"
    );
    // 9 of 10 credits: the next run's charge takes it to 100 %, so it is announced.
    let third = run(root.path(), "premium", json!({"cost": 1, "extra": 0}));
    assert_eq!(third["output"], "full");
    let events: Vec<&str> = third["emitted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"runtime.quota.band"), "{third}");
    let fourth = run(root.path(), "premium", json!({"cost": 1, "extra": 0}));
    assert_eq!(fourth["output"], "cheap");
}

#[test]
fn quota_secrets_apply_on_change_and_a_bad_one_keeps_the_quota() {
    let root = tempfile::tempdir().unwrap();
    workspace(root.path(), "http://127.0.0.1:9/unused", 10);
    let s = serve(root.path(), "");
    let total = |base: &str| usage(base)["credits"]["total"].clone();
    assert_eq!(total(&s.base), json!(10.0));

    // The secrets API refuses a bad quota secret and writes nothing.
    let r = reqwest::blocking::Client::new()
        .patch(format!("{}/v2/workspaces/{WS}/secrets", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"sluice_quota_timezone": "Mars/Base"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().unwrap();
    assert!(text.contains("sluice_quota_timezone"), "{text}");

    // A bad value written to the file is logged, naming the secret, and changes nothing.
    secrets(root.path(), WS, "sluice_quota_credits: lots-of-credits\n");
    let logged = within(Duration::from_secs(5), || {
        s.logs.lock().unwrap().contains("previous quota kept")
    });
    assert!(logged.is_some(), "{}", s.logs.lock().unwrap());
    let logs = s.logs.lock().unwrap().clone();
    assert!(logs.contains("secret sluice_quota_credits") && !logs.contains("lots-of-credits"));
    assert_eq!(total(&s.base), json!(10.0));

    // A good one applies without restart.
    secrets(root.path(), WS, "sluice_quota_credits: 20\n");
    assert!(within(Duration::from_secs(5), || total(&s.base) == json!(20.0)).is_some());
}
