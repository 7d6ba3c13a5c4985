//! Memory held by the limiters, measured as this process's resident size: alone in its
//! test binary, so that no other test allocates while it measures.

use sluice::limits::{FakeClock, LimitKind, LimitSettings, Limiters};

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_hundred_thousand_live_workspaces_fit_in_100_mb() {
    let limiters = Limiters::with_clock(&LimitSettings::default(), FakeClock::new());
    let before = resident_bytes();
    for i in 0..100_000 {
        let ws = limiters.workspace(&format!("workspace-{i:06}"));
        for kind in LimitKind::ALL {
            ws.acquire(kind, 1).await;
        }
    }
    let used = resident_bytes().saturating_sub(before);
    assert_eq!(limiters.len(), 100_000);
    assert!(used < 100 << 20, "{} MB", used >> 20);
    eprintln!("100k workspaces: {} MB resident", used >> 20);
}
