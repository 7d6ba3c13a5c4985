//! Per-workspace throttling through the interpreter, on a simulated clock
//! (exact and instant), plus one real-time check through `sluice run`.

use serde_json::json;
use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::limits::{FakeClock, Limiters};
use sluice::runtime::{Outcome, Runtime, Start};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SEED_THROTTLED: &str = "slug: thisWillBeThrottled\ndo:\n  - repeat:\n      on: 2000\n      do:\n        - callSomeOtherAutomation: {}\n";
const SEED_EMITS: &str = "slug: distributed\ndo:\n  - repeat:\n      on: 2000\n      do:\n        - emit:\n            event: triggerSomeOtherAutomation\n            payload: {}\n";
const SEED_CALLEE: &str =
    "slug: callSomeOtherAutomation\nwhen:\n  events:\n    - triggerSomeOtherAutomation\ndo: []\n";

struct Fixture {
    rt: Runtime,
    clock: FakeClock,
    dir: tempfile::TempDir,
}

fn write_ws(root: &Path, id: &str, files: &[(&str, &str)], secrets: Option<&str>) {
    let ws = root.join(id);
    std::fs::create_dir_all(&ws).unwrap();
    for (name, text) in files {
        std::fs::write(ws.join(format!("{name}.yml")), text).unwrap();
    }
    if let Some(s) = secrets {
        std::fs::write(root.join(format!("{id}.secrets.yml")), s).unwrap();
    }
}

impl Fixture {
    fn new(env: &[(&str, &str)]) -> Fixture {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = Settings::load_from(None, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        let clock = FakeClock::new();
        let limits = Limiters::with_clock(&settings.limits, clock.clone());
        let rt = Runtime::with_limiters(settings, Arc::new(EmbeddedBus::new()), limits).unwrap();
        Fixture {
            rt,
            clock,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn install(&self, id: &str, files: &[(&str, &str)], secrets: Option<&str>) -> Vec<String> {
        write_ws(self.dir.path(), id, files, secrets);
        let secrets_file = self.dir.path().join(format!("{id}.secrets.yml"));
        let ws = sluice::workspace::load(&self.dir.path().join(id), Some(&secrets_file)).unwrap();
        self.rt.install(ws)
    }

    async fn run(&self, ws: &str, slug: &str) -> Outcome {
        let o = self.rt.run(Start::endpoint(ws, slug)).await.unwrap();
        self.rt.bus().settled().await;
        o
    }
}

fn assert_close(actual: Duration, expected: Duration) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(15),
        "{actual:?} is not {expected:?}"
    );
}

#[tokio::test]
async fn seed_calls_are_throttled_to_the_automations_rate() {
    let f = Fixture::new(&[]);
    f.install("ws", &[("a", SEED_THROTTLED), ("b", SEED_CALLEE)], None);
    let o = f.run("ws", "thisWillBeThrottled").await;
    // 2001 executions (the loop and its 2000 calls) at 100/s after a burst of 400.
    assert_close(o.throttled, Duration::from_millis(16_010));
    assert!(o.duration >= o.throttled, "{o:?}");
}

#[tokio::test]
async fn seed_emits_are_throttled_by_emits_not_automations() {
    let f = Fixture::new(&[]);
    f.install("ws", &[("a", SEED_EMITS), ("b", SEED_CALLEE)], None);
    let o = f.run("ws", "distributed").await;
    // 2000 emits at 30/s after a burst of 100; the repeats burst (4000) covers the loop.
    assert_close(o.throttled, Duration::from_secs_f64(1900.0 / 30.0));
}

#[tokio::test]
async fn repeats_limit_throttles_long_loops_in_pieces() {
    let f = Fixture::new(&[
        ("RATE_LIMIT_REPEATS", "100"),
        ("RATE_LIMIT_REPEATS_BURST", "50"),
    ]);
    f.install(
        "ws",
        &[("loop", "do:\n  - repeat: {on: 250, do: []}\n")],
        None,
    );
    let o = f.run("ws", "loop").await;
    assert_close(o.throttled, Duration::from_secs(2));
}

#[tokio::test]
async fn each_limit_throttles_only_its_own_work() {
    let f = Fixture::new(&[("RATE_LIMIT_EMITS", "1"), ("RATE_LIMIT_EMITS_BURST", "1")]);
    f.install(
        "ws",
        &[
            ("loop", "do:\n  - repeat: {on: 3000, do: []}\n"),
            ("calls", "do:\n  - repeat: {on: 300, do: [{noop: {}}]}\n"),
            ("noop", "do: []\n"),
            (
                "emits",
                "do:\n  - repeat: {on: 3, do: [{emit: {event: e}}]}\n",
            ),
        ],
        None,
    );
    assert_eq!(f.run("ws", "loop").await.throttled, Duration::ZERO);
    assert_eq!(f.run("ws", "calls").await.throttled, Duration::ZERO);
    assert_close(f.run("ws", "emits").await.throttled, Duration::from_secs(2));
}

#[tokio::test]
async fn rate_zero_and_disabled_turn_limits_off() {
    let f = Fixture::new(&[("RATE_LIMIT_AUTOMATIONS", "0")]);
    f.install("ws", &[("a", SEED_THROTTLED), ("b", SEED_CALLEE)], None);
    assert_eq!(
        f.run("ws", "thisWillBeThrottled").await.throttled,
        Duration::ZERO
    );

    let f = Fixture::new(&[("RATE_LIMIT_DISABLED", "true")]);
    f.install("ws", &[("a", SEED_EMITS), ("b", SEED_CALLEE)], None);
    assert_eq!(f.run("ws", "distributed").await.throttled, Duration::ZERO);
}

#[tokio::test]
async fn a_saturated_workspace_does_not_delay_another() {
    let f = Fixture::new(&[]);
    f.install("noisy", &[("a", SEED_THROTTLED), ("b", SEED_CALLEE)], None);
    f.install("quiet", &[("a", SEED_THROTTLED), ("b", SEED_CALLEE)], None);
    assert!(f.run("noisy", "thisWillBeThrottled").await.throttled > Duration::from_secs(10));
    // The noisy workspace's bucket is empty now; the quiet one still has its burst.
    let before = f.clock.elapsed();
    let quiet = f.run("quiet", "callSomeOtherAutomation").await;
    assert_eq!(quiet.throttled, Duration::ZERO);
    assert_eq!(f.clock.elapsed(), before);
}

#[tokio::test]
async fn secret_overrides_apply_on_reinstall_and_bad_ones_are_refused() {
    let f = Fixture::new(&[]);
    let files = [(
        "loop",
        "do:\n  - repeat: {on: 3, do: [{emit: {event: e}}]}\n",
    )];
    let problems = f.install(
        "ws",
        &files,
        Some("prismeai_ratelimit_emits: '1'\nprismeai_ratelimit_emits_burst: 1\n"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_close(f.run("ws", "loop").await.throttled, Duration::from_secs(2));

    // A bad value is refused with a message naming the key, and the limits stay.
    let problems = f.install(
        "ws",
        &files,
        Some("prismeai_ratelimit_emits: -3\nprismeai_ratelimit_emits_burst: 1\n"),
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("prismeai_ratelimit_emits"),
        "{problems:?}"
    );
    f.clock.advance(Duration::from_secs(10));
    assert_close(f.run("ws", "loop").await.throttled, Duration::from_secs(2));

    let problems = f.install("ws", &files, Some("prismeai_ratelimit_disabled: true\n"));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(f.run("ws", "loop").await.throttled, Duration::ZERO);
}

/// Real time, through the binary: 11 executions at 10/s after a burst of 5 wait
/// about 600 ms, and the report's throttled time and duration agree with it.
#[test]
fn sluice_run_reports_real_throttling() {
    let dir = tempfile::tempdir().unwrap();
    write_ws(
        dir.path(),
        "ws",
        &[
            ("main", "do:\n  - repeat: {on: 10, do: [{noop: {}}]}\n"),
            ("noop", "do: []\n"),
        ],
        None,
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "main", "--report", "--workspace"])
        .arg(dir.path().join("ws"))
        .env("RATE_LIMIT_AUTOMATIONS", "10")
        .env("RATE_LIMIT_AUTOMATIONS_BURST", "5")
        .output()
        .unwrap();
    let wall = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"], json!(null));
    let throttled = report["throttled"].as_u64().unwrap();
    let duration = report["duration"].as_u64().unwrap();
    assert!((550..=900).contains(&throttled), "throttled {throttled} ms");
    assert!(
        duration >= throttled,
        "duration {duration} < throttled {throttled}"
    );
    assert!(
        wall.as_millis() as u64 >= throttled,
        "wall {wall:?} < throttled {throttled}"
    );
}
