//! Pure decision rules: window state, the current time and a request in; a decision out.
//!
//! No atomics, no I/O, no clock reads: the shard actors call these with the time they read, and
//! the unit and property tests call them with a fake one.

mod absolute;
mod suppressed;
mod window;

pub(crate) use absolute::decide_absolute;
pub(crate) use suppressed::{decide_suppressed, suppression_factor, SuppressedKey};
pub(crate) use window::{Attempts, Attempts32, Window};

use crate::rate::Limits;

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
