//! The absolute strategy: a sliding-window hard limit with exact retry hints.

use std::time::Duration;

use super::{never_admissible, Count, Request, RingWrite, Window};
use crate::decision::RateLimitDecision;

/// Decides `req` at `now` against `window`, recording it if admitted and `req.record`.
///
/// Admits iff `live + n ≤ C`. A rejection carries the shortest wait after which the same request
/// fits (from the bucket expiries) and the capacity free at that moment.
#[cfg(test)]
pub(crate) fn decide_absolute(
    window: &mut Window<Count>,
    now: u64,
    bucket_ms: u64,
    req: Request,
) -> RateLimitDecision {
    let mut later = None;
    let d = decide_absolute_deferred(window, now, bucket_ms, req, &mut later);
    if let Some(w) = later {
        window.apply(w);
    }
    d
}

/// [`decide_absolute`], leaving the write of an admitted request's ring slot in `later` (see
/// [`RingWrite`]): the caller applies it before the window is used again.
#[inline(always)]
pub(crate) fn decide_absolute_deferred(
    window: &mut Window<Count>,
    now: u64,
    bucket_ms: u64,
    req: Request,
    later: &mut Option<RingWrite<Count>>,
) -> RateLimitDecision {
    let Request { limits, n, record } = req;
    let w_eff = limits.window_ms;
    let cap = limits.capacity;
    // Only a recording call may move the key's span; reads and probes never do.
    let untrimmed = window.advance_lazy(now, w_eff, record && n > 0);
    if n > cap {
        return never_admissible(cap, w_eff);
    }
    // A probe (n = 0) gets the decision a unit request would get.
    let need = n.max(1);
    if untrimmed {
        // Everything held, expired or not, bounds the live sum: room in it is room in the
        // window, decided without reading the oldest buckets.
        if window.total_held().saturating_add(need) <= cap {
            if record && n > 0 {
                *later = window.record_deferred(now, bucket_ms, w_eff, n);
            }
            return RateLimitDecision::Allowed;
        }
        window.finish_advance(now);
    }
    let live = window.live(now, w_eff);
    if live.saturating_add(need) <= cap {
        if record && n > 0 {
            *later = window.record_deferred(now, bucket_ms, w_eff, n);
        }
        return RateLimitDecision::Allowed;
    }
    rejection(window, now, w_eff, cap, need, live)
}

/// The rejection of `need` at `now`: walks the live buckets oldest first until enough has
/// expired. Kept out of line so the admission path stays small.
#[inline(never)]
fn rejection(
    window: &Window<Count>,
    now: u64,
    w_eff: u64,
    cap: u64,
    need: u64,
    live: u64,
) -> RateLimitDecision {
    // A bucket leaves this call's count at its start + W_eff, or earlier if it leaves the
    // key's span first (a read at a window longer than the span does not extend it).
    let expiry = w_eff.min(window.span_ms());
    let mut remaining_live = live;
    let mut retry_at = now;
    for b in window.live_buckets(now, w_eff) {
        remaining_live = remaining_live.saturating_sub(b.counts);
        retry_at = b.start.saturating_add(expiry);
        if remaining_live.saturating_add(need) <= cap {
            break;
        }
    }
    // Buckets live at `retry_at` are exactly those counted in `remaining_live` (all started
    // after the expiring one, and none expires earlier).
    RateLimitDecision::Rejected {
        retry_after_ms: retry_at.saturating_sub(now),
        remaining_after_waiting: cap.saturating_sub(remaining_live),
        window: Duration::from_millis(w_eff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::RETRY_NEVER;
    use crate::rate::Limits;

    fn req(window_ms: u64, capacity: u64, n: u64) -> Request {
        Request {
            limits: Limits {
                window_ms,
                capacity,
                hard: capacity,
            },
            n,
            record: true,
        }
    }

    fn rejected(retry_after_ms: u64, remaining: u64, w: u64) -> RateLimitDecision {
        RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting: remaining,
            window: Duration::from_millis(w),
        }
    }

    #[test]
    fn admits_up_to_capacity_then_rejects_with_tight_retry() {
        let mut w = Window::new();
        for t in [0, 100, 200] {
            assert_eq!(
                decide_absolute(&mut w, t, 10, req(1000, 3, 1)),
                RateLimitDecision::Allowed
            );
        }
        // at 500: full; the oldest bucket (0) expires at 1000
        assert_eq!(
            decide_absolute(&mut w, 500, 10, req(1000, 3, 1)),
            rejected(500, 1, 1000)
        );
        // a weight of 2 must wait for the second bucket too
        assert_eq!(
            decide_absolute(&mut w, 500, 10, req(1000, 3, 2)),
            rejected(600, 2, 1000)
        );
        assert_eq!(
            decide_absolute(&mut w, 999, 10, req(1000, 3, 1)),
            rejected(1, 1, 1000)
        );
        assert_eq!(
            decide_absolute(&mut w, 1000, 10, req(1000, 3, 1)),
            RateLimitDecision::Allowed
        );
    }

    #[test]
    fn oversized_weight_is_never_admissible() {
        let mut w = Window::new();
        let d = decide_absolute(&mut w, 0, 10, req(1000, 3, 4));
        assert_eq!(d, rejected(RETRY_NEVER, 3, 1000));
        assert!(d.is_never_admissible());
        assert!(w.is_empty());
    }

    #[test]
    fn probe_records_nothing() {
        let mut w = Window::new();
        assert_eq!(
            decide_absolute(&mut w, 0, 10, req(1000, 1, 0)),
            RateLimitDecision::Allowed
        );
        assert!(w.is_empty());
        assert_eq!(
            decide_absolute(&mut w, 0, 10, req(1000, 1, 1)),
            RateLimitDecision::Allowed
        );
        assert_eq!(
            decide_absolute(&mut w, 5, 10, req(1000, 1, 0)),
            rejected(995, 1, 1000)
        );
    }

    /// The rule as it was before the lazy trim and the deferred write: trim first, always.
    fn decide_eager(
        window: &mut Window<Count>,
        now: u64,
        g: u64,
        req: Request,
    ) -> RateLimitDecision {
        let Request { limits, n, record } = req;
        let (w_eff, cap) = (limits.window_ms, limits.capacity);
        window.advance(now, w_eff, record && n > 0);
        if n > cap {
            return never_admissible(cap, w_eff);
        }
        let need = n.max(1);
        let live = window.live(now, w_eff);
        if live.saturating_add(need) <= cap {
            if record && n > 0 {
                window.record(now, g, w_eff, n);
            }
            return RateLimitDecision::Allowed;
        }
        rejection(window, now, w_eff, cap, need, live)
    }

    #[test]
    fn lazy_trim_and_deferred_writes_decide_like_trimming_first() {
        // Random histories over several windows (so spans grow and shrink while expired
        // buckets are still held), capacities near the traffic, probes and reads; the write a
        // decision leaves for later is made just before the next call, as the shard does.
        for seed in 1..=24u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            let (mut lazy, mut eager) = (Window::new(), Window::new());
            let mut later: Option<RingWrite<Count>> = None;
            let mut now = 0u64;
            let g = [1u64, 10, 25][(seed % 3) as usize];
            for step in 0..20_000 {
                now += [0, 1, 3, 9, 40, 300][next(6) as usize] * (1 + next(3));
                let window_ms = [100u64, 250, 1000, 5000][next(4) as usize];
                let most = if next(4) == 0 { 400 } else { 30 };
                let capacity = 1 + next(most);
                let req = Request {
                    limits: Limits {
                        window_ms,
                        capacity,
                        hard: capacity,
                    },
                    n: next(4),
                    record: next(5) != 0,
                };
                if let Some(w) = later.take() {
                    lazy.apply(w);
                }
                let a = decide_absolute_deferred(&mut lazy, now, g, req, &mut later);
                let b = decide_eager(&mut eager, now, g, req);
                assert_eq!(a, b, "seed {seed} step {step} at {now}: {req:?}");
                if step % 7 == 0 {
                    if let Some(w) = later.take() {
                        lazy.apply(w);
                    }
                    for w in [100, 1000, 5000] {
                        assert_eq!(
                            lazy.live_untrimmed(now, w),
                            eager.live_untrimmed(now, w),
                            "seed {seed} step {step}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn untrimmed_buckets_never_outlive_the_32_bit_start() {
        // Buckets kept by a lazy advance must never be held long enough for their 32-bit start
        // to wrap and read as young: a window longer than 2^31 ms, and a long-lived ring at a
        // 10-minute window that never fills.
        let run = |steps: &[(u64, u64, u64, u64)]| {
            let (mut lazy, mut eager) = (Window::new(), Window::new());
            let mut later = None;
            for &(now, window_ms, capacity, n) in steps {
                let req = Request {
                    limits: Limits {
                        window_ms,
                        capacity,
                        hard: capacity,
                    },
                    n,
                    record: true,
                };
                if let Some(w) = later.take() {
                    lazy.apply(w);
                }
                let a = decide_absolute_deferred(&mut lazy, now, 10, req, &mut later);
                let b = decide_eager(&mut eager, now, 10, req);
                assert_eq!(a, b, "at {now}: {req:?}");
            }
            if let Some(w) = later.take() {
                lazy.apply(w);
            }
            let last = steps.last().map_or(0, |s| s.0);
            assert_eq!(
                lazy.live_untrimmed(last, steps[0].1),
                eager.live_untrimmed(last, steps[0].1)
            );
        };
        let (w, c) = (4_000_000_000u64, 4_000_000u64);
        run(&[
            (0, w, c, 3_000_000),
            (3_000_000_000, w, c, 1),
            (4_300_000_000, w, c, 1),
            (4_300_000_001, w, c, 2_000_000),
        ]);
        // 10-minute window: a ring that grew to 64k slots in its first 7 minutes, then one
        // request every 9.8 minutes (the ring never fills, so nothing else trims it) until just
        // past 2^32 ms, when the first buckets' 32-bit starts read as young again
        let (w, c) = (600_000u64, 100_000u64);
        let mut steps: Vec<(u64, u64, u64, u64)> = (0..40_000).map(|i| (i * 11, w, c, 1)).collect();
        let mut t = 440_000;
        while t < (1 << 32) + 100_000 {
            t += 588_000;
            steps.push((t, w, c, 1));
        }
        steps.push((t + 1, w, c, c - 1));
        run(&steps);
    }

    #[test]
    fn rejection_records_nothing() {
        let mut w = Window::new();
        assert_eq!(
            decide_absolute(&mut w, 0, 10, req(1000, 2, 2)),
            RateLimitDecision::Allowed
        );
        for t in 1..50 {
            assert!(!decide_absolute(&mut w, t * 10, 10, req(1000, 2, 1)).is_allowed());
        }
        assert_eq!(w.live(500, 1000), 2);
    }
}
