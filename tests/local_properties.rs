//! Property tests on a fake clock (governor-style): random histories never over-admit, retry
//! hints are tight, suppressed never exceeds `H`, batches decide like single calls.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

mod support;

use std::time::Duration;

use eyelet::RateLimitDecision;
use proptest::prelude::*;
use support::{manual, manual_h, oracle, rate, Event};

/// (ms to advance, weight) steps.
fn history() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..40, 0u64..6), 1..400)
}

fn config() -> impl Strategy<Value = (u64, u64, f64)> {
    (
        prop::sample::select(vec![100u64, 250, 1000]),
        prop::sample::select(vec![1u64, 5, 10]),
        prop::sample::select(vec![0.5, 3.0, 10.0, 25.5, 80.0]),
    )
}

fn capacity(w: u64, r: f64) -> (u64, u64) {
    // (W_eff, C) as semantics.md defines them, for the rates above.
    let c = (w as f64 * r / 1000.0).floor() as u64;
    if c == 0 {
        let w_eff = (1000.0 / r).ceil() as u64;
        (w_eff, ((w_eff as f64 * r / 1000.0).floor() as u64).max(1))
    } else {
        (w, c)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn absolute_never_over_admits_nor_falsely_rejects((w, g, r) in config(), steps in history()) {
        let (rl, clock) = manual(w, g);
        let rate = rate(r);
        let (w_eff, cap) = capacity(w, r);
        let mut events = Vec::new();
        for (dt, n) in steps {
            clock.advance(Duration::from_millis(dt));
            let st = rl.local().absolute().inc_stamped("k", &rate, n);
            if n > 0 {
                events.push(Event { at_ms: st.at_ms, n, admitted: st.decision.is_allowed() });
            }
            if n > cap {
                prop_assert!(st.decision.is_never_admissible());
            }
        }
        let (over, false_rej) = oracle(&events, cap, w_eff, g);
        prop_assert_eq!(over, 0);
        prop_assert_eq!(false_rej, 0);
    }

    #[test]
    fn waiting_retry_after_admits_one_bucket_earlier_does_not(
        (w, g, r) in config(),
        steps in history(),
        n in 1u64..4,
    ) {
        let (rl, clock) = manual(w, g);
        let rate = rate(r);
        let abs = rl.local().absolute();
        for (dt, k) in steps {
            clock.advance(Duration::from_millis(dt));
            abs.inc("k", &rate, k);
        }
        if let RateLimitDecision::Rejected { retry_after_ms, remaining_after_waiting, .. } =
            abs.is_allowed("k", &rate, n)
        {
            if retry_after_ms != eyelet::RETRY_NEVER {
                prop_assert!(retry_after_ms >= 1);
                let now = clock.ms();
                if retry_after_ms >= g {
                    clock.set_ms(now + retry_after_ms - g);
                    prop_assert!(!abs.is_allowed("k", &rate, n).is_allowed(), "admitted a bucket early");
                }
                clock.set_ms(now + retry_after_ms);
                prop_assert_eq!(abs.is_allowed("k", &rate, n), RateLimitDecision::Allowed);
                prop_assert!(remaining_after_waiting >= n);
                // remaining_after_waiting is C − live at that moment
                let (_, cap) = capacity(w, r);
                prop_assert_eq!(remaining_after_waiting, cap - abs.get("k").min(cap));
            }
        }
    }

    #[test]
    fn suppressed_accepted_weight_never_exceeds_h(
        (w, g, r) in config(),
        h in prop::sample::select(vec![1.0, 1.5, 2.0, 3.0]),
        steps in history(),
    ) {
        let (rl, clock) = manual_h(w, g, h);
        let rate = rate(r);
        let (w_eff, _) = capacity(w, r);
        let hard = ((w_eff as f64 * r * h / 1000.0).floor() as u64).max(capacity(w, r).1);
        let mut events = Vec::new();
        for (dt, n) in steps {
            clock.advance(Duration::from_millis(dt));
            let st = rl.local().suppressed().inc_stamped("k", &rate, n);
            if n > 0 {
                events.push(Event { at_ms: st.at_ms, n, admitted: st.decision.is_allowed() });
            }
        }
        let (over, _) = oracle(&events, hard, w_eff, g);
        prop_assert_eq!(over, 0);
    }

    #[test]
    fn inc_many_decides_like_single_calls(
        batches in prop::collection::vec(
            (0u64..30, prop::collection::vec(0usize..12, 0..40)),
            1..30,
        ),
        r in prop::sample::select(vec![2.0, 7.5, 40.0]),
        n in 0u64..3,
    ) {
        let (a, ca) = manual(500, 10);
        let (b, cb) = manual(500, 10);
        let rate = rate(r);
        let names: Vec<String> = (0..12).map(|i| format!("key-{i}")).collect();
        for (dt, idx) in batches {
            ca.advance(Duration::from_millis(dt));
            cb.advance(Duration::from_millis(dt));
            let keys: Vec<&str> = idx.iter().map(|&i| names[i].as_str()).collect();
            let many = a.local().absolute().inc_many(&keys, &rate, n);
            let one: Vec<_> = keys.iter().map(|k| b.local().absolute().inc(k, &rate, n)).collect();
            prop_assert_eq!(many, one);
            let many = a.local().suppressed().inc_many(&keys, &rate, n);
            let one: Vec<_> = keys.iter().map(|k| b.local().suppressed().inc(k, &rate, n)).collect();
            prop_assert_eq!(many, one);
        }
    }

    #[test]
    fn inc_many_weighted_decides_like_single_calls(
        batches in prop::collection::vec(
            (0u64..30, prop::collection::vec((0usize..12, 0u64..5), 0..40)),
            1..30,
        ),
        r in prop::sample::select(vec![2.0, 7.5, 40.0]),
    ) {
        let (a, ca) = manual(500, 10);
        let (b, cb) = manual(500, 10);
        let rate = rate(r);
        let names: Vec<String> = (0..12).map(|i| format!("key-{i}")).collect();
        for (dt, reqs) in batches {
            ca.advance(Duration::from_millis(dt));
            cb.advance(Duration::from_millis(dt));
            let reqs: Vec<(&str, u64)> = reqs.iter().map(|&(i, n)| (names[i].as_str(), n)).collect();
            let many = a.local().absolute().inc_many_weighted(&reqs, &rate);
            let one: Vec<_> = reqs.iter().map(|(k, n)| b.local().absolute().inc(k, &rate, *n)).collect();
            prop_assert_eq!(many, one);
            let many = a.local().suppressed().inc_many_weighted(&reqs, &rate);
            let one: Vec<_> = reqs.iter().map(|(k, n)| b.local().suppressed().inc(k, &rate, *n)).collect();
            prop_assert_eq!(many, one);
        }
    }
}
