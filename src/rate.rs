//! Validated request rates.

use std::fmt;

/// Smallest accepted rate, in requests per second: one request per 2^32 − 1 ms (≈ 49.7 days).
///
/// Below it the effective window (`ceil(1000 / r)` ms) would not fit the 32-bit millisecond
/// spans a window keeps; such rates are refused with [`RateError::OutOfRange`] rather than
/// enforced over a shorter window. (The design contract asks for 1e-9 req/s; this is the one
/// place eyelet is stricter, so that it is never looser.)
pub const MIN_RATE_PER_SECOND: f64 = 1000.0 / u32::MAX as f64;
/// Largest accepted rate, in requests per second.
pub const MAX_RATE_PER_SECOND: f64 = 1e12;

/// A rate in requests per second: finite, within
/// [`MIN_RATE_PER_SECOND`]..=[`MAX_RATE_PER_SECOND`], never subnormal.
///
/// The rate is taken from each call, not pinned to a key: calling with another rate changes the
/// key's capacity from that call on.
///
/// ```
/// use eyelet::RateLimit;
///
/// let r = RateLimit::try_from(0.5).unwrap(); // one request every 2 s
/// assert_eq!(r.as_per_second(), 0.5);
/// assert_eq!(RateLimit::per_minute(30.0).unwrap(), r);
/// assert!(RateLimit::try_from(f64::NAN).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, PartialOrd)]
pub struct RateLimit {
    per_second: f64,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimit({}/s)", self.per_second)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} req/s", self.per_second)
    }
}

/// Why a number is not a valid rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateError {
    /// NaN.
    NotANumber,
    /// Positive or negative infinity.
    Infinite,
    /// Zero or negative.
    NotPositive,
    /// A subnormal float (too small to carry full precision).
    Subnormal,
    /// Below [`MIN_RATE_PER_SECOND`] or above [`MAX_RATE_PER_SECOND`] requests per second.
    OutOfRange,
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateError::NotANumber => "rate is NaN",
            RateError::Infinite => "rate is infinite",
            RateError::NotPositive => "rate must be greater than zero",
            RateError::Subnormal => "rate is a subnormal float",
            RateError::OutOfRange => {
                "rate is outside 2.33e-7..=1e12 requests per second (one per 49.7 days to 1e12)"
            }
        })
    }
}

impl std::error::Error for RateError {}

impl RateLimit {
    /// One request per second.
    pub const ONE: RateLimit = RateLimit { per_second: 1.0 };

    /// A rate of `n` requests per second.
    ///
    /// # Errors
    /// [`RateError`] for NaN, infinities, zero, negatives, subnormals and values outside the
    /// accepted range.
    pub fn per_second(n: f64) -> Result<Self, RateError> {
        check_number(n)?;
        if !(MIN_RATE_PER_SECOND..=MAX_RATE_PER_SECOND).contains(&n) {
            return Err(RateError::OutOfRange);
        }
        Ok(Self { per_second: n })
    }

    /// A rate of `n` requests per minute.
    ///
    /// # Errors
    /// As [`per_second`](Self::per_second), applied to `n / 60`.
    pub fn per_minute(n: f64) -> Result<Self, RateError> {
        Self::scaled(n, 60.0)
    }

    /// A rate of `n` requests per hour.
    ///
    /// # Errors
    /// As [`per_second`](Self::per_second), applied to `n / 3600`.
    pub fn per_hour(n: f64) -> Result<Self, RateError> {
        Self::scaled(n, 3600.0)
    }

    /// A rate of `n` requests per day.
    ///
    /// # Errors
    /// As [`per_second`](Self::per_second), applied to `n / 86400`.
    pub fn per_day(n: f64) -> Result<Self, RateError> {
        Self::scaled(n, 86_400.0)
    }

    fn scaled(n: f64, seconds: f64) -> Result<Self, RateError> {
        check_number(n)?;
        Self::per_second(n / seconds)
    }

    /// Requests per second.
    pub fn as_per_second(&self) -> f64 {
        self.per_second
    }
}

fn check_number(n: f64) -> Result<(), RateError> {
    if n.is_nan() {
        Err(RateError::NotANumber)
    } else if n.is_infinite() {
        Err(RateError::Infinite)
    } else if n <= 0.0 {
        Err(RateError::NotPositive)
    } else if n.is_subnormal() {
        Err(RateError::Subnormal)
    } else {
        Ok(())
    }
}

impl TryFrom<f64> for RateLimit {
    type Error = RateError;

    /// Requests per second; see [`RateLimit::per_second`].
    fn try_from(n: f64) -> Result<Self, RateError> {
        Self::per_second(n)
    }
}

/// Relative distance within which a `W·r` product counts as the integer next to it: a few
/// units in the last place, the error of the two or three float operations that produced it,
/// so that a decimal rate whose binary float is a hair off its value (e.g. `0.3 × 10 s`) still
/// yields the capacity a person expects, while a real fraction (`1e12 + 0.25`) is not rounded.
const ROUNDING_SLACK: f64 = 8.0 * f64::EPSILON;
/// The most that relative slack may be, in units: far below half a unit, so that a huge product
/// with a real fraction (`2^51 + 0.5`) is floored, not rounded up. (Above about 5·10^11 per
/// window the slack is this cap, and a product a float step below an integer floors to the
/// integer below.)
const MAX_ROUNDING_SLACK: f64 = 1.0 / 1024.0;

/// The slack allowed around `x`: relative, capped in absolute terms.
#[inline]
fn slack(x: f64) -> f64 {
    (x * ROUNDING_SLACK).min(MAX_ROUNDING_SLACK)
}

/// `floor(x)` for `x ≥ 0`, or the integer just above if `x` is within float noise of it.
/// Plain casts, no libm call: this runs on every decision.
#[inline]
fn floor_tolerant(x: f64) -> u64 {
    // `as` truncates (= floor for x ≥ 0) and saturates at u64::MAX.
    let f = x as u64;
    let up = f.saturating_add(1);
    if f as f64 != x && up as f64 - x <= slack(x) {
        up
    } else {
        f
    }
}

/// `ceil(x)` for `x ≥ 0`, or the integer just below if `x` is within float noise of it.
#[inline]
fn ceil_tolerant(x: f64) -> u64 {
    let f = x as u64;
    if f as f64 == x || x - f as f64 <= slack(x) {
        f
    } else {
        f.saturating_add(1)
    }
}

/// Window length, capacity and hard limit for one call: the numbers the decision rules use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `W_eff` in milliseconds.
    pub(crate) window_ms: u64,
    /// `C = floor(W_eff·r)`, at least 1 (the suppressed strategy's soft limit `S`).
    pub(crate) capacity: u64,
    /// The suppressed strategy's hard limit `H = floor(W_eff·r·h)`, at least `C`.
    pub(crate) hard: u64,
}

impl Limits {
    /// The limits of rate `rate` on a limiter with window `window_ms` and hard-limit factor `h`.
    #[inline]
    pub(crate) fn new(window_ms: u64, rate: &RateLimit, h: f64) -> Self {
        let per_ms = rate.per_second * 0.001;
        let mut capacity = floor_tolerant(window_ms as f64 * per_ms);
        let window_ms = if capacity == 0 {
            // W·r < 1: stretch to the shortest whole-millisecond window that holds one request.
            let stretched = ceil_tolerant(1000.0 / rate.per_second).max(window_ms);
            capacity = floor_tolerant(stretched as f64 * per_ms);
            stretched
        } else {
            window_ms
        };
        let capacity = capacity.max(1);
        let hard = floor_product(window_ms, rate.per_second, h).max(capacity);
        Self {
            window_ms,
            capacity,
            hard,
        }
    }
}

#[inline]
fn floor_product(window_ms: u64, r: f64, factor: f64) -> u64 {
    floor_tolerant(window_ms as f64 * r * 0.001 * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(window_ms: u64, r: f64) -> (u64, u64) {
        let l = Limits::new(
            window_ms,
            &RateLimit::per_second(r).unwrap_or(RateLimit::ONE),
            1.0,
        );
        (l.window_ms, l.capacity)
    }

    #[test]
    fn capacity_and_stretching() {
        assert_eq!(limits(1000, 10.0), (1000, 10));
        assert_eq!(limits(2000, 5.5), (2000, 11));
        assert_eq!(limits(1000, 0.5), (2000, 1));
        assert_eq!(limits(1000, 0.4), (2500, 1));
        assert_eq!(limits(10_000, 0.3), (10_000, 3));
        assert_eq!(limits(1000, 0.3), (3334, 1));
        let slowest = limits(1000, MIN_RATE_PER_SECOND);
        assert_eq!(slowest, (u64::from(u32::MAX), 1));
        assert_eq!(limits(3_600_000, 1e12).1, 3_600_000_000_000_000);
        // a real fraction at a large magnitude is floored, not rounded up
        assert_eq!(limits(2000, 5e11 + 0.25).1, 1_000_000_000_000);
    }

    /// Huge products with a real fraction are floored (issue 7.10: the relative slack reached
    /// whole units there, rounding `2^51 + 0.5` up).
    #[test]
    fn huge_products_are_floored() {
        let big = (1u64 << 51) as f64;
        for (x, want) in [
            (big + 0.5, 1u64 << 51),
            ((1u64 << 50) as f64 + 0.75, 1u64 << 50),
            (big - 0.5, (1u64 << 51) - 1),
            (4.0e15 + 0.5, 4_000_000_000_000_000),
            (1e14 + 0.9, 100_000_000_000_000),
        ] {
            assert_eq!(floor_tolerant(x), want, "{x}");
        }
        // float noise on ordinary products is still absorbed
        assert_eq!(floor_tolerant(2.9999999999999996), 3);
        assert_eq!(floor_tolerant(699_999_999_999.999_9), 700_000_000_000);
        assert_eq!(ceil_tolerant(3.0000000000000004), 3);
    }

    #[test]
    fn hard_limit() {
        let r = RateLimit::per_second(10.0).unwrap_or(RateLimit::ONE);
        assert_eq!(Limits::new(1000, &r, 1.5).hard, 15);
        assert_eq!(Limits::new(1000, &r, 1.0).hard, 10);
        assert_eq!(Limits::new(1000, &RateLimit::ONE, 1.9).hard, 1);
    }

    #[test]
    fn unit_constructors() {
        assert_eq!(RateLimit::per_minute(60.0), RateLimit::per_second(1.0));
        assert_eq!(RateLimit::per_hour(f64::NAN), Err(RateError::NotANumber));
        assert_eq!(RateLimit::per_minute(-1.0), Err(RateError::NotPositive));
        assert_eq!(RateLimit::per_day(1e-6), Err(RateError::OutOfRange));
    }
}
