//! The per-key sliding window: buckets of coalesced requests, stored compactly.
//!
//! A bucket is 12 bytes for absolute (32-bit wrapping start time, 64-bit count kept as two
//! 32-bit halves so the bucket needs only 4-byte alignment) and 20 for suppressed; a key keeps its
//! buckets in a ring whose header lives inline in its 48-byte window (a single bucket is implied
//! by the newest start and the running total: no heap, no bucket bytes), so a decision touches the
//! entry and at most the two ends of one small buffer. One call adds at most one bucket, whatever
//! its weight.
//!
//! Start times are kept as `u32` milliseconds. A bucket's age is measured from the newest start,
//! which is kept in full: `now − newest` plus the wrapping difference of the two low halves.
//! That is exact because every bucket held started less than a span (below 2^32 ms:
//! `MAX_WINDOW` and `MIN_RATE_PER_SECOND` keep every effective window within it) before the
//! newest one: the call that recorded the newest bucket trimmed everything older. (Measured
//! from `now` instead, an untrimmed bucket of a window longer than 2^31 ms could wrap and look
//! young.) Whenever the newest start is a span or more in the past, the whole ring is dropped
//! unread.
//!
//! # The retained span
//! A key keeps its buckets for its *span*: the longest effective window it was recently asked
//! about by a recording call. The rules, which `lua/decide.lua` mirrors step for step:
//! - A bucket that has left the span in effect is gone, whether or not a call trimmed it: every
//!   call first trims with the span it finds, and only then may change the span. So a longer
//!   window never brings back a bucket that had already left.
//! - Only recording calls (`inc` with `n ≥ 1`, admitted or not) change the span; reads
//!   (`is_allowed`, `get`) and `n = 0` probes never do, so they never change a later answer.
//! - A window whose buckets have all left its span is empty and forgets its span: it is exactly
//!   a new key, so dropping it (the sweeper, a Redis TTL) changes no answer. The first bucket
//!   of an empty window sets the span to its call's window.
//! - While buckets remain, the span grows at once to a longer window, is confirmed by a call
//!   asking for it at most every half span, and shrinks to a shorter window only 1.5 spans after
//!   its last confirmation (at least a whole span after the last call that needed it).
//!
//! # Saturation
//! Counts saturate (at `u64::MAX` here, at 2^53 − 1 in Lua). The window's running total is
//! always the saturating sum of its buckets: a total that saturated is recounted from the
//! buckets when one leaves, never decremented from a clipped value. The suppressed strategy
//! keeps accepted and declined weight (not attempts and declines), so the accepted weight that
//! decides admission never depends on a saturated difference.

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
    /// Whether some counter of a sum reached its ceiling (the sum may be clipped).
    fn saturated(w: &Self::Wide) -> bool;
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
    fn saturated(w: &u64) -> bool {
        *w == u64::MAX
    }
    #[inline(always)]
    fn joinable(&self, _: &u64) -> bool {
        true
    }
}

/// Accepted and declined weight in one bucket (suppressed strategy).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct AttemptCounts {
    accepted: Split64,
    declined: Split64,
}

/// Accepted and declined weight as numbers, and summed over buckets (suppressed strategy).
///
/// Accepted weight is kept as such, not derived from attempts minus declines: attempts can
/// saturate (a caller's `-1i64 as u64` weight), and a difference of two clipped counters would
/// read as zero accepted and open the key.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Admitted weight.
    pub(crate) accepted: u64,
    /// Declined weight.
    pub(crate) declined: u64,
}

impl Attempts {
    /// Every attempt, admitted or not (saturating).
    #[inline(always)]
    pub(crate) fn attempted(&self) -> u64 {
        self.accepted.saturating_add(self.declined)
    }
}

impl Counts for AttemptCounts {
    type Wide = Attempts;
    #[inline(always)]
    fn widen(self) -> Attempts {
        Attempts {
            accepted: self.accepted.get(),
            declined: self.declined.get(),
        }
    }
    #[inline(always)]
    fn narrow(w: &Attempts) -> Self {
        Self {
            accepted: Split64::new(w.accepted),
            declined: Split64::new(w.declined),
        }
    }
    #[inline(always)]
    fn add_wide(a: &mut Attempts, b: &Attempts) {
        a.accepted = a.accepted.saturating_add(b.accepted);
        a.declined = a.declined.saturating_add(b.declined);
    }
    #[inline(always)]
    fn sub_wide(a: &mut Attempts, b: &Attempts) {
        a.accepted = a.accepted.saturating_sub(b.accepted);
        a.declined = a.declined.saturating_sub(b.declined);
    }
    #[inline(always)]
    fn saturated(w: &Attempts) -> bool {
        w.accepted == u64::MAX || w.declined == u64::MAX
    }
    /// Accepted weight joins only a bucket that holds accepted weight: then the accepted weight
    /// is bucketed exactly as the absolute strategy buckets admissions (a decline-only bucket is
    /// opened only when every earlier bucket is at least `G` old), which makes `h = 1` admit
    /// exactly what absolute admits.
    #[inline(always)]
    fn joinable(&self, incoming: &Attempts) -> bool {
        self.accepted.get() > 0 || incoming.accepted == 0
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
/// the key was asked about recently (a call with a shorter one counts only its own part); see
/// the module docs for the span's rules. An empty window has no span (`span == 0`).
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

    /// Whether some bucket is still inside the span at `now`. When not, the window is empty
    /// at `now` (its next call forgets it), so dropping it changes no answer.
    pub(crate) fn may_be_live(&self, now: u64) -> bool {
        !self.is_empty() && self.newest.saturating_add(u64::from(self.span)) > now
    }

    /// Full start time of a stored bucket (it started less than 2^32 ms before the newest).
    #[inline]
    fn start_of(&self, b: &Bucket<C>) -> u64 {
        self.newest
            .saturating_sub(u64::from(low(self.newest).wrapping_sub(b.start)))
    }

    /// Age at `now` of a stored bucket that started at `start` (see the module docs).
    #[inline(always)]
    fn age(&self, start: u32, now: u64) -> u64 {
        now.saturating_sub(self.newest) + u64::from(low(self.newest).wrapping_sub(start))
    }

    /// Forgets every bucket and the span (and frees the ring): a new key.
    fn clear(&mut self) {
        if self.ring_mode() {
            self.buf = Box::new([]);
        }
        self.head = 0;
        self.len = 0;
        self.total = C::Wide::default();
        self.span = 0;
        self.span_seen = 0;
    }

    /// Brings the window to `now` for a call with effective window `w_eff`: drops the buckets
    /// that left the span in effect, then, for a recording call (`confirm`), updates the span.
    ///
    /// The span grows at once to a longer window and shrinks to a shorter one only when nobody
    /// asked for the longer one during a whole span. A call asking for the current span
    /// confirms it only once half a span has passed since the last confirmation (so a key served
    /// at one window, the common case, changes nothing on most calls, and the Redis provider,
    /// which mirrors this rule, need not write a rejected call back); to still wait a whole span
    /// after the last call that needed it, the span shrinks 1.5 spans after the last
    /// confirmation, i.e. between one and 1.5 spans after that call. An empty window has no
    /// span to update: its first bucket sets it ([`record`](Self::record)).
    #[inline(always)]
    pub(crate) fn advance(&mut self, now: u64, w_eff: u64, confirm: bool) {
        self.trim(now);
        if !confirm || self.is_empty() {
            return;
        }
        let w = w_eff.min(u64::from(u32::MAX)) as u32;
        let since = u64::from(low(now).wrapping_sub(self.span_seen));
        let span = u64::from(self.span);
        if w > self.span {
            // A longer window: everything still held is inside it.
            self.span = w;
            self.span_seen = low(now);
        } else if since >= span + span / 2 {
            // Nobody asked for the longer window during a whole span.
            self.span_seen = low(now);
            if w < self.span {
                self.span = w;
                self.trim(now);
            }
        } else if w == self.span && since >= span / 2 {
            self.span_seen = low(now);
        }
    }

    /// [`advance`](Self::advance) without the trim where that changes nothing but the memory
    /// held: when the ring's newest bucket is live and the call leaves the span as it is.
    /// Returns `true` when the trim was skipped: the ring may then still hold buckets that left
    /// the span (they are counted in `total`, which is therefore an upper bound of every live
    /// sum), and [`finish_advance`](Self::finish_advance) must run before
    /// [`live`](Self::live). Returns `false` after a full `advance`.
    ///
    /// Skipping is exact: with the span unchanged, a bucket that left it stays out of it, so a
    /// later trim drops exactly what this one would have dropped; and updating the span's
    /// confirmation time (all that is left of `advance` here) does not depend on the buckets.
    /// What it saves is the read of the ring's oldest bucket, usually a cache miss on a key that
    /// is not hot: a call whose untrimmed total already leaves room touches no bucket it does not
    /// write.
    ///
    /// Held buckets must stay less than 2^32 ms older than the newest one (their starts are
    /// 32-bit): so the trim is never skipped on a span longer than 2^31 ms, nor by the first
    /// call of a new 2^31-ms epoch of the newest start. Then every held bucket survived a trim
    /// at the start of the newest's epoch (less than a span, at most 2^31 ms, before it), which
    /// itself is less than 2^31 ms before the newest.
    #[inline(always)]
    pub(crate) fn advance_lazy(&mut self, now: u64, w_eff: u64, confirm: bool) -> bool {
        let span = u64::from(self.span);
        if !self.ring_mode()
            || self.newest.saturating_add(span) <= now
            || span > 1 << 31
            || now >> 31 != self.newest >> 31
        {
            // One bucket or none (nothing to save), everything expired (forget it now), or a
            // trim the 32-bit starts need.
            self.advance(now, w_eff, confirm);
            return false;
        }
        if confirm {
            let w = w_eff.min(u64::from(u32::MAX)) as u32;
            let since = u64::from(low(now).wrapping_sub(self.span_seen));
            if w > self.span || (w < self.span && since >= span + span / 2) {
                // The span changes: the trim must see the span in effect before the call.
                self.advance(now, w_eff, confirm);
                return false;
            }
            if since >= span + span / 2 || (w == self.span && since >= span / 2) {
                self.span_seen = low(now);
            }
        }
        true
    }

    /// The first time at or after `now` at which a recording call with effective window
    /// `w_eff` would change the span or its confirmation time ([`advance`](Self::advance)):
    /// before it, such a call at that window changes nothing but the buckets it records. `now`
    /// when the window is empty or the call would change the span at once.
    pub(crate) fn span_steady_until(&self, now: u64, w_eff: u64) -> u64 {
        if self.is_empty() {
            return now;
        }
        let w = w_eff.min(u64::from(u32::MAX)) as u32;
        if w > self.span {
            return now;
        }
        let since = u64::from(low(now).wrapping_sub(self.span_seen));
        let span = u64::from(self.span);
        // At the span's window a call confirms it once half a span passed; a shorter one
        // shrinks it after 1.5 spans.
        let due = if w == self.span {
            span / 2
        } else {
            span + span / 2
        };
        now.saturating_add(due.saturating_sub(since))
    }

    /// Completes an [`advance_lazy`](Self::advance_lazy) that skipped its trim (same `now`).
    #[inline]
    pub(crate) fn finish_advance(&mut self, now: u64) {
        self.trim(now);
    }

    /// Sum of all buckets held, including any that left the span but were not trimmed yet
    /// (after [`advance_lazy`](Self::advance_lazy)): an upper bound of [`live`](Self::live).
    #[inline(always)]
    pub(crate) fn total_held(&self) -> C::Wide {
        self.total
    }

    /// Drops buckets older than the retained span; forgets an emptied window's span.
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
        let clipped = C::saturated(&self.total);
        let before = self.len;
        while self.len > 1 {
            let front = self.buf[self.head as usize & mask];
            if self.age(front.start, now) < span {
                break;
            }
            C::sub_wide(&mut self.total, &front.counts.widen());
            self.head = ((self.head as usize + 1) & mask) as u32;
            self.len -= 1;
        }
        if clipped && self.len != before {
            // A saturated total is not the sum it stands for: count the buckets left.
            self.recount();
        }
    }

    /// Sets `total` to the saturating sum of the buckets held.
    #[cold]
    fn recount(&mut self) {
        let mut sum = C::Wide::default();
        for i in 0..self.len as usize {
            if let Some(b) = self.bucket(i) {
                C::add_wide(&mut sum, &b.counts.widen());
            }
        }
        self.total = sum;
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
            if self.age(b.start, now) >= w_eff {
                break;
            }
            C::add_wide(&mut sum, &b.counts.widen());
        }
        sum
    }

    /// Like [`live`](Self::live), but correct without a preceding [`advance`](Self::advance)
    /// (reads such as `get` do not trim): sums the buckets that are live at `now` and still
    /// inside the span.
    pub(crate) fn live_untrimmed(&self, now: u64, w_eff: u64) -> C::Wide {
        let mut sum = C::Wide::default();
        for b in self.live_buckets(now, w_eff) {
            C::add_wide(&mut sum, &b.counts);
        }
        sum
    }

    /// Buckets live at `now` for `w_eff` (and inside the span), oldest first.
    pub(crate) fn live_buckets(
        &self,
        now: u64,
        w_eff: u64,
    ) -> impl Iterator<Item = LiveBucket<C::Wide>> + '_ {
        // A bucket that left the span is gone even if no call trimmed it yet.
        let w_eff = w_eff.min(u64::from(self.span));
        let all_expired = self.newest.saturating_add(w_eff) <= now;
        let n = if all_expired { 0 } else { self.len as usize };
        (0..n)
            .filter_map(move |i| self.bucket(i))
            .filter(move |b| self.age(b.start, now) < w_eff)
            .map(move |b| LiveBucket {
                start: self.start_of(&b),
                counts: b.counts.widen(),
            })
    }

    /// Start of the oldest bucket live at `now` for `w_eff`.
    pub(crate) fn oldest_live_start(&self, now: u64, w_eff: u64) -> Option<u64> {
        self.live_buckets(now, w_eff).next().map(|b| b.start)
    }

    /// Appends a bucket, growing the ring or leaving the implied mode (the caller adds its
    /// counts to `total` afterwards).
    fn push_back(&mut self, now: u64, b: Bucket<C>) {
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
        let mut n = self.len as usize;
        let cap = self.buf.len();
        if n == cap {
            // A full ring may still hold buckets that left the span (a lazy advance skipped
            // the trim): drop those before growing.
            self.trim(now);
            n = self.len as usize;
        }
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

    /// Records `counts` at `now` for a call with effective window `w_eff`: joins the newest
    /// bucket if it is younger than `bucket_ms` (and, for suppressed,
    /// [`joinable`](Counts::joinable)), else opens a new bucket starting at `now`. Adds at most
    /// one bucket. Assumes [`advance`](Self::advance) ran at `now` for this call.
    #[inline(always)]
    pub(crate) fn record(&mut self, now: u64, bucket_ms: u64, w_eff: u64, counts: C::Wide) {
        if self.is_empty() {
            // The first bucket is implied by `newest` and `total`; it sets the span.
            self.len = 1;
            self.total = counts;
            self.newest = now;
            self.span = w_eff.min(u64::from(u32::MAX)) as u32;
            self.span_seen = low(now);
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
        self.push_back(
            now,
            Bucket {
                start: low(now),
                counts: C::narrow(&counts),
            },
        );
        C::add_wide(&mut self.total, &counts);
        self.newest = now;
    }

    /// Writes a bucket that [`record_deferred`](Window::record_deferred) left for later.
    /// Must run before anything else reads or changes this window.
    #[inline(always)]
    pub(crate) fn apply(&mut self, w: RingWrite<C>) {
        let mask = self.buf.len().wrapping_sub(1);
        if let Some(b) = self.buf.get_mut(w.slot as usize & mask) {
            if w.join {
                let mut sum = b.counts.widen();
                C::add_wide(&mut sum, &w.bucket.counts.widen());
                b.counts = C::narrow(&sum);
            } else {
                *b = w.bucket;
            }
        }
    }

    /// Number of buckets held.
    #[cfg(test)]
    pub(crate) fn bucket_count(&self) -> usize {
        self.len as usize
    }
}

/// A bucket write a decision left for later: the window's header already counts it, its ring
/// slot is written by [`Window::apply`].
///
/// Why: on a key that is not hot, the ring slot is a cache line nobody has read, and the shard
/// releases its run token (a locked instruction, which waits for every earlier store) right
/// after the decision. Left for the shard's next message, the store is issued at the start of
/// that message and completes while that message waits for its own key's lines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingWrite<C> {
    slot: u32,
    bucket: Bucket<C>,
    /// Add `bucket`'s counts to the slot (a request joining the newest bucket) instead of
    /// overwriting it (a new bucket).
    join: bool,
}

impl Window<Count> {
    /// Takes back `units` recorded in the bucket that starts at `start` but never admitted
    /// (a lease's unspent units, see `shard::leases`). If that bucket already left the window,
    /// its units no longer count and nothing changes. Make any pending [`RingWrite`] first.
    pub(crate) fn return_units(&mut self, start: u64, units: u64) {
        if self.is_empty() || units == 0 {
            return;
        }
        let clipped = Count::saturated(&self.total);
        if !self.ring_mode() {
            if self.newest == start {
                self.total = self.total.saturating_sub(units);
            }
            return;
        }
        let mask = self.buf.len() - 1;
        for i in (0..self.len as usize).rev() {
            let idx = (self.head as usize + i) & mask;
            let Some(b) = self.buf.get(idx).copied() else {
                break;
            };
            let s = self.start_of(&b);
            if s < start {
                break;
            }
            if s == start {
                let left = b.counts.get().saturating_sub(units);
                self.buf[idx].counts = Split64::new(left);
                if clipped {
                    self.recount();
                } else {
                    self.total = self.total.saturating_sub(units);
                }
                return;
            }
        }
    }

    /// [`record`](Window::record), except that a write into an existing ring slot is returned
    /// instead of made (allocating or growing the ring is done at once). The window's header
    /// (total, newest, length) is updated now, so every decision that follows is the same; the
    /// returned write must be [`apply`](Window::apply)'d before the window is read or changed
    /// again. (Absolute buckets are always joinable, so joining needs no read of the slot.)
    #[inline(always)]
    pub(crate) fn record_deferred(
        &mut self,
        now: u64,
        bucket_ms: u64,
        w_eff: u64,
        n: u64,
    ) -> Option<RingWrite<Count>> {
        if !self.ring_mode() || self.is_empty() {
            self.record(now, bucket_ms, w_eff, n);
            return None;
        }
        let mask = self.buf.len() - 1;
        if now.saturating_sub(self.newest) < bucket_ms {
            let slot = (self.head as usize + self.len as usize - 1) & mask;
            Count::add_wide(&mut self.total, &n);
            return Some(RingWrite {
                slot: slot as u32,
                bucket: Bucket {
                    start: low(self.newest),
                    counts: Split64::new(n),
                },
                join: true,
            });
        }
        if self.len as usize == self.buf.len() {
            // Full: trim, and grow if still full, at once.
            self.record(now, bucket_ms, w_eff, n);
            return None;
        }
        let slot = (self.head as usize + self.len as usize) & mask;
        self.len += 1;
        Count::add_wide(&mut self.total, &n);
        self.newest = now;
        Some(RingWrite {
            slot: slot as u32,
            bucket: Bucket {
                start: low(now),
                counts: Split64::new(n),
            },
            join: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recording call: advance, then record `n` at `now` for window `w_eff` (G = 10 ms).
    fn inc<C: Counts>(w: &mut Window<C>, now: u64, w_eff: u64, n: C::Wide) {
        w.advance(now, w_eff, true);
        w.record(now, 10, w_eff, n);
    }

    #[test]
    fn compact_layout() {
        assert_eq!(std::mem::size_of::<Bucket<Count>>(), 12);
        assert_eq!(std::mem::size_of::<Bucket<AttemptCounts>>(), 20);
        assert_eq!(std::mem::size_of::<Window<Count>>(), 48);
    }

    #[test]
    fn joins_young_bucket_and_opens_new_one() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, 1);
        inc(&mut w, 9, 1000, 1);
        assert_eq!(w.bucket_count(), 1);
        inc(&mut w, 10, 1000, 1);
        assert_eq!(w.bucket_count(), 2);
        assert_eq!(w.live(10, 1000), 3);
    }

    #[test]
    fn expires_at_start_plus_window() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 5, 1000, 2);
        assert_eq!(w.live(1004, 1000), 2);
        assert_eq!(w.live(1005, 1000), 0);
        w.advance(1005, 1000, false);
        assert!(w.is_empty());
        assert_eq!(w.span_ms(), 0, "an empty window forgets its span");
    }

    #[test]
    fn reads_without_advance_skip_expired_buckets() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, 1);
        inc(&mut w, 500, 1000, 1);
        assert_eq!(w.live_untrimmed(1200, 1000), 1);
        assert_eq!(w.live_untrimmed(1500, 1000), 0);
        // a read with a longer window sees only what is inside the span
        assert_eq!(w.live_untrimmed(1200, 5000), 1);
    }

    #[test]
    fn shorter_call_window_counts_only_its_part() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 2000, 1);
        inc(&mut w, 1500, 1000, 1);
        // the 2000 ms span is still retained: a 1000 ms call sees only the newer bucket
        assert_eq!(w.live(1500, 1000), 1);
        assert_eq!(w.live(1500, 2000), 2);
    }

    #[test]
    fn a_longer_window_never_brings_back_a_bucket_that_left_the_span() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, 1);
        inc(&mut w, 500, 1000, 1);
        // at 1200 the 0 ms bucket left the 1000 ms span, untrimmed: a 5000 ms call trims first
        w.advance(1200, 5000, true);
        assert_eq!(w.span_ms(), 5000);
        assert_eq!(w.live(1200, 5000), 1);
        // reads do not move the span
        let mut r = Window::<Count>::new();
        inc(&mut r, 0, 1000, 1);
        r.advance(300, 5000, false);
        assert_eq!(r.span_ms(), 1000);
        assert_eq!(r.live_untrimmed(1200, 5000), 0);
    }

    #[test]
    fn span_is_confirmed_every_half_span_and_shrinks_a_whole_span_after_its_last_use() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, 1);
        // asked again for 1000 ms before half a span passed: not a confirmation
        inc(&mut w, 400, 1000, 1);
        assert_eq!((w.span_ms(), w.span_seen), (1000, 0));
        // a shorter window one span after the confirmation, but only 600 ms after the last call
        // that needed the long one: the span (and the 400 ms bucket) stay
        w.advance(1000, 100, true);
        assert_eq!(w.span_ms(), 1000);
        assert_eq!(
            w.live(1000, 1000),
            1,
            "the 400 ms bucket still counts for a 1000 ms call"
        );
        inc(&mut w, 1450, 100, 1);
        // a whole span after that call (1.5 spans after the confirmation): shrinks, and the
        // buckets older than the new span are gone at once
        w.advance(1500, 100, true);
        assert_eq!(w.span_ms(), 100);
        assert_eq!(w.live(1500, 1000), 1, "only the 1450 ms bucket is left");
        w.advance(1550, 100, false);
        assert!(w.is_empty());
        assert_eq!(w.span_ms(), 0, "an emptied window forgets its span");
        // a confirmation after half a span moves the shrink point with it
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, 1);
        inc(&mut w, 500, 1000, 1);
        inc(&mut w, 1400, 100, 1);
        inc(&mut w, 1950, 100, 1);
        w.advance(1999, 100, true);
        assert_eq!(w.span_ms(), 1000);
        w.advance(2000, 100, true);
        assert_eq!(w.span_ms(), 100);
    }

    #[test]
    fn ring_grows_wraps_and_empties() {
        let mut w = Window::<Count>::new();
        for t in 0..1000u64 {
            inc(&mut w, t * 10, 100, 1);
            assert!(w.bucket_count() <= 10);
            assert_eq!(w.live(t * 10, 100), w.bucket_count() as u64);
        }
        w.advance(10_080, 100, false);
        assert_eq!(w.bucket_count(), 1);
        w.advance(10_090, 100, false);
        assert!(w.is_empty());
        assert_eq!(w.live(10_090, 100), 0);
    }

    #[test]
    fn huge_weights_take_one_bucket() {
        let mut w = Window::<Count>::new();
        // C is at most 1e12/s × 2^32 ms ≈ 4.3e18, so admitted sums never leave u64.
        let big = 1u64 << 62;
        inc(&mut w, 0, 1000, big);
        inc(&mut w, 3, 1000, 7);
        assert_eq!(w.bucket_count(), 1);
        inc(&mut w, 20, 1000, big);
        assert_eq!(w.bucket_count(), 2, "one call adds at most one bucket");
        assert_eq!(w.live(20, 1000), 2 * big + 7);
        let starts: Vec<(u64, u64)> = w
            .live_buckets(20, 1000)
            .map(|b| (b.start, b.counts))
            .collect();
        assert_eq!(starts, vec![(0, big + 7), (20, big)]);
        w.advance(1000, 1000, true);
        assert_eq!(w.live(1000, 1000), big);
    }

    #[test]
    fn a_saturated_total_is_recounted_when_a_bucket_leaves() {
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, 1000, u64::MAX - 5);
        inc(&mut w, 100, 1000, 10);
        inc(&mut w, 200, 1000, 3);
        assert_eq!(w.live(200, 1000), u64::MAX, "the sum saturates");
        w.advance(1000, 1000, true);
        assert_eq!(w.live(1000, 1000), 13, "not u64::MAX − (u64::MAX − 5)");
        let mut s = Window::<AttemptCounts>::new();
        let declined = |n| Attempts {
            accepted: 0,
            declined: n,
        };
        inc(&mut s, 0, 1000, declined(u64::MAX));
        inc(&mut s, 100, 1000, declined(7));
        inc(
            &mut s,
            100,
            1000,
            Attempts {
                accepted: 4,
                declined: 0,
            },
        );
        let live = s.live(100, 1000);
        assert_eq!(
            (live.accepted, live.declined, live.attempted()),
            (4, u64::MAX, u64::MAX)
        );
        s.advance(1000, 1000, true);
        let live = s.live(1000, 1000);
        assert_eq!((live.accepted, live.declined), (4, 7));
    }

    /// A window longer than 2^31 ms: an untrimmed bucket older than 2^32 ms must not look young
    /// (review of issue 7: ages measured from `now` wrapped).
    #[test]
    fn ages_never_wrap_on_windows_longer_than_2_pow_31() {
        let w_eff = 3_000_000_000u64;
        let mut w = Window::<Count>::new();
        inc(&mut w, 0, w_eff, 1);
        inc(&mut w, 2_900_000_000, w_eff, 1);
        // at 4.4e9 the first bucket is 4.4e9 ms old (> 2^32): gone, only the second counts
        assert_eq!(w.live_untrimmed(4_400_000_000, w_eff), 1);
        let starts: Vec<u64> = w
            .live_buckets(4_400_000_000, w_eff)
            .map(|b| b.start)
            .collect();
        assert_eq!(starts, vec![2_900_000_000]);
        w.advance(4_400_000_000, w_eff, true);
        assert_eq!(w.live(4_400_000_000, w_eff), 1);
        assert_eq!(w.bucket_count(), 1);
    }

    #[test]
    fn exact_across_32_bit_wrap() {
        let base = u64::from(u32::MAX) - 50;
        let mut w = Window::<Count>::new();
        inc(&mut w, base, 1000, 1);
        inc(&mut w, base + 100, 1000, 1);
        let starts: Vec<u64> = w.live_buckets(base + 500, 1000).map(|b| b.start).collect();
        assert_eq!(starts, vec![base, base + 100]);
        w.advance(base + 1000, 1000, true);
        assert_eq!(w.live(base + 1000, 1000), 1);
        // idle for longer than the 32-bit range: everything expired, nothing misread
        w.advance(base + (1u64 << 33), 1000, true);
        assert!(w.is_empty());
    }
}
