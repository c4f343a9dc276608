//! The decision contract (`semantics.md`) on the local provider, driven by a manual clock.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::time::Duration;

use eyelet::{RateLimitDecision, RateLimiter, RETRY_NEVER};
use support::{manual, rate};

fn rejected(retry_after_ms: u64, remaining: u64, window_ms: u64) -> RateLimitDecision {
    RateLimitDecision::Rejected {
        retry_after_ms,
        remaining_after_waiting: remaining,
        window: Duration::from_millis(window_ms),
    }
}

#[test]
fn defaults_build_and_admit_capacity() {
    let rl = RateLimiter::builder().build().expect("defaults");
    assert_eq!(rl.window(), Duration::from_secs(1));
    assert_eq!(rl.bucket(), Duration::from_millis(10));
    let r = rate(10.0);
    let admitted = (0..20)
        .filter(|_| rl.local().absolute().inc("k", &r, 1).is_allowed())
        .count();
    assert_eq!(admitted, 10);
}

#[test]
fn fractional_rates_and_stretching() {
    let (rl, clock) = manual(2000, 10);
    let abs = rl.local().absolute();
    // 5.5 req/s over 2 s = 11
    let n = (0..20)
        .filter(|_| abs.inc("a", &rate(5.5), 1).is_allowed())
        .count();
    assert_eq!(n, 11);

    // 0.4 req/s on a 1 s limiter: one request every 2500 ms
    let (rl, clock2) = manual(1000, 10);
    let abs = rl.local().absolute();
    assert!(abs.inc("b", &rate(0.4), 1).is_allowed());
    assert_eq!(abs.inc("b", &rate(0.4), 1), rejected(2500, 1, 2500));
    clock2.advance(Duration::from_millis(2499));
    assert_eq!(abs.inc("b", &rate(0.4), 1), rejected(1, 1, 2500));
    clock2.advance(Duration::from_millis(1));
    assert!(abs.inc("b", &rate(0.4), 1).is_allowed());
    let _ = clock;
}

#[test]
fn the_slowest_rate_holds_its_whole_window() {
    let (rl, clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    let slowest = rate(eyelet::MIN_RATE_PER_SECOND); // one per 2^32 − 1 ms
    let w = u64::from(u32::MAX);
    assert!(abs.inc("k", &slowest, 1).is_allowed());
    assert_eq!(abs.inc("k", &slowest, 1), rejected(w, 1, w));
    clock.set_ms(w - 1);
    assert!(!abs.inc("k", &slowest, 1).is_allowed());
    rl.sweep();
    clock.set_ms(w);
    assert!(abs.inc("k", &slowest, 1).is_allowed());
}

#[test]
fn zero_weight_is_a_free_probe() {
    let (rl, _clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    let r = rate(1.0);
    assert_eq!(abs.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!(abs.get("k"), 0);
    assert!(abs.is_empty(), "a probe creates no state");
    assert!(abs.inc("k", &r, 1).is_allowed());
    assert!(
        !abs.inc("k", &r, 0).is_allowed(),
        "probe sees what a unit request would"
    );
    assert_eq!(abs.get("k"), 1);
    let sup = rl.local().suppressed();
    assert_eq!(sup.inc("k", &r, 0), RateLimitDecision::Allowed);
    assert_eq!(
        sup.get("k").total,
        0,
        "a suppressed probe is not an attempt"
    );
}

#[test]
fn oversized_weight_is_never_admissible() {
    let (rl, _clock) = manual(1000, 10);
    let d = rl.local().absolute().inc("k", &rate(10.0), 11);
    assert_eq!(d, rejected(RETRY_NEVER, 10, 1000));
    assert!(d.is_never_admissible());
    assert_eq!(rl.local().absolute().get("k"), 0);
}

#[test]
fn weighted_admission_is_all_or_nothing() {
    let (rl, _clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    let r = rate(10.0);
    assert!(abs.inc("k", &r, 7).is_allowed());
    assert!(!abs.inc("k", &r, 4).is_allowed());
    assert_eq!(abs.get("k"), 7, "a rejected request records nothing");
    assert!(abs.inc("k", &r, 3).is_allowed());
}

#[test]
fn retry_after_is_tight_across_buckets() {
    let (rl, clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    let r = rate(4.0);
    for _ in 0..4 {
        assert!(abs.inc("k", &r, 1).is_allowed());
        clock.advance(Duration::from_millis(100));
    }
    // t = 400: buckets at 0, 100, 200, 300 (one each). A weight of 3 waits for three to expire.
    assert_eq!(abs.inc("k", &r, 3), rejected(800, 3, 1000));
    clock.advance(Duration::from_millis(790)); // one bucket width early
    assert!(!abs.inc("k", &r, 3).is_allowed());
    clock.advance(Duration::from_millis(10));
    assert!(abs.inc("k", &r, 3).is_allowed());
}

#[test]
fn rate_is_taken_from_each_call() {
    let (rl, clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    for _ in 0..5 {
        assert!(abs.inc("k", &rate(10.0), 1).is_allowed());
    }
    // lowering the rate below the live total rejects at once
    assert!(!abs.inc("k", &rate(4.0), 1).is_allowed());
    // raising it admits more immediately
    assert!(abs.inc("k", &rate(20.0), 1).is_allowed());
    clock.advance(Duration::from_millis(1000));
    assert_eq!(abs.get("k"), 0);
}

#[test]
fn get_counts_only_live_buckets() {
    let (rl, clock) = manual(1000, 10);
    let r = rate(10.0);
    rl.local().absolute().inc("k", &r, 1);
    rl.local().suppressed().inc("k", &r, 1);
    clock.set_ms(500);
    rl.local().absolute().inc("k", &r, 1);
    rl.local().suppressed().inc("k", &r, 1);
    clock.set_ms(1200); // the first bucket expired at 1000; no call has trimmed it since
    assert_eq!(rl.local().absolute().get("k"), 1);
    assert_eq!(rl.local().suppressed().get("k").total, 1);
    clock.set_ms(1500);
    assert_eq!(rl.local().absolute().get("k"), 0);
}

#[test]
fn strategies_keep_separate_state() {
    let (rl, _clock) = manual(1000, 10);
    let r = rate(1.0);
    assert!(rl.local().absolute().inc("k", &r, 1).is_allowed());
    assert_eq!(
        rl.local().suppressed().inc("k", &r, 1),
        RateLimitDecision::Allowed
    );
    assert_eq!(rl.local().absolute().get("k"), 1);
    assert_eq!(rl.local().suppressed().get("k").total, 1);
}

#[test]
fn is_allowed_answers_like_inc_without_recording() {
    let (rl, _clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    let r = rate(2.0);
    assert!(abs.is_allowed("k", &r, 1).is_allowed());
    assert!(abs.is_empty());
    abs.inc("k", &r, 2);
    assert_eq!(abs.is_allowed("k", &r, 1), abs.inc("k", &r, 1));
    assert_eq!(abs.get("k"), 2);
}

#[test]
fn reset_and_unknown_keys() {
    let (rl, _clock) = manual(1000, 10);
    let abs = rl.local().absolute();
    assert_eq!(abs.get("nobody"), 0);
    assert_eq!(rl.local().suppressed().get("nobody").total, 0);
    assert!(abs.is_empty(), "reads create no state");
    abs.inc("k", &rate(1.0), 1);
    assert!(abs.reset("k"));
    assert!(!abs.reset("k"));
    assert!(abs.inc("k", &rate(1.0), 1).is_allowed());
}

#[test]
fn suppressed_with_h_one_admits_what_absolute_admits() {
    let (rl, clock) = support::manual_h(1000, 10, 1.0);
    let r = rate(50.0);
    for step in 0..3000u64 {
        let a = rl.local().absolute().inc("k", &r, 1).is_allowed();
        let s = rl.local().suppressed().inc("k", &r, 1).is_allowed();
        assert_eq!(a, s, "step {step}");
        if step % 3 == 0 {
            clock.advance(Duration::from_millis(7));
        }
    }
}

#[test]
fn suppressed_snapshot_reports_declines_and_factor() {
    let (rl, _clock) = manual(1000, 10);
    let sup = rl.local().suppressed();
    let r = rate(10.0);
    for _ in 0..40 {
        sup.inc("k", &r, 1);
    }
    let snap = sup.get("k");
    assert_eq!(snap.total, 40);
    assert!(snap.declined >= 25, "{snap:?}"); // at most H = 15 accepted
    assert!(snap.suppression_factor > 0.5, "{snap:?}");
}

#[test]
fn sweep_evicts_only_idle_expired_keys_and_evicted_key_is_new() {
    let clock = eyelet::ManualClock::new();
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(100))
        .stale_after(Duration::from_millis(300))
        .clock(clock.clone())
        .sweeper(false)
        .build()
        .expect("config");
    let abs = rl.local().absolute();
    let r = rate(10.0); // C = 1 per 100 ms
    assert!(abs.inc("old", &r, 1).is_allowed());
    clock.advance(Duration::from_millis(250));
    assert!(abs.inc("young", &r, 1).is_allowed());
    assert_eq!(rl.sweep(), 0, "nothing idle for 300 ms yet");
    clock.advance(Duration::from_millis(60));
    assert_eq!(rl.sweep(), 1, "old evicted, young kept");
    assert_eq!(abs.len(), 1);
    assert!(abs.inc("old", &r, 1).is_allowed());
    // a slow key whose window is longer than stale_after keeps its live state
    let slow = rate(0.001); // W_eff = 1000 s
    assert!(abs.inc("slow", &slow, 1).is_allowed());
    clock.advance(Duration::from_millis(5000));
    rl.sweep();
    assert!(
        !abs.inc("slow", &slow, 1).is_allowed(),
        "live state must not be evicted"
    );
}

#[test]
fn key_cap_replaces_expired_keys_then_reports_capacity() {
    let clock = eyelet::ManualClock::new();
    let rl = RateLimiter::builder()
        .window(Duration::from_millis(100))
        .shards(1)
        .max_keys(2)
        .clock(clock.clone())
        .sweeper(false)
        .build()
        .expect("config");
    let abs = rl.local().absolute();
    let r = rate(10.0);
    assert!(abs.inc("a", &r, 1).is_allowed());
    assert!(abs.inc("b", &r, 1).is_allowed());
    assert_eq!(abs.inc("c", &r, 1), RateLimitDecision::KeyCapacityExceeded);
    assert!(
        !abs.inc("a", &r, 1).is_allowed(),
        "existing keys are still served"
    );
    clock.advance(Duration::from_millis(100));
    assert!(abs.inc("c", &r, 1).is_allowed(), "an expired key made room");
    assert_eq!(abs.len(), 1, "the scan dropped every expired key it met");
}

#[test]
fn inc_many_equals_one_by_one() {
    let (a, ca) = manual(1000, 10);
    let (b, cb) = manual(1000, 10);
    let keys: Vec<String> = (0..300).map(|i| format!("k{}", i % 37)).collect();
    let r = rate(5.0);
    for round in 0..20 {
        let batch = a.local().absolute().inc_many(&keys, &r, 1);
        let single: Vec<_> = keys
            .iter()
            .map(|k| b.local().absolute().inc(k, &r, 1))
            .collect();
        assert_eq!(batch, single, "round {round}");
        let batch = a.local().suppressed().inc_many(&keys, &r, 1);
        let single: Vec<_> = keys
            .iter()
            .map(|k| b.local().suppressed().inc(k, &r, 1))
            .collect();
        assert_eq!(batch, single, "round {round} (suppressed, same seed)");
        ca.advance(Duration::from_millis(70));
        cb.advance(Duration::from_millis(70));
    }
}

#[test]
fn stamped_decisions_carry_the_shard_time() {
    let (rl, clock) = manual(1000, 10);
    clock.set_ms(1234);
    let s = rl.local().absolute().inc_stamped("k", &rate(1.0), 1);
    assert_eq!(s.at_ms, 1234);
    assert_eq!(s.decision, RateLimitDecision::Allowed);
    // the clock going back does not move the shard back
    clock.set_ms(1000);
    let s = rl.local().absolute().inc_stamped("k", &rate(1.0), 1);
    assert_eq!(s.at_ms, 1234);
}

/// A clock that panics on some readings: user code running inside a shard executor.
struct FlakyClock(std::sync::atomic::AtomicU64);

impl eyelet::Clock for FlakyClock {
    fn now_ms(&self) -> u64 {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 2 == 1 {
            panic!("flaky clock");
        }
        n
    }
}

#[test]
fn a_panicking_clock_neither_poisons_nor_hangs_the_shard() {
    let rl = RateLimiter::builder()
        .clock(FlakyClock(std::sync::atomic::AtomicU64::new(0)))
        .sweeper(false)
        .shards(1)
        .build()
        .expect("config");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = rate(1000.0);
        let results: Vec<bool> = (0..10)
            .map(|_| rl.local().absolute().inc("k", &r, 1).is_allowed())
            .collect();
        let _ = tx.send((results, rl.local().absolute().get("k")));
    });
    let (results, live) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("calls after a clock panic must still be answered");
    assert!(results.iter().all(|&a| a));
    assert_eq!(live, 10);
}

#[test]
fn suppressed_factor_in_get_ignores_expired_attempts() {
    let (rl, clock) = manual(1000, 10);
    let sup = rl.local().suppressed();
    let r = rate(10.0);
    for _ in 0..40 {
        sup.inc("k", &r, 1); // a burst at 0: the factor is high
    }
    clock.set_ms(900);
    sup.inc("k", &r, 1);
    assert!(sup.get("k").suppression_factor > 0.5);
    clock.set_ms(1500); // the burst expired; one attempt left over 600 ms: below the target
    let snap = sup.get("k");
    assert_eq!(snap.total, 1);
    assert_eq!(snap.suppression_factor, 0.0, "{snap:?}");
}

/// One step of the differential runs below.
#[derive(Clone, Copy, Debug)]
enum Op {
    Advance(u64),
    Inc(bool, usize, f64, u64),
    Read(bool, usize, f64, u64),
    Sweep,
}

/// A random sequence over a few keys and rates that stretch the window (0.2/s → 5 s,
/// 0.4/s → 2.5 s) beside fast ones, with reads, probes and idle gaps past `stale_after`.
fn mixed_ops(seed: u64, len: usize) -> Vec<Op> {
    use eyelet::{RandomSource, SplitMix64};
    let mut rng = SplitMix64::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let rates = [0.2, 0.4, 1.0, 10.0, 50.0];
    let weights = [0, 1, 1, 1, 2, 3, 9];
    let gaps = [1, 9, 10, 120, 400, 999, 1000, 1300, 2600, 5000, 12_000];
    (0..len)
        .map(|_| {
            let sup = pick(2) == 0;
            let (k, r, n) = (
                pick(4),
                rates[pick(rates.len())],
                weights[pick(weights.len())],
            );
            match pick(12) {
                0..=3 => Op::Advance(gaps[pick(gaps.len())]),
                4..=7 => Op::Inc(sup, k, r, n),
                8..=10 => Op::Read(sup, k, r, n),
                _ => Op::Sweep,
            }
        })
        .collect()
}

fn limiter(stale_ms: u64, clock: &eyelet::ManualClock) -> std::sync::Arc<RateLimiter> {
    RateLimiter::builder()
        .window(Duration::from_millis(1000))
        .bucket(Duration::from_millis(10))
        .stale_after(Duration::from_millis(stale_ms))
        .clock(clock.clone())
        .seed(3)
        .random_source(|_| support::Half)
        .sweeper(false)
        .build()
        .expect("config")
}

/// Three limiters see the same `inc` calls: one is also read, probed and swept after every
/// step (with `stale_after` = 1 ms, the most eager sweeper), one is only swept at the default
/// `stale_after`, one is never read nor swept. Every `inc` answer must be the same (issue 7.2:
/// reads, probes and evictions changed later answers).
#[test]
fn reads_probes_and_sweeps_never_change_an_answer() {
    for seed in 0..40 {
        let clock = eyelet::ManualClock::new();
        let eager = limiter(1, &clock);
        let lazy = limiter(10_000, &clock);
        let quiet = limiter(10_000, &clock);
        let keys = ["a", "b", "c", "d"];
        for (i, op) in mixed_ops(seed, 600).into_iter().enumerate() {
            match op {
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Inc(sup, k, r, n) => {
                    let r = rate(r);
                    let answers: Vec<RateLimitDecision> = [&eager, &lazy, &quiet]
                        .iter()
                        .map(|rl| {
                            if sup {
                                rl.local().suppressed().inc(keys[k], &r, n)
                            } else {
                                rl.local().absolute().inc(keys[k], &r, n)
                            }
                        })
                        .collect();
                    assert!(
                        answers.windows(2).all(|w| w[0] == w[1]),
                        "seed {seed}, step {i}: {op:?} at {} ms: {answers:?}",
                        clock.ms()
                    );
                }
                Op::Read(sup, k, r, n) => {
                    let r = rate(r);
                    if sup {
                        eager.local().suppressed().is_allowed(keys[k], &r, n);
                        eager.local().suppressed().inc(keys[k], &r, 0);
                        eager.local().suppressed().get(keys[k]);
                    } else {
                        eager.local().absolute().is_allowed(keys[k], &r, n);
                        eager.local().absolute().inc(keys[k], &r, 0);
                        eager.local().absolute().get(keys[k]);
                    }
                }
                Op::Sweep => {
                    lazy.sweep();
                }
            }
            eager.sweep();
        }
    }
}
