//! The per-key sliding window: buckets of coalesced requests, stored compactly.
//!
//! A bucket is 12 bytes for absolute (32-bit wrapping start time, 64-bit count kept as two
//! 32-bit halves so the bucket needs only 4-byte alignment) and 20 for suppressed; a key keeps its
//! buckets in a ring whose header lives inline in its 48-byte window (a single bucket is implied
//! by the newest start and the running total: no heap, no bucket bytes), so a decision touches the
//! entry and at most the two ends of one small buffer. One call adds at most one bucket, whatever
//! its weight.
//!
//! Start times are kept as `u32` milliseconds and compared by wrapping difference. That is exact
//! because a window never holds a bucket older than its span, which is below 2^32 ms
//! (`MAX_WINDOW` and `MIN_RATE_PER_SECOND` keep every effective window within it): whenever the
//! newest activity (kept in full) is a span or more in the past, the whole ring is dropped unread.

/// A `u64` stored as two `u32` halves (4-byte alignment keeps buckets at 12 bytes).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Split64 {
    lo: u32,
    hi: u32,
}

impl Split64 {
    #[inline(always)]
    fn get(self) -> u64 {
        u64::from(self.lo) | (u64::from(self.hi) << 32)
    }

    #[inline(always)]
    fn new(v: u64) -> Self {
        Self {
            lo: v as u32,
            hi: (v >> 32) as u32,
        }
    }
}

/// Counters one bucket carries: a weight for absolute, attempts and declines for suppressed.
pub(crate) trait Counts: Copy + Default + std::fmt::Debug + Send + 'static {
    /// The same counters as plain 64-bit numbers (also their sums over buckets).
    type Wide: Copy + Default + std::fmt::Debug + PartialEq + Send + 'static;
    /// The counters as numbers.
    fn widen(self) -> Self::Wide;
    /// The bucket counters holding `wide`.
    fn narrow(wide: &Self::Wide) -> Self;
    /// `a += b`, saturating.
    fn add_wide(a: &mut Self::Wide, b: &Self::Wide);
    /// `a -= b`, saturating (only recorded counts are ever removed).
    fn sub_wide(a: &mut Self::Wide, b: &Self::Wide);
    /// Whether a young newest bucket holding `self` may take `incoming`.
    fn joinable(&self, incoming: &Self::Wide) -> bool;
}

/// The absolute strategy's bucket counter: admitted weight.
pub(crate) type Count = Split64;

impl Counts for Split64 {
    type Wide = u64;
    #[inline(always)]
    fn widen(self) -> u64 {
        self.get()
    }
    #[inline(always)]
    fn narrow(wide: &u64) -> Self {
        Self::new(*wide)
    }
    #[inline(always)]
    fn add_wide(a: &mut u64, b: &u64) {
        *a = a.saturating_add(*b);
    }
    #[inline(always)]
    fn sub_wide(a: &mut u64, b: &u64) {
        *a = a.saturating_sub(*b);
    }
    #[inline(always)]
    fn joinable(&self, _: &u64) -> bool {
        true
    }
}

/// Attempted and declined weight in one bucket (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct AttemptCounts {
    total: Split64,
    declined: Split64,
}

/// Attempted and declined weight as numbers, and summed over buckets (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Every attempt, admitted or not.
    pub(crate) total: u64,
    /// Attempts that were declined.
    pub(crate) declined: u64,
}

impl Counts for AttemptCounts {
    type Wide = Attempts;
    #[inline(always)]
    fn widen(self) -> Attempts {
        Attempts {
            total: self.total.get(),
            declined: self.declined.get(),
        }
    }
    #[inline(always)]
    fn narrow(w: &Attempts) -> Self {
        Self {
            total: Split64::new(w.total),
            declined: Split64::new(w.declined),
        }
    }
    #[inline(always)]
    fn add_wide(a: &mut Attempts, b: &Attempts) {
        a.total = a.total.saturating_add(b.total);
        a.declined = a.declined.saturating_add(b.declined);
    }
    #[inline(always)]
    fn sub_wide(a: &mut Attempts, b: &Attempts) {
        a.total = a.total.saturating_sub(b.total);
        a.declined = a.declined.saturating_sub(b.declined);
    }
    /// Accepted weight joins only a bucket that holds accepted weight: then the accepted weight
    /// is bucketed exactly as the absolute strategy buckets admissions (a decline-only bucket is
    /// opened only when every earlier bucket is at least `G` old), which makes `h = 1` admit
    /// exactly what absolute admits.
    #[inline(always)]
    fn joinable(&self, incoming: &Attempts) -> bool {
        self.total.get() > self.declined.get() || incoming.total == incoming.declined
    }
}

/// Requests coalesced into one bucket: they all carry the bucket's start time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket<C> {
    /// Low 32 bits of the start time in ms.
    start: u32,
    counts: C,
}

/// A bucket as read back: full start time and wide counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LiveBucket<W> {
    pub(crate) start: u64,
    pub(crate) counts: W,
}

/// One key's window. Buckets are kept for `span` milliseconds: the longest effective window
/// the key was asked about recently (a call with a shorter one counts only its own part).
///
/// Storage has two modes. With `buf` empty, the window holds `len ∈ {0, 1}` buckets and the one
/// bucket is implied: it starts at `newest` and holds `total` (a key with one bucket, the common
/// idle case, needs no heap and no bucket bytes). Otherwise `buf` is a ring (power-of-two
/// capacity, so positions are masked, not divided) holding all `len` buckets oldest first from
/// `head`.
#[derive(Debug)]
pub(crate) struct Window<C: Counts> {
    buf: Box<[Bucket<C>]>,
    head: u32,
    len: u32,
    /// Sum of all buckets held.
    total: C::Wide,
    /// Start of the newest bucket, in full.
    newest: u64,
    span: u32,
    /// Low 32 bits of the time `span` was last confirmed by a call asking for it.
    span_seen: u32,
}

impl<C: Counts> Default for Window<C> {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn low(t: u64) -> u32 {
    t as u32
}

/// Smallest ring allocated when a second bucket arrives.
const MIN_RING: usize = 4;

impl<C: Counts> Window<C> {
    /// An empty window.
    pub(crate) fn new() -> Self {
        Self {
            buf: Box::new([]),
            head: 0,
            len: 0,
            total: C::Wide::default(),
            newest: 0,
            span: 0,
            span_seen: 0,
        }
    }

    /// Whether the window holds no bucket.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn ring_mode(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The `i`-th bucket, oldest first.
    #[inline]
    fn bucket(&self, i: usize) -> Option<Bucket<C>> {
        if i >= self.len as usize {
            return None;
        }
        if !self.ring_mode() {
            return Some(Bucket {
                start: low(self.newest),
                counts: C::narrow(&self.total),
            });
        }
        let idx = (self.head as usize + i) & (self.buf.len() - 1);
        self.buf.get(idx).copied()
    }

    /// Start of the newest bucket: the key's last recorded activity.
    pub(crate) fn newest_start(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.newest)
    }

    /// The retained span in milliseconds (the longest effective window recently asked for).
    pub(crate) fn span_ms(&self) -> u64 {
        u64::from(self.span)
    }

    /// Whether some bucket may still count for a call at `now` (for the longest window asked).
    pub(crate) fn may_be_live(&self, now: u64) -> bool {
        !self.is_empty() && self.newest.saturating_add(u64::from(self.span)) > now
    }

    /// Full start time of a stored bucket, given that it is younger than 2^32 ms at `now`.
    #[inline]
    fn start_of(b: &Bucket<C>, now: u64) -> u64 {
        now.saturating_sub(u64::from(low(now).wrapping_sub(b.start)))
    }

    /// Forgets every bucket (and frees the ring).
    fn clear(&mut self) {
        if self.ring_mode() {
            self.buf = Box::new([]);
        }
        self.head = 0;
        self.len = 0;
        self.total = C::Wide::default();
    }

    /// Updates the retained span for a call with effective window `w_eff` at `now` and drops
    /// buckets that fell out of it.
    ///
    /// The span grows at once to a longer window and shrinks to a shorter one only when nobody
    /// asked for the longer one during a whole span. A call asking for the current span
    /// confirms it only once half a span has passed since the last confirmation (so a key served
    /// at one window, the common case, changes nothing on most calls, and the Redis provider,
    /// which mirrors this rule, need not write a rejected call back); to still wait a whole span
    /// after the last call that needed it, the span shrinks 1.5 spans after the last
    /// confirmation, i.e. between one and 1.5 spans after that call.
    #[inline(always)]
    pub(crate) fn advance(&mut self, now: u64, w_eff: u64) {
        let w = w_eff.min(u64::from(u32::MAX)) as u32;
        let since = u64::from(low(now).wrapping_sub(self.span_seen));
        let span = u64::from(self.span);
        if w > self.span || since >= span + span / 2 {
            // A longer window, or nobody asked for the longer one during a whole span.
            self.span = w;
            self.span_seen = low(now);
        } else if w == self.span && since >= span / 2 {
            self.span_seen = low(now);
        }
        self.trim(now);
    }

    /// Drops buckets older than the retained span.
    #[inline(always)]
    fn trim(&mut self, now: u64) {
        if self.is_empty() {
            return;
        }
        let span = u64::from(self.span);
        if self.newest.saturating_add(span) <= now {
            // Everything expired (also covers idle times beyond the 32-bit range).
            self.clear();
            return;
        }
        // The newest bucket is live, so only a ring can hold expired ones.
        if !self.ring_mode() {
            return;
        }
        let mask = self.buf.len() - 1;
        while self.len > 1 {
            let front = self.buf[self.head as usize & mask];
            if u64::from(low(now).wrapping_sub(front.start)) < span {
                break;
            }
            C::sub_wide(&mut self.total, &front.counts.widen());
            self.head = ((self.head as usize + 1) & mask) as u32;
            self.len -= 1;
        }
    }

    /// Sum of the buckets live at `now` for effective window `w_eff` (start > now − w_eff).
    /// Assumes [`advance`](Self::advance) ran at `now` (it relies on the trim).
    #[inline(always)]
    pub(crate) fn live(&self, now: u64, w_eff: u64) -> C::Wide {
        if self.is_empty() || self.newest.saturating_add(w_eff) <= now {
            return C::Wide::default();
        }
        if w_eff >= u64::from(self.span) || !self.ring_mode() {
            // Everything retained is inside the window (trimmed on `advance`), or the one
            // bucket is the newest, which is live.
            return self.total;
        }
        let mut sum = C::Wide::default();
        for i in (0..self.len as usize).rev() {
            let Some(b) = self.bucket(i) else { break };
            if u64::from(low(now).wrapping_sub(b.start)) >= w_eff {
                break;
            }
            C::add_wide(&mut sum, &b.counts.widen());
        }
        sum
    }

    /// Like [`live`](Self::live), but correct without a preceding [`advance`](Self::advance)
    /// (reads such as `get` do not trim): sums the buckets that are live at `now`.
    pub(crate) fn live_untrimmed(&self, now: u64, w_eff: u64) -> C::Wide {
        let mut sum = C::Wide::default();
        for b in self.live_buckets(now, w_eff) {
            C::add_wide(&mut sum, &b.counts);
        }
        sum
    }

    /// Live buckets at `now` for `w_eff`, oldest first.
    pub(crate) fn live_buckets(
        &self,
        now: u64,
        w_eff: u64,
    ) -> impl Iterator<Item = LiveBucket<C::Wide>> + '_ {
        let all_expired = self.newest.saturating_add(w_eff) <= now;
        let n = if all_expired { 0 } else { self.len as usize };
        (0..n)
            .filter_map(move |i| self.bucket(i))
            .filter(move |b| u64::from(low(now).wrapping_sub(b.start)) < w_eff)
            .map(move |b| LiveBucket {
                start: Self::start_of(&b, now),
                counts: b.counts.widen(),
            })
    }

    /// Start of the oldest bucket live at `now` for `w_eff`.
    pub(crate) fn oldest_live_start(&self, now: u64, w_eff: u64) -> Option<u64> {
        self.live_buckets(now, w_eff).next().map(|b| b.start)
    }

    /// Appends a bucket, growing the ring or leaving the implied mode (the caller adds its
    /// counts to `total` afterwards).
    fn push_back(&mut self, b: Bucket<C>) {
        if !self.ring_mode() {
            let mut buf = vec![Bucket::default(); MIN_RING].into_boxed_slice();
            let mut n = 0;
            if self.len == 1 {
                buf[0] = Bucket {
                    start: low(self.newest),
                    counts: C::narrow(&self.total),
                };
                n = 1;
            }
            buf[n] = b;
            self.buf = buf;
            self.head = 0;
            self.len = n as u32 + 1;
            return;
        }
        let n = self.len as usize;
        let cap = self.buf.len();
        if n == cap {
            let mut grown = Vec::with_capacity(cap * 2);
            grown.extend((0..n).map(|i| self.buf[(self.head as usize + i) & (cap - 1)]));
            grown.resize(cap * 2, Bucket::default());
            self.buf = grown.into_boxed_slice();
            self.head = 0;
        }
        let idx = (self.head as usize + n) & (self.buf.len() - 1);
        self.buf[idx] = b;
        self.len += 1;
    }

    /// Records `counts` at `now`: joins the newest bucket if it is younger than `bucket_ms`
    /// (and, for suppressed, [`joinable`](Counts::joinable)), else opens a new bucket starting
    /// at `now`. Adds at most one bucket.
    #[inline(always)]
    pub(crate) fn record(&mut self, now: u64, bucket_ms: u64, counts: C::Wide) {
        if self.is_empty() {
            // The first bucket is implied by `newest` and `total`.
            self.len = 1;
            self.total = counts;
            self.newest = now;
            return;
        }
        if now.saturating_sub(self.newest) < bucket_ms {
            if self.ring_mode() {
                let idx = (self.head as usize + self.len as usize - 1) & (self.buf.len() - 1);
                if let Some(b) = self.buf.get_mut(idx) {
                    if b.counts.joinable(&counts) {
                        let mut sum = b.counts.widen();
                        C::add_wide(&mut sum, &counts);
                        b.counts = C::narrow(&sum);
                        C::add_wide(&mut self.total, &counts);
                        return;
                    }
                }
            } else if C::narrow(&self.total).joinable(&counts) {
                // The implied bucket is `total` itself.
                C::add_wide(&mut self.total, &counts);
                return;
            }
        }
        self.push_back(Bucket {
            start: low(now),
            counts: C::narrow(&counts),
        });
        C::add_wide(&mut self.total, &counts);
        self.newest = now;
    }

    /// Number of buckets held.
    #[cfg(test)]
    pub(crate) fn bucket_count(&self) -> usize {
        self.len as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_layout() {
        assert_eq!(std::mem::size_of::<Bucket<Count>>(), 12);
        assert_eq!(std::mem::size_of::<Bucket<AttemptCounts>>(), 20);
        assert_eq!(std::mem::size_of::<Window<Count>>(), 48);
    }

    #[test]
    fn joins_young_bucket_and_opens_new_one() {
        let mut w = Window::<Count>::new();
        w.advance(0, 1000);
        w.record(0, 10, 1);
        w.record(9, 10, 1);
        assert_eq!(w.bucket_count(), 1);
        w.record(10, 10, 1);
        assert_eq!(w.bucket_count(), 2);
        assert_eq!(w.live(10, 1000), 3);
    }

    #[test]
    fn expires_at_start_plus_window() {
        let mut w = Window::<Count>::new();
        w.advance(5, 1000);
        w.record(5, 10, 2);
        assert_eq!(w.live(1004, 1000), 2);
        assert_eq!(w.live(1005, 1000), 0);
        w.advance(1005, 1000);
        assert!(w.is_empty());
    }

    #[test]
    fn reads_without_advance_skip_expired_buckets() {
        let mut w = Window::<Count>::new();
        w.advance(0, 1000);
        w.record(0, 10, 1);
        w.advance(500, 1000);
        w.record(500, 10, 1);
        assert_eq!(w.live_untrimmed(1200, 1000), 1);
        assert_eq!(w.live_untrimmed(1500, 1000), 0);
    }

    #[test]
    fn shorter_call_window_counts_only_its_part() {
        let mut w = Window::<Count>::new();
        w.advance(0, 2000);
        w.record(0, 10, 1);
        w.advance(1500, 1000);
        w.record(1500, 10, 1);
        // the 2000 ms span is still retained: a 1000 ms call sees only the newer bucket
        assert_eq!(w.live(1500, 1000), 1);
        assert_eq!(w.live(1500, 2000), 2);
    }

    #[test]
    fn span_is_confirmed_every_half_span_and_shrinks_a_whole_span_after_its_last_use() {
        let mut w = Window::<Count>::new();
        w.advance(0, 1000);
        w.record(0, 10, 1);
        // asked again for 1000 ms before half a span passed: not a confirmation
        w.advance(400, 1000);
        w.record(400, 10, 1);
        assert_eq!((w.span_ms(), w.span_seen), (1000, 0));
        // a shorter window one span after the confirmation, but only 600 ms after the last call
        // that needed the long one: the span (and the 400 ms bucket) stay
        w.advance(1000, 100);
        assert_eq!(w.span_ms(), 1000);
        assert_eq!(
            w.live(1000, 1000),
            1,
            "the 400 ms bucket still counts for a 1000 ms call"
        );
        // a whole span after that call (1.5 spans after the confirmation): shrinks
        w.advance(1500, 100);
        assert_eq!(w.span_ms(), 100);
        // a confirmation after half a span moves the shrink point with it
        let mut w = Window::<Count>::new();
        w.advance(0, 1000);
        w.advance(500, 1000);
        w.advance(1999, 100);
        assert_eq!(w.span_ms(), 1000);
        w.advance(2000, 100);
        assert_eq!(w.span_ms(), 100);
    }

    #[test]
    fn ring_grows_wraps_and_empties() {
        let mut w = Window::<Count>::new();
        for t in 0..1000u64 {
            w.advance(t * 10, 100);
            w.record(t * 10, 10, 1);
            assert!(w.bucket_count() <= 10);
            assert_eq!(w.live(t * 10, 100), w.bucket_count() as u64);
        }
        w.advance(10_080, 100);
        assert_eq!(w.bucket_count(), 1);
        w.advance(10_090, 100);
        assert!(w.is_empty());
        assert_eq!(w.live(10_090, 100), 0);
    }

    #[test]
    fn huge_weights_take_one_bucket() {
        let mut w = Window::<Count>::new();
        w.advance(0, 1000);
        // C is at most 1e12/s × 2^32 ms ≈ 4.3e18, so admitted sums never leave u64.
        let big = 1u64 << 62;
        w.record(0, 10, big);
        w.record(3, 10, 7);
        assert_eq!(w.bucket_count(), 1);
        w.record(20, 10, big);
        assert_eq!(w.bucket_count(), 2, "one call adds at most one bucket");
        assert_eq!(w.live(20, 1000), 2 * big + 7);
        let starts: Vec<(u64, u64)> = w
            .live_buckets(20, 1000)
            .map(|b| (b.start, b.counts))
            .collect();
        assert_eq!(starts, vec![(0, big + 7), (20, big)]);
        w.advance(1000, 1000);
        assert_eq!(w.live(1000, 1000), big);
    }

    #[test]
    fn exact_across_32_bit_wrap() {
        let base = u64::from(u32::MAX) - 50;
        let mut w = Window::<Count>::new();
        w.advance(base, 1000);
        w.record(base, 10, 1);
        w.advance(base + 100, 1000);
        w.record(base + 100, 10, 1);
        let starts: Vec<u64> = w.live_buckets(base + 500, 1000).map(|b| b.start).collect();
        assert_eq!(starts, vec![base, base + 100]);
        w.advance(base + 1000, 1000);
        assert_eq!(w.live(base + 1000, 1000), 1);
        // idle for longer than the 32-bit range: everything expired, nothing misread
        w.advance(base + (1u64 << 33), 1000);
        assert!(w.is_empty());
    }
}
