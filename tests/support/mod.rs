//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use eyelet::{ManualClock, RateLimit, RateLimiter};
use std::sync::Arc;

/// A limiter on a manual clock with a fixed seed and no sweeper thread.
pub fn manual(window_ms: u64, bucket_ms: u64) -> (Arc<RateLimiter>, ManualClock) {
    manual_h(window_ms, bucket_ms, 1.5)
}

/// As [`manual`], with hard-limit factor `h`.
pub fn manual_h(window_ms: u64, bucket_ms: u64, h: f64) -> (Arc<RateLimiter>, ManualClock) {
    let clock = ManualClock::new();
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(window_ms))
        .bucket(Duration::from_millis(bucket_ms))
        .hard_limit_factor(h)
        .clock(clock.clone())
        .seed(42)
        .key_hash_seed(42)
        .sweeper(false)
        .build()
        .expect("valid config");
    (rl, clock)
}

/// One decision as an oracle sees it.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub at_ms: u64,
    pub n: u64,
    pub admitted: bool,
}

/// Checks a history of decisions on one key with capacity `cap`, window `w` and bucket `g`:
/// - every admission: weight admitted in `[t − w + g, t]` ≤ `cap` (exact to bucket precision);
/// - every rejection: weight admitted in `(t − w, t]` + n > `cap` (no false rejection).
///
/// Returns the number of over-admitting instants and of false rejections.
pub fn oracle(events: &[Event], cap: u64, w: u64, g: u64) -> (usize, usize) {
    let Some(max_t) = events.iter().map(|e| e.at_ms).max() else {
        return (0, 0);
    };
    let len = max_t as usize + 2;
    let mut per_ms = vec![0u64; len];
    for e in events.iter().filter(|e| e.admitted) {
        per_ms[e.at_ms as usize] += e.n;
    }
    // prefix[i] = admitted weight in [0, i)
    let mut prefix = vec![0u64; len + 1];
    for i in 0..len {
        prefix[i + 1] = prefix[i] + per_ms[i];
    }
    let sum = |lo: i64, hi: i64| -> u64 {
        // weight admitted in [lo, hi]
        let lo = lo.max(0) as usize;
        let hi = (hi.max(-1) + 1) as usize;
        if hi <= lo {
            0
        } else {
            prefix[hi] - prefix[lo]
        }
    };
    let mut over = 0;
    let mut false_rejections = 0;
    let mut checked = std::collections::HashSet::new();
    for e in events {
        let t = e.at_ms as i64;
        if e.admitted {
            if checked.insert(t) && sum(t - w as i64 + g as i64, t) > cap {
                over += 1;
            }
        } else if sum(t - w as i64 + 1, t) + e.n <= cap {
            false_rejections += 1;
        }
    }
    (over, false_rejections)
}

/// A valid rate of `r` requests per second.
pub fn rate(r: f64) -> RateLimit {
    RateLimit::try_from(r).expect("valid rate")
}

#[cfg(feature = "redis")]
pub mod redis_server;

#[cfg(feature = "redis")]
pub mod conformance;

#[cfg(feature = "redis")]
pub mod proxy;

#[cfg(feature = "redis")]
pub mod hybrid_value;

#[cfg(any(feature = "actix-web", feature = "tower"))]
pub mod http_client;

/// A random source that always draws one half: suppressed decisions then depend only on the
/// window, so two limiters fed the same calls answer alike.
#[derive(Clone, Copy, Debug)]
pub struct Half;

impl eyelet::RandomSource for Half {
    fn next_u64(&mut self) -> u64 {
        1 << 63
    }
}
