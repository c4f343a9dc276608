//! Suppressed strategy under steady overload: accepted weight per window settles at `S`
//! (semantics.md: ≤ H always, within ±10 % of S from the third window on, deviation not growing).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use eyelet::RateLimit;
use support::{manual_h, oracle, Event};

struct Run {
    per_window: Vec<u64>,
    events: Vec<Event>,
}

/// Offers `k × R` for `windows` windows at 1 ms resolution (fractional arrivals accumulated).
fn offer(k: f64, h: f64, r: f64, windows: u64) -> Run {
    let w = 1000u64;
    let (rl, clock) = manual_h(w, 10, h);
    let rate = RateLimit::try_from(r).expect("rate");
    let per_ms = k * r / 1000.0;
    let mut carry = 0.0;
    let mut per_window = vec![0u64; windows as usize];
    let mut events = Vec::new();
    for t in 0..windows * w {
        clock.set_ms(t);
        carry += per_ms;
        while carry >= 1.0 {
            carry -= 1.0;
            let st = rl.local().suppressed().inc_stamped("k", &rate, 1);
            let admitted = st.decision.is_allowed();
            if admitted {
                per_window[(t / w) as usize] += 1;
            }
            events.push(Event {
                at_ms: st.at_ms,
                n: 1,
                admitted,
            });
        }
    }
    Run { per_window, events }
}

fn check(k: f64, h: f64) {
    let r = 2000.0; // S = 2000 per 1 s window
    let s = 2000.0;
    let hard = (s * h).floor() as u64;
    let run = offer(k, h, r, 10);
    // Never above H in any sliding window (bucket precision G = 10 ms).
    let (over, _) = oracle(&run.events, hard, 1000, 10);
    assert_eq!(
        over, 0,
        "k={k} h={h}: a window accepted more than H = {hard}"
    );
    // The bound is the expectation; allow three standard deviations of the coin flips that
    // fill the second half of the first window (≈ S·(1 − 1/k) draws at p = 1/k).
    let draws = s * (1.0 - 1.0 / k) * k;
    let noise = 3.0 * (draws * (1.0 / k) * (1.0 - 1.0 / k)).sqrt();
    let first_bound = (s * (2.0 - 1.0 / k) + noise).min(hard as f64);
    assert!(
        run.per_window[0] as f64 <= first_bound,
        "k={k} h={h}: first window {} > {first_bound}",
        run.per_window[0]
    );
    let dev: Vec<f64> = run
        .per_window
        .iter()
        .map(|&a| (a as f64 - s).abs() / s)
        .collect();
    for (i, d) in dev.iter().enumerate().skip(2) {
        assert!(
            *d <= 0.10,
            "k={k} h={h}: window {i} accepted {} ({:.1} % off S)",
            run.per_window[i],
            d * 100.0
        );
    }
    // No growth: the late deviation is no worse than the third window's plus noise.
    let late = dev[5..].iter().cloned().fold(0.0, f64::max);
    assert!(
        late <= dev[2].max(0.05) + 0.03,
        "k={k} h={h}: deviation grows: {dev:?}"
    );
    eprintln!("k={k} h={h}: accepted per window {:?}", run.per_window);
}

#[test]
fn twice_the_rate_h_1_5() {
    check(2.0, 1.5);
}

#[test]
fn four_times_the_rate_h_1_5() {
    check(4.0, 1.5);
}

#[test]
fn twice_the_rate_h_2() {
    check(2.0, 2.0);
}

#[test]
fn four_times_the_rate_h_2() {
    check(4.0, 2.0);
}

#[test]
fn deterministic_with_a_seed() {
    let a = offer(3.0, 1.5, 2000.0, 3);
    let b = offer(3.0, 1.5, 2000.0, 3);
    assert_eq!(a.per_window, b.per_window);
}

#[test]
fn absolute_cliff_for_comparison() {
    // Absolute under the same load admits exactly C per window: the cliff the plot shows.
    let (rl, clock) = support::manual(1000, 10);
    let rate = RateLimit::try_from(2000.0).expect("rate");
    let mut per_window = [0u64; 3];
    for t in 0..3000u64 {
        clock.set_ms(t);
        for _ in 0..4 {
            if rl.local().absolute().inc("k", &rate, 1).is_allowed() {
                per_window[(t / 1000) as usize] += 1;
            }
        }
    }
    assert_eq!(
        per_window, [2000; 3],
        "C per window, taken in the first half-second"
    );
}
