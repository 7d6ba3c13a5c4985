//! Instruction-count driver for `bench/ircount.sh`: runs one automation N times in process.
//!
//! Under `valgrind --tool=callgrind` the count does not drift with the machine's load, so two
//! trees can be compared while other work runs. `N` and `SLUG` (hello, named or loop) come from the
//! environment; limits are off so that only the interpreter is counted. `bench/ircount.sh`
//! collects only inside [`runs`], after the clock's one-time calibration: that calibration
//! loops for a fixed wall time, so its count varies from one process to the next by more than
//! thousands of runs cost.

use governor::clock::Clock;
use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
use sluice::limits::TimeSource;
use sluice::runtime::{Runtime, Start};
use std::sync::Arc;

const REPEAT: &str = "slug: loop\ndo:\n  - repeat:\n      on: 2000\n      do:\n        - set: {name: last, value: 'item {{item}} of {{$index}}'}\noutput: '{{last}}'\n";
const TRIVIAL: &str = "slug: hello\nwhen: {endpoint: true}\ndo: []\noutput: {message: hello}\n";
const TRIVIAL_NAMED: &str =
    "slug: named\nlimits: [api]\nwhen: {endpoint: true}\ndo: []\noutput: {message: hello}\n";
const NAMED_LIMITS: &str = "limits:\n  api: {rate: 1000000000, per: second}\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("N")?.parse()?;
    let slug = std::env::var("SLUG")?;
    let dir = tempfile::tempdir()?;
    let ws = dir.path().join("bench");
    std::fs::create_dir_all(&ws)?;
    std::fs::write(ws.join("loop.yml"), REPEAT)?;
    std::fs::write(ws.join("hello.yml"), TRIVIAL)?;
    std::fs::write(ws.join("named.yml"), TRIVIAL_NAMED)?;
    std::fs::write(ws.join("workspace.yml"), NAMED_LIMITS)?;
    let env = |name: &str| (name == "RATE_LIMIT_DISABLED").then(|| "true".to_string());
    let settings = Settings::load_from(None, &env)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rt = tokio.block_on(async {
        let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new()))?;
        let workspace = sluice::workspace::load(&ws, None).map_err(|d| format!("{d:?}"))?;
        rt.install(workspace);
        Ok::<_, Box<dyn std::error::Error>>(rt)
    })?;
    // Calibrates the process-wide clock before counting starts.
    TimeSource::real().now();
    runs(&tokio, &rt, &slug, n)
}

/// The counted part: one warm-up run, whose caches every later run finds ready, then `n` runs,
/// with every task they wake.
#[inline(never)]
fn runs(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    slug: &str,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    tokio.block_on(async {
        for _ in 0..=n {
            rt.run(Start {
                correlation_id: Some("bench".into()),
                ..Start::endpoint("bench", slug)
            })
            .await?;
        }
        Ok(())
    })
}
