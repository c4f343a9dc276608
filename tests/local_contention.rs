//! Exactness under contention: threads hammer one hot key on the real clock; every decision is
//! stamped with the shard time it was made at, and an oracle replays every window.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use eyelet::{RateLimit, RateLimiter};
use support::{oracle, Event};

const DECISIONS_PER_THREAD: usize = 1_000_000;

fn hammer(threads: usize, weighted: bool) {
    // W = 50 ms, G = 1 ms, 200k/s: C = 10,000 per window; millions of attempts per second
    // keep the key saturated, so most decisions are decided at the boundary.
    let (w, g) = (50u64, 1u64);
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(w))
        .bucket(Duration::from_millis(g))
        .build()
        .expect("config");
    let rate = RateLimit::try_from(200_000.0).expect("rate");
    let cap = 10_000;
    let barrier = Barrier::new(threads);
    let events: Vec<Event> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (rl, barrier, rate) = (&rl, &barrier, &rate);
                s.spawn(move || {
                    let mut events = Vec::with_capacity(DECISIONS_PER_THREAD);
                    barrier.wait();
                    for i in 0..DECISIONS_PER_THREAD {
                        let n = if weighted {
                            1 + ((i + t) % 5) as u64
                        } else {
                            1
                        };
                        let st = rl.local().absolute().inc_stamped("hot", rate, n);
                        events.push(Event {
                            at_ms: st.at_ms,
                            n,
                            admitted: st.decision.is_allowed(),
                        });
                    }
                    events
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("caller thread"))
            .collect()
    });
    assert_eq!(events.len(), threads * DECISIONS_PER_THREAD);
    let admitted = events.iter().filter(|e| e.admitted).count();
    assert!(
        admitted > 0 && admitted < events.len(),
        "the key must saturate"
    );
    let (over, false_rejections) = oracle(&events, cap, w, g);
    assert_eq!(over, 0, "over-admissions with {threads} threads");
    assert_eq!(
        false_rejections, 0,
        "false rejections with {threads} threads"
    );
}

#[test]
fn two_threads_hot_key_exact() {
    hammer(2, false);
}

#[test]
fn four_threads_hot_key_exact() {
    hammer(4, false);
}

#[test]
fn four_threads_weighted_exact() {
    hammer(4, true);
}

#[test]
fn oracle_catches_over_admission_and_false_rejection() {
    let ev = |at_ms, n, admitted| Event { at_ms, n, admitted };
    // C = 2, W = 10, G = 1: three admissions within 9 ms over-admit.
    let over = [ev(0, 1, true), ev(5, 1, true), ev(8, 1, true)];
    assert_eq!(oracle(&over, 2, 10, 1).0, 1);
    // ...but not if the first had expired (t − W + G = 1 > 0).
    let fine = [ev(0, 1, true), ev(5, 1, true), ev(10, 1, true)];
    assert_eq!(oracle(&fine, 2, 10, 1), (0, 0));
    // A rejection with room left is false.
    let false_rej = [ev(0, 1, true), ev(3, 1, false)];
    assert_eq!(oracle(&false_rej, 2, 10, 1).1, 1);
}
