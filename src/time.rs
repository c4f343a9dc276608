//! Injectable monotonic time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic millisecond clock. Implement it to drive a limiter's time in tests or
/// simulations; the default is [`SystemClock`].
///
/// The limiter never lets a shard's time go backwards, even if the clock does. `now_ms` runs
/// inside shard executors, on behalf of other callers; should it panic, the panic is contained
/// and the shard's time simply does not advance for that reading.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since an arbitrary, fixed origin.
    fn now_ms(&self) -> u64;
}

/// The default clock: the processor's monotonic counter via `quanta` (a few ns per read),
/// counted from the limiter's creation.
#[derive(Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: u64,
    /// Milliseconds per raw tick, as a 64.64 fixed-point fraction: `ms = ticks · per_tick >> 64`
    /// (one multiply, no division).
    per_tick: u64,
}

impl fmt::Debug for SystemClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemClock").finish_non_exhaustive()
    }
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        // quanta's own scale, read once: the nanoseconds of 2^32 ticks.
        let ns_per_2_32_ticks = u128::from(clock.delta_as_nanos(1, 1 + (1 << 32)));
        let per_tick = u64::try_from((ns_per_2_32_ticks << 32) / 1_000_000).unwrap_or(u64::MAX);
        Self {
            clock,
            origin,
            per_tick,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // Raw counter delta scaled to ms: one multiply (a counter behind the origin, which a
        // core's unsynchronised counter could be, reads as the origin).
        self.ms_of(self.clock.raw().saturating_sub(self.origin))
    }
}

impl SystemClock {
    /// Whole milliseconds of `ticks` raw counter ticks.
    #[inline(always)]
    fn ms_of(&self, ticks: u64) -> u64 {
        ((u128::from(ticks) * u128::from(self.per_tick)) >> 64) as u64
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use eyelet::{ManualClock, RateLimit, RateLimitDecision, RateLimiter};
///
/// let clock = ManualClock::new();
/// let rl = RateLimiter::builder().clock(clock.clone()).build().unwrap();
/// let rate = RateLimit::try_from(1.0).unwrap();
/// assert!(rl.local().absolute().inc("k", &rate, 1).is_allowed());
/// assert!(!rl.local().absolute().inc("k", &rate, 1).is_allowed());
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(rl.local().absolute().inc("k", &rate, 1), RateLimitDecision::Allowed);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at 0 ms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (whole milliseconds; saturating).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Sets the clock to `ms` milliseconds (moving it back is allowed; shards never go back).
    pub fn set_ms(&self, ms: u64) {
        self.now.store(ms, Ordering::Release);
    }

    /// The current reading in milliseconds.
    pub fn ms(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms()
    }
}

/// The clock a limiter uses: the system clock without dynamic dispatch, or an injected one.
#[derive(Clone)]
pub(crate) enum ClockSource {
    System(SystemClock),
    Custom(Arc<dyn Clock>),
}

impl fmt::Debug for ClockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockSource::System(_) => f.write_str("SystemClock"),
            ClockSource::Custom(_) => f.write_str("CustomClock"),
        }
    }
}

impl ClockSource {
    /// The current time. A panicking custom clock is contained here (it would otherwise
    /// unwind through a shard executor serving other callers): the reading is 0, which the
    /// shard's never-backwards rule turns into "time did not advance".
    ///
    /// Always inlined, the custom path kept out of line: the system clock's read is a few
    /// instructions on every decision, and a profile of a build with a little more code on
    /// the decision path (the `metrics` feature) showed this call no longer inlined.
    #[inline(always)]
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            ClockSource::System(c) => c.now_ms(),
            ClockSource::Custom(c) => custom_now_ms(c),
        }
    }
}

#[cold]
#[inline(never)]
fn custom_now_ms(c: &Arc<dyn Clock>) -> u64 {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.now_ms())).unwrap_or(0)
}

#[cfg(all(test, not(eyelet_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_converts_ticks_to_milliseconds_as_quanta_scales_them() {
        // The one-multiply conversion against quanta's own (a multiply, a shift and a
        // division), from a tick to years of ticks: never more than 1 ms apart (the two round
        // down at slightly different points), and never going backwards.
        let c = SystemClock::new();
        let mut last = 0;
        let mut ticks = 1u64;
        while ticks < 1 << 60 {
            for t in [ticks, ticks + ticks / 3, ticks * 2 - 1] {
                let ours = c.ms_of(t);
                let theirs = c.clock.delta_as_nanos(1, 1 + t) / 1_000_000;
                assert!(
                    ours.abs_diff(theirs) <= 1,
                    "{t} ticks: {ours} vs {theirs} ms"
                );
                assert!(ours >= last, "{t} ticks went back");
                last = ours;
            }
            ticks *= 2;
        }
    }
}
