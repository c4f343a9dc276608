//! Pure decision rules: window state, the current time and a request in; a decision out.
//!
//! No atomics, no I/O, no clock reads: the shard actors call these with the time they read, and
//! the unit and property tests call them with a fake one.

mod absolute;
mod suppressed;
mod window;

pub(crate) use absolute::decide_absolute_deferred;
pub(crate) use suppressed::{decide_suppressed, snapshot as suppressed_snapshot, SuppressedKey};
#[cfg(feature = "redis")]
pub(crate) use suppressed::{factor_from as suppression_factor_from, record_attempt};
pub(crate) use window::{AttemptCounts, Attempts, Count, RingWrite, Window};

use std::time::Duration;

use crate::decision::{RateLimitDecision, RETRY_NEVER};
use crate::rate::Limits;

/// The rejection of a weight above `most`, the most a key can take at once at this rate.
#[inline]
pub(crate) fn never_admissible(most: u64, window_ms: u64) -> RateLimitDecision {
    RateLimitDecision::Rejected {
        retry_after_ms: RETRY_NEVER,
        remaining_after_waiting: most,
        window: Duration::from_millis(window_ms),
    }
}

/// One request as the rules see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// Capacity and effective window for this call's rate.
    pub(crate) limits: Limits,
    /// Weight; 0 is a free probe.
    pub(crate) n: u64,
    /// Whether to record (inc) or only answer (is_allowed).
    pub(crate) record: bool,
}
