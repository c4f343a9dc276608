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
        Self { clock, origin }
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
        // Raw counter delta scaled to ns (a multiply and a shift), then to ms.
        self.clock.delta_as_nanos(self.origin, self.clock.raw()) / 1_000_000
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
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            ClockSource::System(c) => c.now_ms(),
            ClockSource::Custom(c) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.now_ms())).unwrap_or(0)
            }
        }
    }
}
