//! The background sweeper: evicts idle keys on the real clock, holds only a `Weak` reference,
//! and its thread exits when the limiter is dropped.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::time::{Duration, Instant};

use eyelet::{RateLimit, RateLimiter};

fn sweeper_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim() == "eyelet-sweeper")
                .unwrap_or(false)
        })
        .count()
}

fn wait_until(mut cond: impl FnMut() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

// One test, so no other limiter's sweeper thread runs in this process meanwhile.
#[test]
fn sweeper_evicts_idle_keys_and_exits_with_the_limiter() {
    let before = sweeper_threads();
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(20))
        .bucket(Duration::from_millis(1))
        .stale_after(Duration::from_millis(40))
        .sweep_interval(Duration::from_millis(10))
        .build()
        .expect("config");
    // The thread names itself once it runs.
    assert!(wait_until(
        || sweeper_threads() == before + 1,
        Duration::from_secs(10)
    ));
    let r = RateLimit::try_from(1000.0).expect("rate");
    for i in 0..1000 {
        rl.local().absolute().inc(&format!("k{i}"), &r, 1);
        rl.local().suppressed().inc(&format!("k{i}"), &r, 1);
    }
    assert_eq!(rl.local().absolute().len(), 1000);
    assert!(
        wait_until(
            || rl.local().absolute().is_empty() && rl.local().suppressed().is_empty(),
            Duration::from_secs(10)
        ),
        "idle keys were not evicted"
    );
    let weak = std::sync::Arc::downgrade(&rl);
    drop(rl);
    assert!(
        weak.upgrade().is_none(),
        "the sweeper must not keep the limiter alive"
    );
    assert!(
        wait_until(|| sweeper_threads() == before, Duration::from_secs(10)),
        "the sweeper thread did not exit"
    );
}
