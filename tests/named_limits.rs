//! Memory of named limits with many live keys, measured by counting this test binary's
//! heap (an allocator wrapper), so the figure is exact and independent of how the system
//! allocator returns pages. Its own binary: no other test allocates meanwhile.

// A counting `GlobalAlloc` is an `unsafe impl` by definition; the library itself forbids
// unsafe code (src/lib.rs).
#![allow(unsafe_code)]

use sluice::limits::named::{Ask, NamedLimits};
use sluice::limits::{FakeClock, TimeSource};
use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MB: f64 = 1024.0 * 1024.0;

/// Resident memory from /proc (reported only: the allocator may keep freed pages).
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / MB
}

fn live_mb() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / MB
}

#[test]
fn a_million_live_keys_fit_in_150_mb_and_eviction_gives_it_back() {
    let clock = FakeClock::new();
    let limits = NamedLimits::workspace("ws", None, TimeSource::fake(clock.clone()));
    let spec = sluice::limits::named::spec::parse_limits(
        &sluice::value::Value::from(serde_json::json!({
            "per-user": {"key": "{{user}}", "rate": 30, "per": "minute"}
        })),
        &["limits"],
    )
    .expect("valid spec");
    limits.update(spec);
    let before = live_mb();
    let (rss_before, mut cx) = (rss_mb(), Context::from_waker(Waker::noop()));
    let mut ask = Ask::new("per-user", "");
    for i in 0..1_000_000u32 {
        ask.key.clear();
        ask.key.push_str("user-");
        ask.key.push_str(&i.to_string());
        let granted = pin!(limits.acquire_one(&ask));
        match granted.poll(&mut cx) {
            Poll::Ready(Ok(got)) => drop(got),
            other => panic!("key {i} was not granted at once: {other:?}"),
        }
    }
    let with_keys = live_mb() - before;
    let state = &limits.snapshot()[0].state;
    assert_eq!(state.keys, 1_000_000);
    println!(
        "1,000,000 live keys: {with_keys:.1} MB of heap (RSS {:.1} MB over {rss_before:.1})",
        rss_mb() - rss_before
    );
    assert!(with_keys <= 150.0, "{with_keys:.1} MB");

    clock.advance(Duration::from_secs(60));
    assert_eq!(limits.sweep(), 1_000_000);
    let after = live_mb();
    println!(
        "after eviction: {:.2} MB of heap over the start (RSS {:.1} MB)",
        after - before,
        rss_mb() - rss_before
    );
    assert!(
        after <= before * 1.1,
        "{after:.2} MB after eviction, {before:.2} MB before"
    );
}
