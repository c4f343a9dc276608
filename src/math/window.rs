//! The per-key sliding window: buckets of coalesced requests, stored compactly.
//!
//! A bucket is 8 bytes for absolute (32-bit wrapping start time, 32-bit count) and 12 for
//! suppressed; a key keeps its buckets in a ring whose header lives inline in its 48-byte
//! window (a single bucket is implied by the newest start and the running total: no heap, no
//! bucket bytes), so a decision touches the entry and at most the two ends of one small
//! buffer. Working sets stay small enough for the caches at 100k busy keys, and an idle key
//! stays well under 100 bytes.
//!
//! Start times are kept as `u32` milliseconds and compared by wrapping difference. That is exact
//! because a window never holds a bucket older than its span (< 2^32 ms): whenever the newest
//! activity (kept in full) is a span or more in the past, the whole ring is dropped unread.

/// Counters one bucket carries: a weight for absolute, attempts and declines for suppressed.
pub(crate) trait Counts: Copy + Default + std::fmt::Debug + Send + 'static {
    /// The same counters summed over many buckets, in 64 bits.
    type Wide: Copy + Default + std::fmt::Debug + PartialEq + Send + 'static;
    /// `wide += c`.
    fn add_to(self, wide: &mut Self::Wide);
    /// `wide -= c`.
    fn sub_from(self, wide: &mut Self::Wide);
    /// Moves as much of `rest` into `self` as fits; `rest` keeps the remainder.
    fn fill(&mut self, rest: &mut Self::Wide);
    /// Whether `wide` is all zero.
    fn is_zero(wide: &Self::Wide) -> bool;
    /// Whether a young newest bucket holding `self` may take `incoming`.
    fn joinable(&self, incoming: &Self::Wide) -> bool;
    /// The bucket counters equal to `wide` (which fits 32 bits where this is used).
    fn narrow(wide: &Self::Wide) -> Self;
    /// Adds `w` if it fits entirely; returns whether it did.
    fn try_add(&mut self, w: &Self::Wide) -> bool;
    /// `a += b` on wide counters.
    fn add_wide(a: &mut Self::Wide, b: &Self::Wide);
}

#[inline]
fn fill_u32(slot: &mut u32, rest: &mut u64) {
    let room = u64::from(u32::MAX - *slot);
    let take = room.min(*rest);
    *slot += take as u32;
    *rest -= take;
}

impl Counts for u32 {
    type Wide = u64;
    #[inline]
    fn add_to(self, wide: &mut u64) {
        *wide = wide.saturating_add(u64::from(self));
    }
    #[inline]
    fn sub_from(self, wide: &mut u64) {
        *wide = wide.saturating_sub(u64::from(self));
    }
    #[inline]
    fn fill(&mut self, rest: &mut u64) {
        fill_u32(self, rest);
    }
    #[inline]
    fn is_zero(wide: &u64) -> bool {
        *wide == 0
    }
    #[inline]
    fn joinable(&self, _: &u64) -> bool {
        true
    }
    #[inline]
    fn narrow(wide: &u64) -> u32 {
        (*wide).min(u64::from(u32::MAX)) as u32
    }
    #[inline]
    fn try_add(&mut self, w: &u64) -> bool {
        match u32::try_from(*w).ok().and_then(|w| self.checked_add(w)) {
            Some(v) => {
                *self = v;
                true
            }
            None => false,
        }
    }
    #[inline]
    fn add_wide(a: &mut u64, b: &u64) {
        *a = a.saturating_add(*b);
    }
}

/// Attempted and declined weight in one bucket (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Attempts32 {
    total: u32,
    declined: u32,
}

/// Attempted and declined weight summed over buckets (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Every attempt, admitted or not.
    pub(crate) total: u64,
    /// Attempts that were declined.
    pub(crate) declined: u64,
}

impl Counts for Attempts32 {
    type Wide = Attempts;
    #[inline]
    fn add_to(self, w: &mut Attempts) {
        w.total = w.total.saturating_add(u64::from(self.total));
        w.declined = w.declined.saturating_add(u64::from(self.declined));
    }
    #[inline]
    fn sub_from(self, w: &mut Attempts) {
        w.total = w.total.saturating_sub(u64::from(self.total));
        w.declined = w.declined.saturating_sub(u64::from(self.declined));
    }
    #[inline]
    fn fill(&mut self, rest: &mut Attempts) {
        fill_u32(&mut self.total, &mut rest.total);
        fill_u32(&mut self.declined, &mut rest.declined);
    }
    #[inline]
    fn is_zero(w: &Attempts) -> bool {
        w.total == 0 && w.declined == 0
    }
    /// Accepted weight joins only a bucket that holds accepted weight: then the accepted weight
    /// is bucketed exactly as the absolute strategy buckets admissions (a decline-only bucket is
    /// opened only when every earlier bucket is at least `G` old), which makes `h = 1` admit
    /// exactly what absolute admits.
    #[inline]
    fn joinable(&self, incoming: &Attempts) -> bool {
        self.total > self.declined || incoming.total == incoming.declined
    }
    #[inline]
    fn narrow(wide: &Attempts) -> Attempts32 {
        Attempts32 {
            total: wide.total.min(u64::from(u32::MAX)) as u32,
            declined: wide.declined.min(u64::from(u32::MAX)) as u32,
        }
    }
    #[inline]
    fn try_add(&mut self, w: &Attempts) -> bool {
        let mut t = self.total;
        let mut d = self.declined;
        if !(t.try_add(&w.total) && d.try_add(&w.declined)) {
            return false;
        }
        self.total = t;
        self.declined = d;
        true
    }
    #[inline]
    fn add_wide(a: &mut Attempts, b: &Attempts) {
        a.total = a.total.saturating_add(b.total);
        a.declined = a.declined.saturating_add(b.declined);
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
    #[inline(always)]
    pub(crate) fn advance(&mut self, now: u64, w_eff: u64) {
        let w = w_eff.min(u64::from(u32::MAX)) as u32;
        if w >= self.span || low(now).wrapping_sub(self.span_seen) >= self.span {
            // A longer window, or nobody asked for the longer one during a whole span.
            self.span = w;
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
            front.counts.sub_from(&mut self.total);
            self.head = ((self.head as usize + 1) & mask) as u32;
            self.len -= 1;
        }
    }

    /// Sum of the buckets live at `now` for effective window `w_eff` (start > now − w_eff).
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
            b.counts.add_to(&mut sum);
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
            .map(move |b| {
                let mut counts = C::Wide::default();
                b.counts.add_to(&mut counts);
                LiveBucket {
                    start: Self::start_of(&b, now),
                    counts,
                }
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

    /// The common case of `record`: the young newest bucket takes `counts` whole.
    #[inline(always)]
    fn try_join(&mut self, counts: &C::Wide) -> bool {
        let joined = if self.ring_mode() {
            let idx = (self.head as usize + self.len as usize - 1) & (self.buf.len() - 1);
            match self.buf.get_mut(idx) {
                Some(b) => b.counts.joinable(counts) && b.counts.try_add(counts),
                None => false,
            }
        } else {
            // The implied bucket is `total` itself.
            let mut b = C::narrow(&self.total);
            b.joinable(counts) && b.try_add(counts)
        };
        if joined {
            C::add_wide(&mut self.total, counts);
        }
        joined
    }

    /// Records `counts` at `now`: joins the newest bucket if it is younger than `bucket_ms`,
    /// else opens a new bucket starting at `now`. A bucket whose 32-bit counters are full is
    /// continued by another with the same start.
    #[inline(always)]
    pub(crate) fn record(&mut self, now: u64, bucket_ms: u64, mut counts: C::Wide) {
        let young = !self.is_empty() && now.saturating_sub(self.newest) < bucket_ms;
        if young && self.try_join(&counts) {
            return;
        }
        let newest = self.bucket((self.len as usize).saturating_sub(1));
        let joins = young && newest.is_some_and(|b| b.counts.joinable(&counts));
        let start = if joins { self.newest } else { now };
        if joins {
            if let Some(mut b) = newest {
                let before = b.counts;
                b.counts.fill(&mut counts);
                before.sub_from(&mut self.total);
                b.counts.add_to(&mut self.total);
                if self.ring_mode() {
                    let idx = (self.head as usize + self.len as usize - 1) & (self.buf.len() - 1);
                    self.buf[idx] = b;
                }
                // In the implied mode the bucket is `total`, already updated.
            }
        } else if self.is_empty() {
            // First bucket: implied by `newest` and `total`, up to the 32-bit counters.
            let mut b = Bucket {
                start: low(start),
                counts: C::default(),
            };
            b.counts.fill(&mut counts);
            b.counts.add_to(&mut self.total);
            self.len = 1;
            self.newest = start;
        }
        while !C::is_zero(&counts) {
            let mut b = Bucket {
                start: low(start),
                counts: C::default(),
            };
            b.counts.fill(&mut counts);
            self.push_back(b);
            b.counts.add_to(&mut self.total);
        }
        self.newest = start;
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
        assert_eq!(std::mem::size_of::<Bucket<u32>>(), 8);
        assert!(
            std::mem::size_of::<Window<u32>>() <= 56,
            "{}",
            std::mem::size_of::<Window<u32>>()
        );
    }

    #[test]
    fn joins_young_bucket_and_opens_new_one() {
        let mut w = Window::<u32>::new();
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
        let mut w = Window::<u32>::new();
        w.advance(5, 1000);
        w.record(5, 10, 2);
        assert_eq!(w.live(1004, 1000), 2);
        assert_eq!(w.live(1005, 1000), 0);
        w.advance(1005, 1000);
        assert!(w.is_empty());
    }

    #[test]
    fn shorter_call_window_counts_only_its_part() {
        let mut w = Window::<u32>::new();
        w.advance(0, 2000);
        w.record(0, 10, 1);
        w.advance(1500, 1000);
        w.record(1500, 10, 1);
        // the 2000 ms span is still retained: a 1000 ms call sees only the newer bucket
        assert_eq!(w.live(1500, 1000), 1);
        assert_eq!(w.live(1500, 2000), 2);
    }

    #[test]
    fn ring_grows_wraps_and_empties() {
        let mut w = Window::<u32>::new();
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
    fn weights_beyond_u32_split_into_buckets_with_one_start() {
        let mut w = Window::<u32>::new();
        w.advance(0, 1000);
        let big = u64::from(u32::MAX) * 2 + 5;
        w.record(0, 10, big);
        w.record(3, 10, 7);
        assert_eq!(w.live(3, 1000), big + 7);
        assert!(w.live_buckets(3, 1000).all(|b| b.start == 0));
        assert_eq!(w.live(1000, 1000), 0);
    }

    #[test]
    fn exact_across_32_bit_wrap() {
        let base = u64::from(u32::MAX) - 50;
        let mut w = Window::<u32>::new();
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
