//! The suppressed strategy: probabilistic shedding between the soft and the hard limit.
//!
//! The suppression factor comes from the *attempted* rate, measured over the key's observed
//! span: `sf = clamp(1 − R / P, 0, 1)` with target `R = S / W_eff` and `P = T / span`,
//! `span = clamp(now − oldest live bucket, G, W_eff)`. Basing it on accepted traffic would make
//! the accepted rate oscillate; measuring over the whole window would let a young key burst.

use super::{AttemptCounts, Attempts, Request, Window};
use crate::decision::{RateLimitDecision, SuppressedSnapshot};

/// A suppressed key: its window plus the soft limit and window of the last call, so that
/// `get` can report the factor a request would see now.
#[derive(Debug, Default)]
pub(crate) struct SuppressedKey {
    pub(crate) window: Window<AttemptCounts>,
    pub(crate) last_soft: u64,
    pub(crate) last_window_ms: u64,
}

/// The suppression factor at `now` for soft limit `soft` over `w_eff`, for a read: the window
/// was not trimmed at `now`.
pub(crate) fn suppression_factor(
    window: &Window<AttemptCounts>,
    now: u64,
    bucket_ms: u64,
    w_eff: u64,
    soft: u64,
) -> f64 {
    let attempted = window.live_untrimmed(now, w_eff).attempted();
    factor(window, attempted, now, bucket_ms, w_eff, soft)
}

/// `sf = clamp(1 − R/P, 0, 1)` for `attempted` weight live in `window` at `now`.
#[inline]
fn factor(
    window: &Window<AttemptCounts>,
    attempted: u64,
    now: u64,
    bucket_ms: u64,
    w_eff: u64,
    soft: u64,
) -> f64 {
    let oldest = window.oldest_live_start(now, w_eff);
    factor_from(attempted, oldest, now, bucket_ms, w_eff, soft)
}

/// `sf = clamp(1 − R/P, 0, 1)` for `attempted` weight whose oldest live bucket started at
/// `oldest` (`None`: nothing live), measured at `now` on the same clock.
#[inline]
pub(crate) fn factor_from(
    attempted: u64,
    oldest: Option<u64>,
    now: u64,
    bucket_ms: u64,
    w_eff: u64,
    soft: u64,
) -> f64 {
    let Some(oldest) = oldest else { return 0.0 };
    if attempted == 0 {
        return 0.0;
    }
    let span = now
        .saturating_sub(oldest)
        .clamp(bucket_ms.min(w_eff), w_eff.max(1));
    // R / P = (S / W_eff) / (T / span) = S·span / (W_eff·T)
    let ratio = (soft as f64 * span as f64) / (w_eff as f64 * attempted as f64);
    (1.0 - ratio).clamp(0.0, 1.0)
}

/// Records one attempt of a key decided elsewhere (the hybrid provider decides some calls from
/// what Redis reported): notes the call's soft limit and window, and adds `counts` at `now`.
/// Assumes [`Window::advance`] ran at `now` for this call (as a recording call).
#[cfg(feature = "redis")]
pub(crate) fn record_attempt(
    key: &mut SuppressedKey,
    now: u64,
    bucket_ms: u64,
    soft: u64,
    w_eff: u64,
    counts: Attempts,
) {
    key.last_soft = soft;
    key.last_window_ms = w_eff;
    key.window.record(now, bucket_ms, w_eff, counts);
}

/// What `get` reports for a suppressed key at `now`: its attempts in its retained span and the
/// factor a request would see at the key's last rate.
pub(crate) fn snapshot(key: &SuppressedKey, now: u64, bucket_ms: u64) -> SuppressedSnapshot {
    let live: Attempts = key.window.live_untrimmed(now, key.window.span_ms());
    SuppressedSnapshot {
        total: live.attempted(),
        accepted: live.accepted,
        declined: live.declined,
        suppression_factor: suppression_factor(
            &key.window,
            now,
            bucket_ms,
            key.last_window_ms.max(1),
            key.last_soft,
        ),
    }
}

/// Decides `req` at `now` for soft limit `C` and hard limit `H`; `draw` is a uniform sample
/// in `[0, 1)` used only in the probabilistic band.
#[inline]
pub(crate) fn decide_suppressed(
    key: &mut SuppressedKey,
    now: u64,
    bucket_ms: u64,
    req: Request,
    draw: impl FnOnce() -> f64,
) -> RateLimitDecision {
    let Request { limits, n, record } = req;
    let w_eff = limits.window_ms;
    let soft = limits.capacity;
    let hard = limits.hard;
    let window = &mut key.window;
    let recording = record && n > 0;
    // Only a recording call may move the key's span; reads and probes never do.
    window.advance(now, w_eff, recording);
    if recording {
        key.last_soft = soft;
        key.last_window_ms = w_eff;
    }
    let need = n.max(1);
    let live = window.live(now, w_eff);
    // Kept as such (never attempts − declines, which saturate separately).
    let accepted = live.accepted;
    let (decision, declined) = if accepted.saturating_add(need) <= soft {
        (RateLimitDecision::Allowed, false)
    } else if accepted.saturating_add(need) > hard {
        (
            RateLimitDecision::Suppressed {
                is_allowed: false,
                suppression_factor: 1.0,
            },
            true,
        )
    } else {
        let sf = factor(window, live.attempted(), now, bucket_ms, w_eff, soft);
        let is_allowed = sf <= 0.0 || (sf < 1.0 && draw() >= sf);
        (
            RateLimitDecision::Suppressed {
                is_allowed,
                suppression_factor: sf,
            },
            !is_allowed,
        )
    };
    if recording {
        let counts = if declined {
            Attempts {
                accepted: 0,
                declined: n,
            }
        } else {
            Attempts {
                accepted: n,
                declined: 0,
            }
        };
        window.record(now, bucket_ms, w_eff, counts);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Limits;

    fn req(window_ms: u64, capacity: u64, n: u64, hard: u64) -> Request {
        Request {
            limits: Limits {
                window_ms,
                capacity,
                hard,
            },
            n,
            record: true,
        }
    }

    #[test]
    fn soft_then_band_then_hard() {
        let mut k = SuppressedKey::default();
        for t in 0..10 {
            let d = decide_suppressed(&mut k, t, 10, req(1000, 10, 1, 15), || 0.0);
            assert_eq!(d, RateLimitDecision::Allowed);
        }
        // all in one bucket (span clamps to G = 10 ms): P = 10/10ms, far above R
        match decide_suppressed(&mut k, 10, 10, req(1000, 10, 1, 15), || 0.99) {
            RateLimitDecision::Suppressed {
                is_allowed: true,
                suppression_factor,
            } => assert!(suppression_factor > 0.9),
            d => panic!("{d:?}"),
        }
        for _ in 0..4 {
            let d = decide_suppressed(&mut k, 10, 10, req(1000, 10, 1, 15), || 0.9999);
            assert!(d.is_allowed());
        }
        // accepted = 15 = H: hard cutoff
        assert_eq!(
            decide_suppressed(&mut k, 11, 10, req(1000, 10, 1, 15), || 0.99),
            RateLimitDecision::Suppressed {
                is_allowed: false,
                suppression_factor: 1.0
            }
        );
        let live = k.window.live(11, 1000);
        assert_eq!((live.attempted(), live.declined), (16, 1));
    }

    #[test]
    fn h_one_matches_absolute_admission() {
        let mut k = SuppressedKey::default();
        let mut admitted = 0;
        for t in 0..100 {
            if decide_suppressed(&mut k, t, 10, req(1000, 10, 1, 10), || 0.5).is_allowed() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn factor_is_zero_below_target() {
        let mut k = SuppressedKey::default();
        decide_suppressed(&mut k, 0, 10, req(1000, 10, 1, 15), || 0.0);
        assert_eq!(suppression_factor(&k.window, 500, 10, 1000, 10), 0.0);
    }
}
