//! Waiting until a request is admitted: the `acquire` methods of every handle.
//!
//! A waiter sleeps on what each decision says (the retry hint of a rejection; a bucket width
//! for a suppressed denial, which carries no hint), never busy-loops, and gives up at its
//! deadline. One loop serves every provider: the async form sleeps on tokio's timer, the
//! blocking form on the calling thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::decision::{RateLimitDecision, RETRY_NEVER};
use crate::random::{RandomSource, SplitMix64};
use crate::shard::Shared;

/// Why an `acquire` call returned without admitting its request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AcquireError {
    /// The deadline passed first. `last` is the last decision the waiter got.
    DeadlineExceeded {
        /// The last decision (a rejection or a suppressed denial).
        last: RateLimitDecision,
    },
    /// The weight is more than the key can ever take at this rate (`n > C`, or beyond the
    /// hard limit for the suppressed strategy): returned at once, since waiting cannot help.
    NeverAdmissible {
        /// The decision that said so (`Rejected` with `retry_after_ms == RETRY_NEVER`).
        last: RateLimitDecision,
    },
    /// The Redis provider failed; returned at once (the caller decides whether to retry).
    #[cfg(feature = "redis")]
    Redis(crate::RedisError),
    /// A Redis handle's `acquire_blocking` was called where a tokio runtime drives async
    /// code on the calling thread (inside `block_on`): blocking it could stall the calls it
    /// waits for. Use `acquire` there, or call from `spawn_blocking`.
    #[cfg(feature = "redis")]
    InsideRuntime,
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::DeadlineExceeded { .. } => {
                f.write_str("the deadline passed before the request was admitted")
            }
            AcquireError::NeverAdmissible { .. } => {
                f.write_str("the request is larger than the key can ever admit at this rate")
            }
            #[cfg(feature = "redis")]
            AcquireError::Redis(e) => write!(f, "redis: {e}"),
            #[cfg(feature = "redis")]
            AcquireError::InsideRuntime => {
                f.write_str("acquire_blocking on a Redis handle called from a tokio runtime thread")
            }
        }
    }
}

impl std::error::Error for AcquireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "redis")]
            AcquireError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

/// How a waiter paces itself: the limiter's bucket width `G` (the wait after a denial that
/// carries no hint) and the jitter fraction (see
/// [`RateLimiterBuilder::acquire_jitter`](crate::RateLimiterBuilder::acquire_jitter)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacing {
    pub(crate) bucket_ms: u64,
    pub(crate) jitter: f64,
}

/// What a waiter does after a decision.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    Done(Result<RateLimitDecision, AcquireError>),
    /// Sleep this long, then decide again.
    Sleep(Duration),
}

/// A jitter draw in `[0, 1)`: the crate's SplitMix64, seeded from a process-wide sequence
/// (waiters need spread, not reproducibility).
fn jitter_draw() -> f64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SplitMix64::new(SEQ.fetch_add(1, Ordering::Relaxed)).next_f64()
}

impl Pacing {
    /// A limiter's pacing.
    pub(crate) fn of(shared: &Shared) -> Self {
        Self {
            bucket_ms: shared.bucket_ms,
            jitter: shared.acquire_jitter,
        }
    }

    /// The next step after decision `d`: done if admitted or never admissible, else the wait
    /// it implies (at least 1 ms; the retry hint, or `G` without one) stretched by up to the
    /// jitter fraction.
    pub(crate) fn step(&self, d: RateLimitDecision) -> Step {
        let ms = match d {
            RateLimitDecision::Allowed => return Step::Done(Ok(d)),
            RateLimitDecision::Suppressed {
                is_allowed: true, ..
            } => return Step::Done(Ok(d)),
            RateLimitDecision::Rejected { retry_after_ms, .. } if retry_after_ms == RETRY_NEVER => {
                return Step::Done(Err(AcquireError::NeverAdmissible { last: d }))
            }
            RateLimitDecision::Rejected { retry_after_ms, .. } => retry_after_ms,
            // no hint: the suppression factor and the key table change as buckets expire
            RateLimitDecision::Suppressed { .. } | RateLimitDecision::KeyCapacityExceeded => {
                self.bucket_ms
            }
        };
        let ms = ms.max(1) as f64;
        let stretched = ms * (1.0 + self.jitter * jitter_draw());
        Step::Sleep(Duration::from_secs_f64(stretched.min(1e9) / 1000.0))
    }
}

/// The wait before the next decision, cut at the deadline, and whether it was cut (the waiter
/// then gives up when it wakes).
fn until_next(wait: Duration, deadline: Option<Instant>) -> (Duration, bool) {
    match deadline {
        None => (wait, false),
        Some(dl) => {
            let left = dl.saturating_duration_since(Instant::now());
            if wait >= left {
                (left, true)
            } else {
                (wait, false)
            }
        }
    }
}

/// The blocking waiter: decides with `decide`, sleeps the calling thread between tries.
pub(crate) fn blocking<E>(
    pacing: Pacing,
    deadline: Option<Instant>,
    mut decide: impl FnMut() -> Result<RateLimitDecision, E>,
    wrap: impl Fn(E) -> AcquireError,
) -> Result<RateLimitDecision, AcquireError> {
    loop {
        let d = decide().map_err(&wrap)?;
        match pacing.step(d.clone()) {
            Step::Done(r) => return r,
            Step::Sleep(wait) => {
                let (sleep, last) = until_next(wait, deadline);
                std::thread::sleep(sleep);
                if last {
                    return Err(AcquireError::DeadlineExceeded { last: d });
                }
            }
        }
    }
}

/// The async waiter: decides with `decide`, sleeps on tokio's timer between tries.
#[cfg(feature = "tokio")]
pub(crate) async fn waiting<E, F, Fut>(
    pacing: Pacing,
    deadline: Option<Instant>,
    mut decide: F,
    wrap: impl Fn(E) -> AcquireError,
) -> Result<RateLimitDecision, AcquireError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<RateLimitDecision, E>>,
{
    loop {
        let d = decide().await.map_err(&wrap)?;
        match pacing.step(d.clone()) {
            Step::Done(r) => return r,
            Step::Sleep(wait) => {
                let (sleep, last) = until_next(wait, deadline);
                tokio::time::sleep(sleep).await;
                if last {
                    return Err(AcquireError::DeadlineExceeded { last: d });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(ms: u64) -> RateLimitDecision {
        RateLimitDecision::Rejected {
            retry_after_ms: ms,
            remaining_after_waiting: 1,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn each_decision_maps_to_its_step() {
        let p = Pacing {
            bucket_ms: 10,
            jitter: 0.0,
        };
        assert_eq!(
            p.step(RateLimitDecision::Allowed),
            Step::Done(Ok(RateLimitDecision::Allowed))
        );
        assert_eq!(
            p.step(rejected(RETRY_NEVER)),
            Step::Done(Err(AcquireError::NeverAdmissible {
                last: rejected(RETRY_NEVER)
            }))
        );
        assert_eq!(
            p.step(rejected(250)),
            Step::Sleep(Duration::from_millis(250))
        );
        assert_eq!(p.step(rejected(0)), Step::Sleep(Duration::from_millis(1)));
        let denied = RateLimitDecision::Suppressed {
            is_allowed: false,
            suppression_factor: 0.5,
        };
        assert_eq!(p.step(denied), Step::Sleep(Duration::from_millis(10)));
        assert_eq!(
            p.step(RateLimitDecision::KeyCapacityExceeded),
            Step::Sleep(Duration::from_millis(10))
        );
    }

    #[test]
    fn jitter_stretches_a_wait_by_up_to_its_fraction_and_spreads_waiters() {
        let p = Pacing {
            bucket_ms: 10,
            jitter: 0.5,
        };
        let waits: Vec<Duration> = (0..200)
            .map(|_| match p.step(rejected(100)) {
                Step::Sleep(w) => w,
                Step::Done(r) => panic!("{r:?}"),
            })
            .collect();
        assert!(waits
            .iter()
            .all(|w| (Duration::from_millis(100)..Duration::from_millis(150)).contains(w)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 150, "spread: {}", distinct.len());
    }

    #[test]
    fn a_blocking_waiter_gives_up_at_its_deadline() {
        let p = Pacing {
            bucket_ms: 10,
            jitter: 0.0,
        };
        let start = Instant::now();
        let mut tries = 0;
        let r = blocking(
            p,
            Some(start + Duration::from_millis(30)),
            || {
                tries += 1;
                Ok::<_, std::convert::Infallible>(rejected(1000))
            },
            |e| match e {},
        );
        assert_eq!(
            r,
            Err(AcquireError::DeadlineExceeded {
                last: rejected(1000)
            })
        );
        assert_eq!(tries, 1, "one decision, then a sleep to the deadline");
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
