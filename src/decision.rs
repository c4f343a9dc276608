//! What a call returns: decisions are values, not errors.

use std::time::Duration;

/// `retry_after_ms` of a request that can never be admitted at its rate (its weight exceeds the
/// capacity). See [`RateLimitDecision::is_never_admissible`].
pub const RETRY_NEVER: u64 = u64::MAX;

/// The outcome of one rate-limit decision.
///
/// ```
/// use eyelet::{RateLimit, RateLimitDecision, RateLimiter};
///
/// let rl = RateLimiter::builder().build().unwrap();
/// let rate = RateLimit::try_from(1.0).unwrap(); // C = 1 per 1 s window
/// let abs = rl.local().absolute();
/// assert_eq!(abs.inc("k", &rate, 1), RateLimitDecision::Allowed);
/// match abs.inc("k", &rate, 1) {
///     RateLimitDecision::Rejected { retry_after_ms, remaining_after_waiting, .. } => {
///         assert!(retry_after_ms <= 1000);
///         assert_eq!(remaining_after_waiting, 1);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RateLimitDecision {
    /// Admitted; the weight was recorded.
    Allowed,
    /// Not admitted (absolute strategy, or a request the suppressed strategy can never take).
    /// Nothing was recorded.
    Rejected {
        /// Shortest wait in milliseconds after which the same request would be admitted if no
        /// other traffic arrives; [`RETRY_NEVER`] if it never can at this rate.
        retry_after_ms: u64,
        /// Capacity free at `now + retry_after_ms` (at least the request's weight); for a
        /// never-admissible request, the most this key can take at once.
        remaining_after_waiting: u64,
        /// The effective window length `W_eff` this decision used.
        window: Duration,
    },
    /// The suppressed strategy's answer near or above the soft limit.
    Suppressed {
        /// Whether this request is admitted after all.
        is_allowed: bool,
        /// Fraction of attempts being shed, in `[0, 1]` (1 at the hard limit).
        suppression_factor: f64,
    },
    /// The limiter is at its maximum number of live keys and found no idle key to replace: this
    /// key was not admitted and nothing was recorded (see `RateLimiterBuilder::max_keys`).
    KeyCapacityExceeded,
}

impl RateLimitDecision {
    /// Whether the request was admitted: `Allowed`, or `Suppressed` with `is_allowed`.
    pub fn is_allowed(&self) -> bool {
        match self {
            RateLimitDecision::Allowed => true,
            RateLimitDecision::Suppressed { is_allowed, .. } => *is_allowed,
            RateLimitDecision::Rejected { .. } | RateLimitDecision::KeyCapacityExceeded => false,
        }
    }

    /// Whether this is a rejection of a weight larger than the key can ever take at this rate
    /// (`retry_after_ms == RETRY_NEVER`): retrying the same request is pointless.
    pub fn is_never_admissible(&self) -> bool {
        matches!(
            self,
            RateLimitDecision::Rejected {
                retry_after_ms: RETRY_NEVER,
                ..
            }
        )
    }
}

/// A suppressed key's live state, as returned by [`LocalSuppressed::get`](crate::LocalSuppressed::get).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct SuppressedSnapshot {
    /// Attempted weight in the window (admitted or not); saturates (at `u64::MAX` locally,
    /// 2^53 − 1 on Redis) when a caller attempts absurd weights.
    pub total: u64,
    /// Accepted weight in the key's retained span (the longest window it was recently asked
    /// about). Kept exactly, never derived from the two saturating counts around it; within
    /// any window of a rate that admitted it, at most that rate's hard limit `H`.
    pub accepted: u64,
    /// Declined weight in the window; saturates like [`total`](Self::total).
    pub declined: u64,
    /// The suppression factor a request would see now, at the key's last rate.
    pub suppression_factor: f64,
}

/// A decision with the time it was made at, on the limiter's millisecond clock, and what it
/// was based on.
///
/// Useful for audit logs and to check exactness from the outside: the stamp is the time the
/// shard used for the decision, so an oracle can replay every window.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Stamped {
    /// The decision.
    pub decision: RateLimitDecision,
    /// Milliseconds on the limiter's clock at which it was decided (for the Redis provider,
    /// Redis server time).
    pub at_ms: u64,
    /// What the decision was based on.
    pub source: Source,
}

impl Stamped {
    pub(crate) fn new(decision: RateLimitDecision, at_ms: u64, source: Source) -> Self {
        Self {
            decision,
            at_ms,
            source,
        }
    }
}

/// What a decision was based on (see [`Stamped::source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// This process's own state: the local provider.
    Local,
    /// The Redis script, with Redis's state (the Redis provider).
    Redis,
    /// Hybrid: this instance was the only live one at its last sync, so it decided exactly as
    /// the local provider does (its admissions reach Redis at the next sync).
    HybridSolo,
    /// Hybrid: units Redis reserved for this instance at its last sync (exact across
    /// instances: reserved units already count against the limit everywhere).
    HybridReserve,
    /// Hybrid: a key this instance holds no reserve for yet (first use, or idle since its last
    /// sync): a provisional share of the limit, `C / instances`, until the next sync.
    HybridProvisional,
    /// Hybrid: no sync succeeded recently (Redis unreachable or stalled); the configured
    /// [`OutagePolicy`](crate::OutagePolicy) decided.
    HybridOutage,
}

impl Source {
    /// A number for the source, for tables shared with callers (a lease's grant).
    pub(crate) fn code(self) -> u64 {
        match self {
            Source::Local => 0,
            Source::Redis => 1,
            Source::HybridSolo => 2,
            Source::HybridReserve => 3,
            Source::HybridProvisional => 4,
            Source::HybridOutage => 5,
        }
    }

    /// The source of a [`code`](Self::code) (`Local` for any other number).
    pub(crate) fn from_code(code: u64) -> Self {
        match code {
            1 => Source::Redis,
            2 => Source::HybridSolo,
            3 => Source::HybridReserve,
            4 => Source::HybridProvisional,
            5 => Source::HybridOutage,
            _ => Source::Local,
        }
    }
}
