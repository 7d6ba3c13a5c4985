//! Instruction-count driver for `bench/ircount.sh`: runs one automation N times in process.
//!
//! Under `valgrind --tool=callgrind` the count does not drift with the machine's load, so two
//! trees can be compared while other work runs. `N` and `SLUG` (hello, named or loop) come from the
//! environment; limits are off so that only the interpreter is counted.

use sluice::bus::EmbeddedBus;
use sluice::config::Settings;
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
    tokio.block_on(async {
        let rt = Runtime::new(settings, Arc::new(EmbeddedBus::new()))?;
        let workspace = sluice::workspace::load(&ws, None).map_err(|d| format!("{d:?}"))?;
        rt.install(workspace);
        let start = || Start {
            correlation_id: Some("bench".into()),
            ..Start::endpoint("bench", &slug)
        };
        // The first run warms caches that every later run finds ready.
        for _ in 0..=n {
            rt.run(start()).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
