//! Injectable, seedable randomness for the suppressed strategy.

/// A source of uniform random numbers. Each shard owns one (no sharing, no locks).
///
/// It runs inside shard executors, on behalf of other callers; should it panic, the panic is
/// contained and the draw counts as 0.5.
pub trait RandomSource: Send + 'static {
    /// A uniformly distributed `u64`.
    fn next_u64(&mut self) -> u64;

    /// A uniform sample in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        // 53 random mantissa bits.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64: tiny, fast, statistically solid for shedding decisions; the default source.
///
/// ```
/// use eyelet::{RandomSource, SplitMix64};
///
/// let mut a = SplitMix64::new(7);
/// let mut b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!((0.0..1.0).contains(&a.next_f64()));
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
